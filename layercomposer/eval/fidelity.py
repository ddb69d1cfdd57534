"""How exactly locked layers come back: PSNR and SSIM between a layer's pixels and the output,
inside the layer's mask. A locked layer is meant to be kept almost exactly (only relit), so
these say whether locking worked; they mean nothing for unlocked layers, which may be re-posed.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from ..layers import CanvasLayer

MASK_THRESHOLD = 0.5  # the same rule as token pruning: a pixel belongs to a layer above this
SSIM_SIGMA = 1.5  # Wang et al. (2004): an 11x11 Gaussian window, sigma 1.5
SSIM_RADIUS = 5  # int(3.5 * sigma + 0.5), as scipy/scikit-image truncate the Gaussian
K1, K2 = 0.01, 0.03


@dataclass(frozen=True)
class LayerFidelity:
    """One locked layer compared with the output."""

    name: str
    pixels: int  # pixels inside the mask, on the canvas
    mse: float
    psnr: float  # dB; inf when identical
    ssim: float

    def to_dict(self) -> dict:
        return asdict(self)


def psnr_from_mse(mse: float, data_range: float = 255.0) -> float:
    """Peak signal-to-noise ratio in dB; inf for identical pixels."""
    return math.inf if mse <= 0 else 10.0 * math.log10(data_range**2 / mse)


def masked_mse(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """Mean squared difference over the pixels in `mask` (all channels); a, b: (H, W, C)."""
    diff = a[mask].astype(np.float64) - b[mask].astype(np.float64)  # (N, C)
    return float(np.mean(diff**2)) if diff.size else 0.0


def _gaussian_kernel(sigma: float = SSIM_SIGMA, radius: int = SSIM_RADIUS) -> np.ndarray:
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


def _blur(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Separable Gaussian filter of an (H, W, C) float array, edges mirrored as scipy's
    `mode="reflect"` does (the edge pixel repeated), so maps match scikit-image's."""
    radius = len(kernel) // 2
    padded = np.pad(image, ((radius, radius), (radius, radius), (0, 0)), mode="symmetric")
    height, width = image.shape[:2]
    rows = sum(w * padded[i : i + height] for i, w in enumerate(kernel))  # (H, W + 2r, C)
    return sum(w * rows[:, i : i + width] for i, w in enumerate(kernel))  # (H, W, C)


def ssim_map(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> np.ndarray:
    """(H, W): the SSIM index at every pixel (Gaussian-weighted, averaged over channels).

    a, b: (H, W) or (H, W, C) arrays of the same shape.
    """
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")
    x = np.atleast_3d(a).astype(np.float64)
    y = np.atleast_3d(b).astype(np.float64)
    kernel = _gaussian_kernel()
    mu_x, mu_y = _blur(x, kernel), _blur(y, kernel)
    var_x = _blur(x * x, kernel) - mu_x**2
    var_y = _blur(y * y, kernel) - mu_y**2
    cov = _blur(x * y, kernel) - mu_x * mu_y
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    index = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
        (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    )
    return index.mean(axis=2)


def masked_ssim(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """Mean SSIM over the pixels in `mask`, computed only around the mask's box (plus the
    window's reach, so every masked pixel sees the same neighbourhood as on the whole image)."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return math.nan
    height, width = mask.shape
    y0, y1 = max(0, ys.min() - SSIM_RADIUS), min(height, ys.max() + 1 + SSIM_RADIUS)
    x0, x1 = max(0, xs.min() - SSIM_RADIUS), min(width, xs.max() + 1 + SSIM_RADIUS)
    index = ssim_map(a[y0:y1, x0:x1], b[y0:y1, x0:x1])
    return float(index[mask[y0:y1, x0:x1]].mean())


def layer_fidelity(layer: CanvasLayer, output: np.ndarray) -> LayerFidelity:
    """PSNR and SSIM of `output` (H, W, 3) uint8 against `layer` inside its mask."""
    rgba = layer.rgba  # (H, W, 4), canvas-sized
    if rgba.shape[:2] != output.shape[:2]:
        raise ValueError(
            f"the output is {output.shape[1]}x{output.shape[0]} but the canvas is "
            f"{rgba.shape[1]}x{rgba.shape[0]}"
        )
    mask = rgba[..., 3] > MASK_THRESHOLD * 255
    mse = masked_mse(rgba[..., :3], output, mask)
    return LayerFidelity(
        layer.name,
        int(mask.sum()),
        mse,
        psnr_from_mse(mse),
        masked_ssim(rgba[..., :3], output, mask),
    )


def locked_fidelity(layers: list[CanvasLayer], output: np.ndarray) -> list[LayerFidelity]:
    """One `LayerFidelity` per locked layer (the background too, when locked)."""
    return [layer_fidelity(layer, output) for layer in layers if layer.lock]


def pooled(results: list[LayerFidelity]) -> tuple[float | None, float | None]:
    """(PSNR of all locked pixels together, pixel-weighted mean SSIM); None without any."""
    total = sum(r.pixels for r in results)
    if not total:
        return None, None
    mse = sum(r.mse * r.pixels for r in results) / total
    ssim = sum(r.ssim * r.pixels for r in results) / total
    return psnr_from_mse(mse), ssim
