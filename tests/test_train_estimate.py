"""`lc train --estimate`: parameter, byte and FLOP counts against independent references (peft's
own LoRA, torchao's tensors, torch's saved tensors and FLOP counter), and the shipped configs."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from diffusers import FluxTransformer2DModel
from peft import LoraConfig
from train_data import REPO
from typer.testing import CliRunner

from layercomposer.cli.main import app
from layercomposer.speed import quantize_transformer
from layercomposer.tiny import tiny_kontext_components
from layercomposer.train.architecture import (
    FLUX_KONTEXT_TRANSFORMER,
    Architecture,
    model_architecture,
    transformer_architecture,
)
from layercomposer.train.config import ATTENTION_MODULES, OptimConfig
from layercomposer.train.estimate import (
    Tokens,
    base_weight_bytes,
    block_activation_values,
    forward_flops,
    lora_matrices,
    lora_targets,
    optimizer_state_bytes,
    training_flops,
)
from layercomposer.train.optim import make_optimizer

runner = CliRunner()
KONTEXT = "black-forest-labs/FLUX.1-Kontext-dev"
TARGET_SETS = [
    ATTENTION_MODULES,
    [*ATTENTION_MODULES, "proj_out", "x_embedder", "ff.net.0.proj", "proj_mlp"],
    r"single_transformer_blocks\.\d+\.attn\.to_[qkv]",
]


def architecture_of(transformer) -> Architecture:
    shapes = transformer_architecture(transformer)
    zero = dict(
        text_encoder_parameters=0, text_encoder_2_parameters=0, vae_parameters=0, vae_channels=0
    )
    return Architecture(model="test", **shapes, **zero)


def peft_lora_parameters(transformer, targets, rank: int) -> int:
    transformer.requires_grad_(False)
    transformer.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=targets))
    return sum(p.numel() for p in transformer.parameters() if p.requires_grad)


def small_flux(device: str = "cpu", width_heads: int = 4, head_dim: int = 32):
    """A FLUX transformer with 2 double and 2 single blocks (width 128 unless told)."""
    with torch.device(device):
        torch.manual_seed(0)
        return FluxTransformer2DModel(
            **{
                **FLUX_KONTEXT_TRANSFORMER,
                "num_layers": 2,
                "num_single_layers": 2,
                "num_attention_heads": width_heads,
                "attention_head_dim": head_dim,
                "joint_attention_dim": 48,
                "pooled_projection_dim": 32,
                "axes_dims_rope": [head_dim // 4, head_dim // 4, head_dim // 2],
            }
        )


def flux_inputs(image_tokens: int, text_tokens: int, text_width: int = 48, pooled: int = 32):
    generator = torch.Generator().manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=generator)

    return dict(
        hidden_states=randn(1, image_tokens, 64),
        encoder_hidden_states=randn(1, text_tokens, text_width),
        pooled_projections=randn(1, pooled),
        timestep=torch.tensor([0.5]),
        guidance=torch.tensor([2.5]),
        img_ids=torch.zeros(image_tokens, 3),
        txt_ids=torch.zeros(text_tokens, 3),
        return_dict=False,
    )


@pytest.mark.parametrize("targets", TARGET_SETS, ids=["attention", "wider", "regex"])
def test_lora_count_matches_peft_on_the_tiny_transformer(targets):
    transformer = tiny_kontext_components()["transformer"]
    arch = architecture_of(transformer)
    assert arch.transformer_parameters == sum(p.numel() for p in transformer.parameters())
    counted = sum(lora_matrices(lora_targets(arch.linears, targets), 6))
    assert counted == peft_lora_parameters(transformer, targets, 6) > 0


def test_counts_match_peft_on_the_full_size_kontext_transformer_on_meta():
    arch = model_architecture(KONTEXT)
    with torch.device("meta"):
        transformer = FluxTransformer2DModel(**FLUX_KONTEXT_TRANSFORMER)
    assert arch.transformer_parameters == sum(p.numel() for p in transformer.parameters())
    assert 11.8e9 < arch.transformer_parameters < 12.0e9  # "a 12 B transformer"
    assert 4.7e9 < arch.text_encoder_2_parameters < 4.8e9  # T5-XXL's encoder
    assert (arch.width, arch.mlp_hidden, arch.double_blocks, arch.single_blocks) == (
        3072, 12288, 19, 38
    )  # fmt: skip
    with torch.device("meta"):
        reference = peft_lora_parameters(transformer, ATTENTION_MODULES, 512)
    counted = sum(lora_matrices(lora_targets(arch.linears, ATTENTION_MODULES), 512))
    # docs/training.md: 19 x 8 + 38 x 3 = 266 projections x 512 x (3072 + 3072) = 0.84 B.
    assert counted == reference == 266 * 512 * 6144


def test_weight_bytes_match_the_tensors_torchao_makes():
    transformer = tiny_kontext_components()["transformer"].to(torch.bfloat16)
    arch = architecture_of(transformer)

    def stored_bytes(module) -> int:
        total = 0
        for p in module.parameters():
            names = getattr(p, "tensor_data_names", None)  # torchao: qdata and scale
            tensors = [getattr(p, n) for n in names] if names else [p]
            total += sum(t.numel() * t.element_size() for t in tensors)
        return total

    assert base_weight_bytes(arch, "none") == stored_bytes(transformer)
    logging.getLogger("torchao").setLevel(logging.ERROR)
    quantize_transformer(transformer, "int8")
    assert base_weight_bytes(arch, "int8") == stored_bytes(transformer)


@pytest.mark.parametrize("name", ["adamw", "adamw8bit"])
def test_optimizer_state_bytes_match_the_optimizer(name):
    sizes = [(128, 32), (4, 32), (256, 48), (100, 41)]  # 8-bit / too small / 8-bit / not blocks
    parameters = [torch.nn.Parameter(torch.randn(*shape)) for shape in sizes]
    optimizer = make_optimizer(parameters, OptimConfig(name=name), torch.device("cpu"))
    for p in parameters:
        p.grad = torch.randn_like(p)
    optimizer.step()
    stored = 0
    for state in optimizer.state.values():
        for key in ("exp_avg", "exp_avg_sq"):
            moment = state[key]
            parts = [moment.codes, moment.scale] if hasattr(moment, "codes") else [moment]
            stored += sum(t.numel() * t.element_size() for t in parts)
    assert optimizer_state_bytes([a * b for a, b in sizes], name) == stored


def test_activation_model_matches_the_tensors_autograd_keeps():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    transformer = small_flux()
    rank, image, text = 8, 256, 64
    arch = architecture_of(transformer)
    targets = lora_targets(arch.linears, ATTENTION_MODULES)
    peft_lora_parameters(transformer, ATTENTION_MODULES, rank)
    frozen = {p.untyped_storage().data_ptr() for p in transformer.parameters()}
    kept: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in frozen:
            kept[storage.data_ptr()] = storage.nbytes()
        return tensor

    # Flash attention, as on a GPU: it keeps q, k, v, out and not the N x N scores.
    keep_saved = torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor)
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION), keep_saved:
        transformer(**flux_inputs(image, text))
    measured = sum(kept.values())
    modelled = 4 * sum(
        block_activation_values(arch, targets, Tokens(image, 0, text), rank).values()
    )
    assert abs(modelled - measured) / measured < 0.1, (modelled, measured)


def test_flop_count_matches_torchs_flop_counter_at_full_width():
    from torch.utils.flop_counter import FlopCounterMode

    transformer = small_flux("meta", width_heads=24, head_dim=128)  # FLUX's 3072 width
    rank, image, text = 64, 2048, 512
    arch = architecture_of(transformer)
    targets = lora_targets(arch.linears, ATTENTION_MODULES)
    peft_lora_parameters(transformer, ATTENTION_MODULES, rank)
    with torch.device("meta"):
        inputs = flux_inputs(image, text)
    counter = FlopCounterMode(display=False)
    with counter:
        output = transformer(**inputs)[0]
        forward = counter.get_total_flops()
        output.float().square().mean().backward()
    total = counter.get_total_flops()
    tokens = Tokens(image, 0, text)
    assert sum(forward_flops(arch, targets, tokens, rank)) == pytest.approx(forward, rel=0.005)
    # On the meta device attention is the math kernel: backward = 2 forwards (flash: 2.5).
    counted = training_flops(arch, targets, tokens, rank, False, attention_backward=2.0)
    assert counted == pytest.approx(total, rel=0.01)


def estimate_json(config: str, *options: str) -> dict:
    result = runner.invoke(
        app, ["train", str(REPO / "configs" / config), "--estimate", "--json", *options]
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_the_one_gpu_config_fits_24_to_48_gb_and_the_eight_gpu_config_is_the_papers():
    one = estimate_json("flux-kontext-1gpu.yaml", "--resolution", "512")
    assert one["total_bytes"] < 24e9 and one["gpus"] == 1 and one["global_batch"] == 32
    t5_on_gpu = estimate_json(
        "flux-kontext-1gpu.yaml", "--resolution", "512", "--set", "train.t5_encoder=on_device"
    )
    assert 24e9 < t5_on_gpu["total_bytes"] < 48e9
    eight = estimate_json("flux-kontext.yaml", "--gpus", "8", "--resolution", "512")
    assert round(eight["parameters"]["lora"] / 1e9, 2) == 0.84  # the docs' figure
    assert eight["global_batch"] == 32 and eight["total_bytes"] < 80e9  # an 80 GB H100
    no_checkpoints = estimate_json(
        "flux-kontext.yaml", "--set", "train.gradient_checkpointing=false", "--resolution", "512"
    )
    activations = {item["item"]: item["bytes"] for item in no_checkpoints["memory"]}["activations"]
    assert activations > 5 * {i["item"]: i["bytes"] for i in eight["memory"]}["activations"]


def test_estimate_prints_a_table_with_the_total_and_the_step_time():
    result = runner.invoke(
        app, ["train", str(REPO / "configs" / "flux-kontext-1gpu.yaml"), "--estimate"]
    )
    assert result.exit_code == 0, result.output
    assert "transformer weights" in result.output and "total" in result.output
    assert "s per step at 400 TFLOP/s" in result.output


def test_estimate_of_a_model_without_configs_is_a_usage_error(tmp_path):
    config = REPO / "configs" / "flux-kontext.yaml"
    result = runner.invoke(
        app, ["train", str(config), "--estimate", "--set", f"model={tmp_path / 'nothing'}"]
    )
    assert result.exit_code == 2
    assert "cannot estimate" in result.output and "Traceback" not in result.output


def test_a_local_diffusers_folder_is_read_from_its_config_files(tmp_path):
    from layercomposer.train.architecture import KNOWN_MODELS

    for name, config in KNOWN_MODELS[KONTEXT].items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps(config))
    local, known = model_architecture(str(tmp_path)), model_architecture(KONTEXT)
    assert local.linears == known.linears
    assert local.text_encoder_2_parameters == known.text_encoder_2_parameters


def test_the_dataset_gives_the_resolution_and_the_cached_captions(tmp_path):
    from train_data import make_dataset

    make_dataset(tmp_path, resolution=64)
    budget = estimate_json("tiny.yaml", "--set", f"data.path={tmp_path}")
    assert budget["resolution"] == 64 and budget["tokens"]["noisy"] == 16
    assert "text embedding cache" not in {item["item"] for item in budget["memory"]}
    cache = {item["item"]: item for item in budget["host_memory"]}["text embedding cache"]
    assert cache["note"].startswith("1 distinct captions")


def test_the_train_step_benchmark_runs_the_kontext_path_on_a_small_random_model():
    import importlib
    import sys

    sys.path.insert(0, str(REPO / "benchmarks"))
    train_step = importlib.import_module("train_step")
    small = {
        "transformer": {
            **FLUX_KONTEXT_TRANSFORMER, "num_layers": 1, "num_single_layers": 1,
            "num_attention_heads": 2, "attention_head_dim": 16, "joint_attention_dim": 32,
            "pooled_projection_dim": 32, "axes_dims_rope": [4, 4, 8],
        },
        "text_encoder_2": {
            "vocab_size": 256, "d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 1,
            "num_heads": 4, "feed_forward_proj": "gated-gelu",
        },
        "text_encoder": {
            "vocab_size": 1000, "hidden_size": 32, "intermediate_size": 37,
            "num_hidden_layers": 1, "num_attention_heads": 4, "max_position_embeddings": 77,
        },
        "vae": {
            "down_block_types": ["DownEncoderBlock2D"] * 4,
            "up_block_types": ["UpDecoderBlock2D"] * 4, "block_out_channels": [8, 8, 8, 8],
            "layers_per_block": 1, "norm_num_groups": 4, "latent_channels": 16,
            "use_quant_conv": False, "use_post_quant_conv": False,
            "scaling_factor": 0.3611, "shift_factor": 0.1159,
        },
    }  # fmt: skip
    args = train_step.parse_args(
        [str(REPO / "configs" / "flux-kontext-1gpu.yaml"), "--resolution", "64", "--examples", "1"]
    )
    result = train_step.measure(args, configs=small)
    assert result["model"] == KONTEXT and result["batch_size"] == 32
    assert result["measured_peak_gb"] > 0 and result["measured_seconds_per_example"] > 0
    assert 15 < result["estimated_gb"] < 24  # the full-size estimate beside the measurement
