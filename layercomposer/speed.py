"""Speed options for the transformer: torch.compile, first-block caching, quantized weights.

`compile` keeps the image (up to float rounding); first-block caching and quantization change
it. All are off by default and, when on, recorded in a render's manifest inputs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from .choices import Quantize, names
from .errors import UsageError

QUANTIZE_MODES = names(Quantize)
# Inductor on a GPU; the tests swap in "eager" (dynamo tracing only), which compiles in seconds.
COMPILE_BACKEND = "inductor"
_FBC_HEAD_HOOK = "fbc_leader_block_hook"  # diffusers.hooks.first_block_cache._FBC_LEADER_BLOCK_HOOK


@dataclass(frozen=True)
class SpeedOptions:
    """How the transformer is made faster; the defaults leave it as loaded."""

    compile: bool = False
    first_block_cache: float | None = None  # threshold; None: every step runs every block
    quantize: Quantize = "none"

    def __post_init__(self) -> None:
        if self.quantize not in QUANTIZE_MODES:
            raise UsageError(
                f"--quantize {self.quantize!r}: choose one of {', '.join(QUANTIZE_MODES)}"
            )
        if self.first_block_cache is not None and not self.first_block_cache > 0:
            raise UsageError(
                f"--first-block-cache {self.first_block_cache}: the threshold must be above 0 "
                "(0.05-0.15 is usual; leave the option out to run every block)"
            )


def quantize_transformer(transformer, mode: Quantize) -> None:
    """Quantize the transformer's linear layers in place with torchao.

    `int8`: int8 weights, dequantized in each matmul: half the memory of bf16, any device.
    `fp8`: fp8 weights and activations with fp8 matmuls: faster, needs a GPU of compute
    capability 8.9 or later (Ada, Hopper).
    """
    if mode == "none":
        return
    import torch

    if mode == "fp8":
        capability = torch.cuda.get_device_capability() if torch.cuda.is_available() else None
        if capability is None or capability < (8, 9):
            raise UsageError(
                "--quantize fp8 needs a GPU of compute capability 8.9 or later (Ada, Hopper)",
                hint="use --quantize int8 (smaller weights, any device)",
            )
    # torchao logs a warning per optional GPU kernel library it cannot load (all of them on a CPU).
    logging.getLogger("torchao").setLevel(logging.ERROR)
    try:
        from torchao.quantization import (
            Float8DynamicActivationFloat8WeightConfig,
            Int8WeightOnlyConfig,
            quantize_,
        )
    except ImportError:
        raise UsageError(
            f"--quantize {mode} needs torchao", hint="pip install 'layercomposer[quantize]'"
        ) from None
    config = (
        Float8DynamicActivationFloat8WeightConfig() if mode == "fp8" else Int8WeightOnlyConfig()
    )
    quantize_(transformer, config)


def enable_first_block_cache(transformer, threshold: float) -> None:
    """Skip the blocks after the first at steps where the first block's output barely changed.

    diffusers' First Block Cache: when the first block's residual moves less than `threshold`
    (relative mean) since the last full step, the other blocks' cached residual is reused.
    """
    from diffusers.hooks import FirstBlockCacheConfig

    transformer.enable_cache(FirstBlockCacheConfig(threshold=threshold))


def ran_every_block(transformer) -> bool:
    """Whether the last transformer call computed every block (False: first-block cache hit).

    Read inside the pipeline's `cache_context`, right after the call.
    """
    from diffusers.hooks import HookRegistry

    for module in transformer.modules():
        registry = getattr(module, "_diffusers_hook", None)
        hook = registry.get_hook(_FBC_HEAD_HOOK) if isinstance(registry, HookRegistry) else None
        if hook is not None:
            return bool(hook.state_manager.get_state().should_compute)
    return True


def compile_transformer(transformer, fullgraph: bool = True) -> None:
    """torch.compile each repeated block (regional compilation: same speed, far shorter compile).

    Shapes are static at first and turn dynamic at the first new sequence length, so a batch of
    canvases of different sizes compiles twice, not once per canvas.
    """
    transformer.compile_repeated_blocks(backend=COMPILE_BACKEND, fullgraph=fullgraph)


def apply_speed_options(transformer, options: SpeedOptions) -> None:
    """Apply first-block caching, then compilation (quantization goes first: see load_pipeline)."""
    if options.first_block_cache is not None:
        enable_first_block_cache(transformer, options.first_block_cache)
    if options.compile:
        # The cache decides per step, in Python, whether to run the remaining blocks: a graph
        # break that fullgraph would refuse.
        compile_transformer(transformer, fullgraph=options.first_block_cache is None)
