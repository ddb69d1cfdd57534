"""The training config file (YAML), validated like canvas files: unknown keys and bad values are
reported with their line, and `--set key.path=value` overrides any key."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, field_validator

from ..errors import CanvasError
from ..yamlfile import read_yaml_file

# The DiT's attention projections, image and text streams (double blocks) and single blocks.
ATTENTION_MODULES = [
    "to_q", "to_k", "to_v", "to_out.0",
    "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
]  # fmt: skip


class ConfigError(CanvasError):
    """A training config file is invalid (same reporting as canvas files)."""


class _Strict(BaseModel):
    # inf and NaN are refused everywhere: `learning_rate: .inf` would train a LoRA of NaNs.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class DataConfig(_Strict):
    path: str | list[str] = Field(
        description="Dataset folder written by `lc dataset build`, or a list of them (the parts "
        "of a `--shard K/N` build, or datasets to mix): their scenes are trained on together."
    )
    lock_probability: float = Field(0.5, ge=0, le=1, description="Chance each layer is locked.")
    scale_jitter: float = Field(0.1, ge=0, lt=1)
    shift_jitter: float = Field(0.05, ge=0, lt=1)
    color_jitter: float = Field(0.1, ge=0, lt=1)
    min_donor_seconds: float = Field(
        3.0,
        ge=0,
        description="An unlocked layer comes from another shot or photo whenever the scene has "
        "the person there; only otherwise from a frame of the target's own shot, and then at "
        "least this many seconds away (frames closer are near-copies of the target). 0: any "
        "other frame of the shot.",
    )
    fill: Literal["black", "grey"] = Field(
        "black",
        description="Colour transparent layer pixels are encoded as (black: the paper's canvas). "
        "Written into the LoRA; `lc render --lora` uses the same.",
    )


class LoraConfigSpec(_Strict):
    rank: int = Field(512, ge=1, le=4096, description="LoRA rank (512 in the method).")
    alpha: float | None = Field(None, gt=0, description="LoRA alpha; default: the rank (scale 1).")
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] | str = Field(
        default_factory=lambda: list(ATTENTION_MODULES),
        description="Module names (or one regex) in the transformer that get a LoRA.",
    )


class OptimConfig(_Strict):
    name: Literal["adamw", "adamw8bit"] = Field(
        "adamw",
        description="`adamw`: torch's AdamW, fp32 moments (8 bytes per LoRA parameter); "
        "`adamw8bit`: torchao's AdamW8bit, block-quantized 8-bit moments (~2 bytes).",
    )
    learning_rate: float = Field(1e-4, gt=0)
    weight_decay: float = Field(1e-2, ge=0)
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (
        0.9,
        0.999,
    )
    max_grad_norm: float | None = Field(1.0, gt=0)


class TrainLoopConfig(_Strict):
    steps: int = Field(ge=1, description="Optimizer steps.")
    batch_size: int = Field(1, ge=1, description="Samples per optimizer step, per process.")
    mixed_precision: Literal["no", "bf16", "fp16"] = "bf16"
    gradient_checkpointing: bool = True
    timestep_sampling: Literal["logit_normal", "uniform"] = "logit_normal"
    logit_mean: float = 0.0
    logit_std: float = Field(1.0, gt=0)
    shift: Literal["auto"] | PositiveFloat = Field(
        "auto",
        description="Timestep shift sigma' = shift*s / (1 + (shift-1)*s). auto: FLUX's "
        "resolution-dependent exp(mu) at the dataset's image tokens (1.88 at 512 px); 1 = none.",
    )
    guidance: float = Field(
        1.0,
        ge=0,
        description="Guidance embedding value during training. 1.0: the flow-matching target "
        "(noise - x0) is the unguided velocity, which a guidance-distilled model gives at 1.0 "
        "(kohya's and SimpleTuner's FLUX.1 [dev] setting); see docs/training.md.",
    )
    sample_guidance: float = Field(
        2.5,
        ge=0,
        description="Guidance the validation renders use, and the one recorded in the LoRA as "
        "the value to render with (2.5: FLUX.1 Kontext [dev]'s default).",
    )
    cache_text: bool = Field(True, description="Keep each caption's embeddings once encoded.")
    text_cache_gb: float = Field(
        16.0,
        ge=0,
        description="Cap on the text-embedding cache, in GB of CPU memory (never on the GPU): "
        "~4.2 MB per distinct caption at 512 T5 tokens; past the cap the least recently used "
        "captions are encoded again when drawn.",
    )
    t5_encoder: Literal["on_device", "offload"] = Field(
        "on_device",
        description="offload: T5-XXL's weights stay in CPU memory and stream to the GPU layer by "
        "layer when a caption is encoded (once per caption with cache_text): 9.5 GB less on the "
        "GPU. CLIP (0.25 GB) stays.",
    )
    cache_latents: bool = Field(False, description="Keep VAE latents of layers in memory.")


class TrainConfig(_Strict):
    """One training run: model, data, LoRA, optimizer, loop, checkpoints and samples."""

    model_config = ConfigDict(title="lc training config, version 1")

    version: Literal[1] = 1
    model: str = Field(
        "black-forest-labs/FLUX.1-Kontext-dev", description="Base model, as for `lc render`."
    )
    revision: str | None = None
    model_quantization: Literal["none", "int8", "fp8"] = Field(
        "none",
        description="The frozen transformer's linear weights, quantized as by `lc render "
        "--quantize` (torchao): `int8` halves bf16's memory, on any device. The LoRA stays fp32.",
    )
    device: str = "auto"
    seed: int = Field(0, ge=0, lt=2**63, description="Seeds the LoRA's init and every example.")
    output_dir: str = Field(
        description="Run folder: checkpoints, samples, metrics, the final LoRA."
    )
    data: DataConfig
    lora: LoraConfigSpec = LoraConfigSpec()
    optim: OptimConfig = OptimConfig()
    train: TrainLoopConfig
    checkpoint_every: int = Field(500, ge=1)
    keep_checkpoints: int = Field(3, ge=1)
    sample_every: int = Field(500, ge=1)
    sample_steps: int = Field(28, ge=1)
    validation_canvases: list[str] = Field(
        default_factory=list, description="Canvas files rendered at each sample step."
    )
    tensorboard: Literal["auto", "on", "off"] = "auto"

    @field_validator("model_quantization")
    @classmethod
    def _trainable_quantization(cls, value: str) -> str:
        if value == "fp8":
            # Float8DynamicActivationFloat8WeightConfig multiplies with torch._scaled_mm, which has
            # no derivative: the loss could not reach the LoRA of any block before the last.
            raise ValueError(
                "fp8 cannot train: its fp8 matmuls (torch._scaled_mm) have no backward pass; "
                "use int8 (the same memory for the frozen weights)"
            )
        return value


def load_train_config(path: str | Path, overrides: tuple[str, ...] | list[str] = ()) -> TrainConfig:
    """The validated training config, overrides applied. Relative paths in it are relative to the
    working directory, like the paths given with `--set`."""
    file = read_yaml_file(path, tuple(overrides), kind="training config", error=ConfigError)
    return file.validate(TrainConfig, ConfigError)
