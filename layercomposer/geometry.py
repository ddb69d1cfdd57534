"""Small geometry helpers: pixel boxes, extents, anchors and the 16-px token grid."""

from __future__ import annotations

from typing import NamedTuple

from .tokens import TOKEN_PX

# Where each anchor sits inside a box, as fractions of its width and height.
ANCHOR_FRACTIONS: dict[str, tuple[float, float]] = {
    "top-left": (0.0, 0.0),
    "top": (0.5, 0.0),
    "top-right": (1.0, 0.0),
    "left": (0.0, 0.5),
    "center": (0.5, 0.5),
    "right": (1.0, 0.5),
    "bottom-left": (0.0, 1.0),
    "bottom": (0.5, 1.0),
    "bottom-right": (1.0, 1.0),
}


class Extent(NamedTuple):
    width: int
    height: int

    @property
    def token_grid(self) -> Extent:
        """The token grid this pixel extent maps to (one token per 16x16 pixels)."""
        return Extent(self.width // TOKEN_PX, self.height // TOKEN_PX)

    @property
    def area(self) -> int:
        return self.width * self.height


class Box(NamedTuple):
    """A half-open pixel box [x0, x1) x [y0, y1)."""

    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def width(self) -> int:
        return max(0, self.x1 - self.x0)

    @property
    def height(self) -> int:
        return max(0, self.y1 - self.y0)

    @property
    def is_empty(self) -> bool:
        return self.width == 0 or self.height == 0

    def intersect(self, other: Box) -> Box:
        """The overlap of two boxes (possibly empty)."""
        return Box(
            max(self.x0, other.x0),
            max(self.y0, other.y0),
            min(self.x1, other.x1),
            min(self.y1, other.y1),
        )

    def snapped_out(self, step: int, margin: int = 0) -> Box:
        """The smallest box on a `step`-pixel grid containing this one grown by `margin`."""
        return Box(
            (self.x0 - margin) // step * step,
            (self.y0 - margin) // step * step,
            -(-(self.x1 + margin) // step) * step,
            -(-(self.y1 + margin) // step) * step,
        )


def anchored_origin(position: tuple[float, float], anchor: str, size: Extent) -> tuple[int, int]:
    """The integer top-left corner that puts `anchor` of a `size` box at `position`."""
    fx, fy = ANCHOR_FRACTIONS[anchor]
    return round(position[0] - fx * size.width), round(position[1] - fy * size.height)
