"""The timestep shift for training: FLUX's own resolution-dependent rule, or a fixed number.

FLUX samples with sigma' = shift * s / (1 + (shift - 1) * s), where shift = exp(mu) and mu grows
linearly with the number of noisy image tokens, from `base_shift` at `base_image_seq_len` to
`max_shift` at `max_image_seq_len` (diffusers' `calculate_shift`, with `time_shift_type:
exponential`, applies exactly this at inference). Training with the same shift at the training
resolution puts the training noise levels where inference spends its steps.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

# FLUX.1's scheduler config (and diffusers' `calculate_shift` defaults): used only when the
# loaded scheduler's config lacks a key.
FLUX_SHIFT_DEFAULTS = {
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
    "base_shift": 0.5,
    "max_shift": 1.15,
}


def flux_shift(
    image_tokens: int,
    base_image_seq_len: int = 256,
    max_image_seq_len: int = 4096,
    base_shift: float = 0.5,
    max_shift: float = 1.15,
) -> float:
    """exp(mu): FLUX's schedule shift for `image_tokens` noisy tokens (1.88 at 1,024)."""
    slope = (max_shift - base_shift) / (max_image_seq_len - base_image_seq_len)
    mu = base_shift + slope * (image_tokens - base_image_seq_len)
    return math.exp(mu)


def resolve_shift(
    shift: float | str, image_tokens: int, scheduler_config: Mapping[str, Any]
) -> float:
    """The shift to train with: a number as given, or for `auto` FLUX's rule with the
    scheduler config's base/max shift and sequence lengths at `image_tokens`."""
    if shift != "auto":
        return float(shift)
    values = {
        key: scheduler_config.get(key, default) for key, default in FLUX_SHIFT_DEFAULTS.items()
    }
    return flux_shift(image_tokens, **values)


def shift_sigmas(sigmas: np.ndarray, shift: float) -> np.ndarray:
    """sigma' = shift * s / (1 + (shift - 1) * s): more of the samples at high noise when > 1."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)
