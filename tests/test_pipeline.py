"""LayerComposerPipeline against diffusers' own FluxKontextPipeline, and what the transformer sees."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import FluxKontextPipeline

from conftest import stock_kontext
from layercomposer.canvas import load_canvas
from layercomposer.geometry import Extent
from layercomposer.latents import LatentCache, pack_latents, unpack_latents
from layercomposer.layers import CanvasLayer, build_layers, flatten
from layercomposer.pipeline import LayerComposerPipeline
from layercomposer.tiny import tiny_kontext_components
from layercomposer.tokens import TEXT_TOKENS

STEPS = dict(num_inference_steps=3, guidance_scale=2.5)


@pytest.fixture(scope="module")
def components():
    return tiny_kontext_components(seed=1)


@pytest.fixture
def pipe(components):
    return LayerComposerPipeline(**components)


def generator(seed=7):
    return torch.Generator().manual_seed(seed)


def kontext(components, image: np.ndarray) -> np.ndarray:
    """Stock FLUX.1 Kontext, reference image at the canvas size (no auto-resize)."""
    steps, guidance = STEPS["num_inference_steps"], STEPS["guidance_scale"]
    return stock_kontext(FluxKontextPipeline(**components), image, 7, steps, guidance)


def opaque_layer(width=96, height=64, lock=False, seed=0) -> CanvasLayer:
    rgb = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    rgba = np.dstack([rgb, np.full((height, width), 255, np.uint8)])
    return CanvasLayer("full", "subject", lock, rgba, (0, 0), Extent(width, height), f"full{seed}")


def test_collage_mode_equals_stock_kontext_on_the_collage(components, pipe, two_discs):
    layers = build_layers(load_canvas(two_discs))
    ours = pipe("a photo", layers, mode="collage", generator=generator(), output_type="np", **STEPS)
    expected = kontext(components, flatten(layers))
    np.testing.assert_array_equal(ours.images, expected)
    assert ours.mode == "collage" and ours.tokens["conditioning"] == 64


def test_one_opaque_unlocked_canvas_layer_equals_kontext_on_that_image(components, pipe):
    layer = opaque_layer()
    ours = pipe(
        "a photo", [layer], mode="layered", generator=generator(), output_type="np", **STEPS
    )
    expected = kontext(components, layer.rgba[..., :3])
    np.testing.assert_array_equal(ours.images, expected)


def test_locking_changes_the_image(pipe):
    free = pipe(
        "a photo",
        [opaque_layer()],
        mode="layered",
        generator=generator(),
        output_type="np",
        **STEPS,
    )
    locked = pipe(
        "a photo",
        [opaque_layer(lock=True)],
        mode="layered",
        generator=generator(),
        output_type="np",
        **STEPS,
    )
    assert np.abs(free.images - locked.images).max() > 0


class TransformerSpy:
    """Wraps the transformer's forward and records what it was given."""

    def __init__(self, transformer):
        self.calls = []
        self.forward = transformer.forward

        def spy(*args, **kwargs):
            self.calls.append(
                {"hidden": kwargs["hidden_states"].shape, "img_ids": kwargs["img_ids"].clone()}
            )
            return self.forward(*args, **kwargs)

        transformer.forward = spy


def slow_expected_ids(layers):
    """Noisy [0, y, x] over the grid, then each layer's centre-sampled cells, locked 0, free 1..k."""
    grid_w, grid_h = layers[0].canvas_size.width // 16, layers[0].canvas_size.height // 16
    rows = [[0, y, x] for y in range(grid_h) for x in range(grid_w)]
    free = 0
    for layer in layers:
        index = 0 if layer.lock else (free := free + 1)
        for y in range(grid_h):
            for x in range(grid_w):
                if layer.rgba[16 * y + 8, 16 * x + 8, 3] / 255 > 0.5:
                    rows.append([index, y, x])
    return np.array(rows)


