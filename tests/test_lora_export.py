"""`lc lora export --format comfyui`: the file renders like the original and keeps its rank.

Two references that are not lc's loader: ComfyUI's own LoRA formula (a layer's patch is
alpha / lora_down rows * lora_up @ lora_down, `comfy/weight_adapter/lora.py`) applied to the
exported tensors, and diffusers' kohya converter at FLUX.1's real widths, where it can read them.
"""

import json
import os
import re

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("peft")

from peft import LoraConfig, get_peft_model_state_dict  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from conftest import tiny_transformer_output  # noqa: E402
from layercomposer.cli.main import app  # noqa: E402
from layercomposer.lora import load_lora  # noqa: E402
from layercomposer.lora_metadata import encode_lc_metadata  # noqa: E402
from layercomposer.models import load_pipeline  # noqa: E402
from layercomposer.tiny import tiny_kontext_components  # noqa: E402

runner = CliRunner()
RANK, ALPHA = 4, 6.0  # scale 1.5: not a power of two, so a scale folded into weights would show
# lc train's default (single blocks: q, k, v but not the MLP input, so linear1 has zero rows)
ATTENTION = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj"]
ATTENTION += ["to_add_out"]
# every layer the export maps: double-block MLPs, single blocks' MLP input and proj_out too
EVERYTHING = ATTENTION + ["ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj"]
EVERYTHING += ["ff_context.net.2", "proj_mlp", "single_transformer_blocks.0.proj_out"]
# ComfyUI's FLUX modules (comfy/ldm/flux/layers.py), as model_lora_keys_unet maps their weights
COMFYUI_KEY = re.compile(
    r"^diffusion_model\.(double_blocks\.\d+\.(img|txt)_(attn\.qkv|attn\.proj|mlp\.0|mlp\.2)"
    r"|single_blocks\.\d+\.linear[12])\.(lora_down\.weight|lora_up\.weight|alpha)$"
)
# diffusers modules in ComfyUI's fused layers, in row order (comfy/utils.py flux_to_diffusers)
FUSED = {
    "double_blocks.0.img_attn.qkv": [f"transformer_blocks.0.attn.to_{m}" for m in "qkv"],
    "double_blocks.0.txt_attn.qkv": [f"transformer_blocks.0.attn.add_{m}_proj" for m in "qkv"],
    "single_blocks.0.linear1": [f"single_transformer_blocks.0.attn.to_{m}" for m in "qkv"]
    + ["single_transformer_blocks.0.proj_mlp"],
}
QKV = {"to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj"}


def peft_lora(targets: list[str]) -> dict[str, torch.Tensor]:
    """A random non-zero rank-4 LoRA on `targets` of the tiny transformer, diffusers names."""
    transformer = tiny_kontext_components(seed=0)["transformer"]
    config = LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=targets, init_lora_weights=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        transformer.add_adapter(config, adapter_name="made")
        sd = get_peft_model_state_dict(transformer, adapter_name="made")
    return {f"transformer.{k}": v.detach().clone().contiguous() for k, v in sd.items()}


def write_trained(path, sd: dict, with_lc: bool):
    """`sd` as `lc train` writes a LoRA: peft's config under lora_adapter_metadata, lc.* keys."""
    targets = sorted({k.removeprefix("transformer.").rsplit(".lora_", 1)[0] for k in sd})
    peft_config = LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=targets).to_dict()
    config = {
        f"transformer.{k}": sorted(v) if isinstance(v, set) else v for k, v in peft_config.items()
    }
    metadata = {"format": "pt", "lora_adapter_metadata": json.dumps(config, default=str)}
    if with_lc:
        metadata |= encode_lc_metadata({"rank": RANK, "alpha": ALPHA, "fill": "black"})
    save_file(sd, str(path), metadata=metadata)
    return path


def deltas(sd: dict, probe=None, alphas: bool = False) -> dict[str, torch.Tensor]:
    """Each module's weight change scale * B @ A (times `probe`), by module name.

    The scale is the file's ALPHA / RANK, or with `alphas` each module's own `.alpha` / rank.
    """
    names = {re.sub(r"\.(lora_A\.weight|lora_B\.weight|alpha)$", "", k) for k in sd}
    out = {}
    for name in names:
        a, b = sd[f"{name}.lora_A.weight"], sd[f"{name}.lora_B.weight"]
        scale = sd[f"{name}.alpha"].item() / a.shape[0] if alphas else ALPHA / RANK
        out[name.removeprefix("transformer.")] = scale * (
            b @ a if probe is None else b @ (a @ probe)
        )
    return out


