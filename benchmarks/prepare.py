"""Everything before the first denoising step: canvas preparation, and prepare after a move.

    python benchmarks/prepare.py                    # CPU: both tables
    python benchmarks/prepare.py --layers 16 --size 2048

1. Canvas preparation, what `lc inspect` does: read the canvas file, load, transform and place
   every layer, prune, and build the report. A synthetic canvas of --layers RGBA cut-outs
   (480x720 after a 1.2x resize) on a --size^2 canvas, median of 5 in-process runs; then the
   whole `lc inspect` command once, and `lc --version` for the interpreter's start-up alone.
2. `LayerComposerPipeline.prepare` (text embeddings + layer encodes + ids), cold and after one
   of 4 subjects moved by two tokens, with `--encode box` and `--encode canvas`. builtin:tiny's
   components, or with --vae full (the default for --model full in scaling.py) the FLUX VAE
   architecture with random weights; the text encoders stay tiny (a real T5-XXL costs more
   when cold, and nothing when its prompt is cached).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
for _noisy in ("torchao", "torch.utils._pytree"):  # torchao, if installed, logs what it lacks
    logging.getLogger(_noisy).setLevel(logging.ERROR)
sys.path.insert(0, str(Path(__file__).resolve().parent))

FLUX_VAE = dict(
    in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512),
    layers_per_block=2, latent_channels=16, norm_num_groups=32, use_quant_conv=False,
    use_post_quant_conv=False, shift_factor=0.1159, scaling_factor=0.3611,
)  # fmt: skip
PROMPT = "four people posing for a group photo"


# --- 1. canvas preparation --------------------------------------------------------------------


def write_canvas(folder: Path, layers: int, size: int) -> Path:
    """A canvas file of `layers` elliptical RGBA cut-outs of random colours, on a grid."""
    rng = np.random.default_rng(0)
    height, width = 600, 400
    yy, xx = np.mgrid[:height, :width]
    inside = ((yy - height / 2) / (height / 2)) ** 2 + ((xx - width / 2) / (width / 2)) ** 2 <= 1
    per_row = int(np.ceil(np.sqrt(layers)))
    cell = size / per_row
    specs = []
    for i in range(layers):
        rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        Image.fromarray(np.dstack([rgb, inside.astype(np.uint8) * 255])).save(folder / f"p{i}.png")
        position = [(i % per_row + 0.5) * cell, (i // per_row + 0.5) * cell]
        specs.append({"name": f"p{i}", "image": f"p{i}.png", "position": position, "scale": 1.2})
    path = folder / "canvas.yaml"
    path.write_text(yaml.safe_dump({"prompt": "many", "size": [size, size], "layers": specs}))
    return path


def inspect_seconds(path: Path, runs: int = 5) -> float:
    """Median seconds of `lc inspect`'s work, in process: load, layers, pruning, report."""
    from layercomposer.canvas import load_canvas
    from layercomposer.layers import build_layers
    from layercomposer.report import canvas_report

    times = []
    for _ in range(runs):
        started = time.perf_counter()
        canvas = load_canvas(path)
        canvas_report(canvas, build_layers(canvas))
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def command_seconds(*args: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "layercomposer", *args], check=True, capture_output=True)
    return time.perf_counter() - started


def inspect_table(layers: int, size: int) -> str:
    with tempfile.TemporaryDirectory(prefix="lc-bench-") as tmp:
        path = write_canvas(Path(tmp), layers, size)
        in_process = inspect_seconds(path)
        command = command_seconds("inspect", str(path))
        startup = command_seconds("--version")
    return "\n".join(
        [
            f"**`lc inspect` of {layers} layers on a {size}x{size} canvas**\n",
            "| what | seconds |",
            "|---|---:|",
            f"| canvas preparation in process (median of 5) | {in_process:.3f} |",
            f"| the whole `lc inspect` command | {command:.3f} |",
            f"| of which interpreter start-up and imports (`lc --version`) | {startup:.3f} |",
        ]
    )


