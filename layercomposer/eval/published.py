"""The paper's Table 1: every published row (ArcFace, VQAScore, HPSv3) of the 1P, 2P and 4P
settings, and which `lc bench` method reproduces each.

Rows without an lc method are shown as published only: Nano-Banana is a closed API, and the 2P
and 1P baselines do not run through diffusers.
"""

from __future__ import annotations

from dataclasses import dataclass

# lc bench's methods and the names the paper gives them.
PAPER_NAMES: dict[str, str] = {
    "layered": "LayerComposer",
    "collage": "FLUX Kontext",
    "overlay-kontext": "Overlay Kontext",
    "qwen-image-edit": "Qwen-Image-Edit",
}
SOURCE = "LayerComposer paper, Table 1"


@dataclass(frozen=True)
class Published:
    """One published row of Table 1."""

    setting: str  # "4P"
    method: str  # the paper's name: "FLUX Kontext"
    arcface: float
    vqascore: float
    hpsv3: float
    lc_method: str | None = None  # the lc bench method that reproduces it; None: not runnable
    why_not: str = ""  # for rows lc cannot run: why

    @property
    def source(self) -> str:
        return f"{self.method} ({SOURCE})"


_OUTSIDE = "outside diffusers: published figures only"
TABLE_1: dict[str, tuple[Published, ...]] = {
    "4p": (
        Published("4P", "FLUX Kontext", 0.217, 0.869, 12.3, "collage"),
        Published("4P", "Overlay Kontext", 0.251, 0.828, 11.2, "overlay-kontext"),
        Published("4P", "Qwen-Image-Edit", 0.236, 0.869, 11.6, "qwen-image-edit"),
        Published("4P", "Nano-Banana", 0.434, 0.826, 10.4, None, "a closed API: not run"),
        Published("4P", "LayerComposer", 0.533, 0.840, 12.5, "layered"),
    ),
    "2p": (
        Published("2P", "UniPortrait", 0.536, 0.723, 8.01, None, _OUTSIDE),
        Published("2P", "StoryMaker", 0.542, 0.523, 4.97, None, _OUTSIDE),
        Published("2P", "UNO", 0.071, 0.870, 11.2, None, _OUTSIDE),
        Published("2P", "OmniGen2", 0.121, 0.828, 12.8, None, _OUTSIDE),
        Published("2P", "LayerComposer", 0.547, 0.796, 11.6, "layered"),
    ),
    "1p": (
        Published("1P", "IPA-FLUX", 0.453, 0.790, 9.88, None, _OUTSIDE),
        Published("1P", "PuLID-FLUX", 0.639, 0.859, 11.5, None, _OUTSIDE),
        Published("1P", "InfiniteYou", 0.528, 0.853, 13.2, None, _OUTSIDE),
        Published("1P", "LayerComposer", 0.487, 0.893, 12.5, "layered"),
    ),
}


def layercomposer_row(suite: str) -> Published:
    """The paper's own figures for `suite` (1p, 2p or 4p)."""
    return next(row for row in TABLE_1[suite] if row.lc_method == "layered")


def paper_name(method: str) -> str | None:
    """The paper's name for an lc bench method, or None for another label."""
    return PAPER_NAMES.get(method)
