"""Training on builtin:tiny: the loss falls, resume is exact, the LoRA renders, configs validate."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file
from train_data import REPO
from typer.testing import CliRunner

from conftest import tiny_transformer_output
from layercomposer.cli.main import app
from layercomposer.train.config import load_train_config
from layercomposer.train.sampler import sample_example
from layercomposer.train.trainer import Trainer, sample_sigmas

runner = CliRunner()
CONFIG = REPO / "configs" / "tiny.yaml"


def config_for(dataset, output, **sets):
    overrides = [f"data.path={dataset}", f"output_dir={output}", "validation_canvases=[]"]
    overrides += [f"{key.replace('__', '.')}={value}" for key, value in sets.items()]
    return load_train_config(CONFIG, overrides)


def fixed_batch_loss(trainer, seed=123, count=6) -> float:
    rng = np.random.default_rng(seed)
    sigmas = sample_sigmas(rng, count, trainer.config.train, trainer.shift)
    losses = []
    with torch.no_grad():
        for sigma in sigmas:
            sample = sample_example(trainer.index, rng, trainer.sampling)
            losses.append(
                float(trainer.example_loss(sample, float(sigma), int(rng.integers(2**62))))
            )
    return float(np.mean(losses))


def test_a_short_run_lowers_the_loss_on_a_fixed_batch(dataset, tmp_path):
    # The input and output projections too: attention alone barely moves a 1-block random model.
    targets = (
        "[to_q,to_k,to_v,to_out.0,add_q_proj,add_k_proj,add_v_proj,to_add_out,proj_out,x_embedder]"
    )
    config = config_for(
        dataset,
        tmp_path / "run",
        train__steps=12,
        optim__learning_rate="1.0e-2",
        lora__target_modules=targets,
        train__cache_latents="true",
        checkpoint_every=100,
    )
    trainer = Trainer(config)
    before = fixed_batch_loss(trainer)
    trainer.run()
    after = fixed_batch_loss(trainer)
    assert after < 0.9 * before, (before, after)
    with open(tmp_path / "run" / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(row["step"]) for row in rows] == list(range(1, 13))
    assert all(float(row["loss"]) > 0 for row in rows)


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(dataset, tmp_path):
    whole = Trainer(
        config_for(dataset, tmp_path / "whole", train__steps=4, checkpoint_every=2)
    ).run()
    first = Trainer(
        config_for(dataset, tmp_path / "split", train__steps=2, checkpoint_every=2)
    ).run()
    assert first.exists()
    resumed = Trainer(
        config_for(dataset, tmp_path / "split", train__steps=4, checkpoint_every=2), resume=True
    ).run()
    a, b = load_file(whole), load_file(resumed)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    state = json.loads(
        (tmp_path / "split" / "checkpoints" / "step-0000004" / "state.json").read_text()
    )
    assert state["step"] == 4
    with open(tmp_path / "split" / "metrics.csv") as handle:
        assert [int(row["step"]) for row in csv.DictReader(handle)] == [1, 2, 3, 4]


def test_trained_lora_changes_the_render_and_switches_auto_to_layered(dataset, tmp_path, two_discs):
    lora = Trainer(
        config_for(dataset, tmp_path / "run", train__steps=3, checkpoint_every=100)
    ).run()
    common = ["render", str(two_discs), "--model", "builtin:tiny", "--set", "steps=2", "--json"]
    plain = runner.invoke(app, [*common, "--mode", "layered", "-o", str(tmp_path / "plain")])
    tuned = runner.invoke(app, [*common, "--lora", str(lora), "-o", str(tmp_path / "tuned")])
    assert plain.exit_code == 0 and tuned.exit_code == 0, plain.output + tuned.output
    assert json.loads(tuned.stdout.splitlines()[0])["mode"] == "layered"  # auto, with our LoRA
    a = np.asarray(Image.open(tmp_path / "plain" / "scene" / "0.png"))
    b = np.asarray(Image.open(tmp_path / "tuned" / "scene" / "0.png"))
    assert (a != b).any()


def test_a_trained_lora_carries_how_it_was_trained_and_renders_with_its_fill(
    dataset, tmp_path, two_discs
):
    from layercomposer.train.timesteps import flux_shift

    lora = Trainer(
        config_for(dataset, tmp_path / "run", train__steps=2, checkpoint_every=100)
    ).run()
    info = runner.invoke(app, ["lora", "info", str(lora), "--json"])
    assert info.exit_code == 0, info.output
    lc = json.loads(info.stdout)["lc"]
    assert lc["fill"] == "black" and lc["shift"] == "auto"
    assert lc["shift_value"] == pytest.approx(flux_shift(16))  # 64 px: 4x4 tokens of 16 px
    assert (lc["rank"], lc["alpha"], lc["base_model"], lc["step"]) == (4, 4.0, "builtin:tiny", 2)
    assert lc["lc_version"] and lc["image_tokens"] == 16
    assert (lc["optimizer"], lc["base_quantization"]) == ("adamw", "none")
    table = runner.invoke(app, ["lora", "info", str(lora)])
    assert "lc.fill" in table.output and "black" in table.output

    common = ["render", str(two_discs), "--model", "builtin:tiny", "--set", "steps=2"]
    common += ["--lora", str(lora)]
    own = runner.invoke(app, [*common, "-o", str(tmp_path / "own")])
    assert own.exit_code == 0, own.output
    assert "fill black: the LoRA's" in own.output
    manifest = json.loads((tmp_path / "own" / "scene" / "0.json").read_text())
    assert manifest["fill"] == {"used": "black", "source": "lora", "lora": "black"}
    assert manifest["inputs"]["fill"] == "black"

    grey = runner.invoke(app, [*common, "--fill", "grey", "-o", str(tmp_path / "grey")])
    assert grey.exit_code == 0, grey.output
    assert "warning:" in grey.output and "contradicts the LoRA" in grey.output
    manifest = json.loads((tmp_path / "grey" / "scene" / "0.json").read_text())
    assert manifest["fill"] == {"used": "grey", "source": "option", "lora": "black"}
    a = np.asarray(Image.open(tmp_path / "own" / "scene" / "0.png"))
    b = np.asarray(Image.open(tmp_path / "grey" / "scene" / "0.png"))
    assert (a != b).any()  # the conditioning differs, so does the image


def test_the_configured_fill_and_shift_reach_the_conditioning_and_the_lora(dataset, tmp_path):
    from layercomposer.lora import LoraSpec
    from layercomposer.render import RenderSettings, resolve_fill

    config = config_for(
        dataset, tmp_path / "run", train__steps=1, data__fill="grey", train__shift="3.0",
        checkpoint_every=100,
    )  # fmt: skip
    trainer = Trainer(config)
    assert trainer.shift == 3.0
    sample = sample_example(trainer.index, np.random.default_rng(0), trainer.sampling)
    calls = []
    encode_layers = trainer.pipe.encode_layers
    trainer.pipe.encode_layers = lambda *a, **k: calls.append(k) or encode_layers(*a, **k)
    trainer.example_loss(sample, 0.5, 0)
    assert calls == [{"fill": "grey"}]
    lora = trainer.run()
    with safe_open(str(lora), "pt") as handle:
        metadata = handle.metadata()
    assert (metadata["lc.fill"], metadata["lc.shift"], metadata["lc.shift_value"]) == (
        "grey", "3.0", "3.0",
    )  # fmt: skip
    choice = resolve_fill(RenderSettings(model="builtin:tiny", loras=(LoraSpec(str(lora)),)))
    assert (choice.fill, choice.source) == ("grey", "lora")


def test_samples_are_rendered_at_the_sample_step(dataset, tmp_path, two_discs):
    sets = [f"validation_canvases=[{two_discs}]", "train.steps=2", "sample_every=2"]
    sets += ["train.sample_guidance=4.0"]  # not the canvas's own 2.5
    config = load_train_config(
        CONFIG, [f"data.path={dataset}", f"output_dir={tmp_path / 'run'}", *sets]
    )
    trainer = Trainer(config)
    trainer.run()
    sample = tmp_path / "run" / "samples" / "step-0000002" / "scene.png"
    assert sample.exists()
    # Rendered at train.sample_guidance (not the canvas's own guidance): the same pixels as a
    # layered render of the canvas with the trained LoRA at that guidance, and not at another.
    from layercomposer.canvas import load_canvas
    from layercomposer.layers import build_layers

    canvas = load_canvas(two_discs)
    assert canvas.spec.guidance != config.train.sample_guidance

    def render(guidance):
        output = trainer.pipe(
            prompt=canvas.spec.prompt, layers=build_layers(canvas), mode="layered",
            num_inference_steps=config.sample_steps, guidance_scale=guidance,
            generator=torch.Generator("cpu").manual_seed(canvas.spec.seed or 0), output_type="np",
            fill=config.data.fill,
        )  # fmt: skip
        return np.clip(np.rint(output.images[0] * 255), 0, 255).astype(np.uint8)

    saved = np.asarray(Image.open(sample))
    assert np.array_equal(saved, render(config.train.sample_guidance))
    assert not np.array_equal(saved, render(canvas.spec.guidance))


def test_config_errors_are_located(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(CONFIG.read_text().replace("  rank: 4", "  rnak: 4"))
    result = runner.invoke(app, ["train", str(bad)])
    assert result.exit_code == 2
    assert "[lora -> rnak]" in result.output and "did you mean 'rank'" in result.output
    result = runner.invoke(app, ["train", str(CONFIG), "--set", "train.steps=0"])
    assert result.exit_code == 2 and "--set train.steps=0" in result.output


def test_missing_dataset_is_a_clear_error(tmp_path):
    result = runner.invoke(
        app,
        [
            "train",
            str(CONFIG),
            "--set",
            f"data.path={tmp_path / 'none'}",
            "--set",
            f"output_dir={tmp_path}",
        ],
    )
    assert result.exit_code == 1 and "lc dataset build" in result.output


def test_saved_and_comfyui_exported_loras_reproduce_the_trained_model(dataset, tmp_path):
    from layercomposer.lora import load_lora
    from layercomposer.models import load_pipeline

    # The default targets, single blocks included: their fused `linear1` at the tiny model's
    # widths is what diffusers' own ComfyUI reader cannot split (lc's loader does).
    config = config_for(
        dataset, tmp_path / "run", train__steps=3, lora__alpha=8, checkpoint_every=100,
    )  # fmt: skip
    trainer = Trainer(config)
    lora = trainer.run()
    trained = tiny_transformer_output(trainer.pipe.transformer)

    comfy = tmp_path / "comfy.safetensors"
    result = runner.invoke(
        app, ["lora", "export", str(lora), "--format", "comfyui", "-o", str(comfy)]
    )
    assert result.exit_code == 0, result.output
    keys = load_file(comfy)
    assert any(key.startswith("diffusion_model.double_blocks.0.img_attn.qkv") for key in keys)
    assert any(key.startswith("diffusion_model.single_blocks.0.linear1") for key in keys)
    with safe_open(str(comfy), "pt") as handle, safe_open(str(lora), "pt") as source:
        recorded = {k: v for k, v in source.metadata().items() if k.startswith("lc.")}
        assert recorded["lc.fill"] == "black" and recorded["lc.alpha"] == "8.0"
        assert recorded.items() <= handle.metadata().items()  # the export carries them all

    for path in (lora, comfy):
        pipe, _ = load_pipeline("builtin:tiny")
        base = tiny_transformer_output(pipe.transformer)
        load_lora(pipe, path)
        loaded = tiny_transformer_output(pipe.transformer)
        assert (loaded - base).abs().max() > 1e-4
        torch.testing.assert_close(loaded, trained, rtol=1e-4, atol=1e-5, msg=str(path))


@pytest.mark.parametrize("name", ["tiny.yaml", "flux-kontext.yaml"])
def test_shipped_configs_validate(name):
    config = load_train_config(REPO / "configs" / name)
    assert config.train.steps > 0 and config.lora.rank >= 1
