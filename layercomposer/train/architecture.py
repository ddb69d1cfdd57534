"""A model's parameter shapes without its weights: FLUX.1 Kontext [dev]'s component configs built on
the `meta` device (shapes, no memory), a local diffusers folder's or cached configs, or builtin:tiny.

`lc train --estimate` counts memory and FLOPs from these shapes, so its numbers are those of the
real architecture, not of a hand-written formula.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..errors import UsageError

# The configs of black-forest-labs/FLUX.1-Kontext-dev (transformer/, text_encoder_2/,
# text_encoder/, vae/ config.json on the Hub), so an estimate needs neither weights nor network.
FLUX_KONTEXT_TRANSFORMER = {
    "patch_size": 1,
    "in_channels": 64,
    "out_channels": None,
    "num_layers": 19,
    "num_single_layers": 38,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "pooled_projection_dim": 768,
    "guidance_embeds": True,
    "axes_dims_rope": [16, 56, 56],
}
T5_XXL_ENCODER = {  # google/t5-v1_1-xxl, encoder only
    "vocab_size": 32128,
    "d_model": 4096,
    "d_kv": 64,
    "d_ff": 10240,
    "num_layers": 24,
    "num_heads": 64,
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "feed_forward_proj": "gated-gelu",
    "tie_word_embeddings": False,
}
CLIP_L_TEXT = {  # openai/clip-vit-large-patch14, text tower
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
}
FLUX_VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "latent_channels": 16,
    "norm_num_groups": 32,
    "sample_size": 1024,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
    "scaling_factor": 0.3611,
    "shift_factor": 0.1159,
}
KNOWN_MODELS = {
    "black-forest-labs/FLUX.1-Kontext-dev": {
        "transformer": FLUX_KONTEXT_TRANSFORMER,
        "text_encoder_2": T5_XXL_ENCODER,
        "text_encoder": CLIP_L_TEXT,
        "vae": FLUX_VAE,
    }
}
COMPONENTS = ("transformer", "text_encoder_2", "text_encoder", "vae")

# Which tokens pass through a linear layer: the image stream (noisy + conditioning tokens), the
# text stream, both (single blocks), or one vector per example (timestep/guidance modulation).
Stream = Literal["image", "text", "joint", "vector"]


@dataclass(frozen=True)
class LinearShape:
    name: str  # the module's path in the transformer, e.g. transformer_blocks.3.attn.to_q
    in_features: int
    out_features: int
    bias: bool
    stream: Stream


@dataclass(frozen=True)
class Architecture:
    """What the estimate needs to know about a model, read from its configs."""

    model: str
    linears: tuple[LinearShape, ...]  # every nn.Linear of the transformer
    other_parameters: int  # transformer parameters outside linear layers (norm scales)
    width: int  # heads x head dim
    heads: int
    mlp_hidden: int  # the feed-forward's inner width (4 x width in FLUX)
    double_blocks: int
    single_blocks: int
    text_encoder_parameters: int  # CLIP
    text_encoder_2_parameters: int  # T5
    vae_parameters: int
    vae_channels: int  # the VAE encoder's first (full-resolution) channel count

    @property
    def transformer_parameters(self) -> int:
        linear = sum(
            s.in_features * s.out_features + (s.out_features if s.bias else 0) for s in self.linears
        )
        return linear + self.other_parameters


def linear_stream(name: str) -> Stream:
    """Which tokens the transformer's linear layer `name` sees (diffusers' FLUX module names)."""
    if name.startswith("time_text_embed") or re.search(r"(^|\.)norm[^.]*\.linear$", name):
        return "vector"  # the timestep/guidance/pooled embedders and AdaLayerNorm modulations
    if "context" in name or ".add_" in name or name.endswith("to_add_out"):
        return "text"
    if name.startswith("single_transformer_blocks"):
        return "joint"
    return "image"


def transformer_architecture(transformer) -> dict:
    """The linear layers and other parameter count of a FluxTransformer2DModel (meta or real)."""
    import torch

    linears, in_linears = [], set()
    for name, module in transformer.named_modules():
        if type(module) is torch.nn.Linear:
            linears.append(
                LinearShape(
                    name, module.in_features, module.out_features, module.bias is not None,
                    linear_stream(name),
                )
            )  # fmt: skip
            in_linears.update(id(p) for p in module.parameters())
    other = sum(p.numel() for p in transformer.parameters() if id(p) not in in_linears)
    config = transformer.config
    width = config.num_attention_heads * config.attention_head_dim
    mlp = next(s.out_features for s in linears if s.name.endswith(("ff.net.0.proj", "proj_mlp")))
    return dict(
        linears=tuple(linears),
        other_parameters=other,
        width=width,
        heads=config.num_attention_heads,
        mlp_hidden=mlp,
        double_blocks=config.num_layers,
        single_blocks=config.num_single_layers,
    )


def model_architecture(model: str, revision: str | None = None) -> Architecture:
    """The architecture of `model` (a config's `model:`), from configs only: no weights are read.

    builtin:tiny is built (it is tiny); FLUX.1 Kontext [dev], a local diffusers folder or a hub
    id whose configs are in the Hugging Face cache are built on the meta device.
    """
    from ..models import TINY_MODEL_ID

    if model == TINY_MODEL_ID:
        from ..tiny import tiny_kontext_components

        components = tiny_kontext_components()
        return _describe(model, components)
    return _describe(model, _meta_components(_component_configs(model, revision)))


def _describe(model: str, components: dict) -> Architecture:
    def count(module) -> int:
        return sum(p.numel() for p in module.parameters())

    vae = components["vae"]
    return Architecture(
        model=model,
        **transformer_architecture(components["transformer"]),
        text_encoder_parameters=count(components["text_encoder"]),
        text_encoder_2_parameters=count(components["text_encoder_2"]),
        vae_parameters=count(vae),
        vae_channels=vae.config.block_out_channels[0],
    )


def _meta_components(configs: dict[str, dict]) -> dict:
    """The four networks built from their configs on the meta device: shapes without memory."""
    import torch
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    def keep(config: dict) -> dict:  # drop the `_class_name`/`_diffusers_version` bookkeeping
        return {k: v for k, v in config.items() if not k.startswith("_")}

    with torch.device("meta"):
        return {
            "transformer": FluxTransformer2DModel(**keep(configs["transformer"])),
            "text_encoder_2": T5EncoderModel(T5Config(**keep(configs["text_encoder_2"]))),
            "text_encoder": CLIPTextModel(CLIPTextConfig(**keep(configs["text_encoder"]))),
            "vae": AutoencoderKL(**keep(configs["vae"])),
        }


def _component_configs(model: str, revision: str | None) -> dict[str, dict]:
    """Each component's config.json: a local folder's, the built-in Kontext ones, or cached ones."""
    from ..limits import read_json_bounded

    folder = Path(model).expanduser()
    if folder.is_dir():
        files = {name: folder / name / "config.json" for name in COMPONENTS}
    elif model in KNOWN_MODELS:
        return KNOWN_MODELS[model]
    else:
        from huggingface_hub import try_to_load_from_cache

        files = {}
        for name in COMPONENTS:
            try:
                found = try_to_load_from_cache(model, f"{name}/config.json", revision=revision)
            except ValueError:  # not a hub id either (e.g. a folder that does not exist)
                found = None
            files[name] = Path(found) if isinstance(found, str) else folder / name / "config.json"
    missing = [str(path) for path in files.values() if not path.is_file()]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise UsageError(
            f"cannot estimate {model}: no component config {missing[0]}{more}",
            hint=f"use a local diffusers folder, a model in the Hugging Face cache, or one of "
            f"{', '.join([*KNOWN_MODELS, 'builtin:tiny'])}",
        )
    try:
        return {name: read_json_bounded(path) for name, path in files.items()}
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read {model}'s component configs: {exc}") from None