# --- 2. prepare, cold and after a move --------------------------------------------------------


def prepare_pipeline(vae: str, device: str, dtype: torch.dtype):
    """A LayerComposerPipeline of builtin:tiny's components, with the FLUX VAE if `vae=full`."""
    from diffusers import AutoencoderKL

    from layercomposer.pipeline import LayerComposerPipeline
    from layercomposer.tiny import tiny_kontext_components

    components = tiny_kontext_components()
    if vae == "full":
        torch.manual_seed(0)
        components["vae"] = AutoencoderKL(**FLUX_VAE).eval()
    pipe = LayerComposerPipeline(**components).to(device)
    pipe.vae.to(dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def moved(layer, dx: int):
    """The same layer `dx` pixels to the right (same cut-out, same content hash)."""
    return replace(layer, origin=(layer.origin[0] + dx, layer.origin[1]))


def time_prepare(pipe, layers, encode: str) -> tuple[float, int]:
    """Milliseconds of one `prepare`, and how many layers it had to encode (cache misses)."""
    misses = pipe.latent_cache.misses
    device = str(pipe._execution_device)
    started = time.perf_counter()
    cond = pipe.prepare(PROMPT, layers, "layered", encode)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    del cond
    return 1000 * (time.perf_counter() - started), pipe.latent_cache.misses - misses


def move_rows(pipe, layers, reps: int = 3) -> list[dict]:
    """Cold prepare vs. prepare after moving the first layer by two tokens, per encode mode."""
    from layercomposer.latents import LatentCache
    from layercomposer.tokens import TOKEN_PX

    after = [moved(layers[0], 2 * TOKEN_PX), *layers[1:]]
    time_prepare(pipe, layers, "canvas")  # warm-up: first calls allocate and pick kernels
    rows = []
    for encode in ("box", "canvas"):
        cold, warm, encodes = [], [], 0
        for _ in range(reps):
            pipe.latent_cache = LatentCache()
            pipe.prompt_cache.clear()
            cold.append(time_prepare(pipe, layers, encode)[0])
            ms, encodes = time_prepare(pipe, after, encode)
            warm.append(ms)
        rows.append(
            dict(encode=encode, layers=len(layers), cold_ms=statistics.median(cold),
                 moved_ms=statistics.median(warm), encodes_after_move=encodes)
        )  # fmt: skip
    return rows


def move_table(model: str, device: str, dtype: torch.dtype, resolution: int) -> str:
    """The prepare-after-move table for scaling.py: tiny VAE, or the FLUX VAE for `full`."""
    from scaling import subject_layers

    vae = "full" if model == "full" else "tiny"
    pipe = prepare_pipeline(vae, device, dtype)
    rows = move_rows(pipe, subject_layers(4, "growing", resolution))
    return format_move_table(rows, f"{resolution}x{resolution}, {vae} VAE, tiny text encoders")


def format_move_table(rows: list[dict], what: str) -> str:
    lines = [
        f"**prepare (text + encodes + ids) cold vs. after moving 1 of 4 layers by 2 tokens ({what})**\n",
        "| --encode | cold ms | after move ms | cold / after | layers encoded after the move |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['encode']} | {row['cold_ms']:.1f} | {row['moved_ms']:.1f} | "
            f"{row['cold_ms'] / row['moved_ms']:.1f} | {row['encodes_after_move']} of {row['layers']} |"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--resolution", type=int, default=512, help="of the prepare canvas")
    parser.add_argument("--vae", choices=("tiny", "full"), default="tiny")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    print(inspect_table(args.layers, args.size), flush=True)
    from scaling import subject_layers

    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    pipe = prepare_pipeline(args.vae, args.device, dtype)
    rows = move_rows(pipe, subject_layers(4, "growing", args.resolution))
    print()
    print(format_move_table(rows, f"{args.resolution}x{args.resolution}, {args.vae} VAE"))


if __name__ == "__main__":
    main()
