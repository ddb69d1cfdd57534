"""The transparent fill: what the VAE sees, the latent cache, and how a render chooses it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from layercomposer.canvas import load_canvas
from layercomposer.fill import fill_transparent
from layercomposer.latents import LatentCache
from layercomposer.layers import build_layers
from layercomposer.pipeline import LayerComposerPipeline
from layercomposer.render import RenderSettings, choose_fill, render_inputs, rerender_manifest
from layercomposer.tiny import tiny_kontext_components


@pytest.fixture(scope="module")
def pipe():
    return LayerComposerPipeline(**tiny_kontext_components(seed=1))


def test_transparent_pixels_become_the_fill_and_opaque_ones_stay():
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[0] = (200, 100, 50, 255)  # opaque
    rgba[1, 0] = (200, 100, 50, 0)  # transparent: its colour must not show
    rgba[1, 1:] = (200, 100, 50, 51)  # 20% opaque
    black, grey = fill_transparent(rgba, "black"), fill_transparent(rgba, "grey")
    np.testing.assert_array_equal(black[0], grey[0])
    np.testing.assert_array_equal(black[0, 0], (200, 100, 50))
    np.testing.assert_array_equal(black[1, 0], (0, 0, 0))
    np.testing.assert_array_equal(grey[1, 0], (128, 128, 128))
    np.testing.assert_array_equal(black[1, 1], (40, 20, 10))  # 0.2 * colour
    np.testing.assert_array_equal(grey[1, 1], (142, 122, 112))  # 0.2 * colour + 0.8 * 128
    with pytest.raises(ValueError, match="black, grey"):
        fill_transparent(rgba, "white")


def test_black_and_grey_give_different_conditioning_and_never_share_a_cache_entry(pipe, two_discs):
    layers = build_layers(load_canvas(two_discs))
    pipe.latent_cache = LatentCache()
    black, black_ids = pipe.encode_layers(layers, fill="black")
    grey, grey_ids = pipe.encode_layers(layers, fill="grey")
    assert pipe.latent_cache.misses == 2 * len(layers) and pipe.latent_cache.hits == 0
    np.testing.assert_array_equal(black_ids, grey_ids)  # the same kept tokens, other values
    assert (black - grey).abs().max() > 1e-3
    again, _ = pipe.encode_layers(layers, fill="black")
    assert pipe.latent_cache.hits == len(layers)
    torch.testing.assert_close(again, black, rtol=0, atol=0)
    # The default is black, the paper's canvas.
    torch.testing.assert_close(pipe.encode_layers(layers)[0], black, rtol=0, atol=0)


def test_a_fully_opaque_layer_does_not_depend_on_the_fill(pipe):
    from layercomposer.geometry import Extent
    from layercomposer.layers import CanvasLayer

    rgb = np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    rgba = np.dstack([rgb, np.full((64, 96), 255, np.uint8)])
    layer = CanvasLayer("full", "subject", False, rgba, (0, 0), Extent(96, 64), "opaque")
    black, _ = pipe.encode_layer(layer, 1, fill="black")
    grey, _ = pipe.encode_layer(layer, 1, fill="grey")
    torch.testing.assert_close(black, grey, rtol=0, atol=0)


def test_the_pipeline_refuses_an_unknown_fill(pipe, two_discs):
    layers = build_layers(load_canvas(two_discs))
    with pytest.raises(ValueError, match="fill must be one of black, grey"):
        pipe.prepare("a photo", layers, fill="white")


@pytest.mark.parametrize(
    "requested, recorded, has_lora, fill, source, says, warns",
    [
        ("auto", None, False, "black", "default", None, False),
        ("auto", "grey", True, "grey", "lora", "the LoRA's", False),
        ("auto", "black", True, "black", "lora", "the LoRA's", False),
        ("auto", None, True, "black", "default", "records no fill", False),
        ("auto", "purple", True, "black", "default", "unknown fill 'purple'", False),
        ("grey", None, False, "grey", "option", None, False),
        ("grey", "grey", True, "grey", "option", None, False),
        ("grey", "black", True, "grey", "option", "contradicts the LoRA", True),
        ("black", "grey", True, "black", "option", "trained with fill grey", True),
    ],
)
def test_render_fill_choice(requested, recorded, has_lora, fill, source, says, warns):
    choice = choose_fill(requested, recorded, has_lora)
    assert (choice.fill, choice.source, choice.warning) == (fill, source, warns)
    if says is None:
        assert choice.notice is None
    else:
        assert says in choice.notice


def test_inputs_record_the_fill_and_old_manifests_rerender_with_grey(two_discs, tmp_path):
    canvas = load_canvas(two_discs)
    black = render_inputs(canvas, RenderSettings(model="builtin:tiny"), 0)
    grey = render_inputs(canvas, RenderSettings(model="builtin:tiny", fill="grey"), 0)
    assert (black["fill"], grey["fill"]) == ("black", "grey")

    # A manifest from before the fill was recorded was rendered with grey: reproduce that.
    import json

    from layercomposer.manifest import build_manifest

    del black["fill"]
    manifest = build_manifest(black, output={"image": "0.png", "sha256": "0" * 64})
    path = tmp_path / "0.json"
    path.write_text(json.dumps(manifest))
    seen = []

    class Stop(Exception):
        pass

    def factory(settings):
        seen.append(settings)
        raise Stop

    with pytest.raises(Stop):
        rerender_manifest(path, tmp_path / "again", factory)
    assert seen[0].fill == "grey"
