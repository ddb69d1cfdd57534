"""Transparent latent pruning and `[layer, y, x]` position ids, as pure numpy functions.

A FLUX token covers 16x16 canvas pixels (8x VAE, then 2x2 latent patches). A layer keeps a
token where its alpha, sampled by nearest neighbour at the token's centre, is over 0.5. The
kept tokens of every layer follow the noisy image tokens, so the sequence grows with the
visible area, not with the number of layers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

TOKEN_PX = 16
TEXT_TOKENS = 512  # T5 prompt tokens in FLUX.1 Kontext (max_sequence_length)
ALPHA_THRESHOLD = 0.5


def valid_token_mask(alpha: np.ndarray, token_px: int = TOKEN_PX) -> np.ndarray:
    """(H/16, W/16) bool: True where the alpha at the token's centre pixel is over 0.5.

    `alpha` is (H, W) in [0, 1]. Nearest-neighbour downsampling with the sample at the cell's
    centre (pixel 16*i + 8), as `F.interpolate(mode="nearest-exact")` does; a cell's corner pixel
    would bias every mask up and to the left.
    """
    height, width = alpha.shape
    if height % token_px or width % token_px:
        raise ValueError(
            f"alpha of shape {alpha.shape} is not a whole number of {token_px}-px tokens"
        )
    centre = token_px // 2
    return alpha[centre::token_px, centre::token_px] > ALPHA_THRESHOLD


def layer_indices(locks: Sequence[bool]) -> list[int]:
    """The first position-id axis of each layer: 0 if locked, else 1..k over unlocked layers in order.

    Index 0 is the noisy image's own index, so a locked layer reads as "this is the image"
    and is kept; distinct indices keep overlapping unlocked subjects apart.
    """
    indices, next_free = [], 1
    for lock in locks:
        if lock:
            indices.append(0)
        else:
            indices.append(next_free)
            next_free += 1
    return indices


def grid_position_ids(mask: np.ndarray, index: int) -> np.ndarray:
    """(n, 3) int64 `[index, y, x]` for every True cell of a token mask, in row-major order."""
    ys, xs = np.nonzero(mask)  # row-major, the same order as packed latent tokens
    return np.stack([np.full_like(ys, index), ys, xs], axis=1).astype(np.int64)


def noisy_position_ids(grid_height: int, grid_width: int) -> np.ndarray:
    """(H/16 * W/16, 3) int64 `[0, y, x]` for the image being generated."""
    return grid_position_ids(np.ones((grid_height, grid_width), bool), 0)


class _HasTokens(Protocol):
    name: str
    lock: bool
    token_mask: np.ndarray


@dataclass(frozen=True)
class LayerTokens:
    """What one layer contributes to the sequence."""

    name: str
    lock: bool
    index: int  # first axis of its position ids
    mask: np.ndarray  # (H/16, W/16) bool

    @property
    def count(self) -> int:
        return int(self.mask.sum())

    @property
    def position_ids(self) -> np.ndarray:
        return grid_position_ids(self.mask, self.index)


@dataclass(frozen=True)
class TokenPlan:
    """The transformer's sequence for one canvas: text, noisy image and pruned conditioning."""

    grid: tuple[int, int]  # (H/16, W/16)
    layers: tuple[LayerTokens, ...]

    @property
    def noisy_tokens(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def conditioning_tokens(self) -> int:
        """Kept tokens over all layers (transparent latent pruning)."""
        return sum(layer.count for layer in self.layers)

    @property
    def unpruned_tokens(self) -> int:
        """What concatenating every canvas-sized layer whole would cost: N x grid."""
        return len(self.layers) * self.noisy_tokens

    @property
    def collage_tokens(self) -> int:
        """What one flattened collage image costs (the stock-Kontext baseline)."""
        return self.noisy_tokens if self.layers else 0

    @property
    def sequence_length(self) -> int:
        return TEXT_TOKENS + self.noisy_tokens + self.conditioning_tokens

    def conditioning_position_ids(self) -> np.ndarray:
        """(conditioning_tokens, 3) int64, layer after layer in canvas order."""
        if not self.layers:
            return np.zeros((0, 3), np.int64)
        return np.concatenate([layer.position_ids for layer in self.layers])


def plan_tokens(layers: Sequence[_HasTokens]) -> TokenPlan:
    """Return the token plan of layers given bottom to top (background first)."""
    if not layers:
        raise ValueError("a token plan needs at least one layer")
    grid = layers[0].token_mask.shape
    indices = layer_indices([layer.lock for layer in layers])
    planned = tuple(
        LayerTokens(layer.name, layer.lock, index, layer.token_mask)
        for layer, index in zip(layers, indices, strict=True)
    )
    return TokenPlan((int(grid[0]), int(grid[1])), planned)
