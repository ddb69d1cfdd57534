"""The colour a layer's transparent pixels are VAE-encoded as: the layer's "canvas".

The paper places each cut-out on a black canvas for training and evaluation ("to be compatible
with our training"), so black is the default; grey (128, ~0 in the VAE's [-1, 1] input) is what
lc 0.1.0 used and stays available. A LoRA is trained with one fill and should be rendered
with the same one, so `lc train` records it in the LoRA file (see `lora_metadata`).
"""

from __future__ import annotations

import numpy as np

from .choices import Fill, names

FILL_VALUES: dict[str, int] = {"black": 0, "grey": 128}
FILLS = names(Fill)
DEFAULT_FILL: Fill = "black"
LEGACY_FILL: Fill = "grey"  # what manifests written before the fill was recorded were rendered with


def check_fill(fill: str) -> Fill:
    """Returns `fill` if it names a fill; raises ValueError saying which do."""
    if fill not in FILL_VALUES:
        raise ValueError(f"fill must be one of {', '.join(FILLS)}, got {fill!r}")
    return fill  # type: ignore[return-value]


def fill_transparent(rgba: np.ndarray, fill: Fill) -> np.ndarray:
    """(h, w, 3) uint8: `rgba` (h, w, 4) alpha-composited over the plain `fill` colour."""
    value = FILL_VALUES[check_fill(fill)]
    rgba = rgba.astype(np.float32)
    alpha = rgba[..., 3:] / 255.0
    return np.rint(rgba[..., :3] * alpha + value * (1.0 - alpha)).astype(np.uint8)