def render(canvas, out, lora=None) -> np.ndarray:
    args = ["render", str(canvas), "--model", "builtin:tiny", "--set", "steps=2", "-o", str(out)]
    args += ["--lora", str(lora)] if lora else ["--mode", "layered"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    (png,) = out.glob("*/*.png")
    return np.asarray(Image.open(png)).astype(int)


@pytest.mark.parametrize(("targets", "with_lc"), [(ATTENTION, True), (EVERYTHING, False)])
def test_export_renders_like_the_original(tmp_path, two_discs, targets, with_lc):
    sd = peft_lora(targets)
    original = write_trained(tmp_path / "trained.safetensors", sd, with_lc)
    exported = tmp_path / "comfy.safetensors"
    result = runner.invoke(app, ["lora", "export", str(original), "-o", str(exported)])
    assert result.exit_code == 0, result.output

    # The keys are ComfyUI's FLUX layer names, and ComfyUI's formula gives each diffusers
    # module's own change in its rows of the fused layer (zero in the rows of the others).
    comfy = load_file(exported)
    assert comfy and all(COMFYUI_KEY.match(key) for key in comfy), sorted(comfy)
    expected = deltas(sd)
    for layer, modules in FUSED.items():
        down = comfy[f"diffusion_model.{layer}.lora_down.weight"]
        up = comfy[f"diffusion_model.{layer}.lora_up.weight"]
        alpha = comfy[f"diffusion_model.{layer}.alpha"].item()
        patch = alpha / down.shape[0] * up @ down  # (fused out, hidden)
        hidden = down.shape[1]
        rows = {m: 4 * hidden if m.endswith("proj_mlp") else hidden for m in modules}
        parts = [expected.get(m, torch.zeros(rows[m], hidden)) for m in modules]
        torch.testing.assert_close(patch, torch.cat(parts), rtol=1e-5, atol=1e-6, msg=layer)

    # Loaded by lc, both files change the transformer the same way, with the same modules.
    outputs, infos = [], []
    for path in (original, exported):
        pipe, _ = load_pipeline("builtin:tiny")
        base = tiny_transformer_output(pipe.transformer)
        infos.append(load_lora(pipe, path))
        outputs.append(tiny_transformer_output(pipe.transformer))
        assert (outputs[-1] - base).abs().max() > 1e-2
    # The same matrices and the same alpha / rank: what remains is the scale recomputed as
    # (alpha / fused rank) * r / r, at most an ulp of the LoRA's change.
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-5, atol=1e-6)
    assert infos[1].format == "comfyui" and infos[1].rank == RANK
    assert infos[1].target_modules == infos[0].target_modules == len(expected)

    # Rendered through the CLI: the same image, up to one level of 255 where a float ulp
    # moves a pixel across a rounding boundary; the LoRA itself moves pixels much more.
    plain = render(two_discs, tmp_path / "plain")
    from_original = render(two_discs, tmp_path / "a", original)
    from_export = render(two_discs, tmp_path / "b", exported)
    assert np.abs(from_export - from_original).max() <= 1
    assert np.abs(from_original - plain).max() > 8

    # lc lora info: the training rank, and how the fused layers store it.
    result = runner.invoke(app, ["lora", "info", str(exported), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["rank"] == RANK and info["format"] == "comfyui"
    fused = {kind["layer"]: kind for kind in info["fused"]}
    assert fused["qkv"]["stored_rank"] == 3 * RANK and fused["qkv"]["projections"] == 3
    slots = 4 if "proj_mlp" in targets else 3
    assert fused["linear1"]["stored_rank"] == slots * RANK
    assert fused["linear1"]["projections"] == slots and fused["linear1"]["rank"] == RANK
    assert {kind["source"] for kind in fused.values()} == {"lc.rank" if with_lc else "tensors"}
    result = runner.invoke(app, ["lora", "info", str(exported)], env={"COLUMNS": "200"})
    assert (
        f"{RANK} (fused qkv: {3 * RANK} = 3 × {RANK}; linear1: {slots * RANK} = " in result.output
    )


def test_at_flux1_widths_diffusers_reads_the_export_as_lc_does(tmp_path):
    # FLUX.1's real widths (3072 hidden, 12288 MLP) on the meta device: no memory, real shapes.
    from types import SimpleNamespace

    from diffusers import FluxTransformer2DModel
    from diffusers.loaders.lora_conversion_utils import _convert_kohya_flux_lora_to_diffusers

    from layercomposer.lora import _split_fused_layers
    from layercomposer.train.export import export_comfyui

    with torch.device("meta"):
        flux1 = FluxTransformer2DModel(num_layers=1, num_single_layers=1, guidance_embeds=True)
    generator = torch.Generator().manual_seed(0)
    sd = {}
    for name, module in flux1.named_modules():
        if name.rsplit(".", 1)[-1] in QKV:  # lc's default targets, less the out projections
            out_features, in_features = module.out_features, module.in_features
            a = torch.randn(RANK, in_features, generator=generator)
            sd[f"transformer.{name}.lora_A.weight"] = a
            b = torch.randn(out_features, RANK, generator=generator)
            sd[f"transformer.{name}.lora_B.weight"] = b
    trained = write_trained(tmp_path / "a.safetensors", sd, with_lc=True)
    exported = export_comfyui(trained, tmp_path / "b.safetensors")

    probe = torch.randn(3072, 3, generator=generator)
    expected = deltas(sd, probe)
    by_lc, problems = _split_fused_layers(SimpleNamespace(transformer=flux1), exported)
    assert not problems
    assert set(deltas(by_lc, probe, alphas=True)) == set(expected)
    assert {v.shape[0] for k, v in by_lc.items() if k.endswith("lora_A.weight")} == {RANK}
    # diffusers folds alpha / rank into lora_A, so its scale is 1; for the single block it
    # keeps the rank-12 copies and adds a zero LoRA to proj_mlp (that linear1's zero rows).
    by_diffusers = _convert_kohya_flux_lora_to_diffusers(load_file(exported))
    for key, a in list(by_diffusers.items()):
        if key.endswith("lora_A.weight"):  # alpha = rank: scale 1
            by_diffusers[key.replace("lora_A.weight", "alpha")] = torch.tensor(float(a.shape[0]))
    for converted in (deltas(by_lc, probe, alphas=True), deltas(by_diffusers, probe, alphas=True)):
        assert set(expected) <= set(converted)
        for name, got in converted.items():
            want = expected.get(name, torch.zeros_like(got))
            # float32 sums of 3072 products, scaled before or after: relative to the largest
            assert (got - want).abs().max() <= 1e-5 * want.abs().max(), name
