"""Several LoRAs at once, and `--mode auto`: layered only for a LoRA lc trained for the layers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from conftest import disc_rgba
from layercomposer.cli.main import app
from layercomposer.errors import ModelError, UsageError
from layercomposer.files import sha256_file
from layercomposer.lora import LoraSpec, has_layercomposer_lora, load_loras, loaded_loras
from layercomposer.lora_metadata import METADATA_VERSION, encode_lc_metadata
from layercomposer.models import load_pipeline

TINY = ["--model", "builtin:tiny"]


def lc(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def write_lora(path, seed: int, trained_by_lc: bool, modules=("to_q", "to_k", "to_v")):
    """A random rank-4 peft LoRA of builtin:tiny's transformer, saved as diffusers saves one;
    with `trained_by_lc`, the file also carries the lc.* keys `lc train` writes."""
    from diffusers import FluxKontextPipeline
    from peft import LoraConfig, get_peft_model_state_dict

    from layercomposer.tiny import tiny_kontext_components

    transformer = tiny_kontext_components()["transformer"]
    torch.manual_seed(seed)
    config = LoraConfig(r=4, lora_alpha=4, target_modules=list(modules), init_lora_weights=False)
    transformer.add_adapter(config)
    folder = path.parent / f"{path.stem}-folder"
    FluxKontextPipeline.save_lora_weights(
        folder, transformer_lora_layers=get_peft_model_state_dict(transformer)
    )
    saved = folder / "pytorch_lora_weights.safetensors"
    with safe_open(str(saved), "pt") as handle:
        metadata = dict(handle.metadata() or {})
    if trained_by_lc:
        metadata |= encode_lc_metadata(
            {"metadata_version": METADATA_VERSION, "lc_version": "0.1.0", "fill": "black"}
        )
    save_file(load_file(saved), path, metadata=metadata)
    return path


@pytest.fixture(scope="module")
def loras(tmp_path_factory):
    root = tmp_path_factory.mktemp("loras")
    return {
        "plain": write_lora(root / "style.safetensors", 1, trained_by_lc=False),
        "lc": write_lora(root / "layercomposer.safetensors", 2, trained_by_lc=True),
    }


def canvas(make_canvas):
    spec = {
        "prompt": "two discs",
        "size": [128, 128],
        "steps": 2,
        "layers": [
            {"name": "a", "image": "a.png", "position": [48, 64], "lock": True},
            {"name": "b", "image": "b.png", "position": [88, 64]},
        ],
    }
    return make_canvas(spec, {"a.png": disc_rgba(64), "b.png": disc_rgba(48, (20, 20, 200))})


def rendered(folder):
    manifest = json.loads((folder / "scene" / "0.json").read_text())
    return manifest, np.asarray(Image.open(folder / "scene" / "0.png"), np.int16)


def test_lora_spec_reads_file_and_scale():
    assert LoraSpec.parse("style.safetensors:0.6") == LoraSpec("style.safetensors", 0.6)
    assert LoraSpec.parse("style.safetensors", 0.8) == LoraSpec("style.safetensors", 0.8)
    assert LoraSpec.parse(r"C:\loras\style.safetensors").path == r"C:\loras\style.safetensors"
    assert LoraSpec.parse("a:b/style.safetensors").path == "a:b/style.safetensors"
    assert LoraSpec.parse("x.safetensors:-1").scale == -1.0
    assert LoraSpec.parse(LoraSpec("x.safetensors", 0.25).to_text()) == LoraSpec(
        "x.safetensors", 0.25
    )
    with pytest.raises(UsageError, match="finite"):
        LoraSpec.parse("x.safetensors:nan")


def test_auto_is_layered_only_for_a_lora_lc_trained_for_the_layers(tmp_path, make_canvas, loras):
    scene = canvas(make_canvas)
    plain = lc("render", scene, *TINY, "--lora", loras["plain"], "-o", tmp_path / "plain")
    assert plain.exit_code == 0, plain.output
    manifest, _ = rendered(tmp_path / "plain")
    assert manifest["mode_used"] == "collage"
    assert "style.safetensors has no lc.* metadata" in manifest["mode_reason"]
    assert manifest["lora"]["layered"] is False

    ours = lc("render", scene, *TINY, "--lora", loras["lc"], "-o", tmp_path / "lc")
    assert ours.exit_code == 0, ours.output
    manifest, _ = rendered(tmp_path / "lc")
    assert manifest["mode_used"] == "layered" and manifest["lora"]["layered"] is True
    assert "layercomposer.safetensors was trained by lc" in manifest["mode_reason"]
    assert "layercomposer.safetensors was trained by lc" in ours.output


def test_two_stacked_loras_render_and_both_are_in_the_manifest(tmp_path, make_canvas, loras):
    scene = canvas(make_canvas)
    both_args = ["--lora", f"{loras['plain']}:0.5", "--lora", loras["lc"], "--mode", "layered"]
    both = lc("render", scene, *TINY, *both_args, "-o", tmp_path / "both")
    assert both.exit_code == 0, both.output
    manifest, both_pixels = rendered(tmp_path / "both")
    recorded = manifest["inputs"]["lora"]
    assert [(r["path"], r["sha256"], r["scale"]) for r in recorded] == [
        (str(loras["plain"]), sha256_file(loras["plain"]), 0.5),
        (str(loras["lc"]), sha256_file(loras["lc"]), 1.0),
    ]
    assert [(m["sha256"], m["scale"], m["adapter_name"]) for m in manifest["lora"]] == [
        (sha256_file(loras["plain"]), 0.5, "layercomposer"),
        (sha256_file(loras["lc"]), 1.0, "layercomposer_2"),
    ]
    # Each LoRA acts: the stack differs from either one alone.
    for name, args in (("lc-only", ["--lora", loras["lc"]]), ("plain-only", both_args[:2])):
        alone = lc("render", scene, *TINY, *args, "--mode", "layered", "-o", tmp_path / name)
        assert alone.exit_code == 0, alone.output
        assert np.abs(rendered(tmp_path / name)[1] - both_pixels).max() > 0, name
    again = lc(
        "render", "--from-manifest", tmp_path / "both" / "scene" / "0.json", "-o", tmp_path / "re"
    )
    assert again.exit_code == 0 and "identical" in again.output, again.output


def test_key_problems_are_reported_for_each_file(tmp_path, make_canvas, loras):
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    wrong = tmp_path / "wrong.safetensors"
    tensors = load_file(loras["plain"])
    save_file({k: torch.zeros(v.shape[0] + 3, *v.shape[1:]) for k, v in tensors.items()}, wrong)
    result = lc(
        "render", canvas(make_canvas), *TINY, "--lora", loras["lc"], "--lora", garbage,
        "--lora", wrong, "-o", tmp_path / "out",
    )  # fmt: skip
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "2 of 3 LoRAs cannot be loaded" in result.output
    assert "garbage.safetensors: not a readable .safetensors file" in result.output
    assert "wrong.safetensors:" in result.output and "do not match" in result.output

    pipe, _ = load_pipeline("builtin:tiny")
    with pytest.raises(ModelError, match="2 of 3 LoRAs"):
        load_loras(pipe, [loras["lc"], str(garbage), LoraSpec(str(wrong), 0.5)])
    assert loaded_loras(pipe) == [] and not pipe.get_list_adapters().get("transformer")


def test_the_python_api_stacks_loras_and_auto_follows_them(loras, two_discs):
    from layercomposer.canvas import load_canvas
    from layercomposer.layers import build_layers
    from layercomposer.lora import unload_lora

    pipe, _ = load_pipeline("builtin:tiny")
    layers = build_layers(load_canvas(two_discs))

    def mode():
        return pipe(prompt="two discs", layers=layers, mode="auto", num_inference_steps=1).mode

    infos = load_loras(pipe, [LoraSpec(str(loras["plain"]), 0.5), str(loras["lc"])])
    assert [info.layered for info in infos] == [False, True] and has_layercomposer_lora(pipe)
    assert mode() == "layered"
    unload_lora(pipe, infos[1].adapter_name)
    assert [info.path for info in loaded_loras(pipe)] == [str(loras["plain"])]
    assert not has_layercomposer_lora(pipe) and mode() == "collage"


def test_lc_metadata_decides_layered_by_its_conditioning_key():
    from layercomposer.lora_metadata import trained_for_layers

    lc = encode_lc_metadata({"metadata_version": METADATA_VERSION, "lc_version": "0.1.0"})
    assert trained_for_layers(lc)  # every lc LoRA from before the key was layered
    assert trained_for_layers({**lc, "lc.conditioning": "layered"})
    assert not trained_for_layers({**lc, "lc.conditioning": "collage"})
    assert not trained_for_layers({"ss_network_dim": "16"})  # kohya's own metadata
