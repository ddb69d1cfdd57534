"""The LoRA's optimizer: torch's AdamW, or torchao's AdamW8bit (8-bit moments, a quarter of the
memory of fp32 moments)."""

from __future__ import annotations

import logging

import torch

from ..errors import UsageError
from .config import OptimConfig


def make_optimizer(
    parameters: list[torch.nn.Parameter], config: OptimConfig, device: torch.device
) -> torch.optim.Optimizer:
    """The optimizer `config.name` names, over the trainable parameters."""
    settings = dict(lr=config.learning_rate, betas=config.betas, weight_decay=config.weight_decay)
    if config.name == "adamw":
        return torch.optim.AdamW(parameters, **settings)
    logging.getLogger("torchao").setLevel(logging.ERROR)  # one warning per missing GPU kernel
    try:
        from torchao.optim import AdamW8bit
    except ImportError:
        raise UsageError(
            "optim.name: adamw8bit needs torchao", hint="pip install 'layercomposer[quantize]'"
        ) from None
    # Moments of tensors under 4096 values stay fp32 (torchao follows bitsandbytes here); the
    # others are block-quantized with one fp32 scale per 256 values.
    optimizer_class = AdamW8bit if device.type == "cuda" else _eager(AdamW8bit)
    return optimizer_class(parameters, **settings)


def _eager(optimizer_class: type) -> type:
    """`optimizer_class` with its torch.compile'd per-parameter update run eagerly instead.

    torchao torch.compiles the update once per parameter shape; on a CPU, where lc trains only
    smoke runs, inductor's C++ build takes ~20 s per shape and needs a compiler. The eager update
    is the same arithmetic.
    """

    class Eager(optimizer_class):
        def step(self, closure=None):
            with torch.compiler.set_stance("force_eager"):
                return super().step(closure)

    Eager.__name__ = Eager.__qualname__ = f"Eager{optimizer_class.__name__}"
    return Eager
