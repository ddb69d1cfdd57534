"""Real training steps of a shipped config, with random full-size weights: the peak GPU memory and
the time per example beside `lc train --estimate`'s figures (docs/training.md, "Recipes").

    python benchmarks/train_step.py configs/flux-kontext-1gpu.yaml     # one GPU, a few minutes
    python benchmarks/train_step.py configs/flux-kontext.yaml --json   # one process of the 8
    python benchmarks/train_step.py configs/flux-kontext-1gpu.yaml --model builtin:tiny \\
        --resolution 64                                                # CPU smoke run, seconds

The networks are FLUX.1 Kontext [dev]'s (configs in layercomposer/train/architecture.py) with
random bf16 weights built in memory, nothing downloaded: a step's cost and memory do not depend
on the values. The tokenizers are builtin:tiny's (their ids fit every vocabulary). The data is
a synthetic layered dataset: two people (the example cut-outs) on a background, three images
per scene. The trainer runs the config as it is (quantization, optimizer, checkpointing, T5
offload) for `--steps` steps of `--examples` examples; the first step warms up (kernels, the
caption cache), the last is measured. Peak memory is torch's allocator peak over training
(reserved beside it; the estimate adds 2 GB of runtime overhead to what is allocated); on a CPU
the process's peak resident memory. Time per step is extrapolated: per example x batch_size.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
for _noisy in ("torchao", "torch.utils._pytree"):
    logging.getLogger(_noisy).setLevel(logging.ERROR)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from train_data import make_dataset  # noqa: E402

from layercomposer.train.config import load_train_config  # noqa: E402

KONTEXT = "black-forest-labs/FLUX.1-Kontext-dev"


@contextmanager
def full_size_random_kontext(configs: dict | None = None):
    """builtin:tiny's loader builds FLUX.1 Kontext [dev]'s networks (or `configs`' networks) with
    random bf16 weights."""
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    import layercomposer.tiny as tiny
    from layercomposer.train.architecture import KNOWN_MODELS

    configs = configs or KNOWN_MODELS[KONTEXT]
    small = tiny.tiny_kontext_components

    def components(seed: int = 0) -> dict:
        parts = small(seed)  # the tokenizers and the scheduler
        torch.manual_seed(seed)
        previous = torch.get_default_dtype()
        torch.set_default_dtype(torch.bfloat16)  # never a 48 GB fp32 copy first
        try:
            parts["transformer"] = FluxTransformer2DModel(**configs["transformer"])
            parts["text_encoder_2"] = T5EncoderModel(T5Config(**configs["text_encoder_2"]))
            parts["text_encoder"] = CLIPTextModel(CLIPTextConfig(**configs["text_encoder"]))
            parts["vae"] = AutoencoderKL(**configs["vae"])
        finally:
            torch.set_default_dtype(previous)
        return parts

    tiny.tiny_kontext_components = components
    try:
        yield
    finally:
        tiny.tiny_kontext_components = small


def measure(args: argparse.Namespace, configs: dict | None = None) -> dict:
    """Train `args.steps` steps; the measured and the estimated figures. `configs` replaces the
    Kontext component configs (the tests build a small model through the same path)."""
    from layercomposer.train.architecture import model_architecture
    from layercomposer.train.estimate import GB, estimate
    from layercomposer.train.trainer import Trainer

    work = Path(tempfile.mkdtemp(prefix="lc-train-step-"))
    make_dataset(work / "data", args.resolution, scenes=1)  # the tests' synthetic dataset
    config = load_train_config(args.config, args.set or ())
    batch_size = config.train.batch_size
    model = args.model or config.model
    sets = [
        f"data.path={work / 'data'}", f"output_dir={work / 'run'}", "validation_canvases=[]",
        f"train.steps={args.steps}", f"train.batch_size={args.examples}",
        f"checkpoint_every={args.steps + 1}", 'tensorboard="off"',
        f"model={'builtin:tiny' if model == KONTEXT else model}",
    ]  # fmt: skip
    run_config = load_train_config(args.config, [*(args.set or ()), *sets])
    cuda = torch.cuda.is_available() and run_config.device in ("auto", "cuda")
    seconds: list[float] = []
    started = [time.perf_counter()]

    def on_step(report) -> None:  # called after the step's loss is read: the GPU is done
        seconds.append(time.perf_counter() - started[0])
        started[0] = time.perf_counter()

    context = full_size_random_kontext(configs) if model == KONTEXT else _nothing()
    with context:
        load_started = time.perf_counter()
        trainer = Trainer(run_config, on_step=on_step)
        load_seconds = time.perf_counter() - load_started
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        started[0] = time.perf_counter()
        trainer.run()
    per_example = seconds[-1] / args.examples
    budget = estimate(
        config, model_architecture(model, config.revision), resolution=args.resolution,
        device_tflops=args.device_tflops, captions=1,
    )  # fmt: skip
    if cuda:
        peak = torch.cuda.max_memory_allocated() / GB
        reserved = torch.cuda.max_memory_reserved() / GB
    else:  # ru_maxrss is in KiB on Linux
        peak, reserved = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB, None
    return {
        "config": str(args.config),
        "model": model,
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "resolution": args.resolution,
        "examples_per_step": args.examples,
        "load_seconds": load_seconds,
        "measured_peak_gb": peak,
        "measured_reserved_gb": reserved,
        "estimated_gb": budget.total_bytes / GB,
        "measured_seconds_per_example": per_example,
        "estimated_seconds_per_example": budget.flops_per_example / (args.device_tflops * 1e12),
        "measured_seconds_per_step": per_example * batch_size,
        "batch_size": batch_size,
    }


@contextmanager
def _nothing():
    yield


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("--set", action="append", help="a config override, as for lc train")
    parser.add_argument("--model", help="default: the config's (random weights for Kontext)")
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--examples", type=int, default=2, help="examples per measured step")
    parser.add_argument("--steps", type=int, default=2, help="the first one warms up")
    parser.add_argument("--device-tflops", type=float, default=400.0)
    parser.add_argument("--json", action="store_true")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    result = measure(args)
    if args.json:
        print(json.dumps(result))
    else:
        reserved = result["measured_reserved_gb"]
        print(
            f"| {result['config']} | {result['device']} | {result['estimated_gb']:.1f} GB "
            f"| {result['measured_peak_gb']:.1f} GB"
            + (f" ({reserved:.1f} reserved)" if reserved is not None else " (peak RSS)")
            + f" | {result['estimated_seconds_per_example']:.2f} s "
            f"| {result['measured_seconds_per_example']:.2f} s |"
        )
    return result


if __name__ == "__main__":
    main()
