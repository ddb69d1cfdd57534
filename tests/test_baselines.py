"""lc bench's 4-person baselines: overlay-kontext (Kontext + an Overlay LoRA after "Place it. ")
and qwen-image-edit (diffusers' QwenImageEditPipeline on the collage), with tiny random-weight
models: their calls, their files, their errors, and the whole 4P benchmark with all methods."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import disc_rgba

torch = pytest.importorskip("torch", reason="rendering needs lc's [render] extra")
diffusers = pytest.importorskip("diffusers")
pytest.importorskip("peft")

from layercomposer.baselines import (  # noqa: E402
    OVERLAY_LORA,
    OVERLAY_PREFIX,
    OVERLAY_REPO,
    QwenEditRenderer,
    QwenEditSettings,
    overlay_settings,
)
from layercomposer.canvas import load_canvas  # noqa: E402
from layercomposer.cli._errors import classify  # noqa: E402
from layercomposer.cli.main import app  # noqa: E402
from layercomposer.errors import ModelError  # noqa: E402
from layercomposer.eval.outputs import find_outputs  # noqa: E402
from layercomposer.files import sha256_file  # noqa: E402
from layercomposer.layers import build_layers, flatten  # noqa: E402
from layercomposer.lora import LoraSpec  # noqa: E402
from layercomposer.models import fetch_lora, load_pipeline, load_qwen_edit_pipeline  # noqa: E402
from layercomposer.pipeline import LayerComposerPipeline  # noqa: E402
from layercomposer.render import Renderer, RenderSettings  # noqa: E402
from layercomposer.tiny import tiny_kontext_components  # noqa: E402
from layercomposer.tiny_qwen import tiny_qwen_edit_components  # noqa: E402

runner = CliRunner()
TINY = {"model": "builtin:tiny", "device": "cpu"}


def lc(*args):
    return runner.invoke(app, [str(a) for a in args])


def empty_hub_cache(monkeypatch, folder: Path) -> None:
    """Point huggingface_hub, offline, at an empty cache (its constants are read at import)."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(folder))


@pytest.fixture
def wide_canvas(make_canvas):
    """A 160x96 canvas (not square, to check the output size) with two discs."""
    spec = {
        "prompt": "two discs on a table",
        "size": [160, 96],
        "steps": 2,
        "layers": [
            {"name": "red", "image": "red.png", "position": [56, 48]},
            {"name": "blue", "image": "blue.png", "position": [104, 48], "lock": True},
        ],
    }
    images = {"red.png": disc_rgba(64, (220, 30, 30)), "blue.png": disc_rgba(64, (30, 30, 220))}
    return make_canvas(spec, images)


@pytest.fixture(scope="module")
def tiny_lora(tmp_path_factory):
    """A non-zero rank-4 LoRA of the builtin:tiny Kontext transformer, as a diffusers file."""
    from peft import LoraConfig, get_peft_model_state_dict

    transformer = tiny_kontext_components(seed=0)["transformer"]
    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=["to_q", "to_k", "to_v"], init_lora_weights=False
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        transformer.add_adapter(config, adapter_name="overlay")
    layers = get_peft_model_state_dict(transformer, adapter_name="overlay")
    folder = tmp_path_factory.mktemp("overlay")
    diffusers.FluxKontextPipeline.save_lora_weights(folder, transformer_lora_layers=layers)
    return folder / "pytorch_lora_weights.safetensors"


# --- qwen-image-edit ----------------------------------------------------------------------------


