"""LoRA loading: diffusers, kohya and ComfyUI files agree; bad files fail loudly, with counts."""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
peft = pytest.importorskip("peft")
pytest.importorskip("safetensors")

from peft import LoraConfig, get_peft_model_state_dict  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from conftest import stock_kontext, tiny_transformer_output  # noqa: E402
from layercomposer.errors import ModelError, UsageError  # noqa: E402
from layercomposer.files import sha256_file  # noqa: E402
from layercomposer.lora import (  # noqa: E402
    DIFFUSERS_WEIGHT_NAME,
    has_layercomposer_lora,
    load_lora,
    set_lora_scale,
)
from layercomposer.tiny import tiny_kontext_components  # noqa: E402

RANK = 4
ALPHA = 8  # peft scales the LoRA by alpha / rank = 2; kohya files must say the same
ATTN = ("to_q", "to_k", "to_v", "to_out.0")


def fresh_pipe() -> diffusers.FluxKontextPipeline:
    pipe = diffusers.FluxKontextPipeline(**tiny_kontext_components(seed=0))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def transformer_out(pipe) -> torch.Tensor:
    """One transformer forward pass on fixed random inputs."""
    return tiny_transformer_output(pipe.transformer, guidance=3.5)


def render(pipe) -> np.ndarray:
    """A 2-step 64x64 Kontext call with a fixed image and generator."""
    pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    return stock_kontext(pipe, pixels)


