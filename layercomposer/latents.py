"""Torch helpers for latent tokens: pack/unpack 2x2 patches, and the layer-latent cache."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .files import atomic_path


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, h/2 * w/2, C*4): one token per 2x2 latent patch, row-major.

    The same layout as diffusers' `FluxPipeline._pack_latents`.
    """
    batch, channels, height, width = latents.shape
    patches = latents.view(batch, channels, height // 2, 2, width // 2, 2)
    patches = patches.permute(0, 2, 4, 1, 3, 5)  # (B, h/2, w/2, C, 2, 2)
    return patches.reshape(batch, (height // 2) * (width // 2), channels * 4)


def unpack_latents(tokens: torch.Tensor, grid_height: int, grid_width: int) -> torch.Tensor:
    """(B, gh*gw, C*4) -> (B, C, 2*gh, 2*gw): the inverse of `pack_latents`."""
    batch, _, packed = tokens.shape
    patches = tokens.view(batch, grid_height, grid_width, packed // 4, 2, 2)
    patches = patches.permute(0, 3, 1, 4, 2, 5)  # (B, C, gh, 2, gw, 2)
    return patches.reshape(batch, packed // 4, grid_height * 2, grid_width * 2)


class LatentCache:
    """Packed layer latents keyed by what was encoded, in memory and optionally on disk.

    The key says what the VAE saw (the layer's pixels and how they sit in the encoded box),
    never where the layer is on the canvas, so moving a layer by whole tokens is a cache hit.
    """

    def __init__(self, directory: str | Path | None = None, max_entries: int = 64):
        self.directory = Path(directory) if directory else None
        self.max_entries = max_entries
        self._memory: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.hits = self.misses = 0

    @staticmethod
    def key(*parts: object) -> str:
        return hashlib.sha256(repr(parts).encode()).hexdigest()

    def get(self, key: str) -> torch.Tensor | None:
        if key in self._memory:
            self._memory.move_to_end(key)
            self.hits += 1
            return self._memory[key]
        path = self._path(key)
        if path is not None and path.exists():
            try:
                tensor = load_file(path)["latents"]
            except Exception:  # noqa: BLE001 - a damaged cache file is only a miss
                path.unlink(missing_ok=True)
            else:
                self.hits += 1
                self._remember(key, tensor)
                return tensor
        self.misses += 1
        return None

    def put(self, key: str, latents: torch.Tensor) -> None:
        latents = latents.detach().to("cpu").contiguous()
        self._remember(key, latents)
        path = self._path(key)
        if path is not None:
            with atomic_path(path) as temp:
                save_file({"latents": latents}, temp)

    def _remember(self, key: str, latents: torch.Tensor) -> None:
        self._memory[key] = latents
        self._memory.move_to_end(key)
        while len(self._memory) > self.max_entries:
            self._memory.popitem(last=False)

    def _path(self, key: str) -> Path | None:
        return self.directory / key[:2] / f"{key}.safetensors" if self.directory else None