def test_qwen_edit_output_is_diffusers_own_pipeline_on_the_collage(wide_canvas, tmp_path):
    canvas = load_canvas(wide_canvas)
    renderer = QwenEditRenderer(QwenEditSettings(**TINY))
    result = renderer.render(canvas, 7, tmp_path / "out")
    assert result.status == "rendered"
    ours = np.asarray(Image.open(result.image))

    # The reference: diffusers' pipeline, called directly with the collage, prompt and seed.
    pipe = diffusers.QwenImageEditPipeline(**tiny_qwen_edit_components())
    pipe.set_progress_bar_config(disable=True)
    collage = flatten(build_layers(canvas))
    reference = pipe(
        image=Image.fromarray(collage), prompt="two discs on a table", negative_prompt=" ",
        true_cfg_scale=4.0, height=96, width=160, num_inference_steps=2,
        generator=torch.Generator().manual_seed(7), output_type="np",
    ).images[0]  # fmt: skip
    assert ours.shape == (96, 160, 3)  # the canvas's size, not the pipeline's 1 MP default
    assert np.array_equal(ours, np.clip(np.rint(reference * 255), 0, 255).astype(np.uint8))

    manifest = json.loads(Path(result.manifest).read_text())
    assert manifest["inputs"]["pipeline"] == "QwenImageEditPipeline"
    assert manifest["inputs"]["true_cfg_scale"] == 4.0 and manifest["inputs"]["seed"] == 7
    assert manifest["model"]["random_weights"] and manifest["mode_used"] == "collage"
    assert manifest["output"]["sha256"] == sha256_file(result.image)

    # lc eval reads it as it reads lc render's outputs.
    [output] = find_outputs([f"qwen={tmp_path / 'out'}"])
    assert output.method == "qwen" and output.prompt == "two discs on a table"
    assert np.array_equal(output.read_image(), ours)
    assert [layer.name for layer in output.canvas().spec.layers] == ["red", "blue"]
    again = lc("eval", f"qwen={tmp_path / 'out'}", "--metrics", "fidelity", "-o", tmp_path / "ev")
    assert again.exit_code == 0, again.output
    with open(tmp_path / "ev" / "locked.csv", newline="") as handle:
        assert [row["layer"] for row in csv.DictReader(handle)] == ["blue"]

    # A second run with the same inputs keeps the image; another seed makes a new one.
    assert renderer.render(canvas, 7, tmp_path / "out", resume=True).status == "skipped"
    # lc render --from-manifest cannot remake another pipeline's output: a message, exit 2.
    refused = lc("render", "--from-manifest", result.manifest, "-o", tmp_path / "again")
    assert refused.exit_code == 2 and "QwenImageEditPipeline" in refused.output


def test_missing_qwen_weights_are_a_model_error_like_lc_renders(tmp_path, monkeypatch):
    empty_hub_cache(monkeypatch, tmp_path / "empty-cache")
    with pytest.raises(ModelError) as qwen:
        load_qwen_edit_pipeline("Qwen/Qwen-Image-Edit", device="cpu")
    with pytest.raises(ModelError) as flux:
        load_pipeline("black-forest-labs/FLUX.1-Kontext-dev", device="cpu")
    assert qwen.value.message == (
        "cannot load Qwen/Qwen-Image-Edit: its weights are not in the Hugging Face cache "
        "(HF_HUB_OFFLINE is set)"
    )
    assert flux.value.message.replace("black-forest-labs/FLUX.1-Kontext-dev", "X") == (
        qwen.value.message.replace("Qwen/Qwen-Image-Edit", "X")
    )  # the same message as lc render's
    assert "hf download Qwen/Qwen-Image-Edit" in qwen.value.hint
    assert "--qwen-model" in qwen.value.hint and "gated" not in qwen.value.hint
    assert classify(qwen.value)[0] == 1

    with pytest.raises(ModelError) as folder:
        load_qwen_edit_pipeline(str(tmp_path / "no-such-model"), device="cpu")
    assert "does not exist" in folder.value.message and "Qwen-Image-Edit" in folder.value.hint

    # Weights that are there, but transformers' Qwen2-VL processor cannot load without
    # torchvision (as here): a message that names it, exit 1.
    local = tmp_path / "qwen"
    local.mkdir()
    (local / "model_index.json").write_text("{}")

    def needs_torchvision(*args, **kwargs):
        raise ImportError("Qwen2VLVideoProcessor requires the Torchvision library")

    monkeypatch.setattr(diffusers.QwenImageEditPipeline, "from_pretrained", needs_torchvision)
    with pytest.raises(ModelError) as processor:
        load_qwen_edit_pipeline(str(local), device="cpu")
    assert "Torchvision" in processor.value.message and "torchvision" in processor.value.hint
    assert classify(processor.value)[0] == 1


# --- overlay-kontext ----------------------------------------------------------------------------