def kohya_double_blocks(sd: dict, style: str = "kohya") -> dict:
    """The double-block attention weights of a diffusers LoRA under kohya's FLUX names.

    style "kohya": lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight; "comfyui": the same
    under diffusion_model.double_blocks.0.img_attn.qkv; "comfyui-ab": that with lora_A/lora_B.
    """
    blocks = sorted(
        {int(k.split(".")[2]) for k in sd if k.startswith("transformer.transformer_blocks.")}
    )
    down, up = ("lora_A", "lora_B") if style == "comfyui-ab" else ("lora_down", "lora_up")
    out = {}
    for i in blocks:
        a = {n: sd[f"transformer.transformer_blocks.{i}.attn.{n}.lora_A.weight"] for n in ATTN}
        b = {n: sd[f"transformer.transformer_blocks.{i}.attn.{n}.lora_B.weight"] for n in ATTN}
        # kohya fuses q, k, v into one layer: stacked downs and a block-diagonal up, rank 3r,
        # which diffusers' converter splits back into exact copies.
        layers = {
            "img_attn_qkv": (
                torch.cat([a["to_q"], a["to_k"], a["to_v"]]),
                torch.block_diag(b["to_q"], b["to_k"], b["to_v"]),
            ),
            "img_attn_proj": (a["to_out.0"], b["to_out.0"]),
        }
        for layer, (down_w, up_w) in layers.items():
            if style == "kohya":
                name = f"lora_unet_double_blocks_{i}_{layer}"
            else:
                name = f"diffusion_model.double_blocks.{i}.{layer.replace('_', '.', 1)}"
            out[f"{name}.{down}.weight"] = down_w.contiguous()
            out[f"{name}.{up}.weight"] = up_w.contiguous()
            # alpha / rank = ALPHA / RANK: the scale the diffusers file's header gives peft.
            out[f"{name}.alpha"] = torch.tensor(float(down_w.shape[0] * ALPHA // RANK))
    return out


@pytest.fixture(scope="module")
def lora_sd() -> dict:
    """A non-zero random rank-4 LoRA of the tiny transformer, in diffusers naming."""
    transformer = tiny_kontext_components(seed=0)["transformer"]
    config = LoraConfig(
        r=RANK, lora_alpha=ALPHA, target_modules=list(ATTN), init_lora_weights=False
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        transformer.add_adapter(config, adapter_name="made")
    sd = get_peft_model_state_dict(transformer, adapter_name="made")
    return {f"transformer.{k}": v.detach().clone() for k, v in sd.items()}


@pytest.fixture(scope="module")
def files(tmp_path_factory, lora_sd) -> dict:
    """LoRA files of `lora_sd`: whole in diffusers format, its double blocks in every format."""
    root = tmp_path_factory.mktemp("loras")

    def save_diffusers(folder: str, sd: dict):
        layers = {k.removeprefix("transformer."): v for k, v in sd.items()}
        # The adapter config goes into the header, as diffusers' training scripts do: it is
        # where alpha lives.
        targets = sorted({k.rsplit(".lora_", 1)[0] for k in layers})
        config = {"r": RANK, "lora_alpha": ALPHA, "target_modules": targets}
        diffusers.FluxKontextPipeline.save_lora_weights(
            root / folder, transformer_lora_layers=layers, transformer_lora_adapter_metadata=config
        )
        return root / folder / DIFFUSERS_WEIGHT_NAME

    double = {k: v for k, v in lora_sd.items() if ".transformer_blocks." in k}
    paths = {"diffusers": save_diffusers("full", lora_sd), "double": save_diffusers("dbl", double)}
    for style in ("kohya", "comfyui", "comfyui-ab"):
        paths[style] = root / f"{style}.safetensors"
        save_file(kohya_double_blocks(lora_sd, style), paths[style])
    return paths


@pytest.fixture(scope="module")
def base_out() -> torch.Tensor:
    return transformer_out(fresh_pipe())


def write(tmp_path, sd: dict, name: str = "lora.safetensors"):
    path = tmp_path / name
    save_file({k: v.contiguous() for k, v in sd.items()}, path)
    return path


def test_diffusers_file_loads_and_changes_output(files, base_out) -> None:
    pipe = fresh_pipe()
    assert not has_layercomposer_lora(pipe)
    info = load_lora(pipe, files["diffusers"], scale=0.75)
    assert not has_layercomposer_lora(pipe) and not info.layered  # no lc.* metadata: not lc's
    assert not torch.equal(transformer_out(pipe), base_out)
    assert info.format == "diffusers"
    assert info.rank == RANK
    assert info.tensors == 14  # 4 double-block + 3 single-block attention layers, A and B
    assert info.target_modules == 7
    assert info.scale == 0.75
    assert info.path == str(files["diffusers"])
    assert info.sha256 == sha256_file(files["diffusers"])
    assert json.loads(json.dumps(info.to_dict()))["sha256"] == info.sha256


def test_folder_means_its_lora_file(files) -> None:
    info = load_lora(fresh_pipe(), files["diffusers"].parent)
    assert info.path == str(files["diffusers"])


@pytest.mark.parametrize("style", ["kohya", "comfyui", "comfyui-ab"])
def test_kohya_and_comfyui_files_match_diffusers(files, style) -> None:
    reference = fresh_pipe()
    load_lora(reference, files["double"])
    pipe = fresh_pipe()
    info = load_lora(pipe, files[style])
    assert info.format == ("kohya" if style == "kohya" else "comfyui")
    assert info.rank == RANK  # the rank-12 fused qkv is split back into rank-4 q, k, v
    assert info.tensors == 6
    assert info.target_modules == 4
    torch.testing.assert_close(transformer_out(pipe), transformer_out(reference))


def test_scale_zero_is_exactly_no_lora(files) -> None:
    without = render(fresh_pipe())
    pipe = fresh_pipe()
    load_lora(pipe, files["diffusers"], scale=0.0)
    np.testing.assert_array_equal(render(pipe), without)
    set_lora_scale(pipe, 1.0)
    with_lora = render(pipe)
    assert not np.array_equal(with_lora, without)
    set_lora_scale(pipe, 0.0)
    np.testing.assert_array_equal(render(pipe), without)


def test_scale_scales_the_lora(files, base_out) -> None:
    pipe = fresh_pipe()
    load_lora(pipe, files["diffusers"], scale=1.0)
    full = transformer_out(pipe)
    set_lora_scale(pipe, 0.5)
    half = transformer_out(pipe)
    assert not torch.equal(half, full) and not torch.equal(half, base_out)


@pytest.mark.filterwarnings("ignore:Already found a `peft_config`:UserWarning")
def test_second_adapter_keeps_the_first_active(files, base_out) -> None:
    pipe = fresh_pipe()
    load_lora(pipe, files["double"], adapter_name="style")
    assert not has_layercomposer_lora(pipe)
    only_style = transformer_out(pipe)
    load_lora(pipe, files["diffusers"])
    assert not has_layercomposer_lora(pipe)  # neither file's metadata says lc trained it
    both = transformer_out(pipe)
    assert not torch.equal(both, only_style)
    set_lora_scale(pipe, 0.0)
    torch.testing.assert_close(transformer_out(pipe), only_style)


def test_loading_again_replaces_the_adapter(files) -> None:
    pipe = fresh_pipe()
    load_lora(pipe, files["diffusers"])
    load_lora(pipe, files["double"])
    assert pipe.get_list_adapters() == {"transformer": ["layercomposer"]}
    reference = fresh_pipe()
    load_lora(reference, files["double"])
    torch.testing.assert_close(transformer_out(pipe), transformer_out(reference))


def test_text_encoder_weights_load(tmp_path, lora_sd) -> None:
    # kohya names for CLIP-L; the tiny CLIP has 32-wide attention.
    te = {}
    for layer in ("self_attn_q_proj", "self_attn_out_proj"):
        name = f"lora_te1_text_model_encoder_layers_0_{layer}"
        te[f"{name}.lora_down.weight"] = torch.randn(RANK, 32)
        te[f"{name}.lora_up.weight"] = torch.randn(32, RANK)
    pipe = fresh_pipe()
    info = load_lora(pipe, write(tmp_path, {**kohya_double_blocks(lora_sd), **te}))
    assert info.target_modules == 4 + 2
    assert pipe.get_list_adapters()["text_encoder"] == ["layercomposer"]


def bogus_modules(sd: dict) -> dict:
    bogus = {
        "transformer.nonexistent_block.to_q.lora_A.weight": torch.randn(RANK, 32),
        "transformer.nonexistent_block.to_q.lora_B.weight": torch.randn(32, RANK),
    }
    return {**sd, **bogus}


def narrow_to_q(sd: dict) -> dict:
    key = "transformer.transformer_blocks.0.attn.to_q.lora_A.weight"
    return {**sd, key: torch.randn(RANK, 16)}  # diffusers would zero-pad this to 32


def wide_x_embedder(sd: dict) -> dict:
    # Flux Control LoRAs read 128 channels; diffusers would widen x_embedder to fit.
    extra = {
        "transformer.x_embedder.lora_A.weight": torch.randn(RANK, 128),
        "transformer.x_embedder.lora_B.weight": torch.randn(32, RANK),
    }
    return {**sd, **extra}


def tall_to_out(sd: dict) -> dict:
    key = "transformer.transformer_blocks.0.attn.to_out.0.lora_B.weight"
    return {**sd, key: torch.randn(48, RANK)}


def no_prefix(sd: dict) -> dict:
    return {k.removeprefix("transformer."): v for k, v in sd.items()}  # diffusers loads nothing


def lone_lora_a(sd: dict) -> dict:
    return {
        k: v
        for k, v in sd.items()
        if k != "transformer.transformer_blocks.0.attn.to_k.lora_B.weight"
    }


def bad_text_encoder(sd: dict) -> dict:
    extra = {
        "text_encoder.encoder.layers.0.self_attn.q_proj.lora_A.weight": torch.randn(RANK, 77),
        "text_encoder.encoder.layers.0.self_attn.q_proj.lora_B.weight": torch.randn(32, RANK),
    }
    return {**sd, **extra}


@pytest.mark.parametrize(
    ("edit", "count", "mentions"),
    [
        (bogus_modules, "2 of 16", "nonexistent_block"),
        (narrow_to_q, "1 of 14", "to_q.lora_A"),
        (wide_x_embedder, "1 of 16", "x_embedder"),
        (tall_to_out, "1 of 14", "to_out.0.lora_B"),
        (no_prefix, "14 of 14", "not for the transformer"),
        (lone_lora_a, "1 of 13", "to_k.lora_A"),
        (bad_text_encoder, "1 of 16", "q_proj.lora_A"),
    ],
)
def test_mismatched_keys_are_counted(tmp_path, lora_sd, base_out, edit, count, mentions) -> None:
    pipe = fresh_pipe()
    with pytest.raises(ModelError) as caught:
        load_lora(pipe, write(tmp_path, edit(lora_sd)))
    assert f"{count} LoRA keys do not match the FLUX transformer" in caught.value.message
    assert mentions in caught.value.message
    assert "FLUX.1 (Kontext) [dev]" in caught.value.hint
    # Nothing was applied: no adapter, and no widened or padded layer.
    assert pipe.get_list_adapters() == {}
    assert pipe.transformer.x_embedder.in_features == 64
    assert torch.equal(transformer_out(pipe), base_out)


def test_kohya_blocks_flux_does_not_have_are_counted(tmp_path, lora_sd) -> None:
    sd = kohya_double_blocks(lora_sd)
    sd["lora_unet_double_blocks_30_img_attn_proj.lora_down.weight"] = torch.randn(RANK, 32)
    sd["lora_unet_double_blocks_30_img_attn_proj.lora_up.weight"] = torch.randn(32, RANK)
    with pytest.raises(ModelError, match="2 of 8 LoRA keys do not match"):
        load_lora(fresh_pipe(), write(tmp_path, sd))


def test_kohya_keys_diffusers_would_drop_are_counted(tmp_path, lora_sd) -> None:
    sd = kohya_double_blocks(lora_sd)
    sd["lora_foo_bar.lora_down.weight"] = torch.randn(RANK, 32)
    sd["lora_foo_bar.lora_up.weight"] = torch.randn(32, RANK)
    with pytest.raises(ModelError, match=r"2 of 10 LoRA keys .*lora_foo_bar"):
        load_lora(fresh_pipe(), write(tmp_path, sd))


def test_kohya_fused_single_block_loads_at_the_models_width(tmp_path) -> None:
    # A LoRA trained on the fused linear1 itself (kohya): one dense up across q, k, v and the
    # MLP input. diffusers' converter splits linear1 only at FLUX.1's 3 x 3072 + 12288 rows;
    # lc splits it at the model's (3 x 32 + 128). The reference merges the change by hand.
    generator = torch.Generator().manual_seed(3)
    down = torch.randn(RANK, 32, generator=generator)
    up = torch.randn(224, RANK, generator=generator)
    name = "lora_unet_single_blocks_0_linear1"
    sd = {f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up}
    sd[f"{name}.alpha"] = torch.tensor(6.0)
    pipe = fresh_pipe()
    info = load_lora(pipe, write(tmp_path, sd))
    assert info.format == "kohya" and info.target_modules == 4 and info.rank == RANK

    merged = fresh_pipe()
    block = merged.transformer.single_transformer_blocks[0]
    layers = (block.attn.to_q, block.attn.to_k, block.attn.to_v, block.proj_mlp)
    change = 6.0 / RANK * up @ down  # (224, 32): scaled by alpha / rank, as kohya and ComfyUI
    with torch.no_grad():
        for layer, rows in zip(layers, change.split([32, 32, 32, 128]), strict=True):
            layer.weight += rows
    torch.testing.assert_close(transformer_out(pipe), transformer_out(merged), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("down_in", "up_rows", "mentions"),
    [(3072, 21504, "32 in-features"), (32, 21504, "224 out-features (32 + 32 + 32 + 128)")],
)
def test_fused_layer_of_another_width_is_refused(tmp_path, base_out, down_in, up_rows, mentions):
    name = "diffusion_model.single_blocks.0.linear1"  # FLUX.1's widths, builtin:tiny's model
    sd = {
        f"{name}.lora_down.weight": torch.randn(RANK, down_in),
        f"{name}.lora_up.weight": torch.randn(up_rows, RANK),
    }
    pipe = fresh_pipe()
    with pytest.raises(ModelError, match="1 of 2 LoRA keys do not match") as caught:
        load_lora(pipe, write(tmp_path, sd))
    assert mentions in caught.value.message
    assert pipe.get_list_adapters() == {} and torch.equal(transformer_out(pipe), base_out)


def test_missing_file(tmp_path) -> None:
    with pytest.raises(ModelError, match="no such LoRA file"):
        load_lora(fresh_pipe(), tmp_path / "nope.safetensors")


def test_garbage_file(tmp_path) -> None:
    path = tmp_path / "junk.safetensors"
    path.write_bytes(os.urandom(256))
    with pytest.raises(ModelError, match="not a readable .safetensors file"):
        load_lora(fresh_pipe(), path)


def test_truncated_file(tmp_path, files) -> None:
    path = tmp_path / "cut.safetensors"
    path.write_bytes(files["diffusers"].read_bytes()[:300])
    with pytest.raises(ModelError, match="not a readable .safetensors file"):
        load_lora(fresh_pipe(), path)


def test_empty_file(tmp_path) -> None:
    with pytest.raises(ModelError, match="holds no tensors"):
        load_lora(fresh_pipe(), write(tmp_path, {}))


def test_only_alphas(tmp_path) -> None:
    sd = {"transformer.transformer_blocks.0.attn.to_q.alpha": torch.tensor(4.0)}
    with pytest.raises(ModelError, match="no LoRA weights"):
        load_lora(fresh_pipe(), write(tmp_path, sd))


def test_pickle_file_refused(tmp_path) -> None:
    path = tmp_path / "pytorch_lora_weights.bin"
    path.write_bytes(b"not really a pickle")
    with pytest.raises(ModelError, match="only .safetensors"):
        load_lora(fresh_pipe(), path)


def test_folder_needs_one_lora(tmp_path, lora_sd) -> None:
    with pytest.raises(ModelError, match="found 0"):
        load_lora(fresh_pipe(), tmp_path)
    write(tmp_path, lora_sd, "a.safetensors")
    assert load_lora(fresh_pipe(), tmp_path).path == str(tmp_path / "a.safetensors")
    write(tmp_path, lora_sd, "b.safetensors")
    with pytest.raises(ModelError, match="found 2"):
        load_lora(fresh_pipe(), tmp_path)


def test_peft_missing(monkeypatch, files) -> None:
    monkeypatch.setattr(diffusers.utils, "USE_PEFT_BACKEND", False)
    with pytest.raises(ModelError, match="peft") as caught:
        load_lora(fresh_pipe(), files["diffusers"])
    assert "pip install" in caught.value.hint


def test_non_finite_scale(files) -> None:
    with pytest.raises(UsageError):
        load_lora(fresh_pipe(), files["diffusers"], scale=float("nan"))


def test_set_scale_needs_a_loaded_adapter() -> None:
    with pytest.raises(ValueError, match="no LoRA adapter"):
        set_lora_scale(fresh_pipe(), 1.0)
