"""The 1P input: each identity photo's head, cropped from its face box with a fixed margin.

The paper gives every 1P method "the cropped head" and LayerComposer that same head "placed on
a black canvas". lc crops a square around the detected face box: its side is
(1 + 2 * HEAD_MARGIN) times the face box's size (twice the face with the default 0.5: hair,
ears and chin fit), centred on the box, cut where it leaves the photo. The crop is a fully
opaque layer; autolayout then places it by the eyes on the prior's face (landmark-aligned), and
everything around it is empty canvas: black in `layered` (the layer fill), the collage's base
colour for the baselines, which all get the same cropped head.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError
from ..faces.types import Face
from ..files import write_png_atomic

HEAD_MARGIN = 0.5  # of the face box's size, added on every side


def head_box(face: Face, width: int, height: int, margin: float = HEAD_MARGIN) -> tuple[int, ...]:
    """(x0, y0, x1, y1) in whole pixels: the square around `face`, clipped to the image."""
    side = face.size * (1 + 2 * margin)
    cx, cy = face.center
    x0, y0 = round(cx - side / 2), round(cy - side / 2)
    x1, y1 = round(cx + side / 2), round(cy + side / 2)
    return max(0, x0), max(0, y0), min(width, x1), min(height, y1)


def crop_head(rgb: np.ndarray, face: Face, margin: float = HEAD_MARGIN) -> np.ndarray:
    """(h, w, 3) uint8: the head of the face `face` in `rgb`."""
    x0, y0, x1, y1 = head_box(face, rgb.shape[1], rgb.shape[0], margin)
    return np.ascontiguousarray(rgb[y0:y1, x0:x1])


def write_head(
    photo: Path, rgb: np.ndarray, faces: list[Face], folder: Path, margin: float = HEAD_MARGIN
) -> tuple[Path, Path]:
    """Write the head of the largest face in `rgb` and an all-white mask beside it (the whole
    crop is the layer); return both paths. The head keeps the photo's file stem, so its layer
    keeps the subject's name."""
    if not faces:
        raise InputError(f"identity photo {photo}: no face found to crop the head from")
    head = crop_head(rgb, faces[0], margin)
    image = write_png_atomic(folder / f"{photo.stem}.png", head)
    mask = write_png_atomic(
        folder / f"{photo.stem}.mask.png", np.full(head.shape[:2], 255, np.uint8)
    )
    return image, mask
