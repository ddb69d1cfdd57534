"""Training on an int8-quantized base with 8-bit AdamW (the one-GPU recipe), on builtin:tiny:
the LoRA's gradients are those of the unquantized base, and its LoRA renders without it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from train_data import REPO
from typer.testing import CliRunner

from layercomposer.cli.main import app
from layercomposer.train.config import load_train_config
from layercomposer.train.sampler import sample_example
from layercomposer.train.trainer import Trainer

runner = CliRunner()
CONFIG = REPO / "configs" / "tiny.yaml"


def trainer_for(dataset, output, *sets: str, resume: bool = False) -> Trainer:
    overrides = [f"data.path={dataset}", f"output_dir={output}", "validation_canvases=[]"]
    return Trainer(load_train_config(CONFIG, [*overrides, *sets]), resume=resume)


def lora_gradient(trainer: Trainer, examples_seed: int = 5) -> torch.Tensor:
    """The LoRA's gradient, all matrices in one vector, on three fixed examples."""
    # peft starts B at zero, which makes A's gradient zero: give both runs the same random LoRA.
    generator = torch.Generator().manual_seed(7)
    for parameter in trainer.trainable:
        parameter.data = 0.05 * torch.randn(parameter.shape, generator=generator)
    rng = np.random.default_rng(examples_seed)
    trainer.optimizer.zero_grad(set_to_none=True)
    for _ in range(3):
        sample = sample_example(trainer.index, rng, trainer.sampling)
        sigma, noise_seed = float(rng.uniform(0.2, 0.9)), int(rng.integers(2**62))
        trainer.example_loss(sample, sigma, noise_seed).backward()
    return torch.cat([parameter.grad.flatten() for parameter in trainer.trainable])


def test_lora_gradients_on_an_int8_base_match_the_unquantized_ones(dataset, tmp_path):
    exact_trainer = trainer_for(dataset, tmp_path / "a")
    exact = lora_gradient(exact_trainer)
    quantized_trainer = trainer_for(dataset, tmp_path / "b", "model_quantization=int8")
    assert "Int8" in type(quantized_trainer.pipe.transformer.proj_out.weight).__name__
    quantized = lora_gradient(quantized_trainer)
    # Tolerance: cosine similarity >= 0.999 and relative error of the whole vector <= 5%
    # (measured on builtin:tiny: cosine 0.99996, relative error 0.011).
    cosine = torch.nn.functional.cosine_similarity(exact, quantized, dim=0)
    relative = (quantized - exact).norm() / exact.norm()
    print(f"int8 vs exact: cosine {cosine:.6f}, relative error {relative:.4f}")
    assert cosine >= 0.999 and relative <= 0.05
    # The comparison can tell gradients apart: those of other examples are far off.
    other_examples = lora_gradient(exact_trainer, examples_seed=6)
    print(
        f"other examples: cosine {torch.nn.functional.cosine_similarity(exact, other_examples, dim=0):.4f}"
    )
    assert torch.nn.functional.cosine_similarity(exact, other_examples, dim=0) < 0.9


def test_a_lora_trained_on_int8_with_adamw8bit_renders_on_the_unquantized_model(
    dataset, tmp_path, two_discs
):
    sets = ["model_quantization=int8", "optim.name=adamw8bit", "train.steps=3"]
    lora = trainer_for(dataset, tmp_path / "q", *sets, "checkpoint_every=100").run()
    reference = trainer_for(dataset, tmp_path / "r", "train.steps=1", "checkpoint_every=100").run()
    assert load_file(lora).keys() == load_file(reference).keys()  # plain diffusers LoRA keys
    common = ["render", str(two_discs), "--model", "builtin:tiny", "--set", "steps=2", "--json"]
    plain = runner.invoke(app, [*common, "--mode", "layered", "-o", str(tmp_path / "plain")])
    tuned = runner.invoke(app, [*common, "--lora", str(lora), "-o", str(tmp_path / "tuned")])
    assert plain.exit_code == 0 and tuned.exit_code == 0, plain.output + tuned.output
    assert json.loads(tuned.stdout.splitlines()[0])["mode"] == "layered"
    a = np.asarray(Image.open(tmp_path / "plain" / "scene" / "0.png"))
    b = np.asarray(Image.open(tmp_path / "tuned" / "scene" / "0.png"))
    assert (a != b).any()


