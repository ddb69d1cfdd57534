"""Locked-layer fidelity: PSNR and SSIM inside a locked layer's mask, SSIM checked against
scikit-image's, on the example canvas's locked photo of Grace Hopper."""

from __future__ import annotations

import math

import numpy as np
import pytest

from conftest import REPO
from layercomposer.canvas import load_canvas
from layercomposer.eval.fidelity import (
    MASK_THRESHOLD,
    layer_fidelity,
    locked_fidelity,
    masked_ssim,
    pooled,
    psnr_from_mse,
    ssim_map,
)
from layercomposer.layers import build_layers


@pytest.fixture(scope="module")
def layers():
    return build_layers(load_canvas(REPO / "canvases" / "four_people.yaml"))


@pytest.fixture(scope="module")
def locked(layers):
    (hopper,) = [layer for layer in layers if layer.lock]
    return hopper


def pasted(layer, backdrop: np.ndarray) -> np.ndarray:
    """The locked layer's pixels put back, untouched, wherever its mask is."""
    out = backdrop.copy()
    mask = layer.rgba[..., 3] > MASK_THRESHOLD * 255
    out[mask] = layer.rgba[..., :3][mask]
    return out


def noisy(image: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0, sigma, image.shape)
    return np.clip(np.rint(image + noise), 0, 255).astype(np.uint8)


def test_an_untouched_paste_is_infinite_psnr_and_noise_lowers_it(locked):
    backdrop = np.random.default_rng(1).integers(0, 256, locked.rgba.shape[:2] + (3,), np.uint8)
    exact = pasted(locked, backdrop)
    perfect = layer_fidelity(locked, exact)
    assert perfect.name == "hopper" and perfect.pixels > 100_000
    assert perfect.psnr == math.inf and perfect.mse == 0
    assert perfect.ssim > 0.97  # below 1 only at the edge, where windows see the backdrop
    mild, strong = layer_fidelity(locked, noisy(exact, 4)), layer_fidelity(locked, noisy(exact, 24))
    assert 34 < mild.psnr < 38  # 20 log10(255 / 4) = 36.1 dB, a little less after clipping
    assert strong.psnr < mild.psnr - 10
    assert strong.ssim < mild.ssim < perfect.ssim


def test_only_locked_layers_are_measured(layers, locked):
    output = pasted(locked, np.zeros(locked.rgba.shape[:2] + (3,), np.uint8))
    results = locked_fidelity(layers, output)
    assert [r.name for r in results] == ["hopper"]
    assert pooled(results)[0] == math.inf and pooled([]) == (None, None)


def test_a_wrong_size_output_is_refused(locked):
    with pytest.raises(ValueError, match="the canvas is 1024x1024"):
        layer_fidelity(locked, np.zeros((512, 512, 3), np.uint8))


def test_psnr_of_a_known_error():
    assert psnr_from_mse(0.0) == math.inf
    assert psnr_from_mse(255.0**2) == pytest.approx(0.0)
    assert psnr_from_mse(1.0) == pytest.approx(48.1308, abs=1e-4)


skimage_data = pytest.importorskip("skimage.data", reason="scikit-image is in lc's [dev] extra")
skimage_metrics = pytest.importorskip("skimage.metrics")


def test_ssim_map_equals_scikit_image_gaussian_ssim():
    photo = skimage_data.astronaut()[100:260, 120:330]
    other = noisy(photo, 18)
    _, reference = skimage_metrics.structural_similarity(
        photo, other, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
        data_range=255, channel_axis=2, full=True,
    )  # fmt: skip
    np.testing.assert_allclose(ssim_map(photo, other), reference.mean(axis=2), atol=1e-9)
    assert ssim_map(photo, photo) == pytest.approx(np.ones(photo.shape[:2]))


def test_masked_ssim_on_the_masks_box_equals_the_whole_image_map():
    photo = skimage_data.astronaut()[:200, :240]
    other = noisy(photo, 12)
    mask = np.zeros(photo.shape[:2], bool)
    mask[60:150, 3:90] = True  # touching the left edge: the padding must agree too
    assert masked_ssim(photo, other, mask) == pytest.approx(ssim_map(photo, other)[mask].mean())
    assert math.isnan(masked_ssim(photo, other, np.zeros_like(mask)))