def test_overlay_kontext_puts_place_it_before_the_prompt_and_loads_the_lora(
    wide_canvas, tiny_lora, tmp_path, monkeypatch
):
    prompts = []
    original = LayerComposerPipeline.__call__

    def spy(self, *args, **kwargs):
        prompts.append((kwargs.get("prompt"), kwargs.get("mode")))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(LayerComposerPipeline, "__call__", spy)
    canvas = load_canvas(wide_canvas)
    # --lora-scale is the LayerComposer LoRA's; the Overlay LoRA is applied at 1.
    base = RenderSettings(**TINY, loras=(LoraSpec(str(tiny_lora), 0.5),))
    settings = overlay_settings(base, str(tiny_lora))
    overlay = Renderer(settings)
    result = overlay.render(canvas, 0, tmp_path / "overlay")
    stock = Renderer(RenderSettings(**TINY, mode="collage")).render(canvas, 0, tmp_path / "stock")

    assert prompts == [
        ("Place it. two discs on a table", "collage"),
        ("two discs on a table", "collage"),
    ]
    assert OVERLAY_PREFIX == "Place it. "
    assert "layercomposer" in {
        n for names in overlay.pipe.get_list_adapters().values() for n in names
    }
    manifest = json.loads(Path(result.manifest).read_text())
    assert manifest["inputs"]["prompt_prefix"] == "Place it. "
    assert manifest["lora"]["sha256"] == sha256_file(tiny_lora)
    assert manifest["lora"]["scale"] == 1.0
    assert manifest["mode_used"] == "collage"
    ours, theirs = (np.asarray(Image.open(r.image), np.int16) for r in (result, stock))
    assert np.abs(ours - theirs).max() > 0  # the LoRA and the prefix change the image
    # lc eval scores the prompt as the canvas gives it, without the trigger phrase.
    assert find_outputs([str(tmp_path / "overlay")])[0].prompt == "two discs on a table"
    # Reproducible from its manifest: the prefix and the LoRA are read back.
    again = lc("render", "--from-manifest", result.manifest, "-o", tmp_path / "again")
    assert again.exit_code == 0, again.output