def test_adamw8bit_keeps_8bit_moments_and_resumes_exactly(dataset, tmp_path):
    # Rank 128 on the tiny model's 32-wide projections: 4096-value matrices, the smallest
    # torchao quantizes (smaller ones keep fp32 moments).
    sets = ["optim.name=adamw8bit", "lora.rank=128", "checkpoint_every=2"]
    whole = trainer_for(dataset, tmp_path / "whole", *sets, "train.steps=4")
    whole_lora = whole.run()
    moments = [state["exp_avg"] for state in whole.optimizer.state_dict()["state"].values()]
    assert moments and all(m.codes.dtype in (torch.int8, torch.uint8) for m in moments)
    trainer_for(dataset, tmp_path / "split", *sets, "train.steps=2").run()
    resumed = trainer_for(dataset, tmp_path / "split", *sets, "train.steps=4", resume=True).run()
    a, b = load_file(whole_lora), load_file(resumed)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_fp8_is_refused_for_training_with_the_reason(tmp_path):
    result = runner.invoke(app, ["train", str(CONFIG), "--set", "model_quantization=fp8"])
    assert result.exit_code == 2
    assert "model_quantization" in result.output and "no backward" in result.output
    assert "Traceback" not in result.output


def test_fp8_matmuls_have_no_backward_pass():
    # Why fp8 is refused: if torch ever gives torch._scaled_mm a derivative, revisit that rule.
    a = torch.randn(16, 32, requires_grad=True).to(torch.float8_e4m3fn)
    b = torch.randn(32, 16).to(torch.float8_e4m3fn).t().contiguous().t()
    one = torch.tensor(1.0)
    out = torch._scaled_mm(a, b, scale_a=one, scale_b=one, out_dtype=torch.float32)
    with pytest.raises(RuntimeError, match="not implemented"):
        out.sum().backward()


def test_an_offloaded_t5_gives_the_same_loss_and_samples_still_render(dataset, tmp_path, two_discs):
    plain = trainer_for(dataset, tmp_path / "a")
    offloaded = trainer_for(
        dataset, tmp_path / "b", "train.t5_encoder=offload", f"validation_canvases=[{two_discs}]"
    )
    # The weights live in the offload hook's CPU copy; the modules hold only meta placeholders.
    assert {p.device.type for p in offloaded.pipe.text_encoder_2.parameters()} == {"meta"}
    losses = []
    for trainer in (plain, offloaded):
        rng = np.random.default_rng(3)
        sample = sample_example(trainer.index, rng, trainer.sampling)
        with torch.no_grad():
            losses.append(float(trainer.example_loss(sample, 0.5, 11)))
    assert losses[0] == losses[1]
    assert offloaded.render_samples(1)[0].exists()  # the pipeline encodes through the hooks


def test_int8_under_fsdp_is_refused_before_loading(dataset, tmp_path, monkeypatch):
    from accelerate import Accelerator

    import layercomposer.train.trainer as trainer_module
    from layercomposer.errors import UsageError

    # A two-process FSDP launch, as `accelerate launch --config_file configs/accelerate/fsdp.yaml`.
    monkeypatch.setattr(trainer_module, "fsdp_requested", lambda: True)
    monkeypatch.setattr(Accelerator, "num_processes", property(lambda self: 2))
    with pytest.raises(UsageError, match="cannot be sharded"):
        trainer_for(dataset, tmp_path / "run", "model_quantization=int8")
