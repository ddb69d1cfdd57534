"""Layer transforms, placement, clipping and the collage, checked pixel by pixel."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import disc_rgba
from layercomposer.canvas import load_canvas
from layercomposer.layers import build_layers, flatten


def square(size=32, colour=(10, 200, 30)):
    rgba = np.zeros((size, size, 4), np.uint8)
    rgba[..., :3] = colour
    rgba[..., 3] = 255
    return rgba


def layers_of(make_canvas, layer: dict, images: dict, size=(128, 128), **extra):
    spec = {"prompt": "p", "size": list(size), "layers": [layer], **extra}
    return build_layers(load_canvas(make_canvas(spec, images)))


@pytest.mark.parametrize(
    "anchor, top_left",
    [
        ("top-left", (40, 20)),
        ("center", (24, 4)),
        ("bottom-right", (8, -12)),
        ("top", (24, 20)),
        ("left", (40, 4)),
    ],
)
def test_anchor_puts_that_point_of_the_image_at_position(make_canvas, anchor, top_left):
    (layer,) = layers_of(
        make_canvas,
        {"name": "s", "image": "s.png", "position": [40, 20], "anchor": anchor},
        {"s.png": square()},
    )
    assert layer.origin == top_left
    ys, xs = np.nonzero(layer.rgba[..., 3])
    assert (xs.min(), ys.min()) == (max(top_left[0], 0), max(top_left[1], 0))


def test_layer_is_clipped_at_the_canvas_edge(make_canvas):
    (layer,) = layers_of(
        make_canvas,
        {"name": "s", "image": "s.png", "position": [-16, 112], "anchor": "top-left"},
        {"s.png": square()},
    )
    assert layer.rgba.shape == (128, 128, 4)
    assert layer.visible_pixels == 16 * 16  # a 32-px square, half off in x and in y
    assert layer.token_mask.sum() == 1


def test_scale_crop_flip_rotate(make_canvas):
    image = np.zeros((20, 40, 4), np.uint8)
    image[..., 3] = 255
    image[:, :20, 0] = 255  # left half red, right half green
    image[:, 20:, 1] = 255
    base = {"name": "s", "image": "s.png", "position": [0, 0], "anchor": "top-left"}

    (scaled,) = layers_of(make_canvas, {**base, "scale": 2.0}, {"s.png": image})
    assert scaled.cutout.shape[:2] == (40, 80)

    (flipped,) = layers_of(make_canvas, {**base, "flip": "horizontal"}, {"s.png": image})
    assert tuple(flipped.rgba[5, 2, :3]) == (0, 255, 0)  # green now on the left

    (cropped,) = layers_of(make_canvas, {**base, "crop": [20, 0, 40, 20]}, {"s.png": image})
    assert cropped.cutout.shape[:2] == (20, 20) and cropped.cutout[..., 1].min() == 255

    (rotated,) = layers_of(make_canvas, {**base, "rotate": 90}, {"s.png": image})
    assert rotated.cutout.shape[:2] == (40, 20)  # expanded to hold the turned image
    assert (
        rotated.cutout[35, 10, 0] > 200
    )  # counter-clockwise: the left (red) half ends at the bottom


def test_overlapping_layers_keep_their_full_content(two_discs):
    red, blue = build_layers(load_canvas(two_discs))
    # Both layers cover the overlap, each with its own colour: no occlusion between layers.
    assert red.rgba[64, 64, 3] == blue.rgba[64, 64, 3] == 255
    assert red.rgba[64, 64, 0] > 200 and blue.rgba[64, 64, 2] > 200
    collage = flatten([red, blue])
    assert collage[64, 64, 2] > 200  # z-order: the last layer is on top in the collage only
    assert tuple(collage[2, 2]) == (255, 255, 255)


def test_background_fits(make_canvas):
    wide = np.zeros((50, 100, 3), np.uint8)
    wide[:] = (0, 0, 255)
    layer = {"name": "s", "image": "s.png", "position": [64, 64]}
    images = {"s.png": disc_rgba(64), "bg.png": wide}
    for fit, covered in [("cover", 128 * 128), ("stretch", 128 * 128), ("contain", 128 * 64)]:
        background, _ = layers_of(
            make_canvas, layer, images, background={"image": "bg.png", "fit": fit}
        )
        assert background.name == "background" and background.lock
        assert background.visible_pixels == covered


def test_moving_a_layer_keeps_its_content_hash(make_canvas):
    base = {"name": "s", "image": "s.png", "anchor": "top-left"}
    (a,) = layers_of(make_canvas, {**base, "position": [0, 0]}, {"s.png": square()})
    (b,) = layers_of(make_canvas, {**base, "position": [32, 16]}, {"s.png": square()})
    (c,) = layers_of(make_canvas, {**base, "position": [0, 0], "scale": 1.5}, {"s.png": square()})
    assert a.content_hash == b.content_hash != c.content_hash