def fake_hub_cache(cache, repo: str, files: dict[str, bytes]) -> None:
    """Lay out `files` as the Hugging Face cache keeps a downloaded repo (refs/main -> a commit)."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    commit = "0" * 40
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name, data in files.items():
        (snapshot / name).write_bytes(data)


def test_overlay_lora_by_hub_id_comes_from_the_hf_cache(tiny_lora, tmp_path, monkeypatch):
    empty_hub_cache(monkeypatch, tmp_path / "cache")
    with pytest.raises(ModelError) as missing:
        fetch_lora(OVERLAY_LORA, "--overlay-lora")
    assert missing.value.message == (
        f"{OVERLAY_LORA}: no such LoRA file, and not in the Hugging Face cache as a hub LoRA "
        "(HF_HUB_OFFLINE is set)"
    )
    assert f"hf download {OVERLAY_REPO}" in missing.value.hint

    # The published repo holds two .safetensors files: the default names one of them.
    converted = OVERLAY_LORA.removeprefix(OVERLAY_REPO + "/")
    assert converted.endswith("_comfy_converted.safetensors")
    other = converted.replace("_converted", "")
    fake_hub_cache(
        tmp_path / "cache", OVERLAY_REPO, {converted: tiny_lora.read_bytes(), other: b"not used"}
    )
    settings = overlay_settings(RenderSettings(**TINY), OVERLAY_LORA)
    (lora,) = settings.loras
    assert lora.path.endswith(converted) and os.path.isfile(lora.path)
    assert (settings.mode, settings.prompt_prefix) == ("collage", "Place it. ")
    with pytest.raises(ModelError) as two:
        fetch_lora(OVERLAY_REPO, "--overlay-lora")
    assert "holds 2 .safetensors files" in two.value.message and converted in two.value.message
    assert f"--overlay-lora {OVERLAY_REPO}/FILE" in two.value.hint
    # Paths stay paths, whether or not they exist (load_lora reports a missing one).
    assert fetch_lora(str(tiny_lora)) == str(tiny_lora)
    assert fetch_lora("loras/missing.safetensors") == "loras/missing.safetensors"


# --- the whole 4P benchmark ---------------------------------------------------------------------

skimage_data = pytest.importorskip("skimage.data", reason="scikit-image is in lc's [dev] extra")
cbook = pytest.importorskip("matplotlib.cbook", reason="matplotlib is in lc's [dev] extra")
pytest.importorskip("mediapipe", reason="mediapipe is in lc's [autolayout] extra")
pytest.importorskip("dlib", reason="dlib-bin is in lc's [autolayout] extra")

ALL_METHODS = ("layered", "collage", "overlay-kontext", "qwen-image-edit")


@pytest.fixture
def four_ids(tmp_path):
    """Four identity photos (two people, each also mirrored) and a one-prompt list."""
    astronaut = Image.fromarray(skimage_data.astronaut())
    hopper = Image.open(cbook.get_sample_data("grace_hopper.jpg")).convert("RGB")
    ids = tmp_path / "ids"
    ids.mkdir()
    for name, photo in (("a", astronaut), ("b", hopper)):
        photo.save(ids / f"{name}.png")
        photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(ids / f"{name}_mirrored.png")
    (tmp_path / "prompts.txt").write_text("four astronauts at a launch pad\n")
    return tmp_path


def test_bench_4p_runs_every_method_with_tiny_models(four_ids, tiny_lora, monkeypatch):
    out = four_ids / "bench"
    result = lc(
        "bench", "--suite", "4p", "--identities", four_ids / "ids", "--prompts",
        four_ids / "prompts.txt", "--prior-model", "builtin:tiny", "--model", "builtin:tiny",
        "--methods", ",".join(ALL_METHODS), "--qwen-model", "builtin:tiny",
        "--overlay-lora", tiny_lora, "--size", "128x128", "--steps", "2", "--fallback", "grid",
        "--prior-seeds", "1", "--device", "cpu", "--identity-backend", "dlib", "--metrics",
        "identity,fidelity", "--no-figure", "-o", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    for method in ALL_METHODS:
        [manifest] = (out / "renders" / method).rglob("*.json")
        recorded = json.loads(manifest.read_text())
        assert recorded["output"]["size"] == [128, 128], method
        assert Image.open(manifest.with_suffix(".png")).size == (128, 128)
    with open(out / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(r["method"] for r in rows) == sorted(ALL_METHODS)
    assert all(r["subjects"] == "4" and r["error"] == "" for r in rows)
    # results.md: the paper's five 4P rows, and a row for each of the four methods we ran:
    # on random weights, labelled so and after the paper's rows, never beside them.
    table = (out / "results.md").read_text().splitlines()
    for name in ("FLUX Kontext", "Overlay Kontext", "Qwen-Image-Edit", "Nano-Banana"):
        assert any(line.startswith(f"| {name} | paper") for line in table), name
    assert any(line.startswith("| LayerComposer | paper") for line in table)
    for method in ALL_METHODS:
        row = f"| {method} | run here, not comparable: random weights (builtin:tiny) | 1 | 0 |"
        assert any(line.startswith(row) for line in table), method
    # `lc eval` on the renders with no LABEL=PATH groups each under the method its manifest names.
    again = lc(
        "eval", out / "renders", "--metrics", "fidelity", "--no-figure", "-o", four_ids / "again"
    )
    assert again.exit_code == 0, again.output
    with open(four_ids / "again" / "results.csv", newline="") as handle:
        assert sorted(r["method"] for r in csv.DictReader(handle)) == sorted(ALL_METHODS)

    # Without the Qwen weights the run stops with lc render's message and exit code 1.
    empty_hub_cache(monkeypatch, four_ids / "empty-cache")
    missing = lc(
        "bench", "--suite", "4p", "--identities", four_ids / "ids", "--prompts",
        four_ids / "prompts.txt", "--prior-model", "builtin:tiny", "--model", "builtin:tiny",
        "--methods", "qwen-image-edit", "--size", "128x128", "--steps", "2", "--fallback",
        "grid", "--prior-seeds", "1", "--device", "cpu", "--metrics", "fidelity", "--no-figure",
        "-o", out,
    )  # fmt: skip
    assert missing.exit_code == 1
    assert "cannot load Qwen/Qwen-Image-Edit: its weights are not in the Hugging Face" in (
        " ".join(missing.output.split())
    )