def test_transformer_gets_exactly_the_planned_ids_and_length(make_canvas):
    from conftest import disc_rgba

    spec = {
        "prompt": "three",
        "size": [160, 128],
        "layers": [
            {"name": "a", "image": "a.png", "position": [50, 64], "lock": True},
            {"name": "b", "image": "b.png", "position": [80, 64]},  # overlaps a
            {"name": "c", "image": "c.png", "position": [120, 60], "scale": 0.75},  # overlaps b
        ],
    }
    images = {
        "a.png": disc_rgba(64),
        "b.png": disc_rgba(64, (0, 0, 255)),
        "c.png": disc_rgba(64, (0, 255, 0)),
    }
    layers = build_layers(load_canvas(make_canvas(spec, images)))
    pipe = LayerComposerPipeline(**tiny_kontext_components())
    spy = TransformerSpy(pipe.transformer)
    out = pipe(
        "three",
        layers,
        mode="layered",
        generator=generator(),
        output_type="np",
        num_inference_steps=2,
    )

    expected = slow_expected_ids(layers)
    assert len(spy.calls) == 2
    for call in spy.calls:
        assert call["hidden"] == (1, len(expected), 64)
        np.testing.assert_array_equal(call["img_ids"].numpy(), expected)
    assert out.tokens["total"] == TEXT_TOKENS + len(expected)
    assert set(expected[80:, 0]) == {0, 1, 2}  # a locked (0), b and c free (1, 2)


def test_box_encoding_gives_the_same_ids_and_equals_canvas_when_the_box_is_the_canvas(
    pipe, two_discs
):
    layers = build_layers(load_canvas(two_discs))
    box_tokens, box_ids = pipe.encode_layer(layers[1], 1, encode="box")
    full_tokens, full_ids = pipe.encode_layer(layers[1], 1, encode="canvas")
    np.testing.assert_array_equal(box_ids, full_ids)
    assert box_tokens.shape == full_tokens.shape
    whole = opaque_layer(seed=3)  # its box plus margin is the whole canvas
    torch.testing.assert_close(
        pipe.encode_layer(whole, 1, "box")[0], pipe.encode_layer(whole, 1, "canvas")[0]
    )


def test_moving_a_layer_by_whole_tokens_hits_the_cache(pipe, make_canvas):
    from conftest import disc_rgba

    pipe.latent_cache = LatentCache()

    def layer_at(x):
        spec = {
            "prompt": "p",
            "size": [256, 128],
            "layers": [{"name": "a", "image": "a.png", "position": [x, 64]}],
        }
        return build_layers(load_canvas(make_canvas(spec, {"a.png": disc_rgba(48)})))[0]

    first, first_ids = pipe.encode_layer(layer_at(96), 1, encode="box")
    moved, moved_ids = pipe.encode_layer(layer_at(96 + 32), 1, encode="box")
    assert (pipe.latent_cache.hits, pipe.latent_cache.misses) == (1, 1)
    torch.testing.assert_close(first, moved, rtol=0, atol=0)
    np.testing.assert_array_equal(moved_ids[:, 2], first_ids[:, 2] + 2)  # two tokens to the right
    pipe.encode_layer(layer_at(96 + 8), 1, encode="box")  # half a token: a different encode
    assert pipe.latent_cache.misses == 2
    pipe.encode_layer(layer_at(96), 1, encode="canvas")  # canvas encodes depend on the position
    pipe.encode_layer(layer_at(96 + 32), 1, encode="canvas")
    assert pipe.latent_cache.misses == 4


def test_disk_cache_round_trip(tmp_path, pipe, two_discs):
    layers = build_layers(load_canvas(two_discs))
    pipe.latent_cache = LatentCache(tmp_path / "cache")
    written, _ = pipe.encode_layer(layers[0], 0)
    pipe.latent_cache = LatentCache(tmp_path / "cache")  # a new process: memory empty
    read, _ = pipe.encode_layer(layers[0], 0)
    assert pipe.latent_cache.hits == 1
    torch.testing.assert_close(written, read, rtol=0, atol=0)


def test_pack_matches_diffusers_and_unpack_inverts_it():
    latents = torch.randn(2, 16, 8, 12)
    np.testing.assert_array_equal(
        pack_latents(latents).numpy(),
        FluxKontextPipeline._pack_latents(latents, 2, 16, 8, 12).numpy(),
    )
    torch.testing.assert_close(unpack_latents(pack_latents(latents), 4, 6), latents, rtol=0, atol=0)


def test_auto_mode_without_lora_is_collage_and_says_why(pipe):
    out = pipe(
        "a photo",
        [opaque_layer()],
        mode="auto",
        generator=generator(),
        output_type="np",
        num_inference_steps=1,
    )
    assert out.mode == "collage" and "LoRA" in out.mode_reason


def test_bad_inputs_are_refused(pipe):
    with pytest.raises(ValueError, match="mode"):
        pipe("a photo", [opaque_layer()], mode="stacked")
    with pytest.raises(ValueError, match="empty"):
        pipe("a photo", [])
