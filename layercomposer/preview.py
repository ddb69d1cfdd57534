"""The preview image: the collage with each layer's outline, name, lock mark and tokens."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .layers import CanvasLayer, flatten
from .tokens import TOKEN_PX

# Distinct, readable outline colours, cycled over layers.
PALETTE = [
    (230, 25, 75),
    (60, 180, 75),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (128, 128, 0),
]


def outline_mask(alpha: np.ndarray, width: int = 2) -> np.ndarray:
    """(H, W) bool: pixels inside the shape (alpha > 0.5) within `width` px of its edge."""
    inside = alpha > 0.5
    eroded = inside.copy()
    for _ in range(width):
        shrunk = eroded.copy()
        shrunk[1:, :] &= eroded[:-1, :]
        shrunk[:-1, :] &= eroded[1:, :]
        shrunk[:, 1:] &= eroded[:, :-1]
        shrunk[:, :-1] &= eroded[:, 1:]
        eroded = shrunk
    return inside & ~eroded


def render_preview(layers: list[CanvasLayer], show_tokens: bool = False) -> np.ndarray:
    """(H, W, 3) uint8: the collage, annotated so a person can check the layout at a glance."""
    image = flatten(layers).astype(np.float32)
    if show_tokens:
        image = _token_overlay(image, layers)
    for i, layer in enumerate(layers):
        colour = np.asarray(PALETTE[i % len(PALETTE)], np.float32)
        image[outline_mask(layer.alpha)] = colour
    canvas = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=max(12, min(canvas.size) // 48))
    for i, layer in enumerate(layers):
        box = layer.visible_box
        colour = PALETTE[i % len(PALETTE)]
        label = f"{layer.name}  [{'locked' if layer.lock else 'free'}]"
        _label(draw, (box.x0 + 4, box.y0 + 4), label, colour, font, layer.lock)
    return np.asarray(canvas)


def _token_overlay(image: np.ndarray, layers: list[CanvasLayer]) -> np.ndarray:
    """Tint each layer's kept tokens with its colour and draw the 16-px grid."""
    height, width = image.shape[:2]
    tint = np.zeros_like(image)
    hits = np.zeros((height, width, 1), np.float32)
    for i, layer in enumerate(layers):
        cells = np.kron(layer.token_mask, np.ones((TOKEN_PX, TOKEN_PX), bool))
        tint[cells] += np.asarray(PALETTE[i % len(PALETTE)], np.float32)
        hits[cells] += 1
    covered = hits[..., 0] > 0
    image[covered] = 0.55 * image[covered] + 0.45 * (tint[covered] / hits[covered])
    image[::TOKEN_PX, :] *= 0.75
    image[:, ::TOKEN_PX] *= 0.75
    return image


def _label(
    draw: ImageDraw.ImageDraw, xy: tuple[int, int], text: str, colour, font, lock: bool
) -> None:
    x, y = xy
    left, top, right, bottom = draw.textbbox((x, y), text, font=font)
    pad = 3
    lock_width = (bottom - top) + pad if lock else 0
    draw.rectangle((left - pad, top - pad, right + pad + lock_width, bottom + pad), fill=colour)
    draw.text((x, y), text, fill=(255, 255, 255), font=font)
    if lock:  # a small padlock: shackle arc over a body
        size = bottom - top
        lx = right + pad
        draw.arc(
            (lx + size * 0.2, top, lx + size * 0.8, top + size * 0.7),
            180,
            360,
            fill=(255, 255, 255),
            width=2,
        )
        draw.rectangle((lx, top + size * 0.4, lx + size, bottom), fill=(255, 255, 255))
