"""Locking-aware sampling: one training example from a multi-image scene.

The target is one image of a scene. Each of its layers (people and background) is locked with
some probability: a locked layer is the target's own pixels, with position index 0. Every other
identity becomes an unlocked layer taken from a *different* image of the same scene — the same
person in another pose and light — placed where that person is in the target, jittered, with
index 1..k. The model learns to keep locked layers and to re-render unlocked ones.

Donors come from another shot than the target's whenever the scene has the person there (a
photo is a shot of its own); only when it has not, from a frame of the target's own shot at
least `min_donor_seconds` away. Frames of one shot a moment apart are near-copies, pixel-aligned
with the target: an unlocked layer the model could copy would teach it to copy. A person with
no allowed donor is always locked.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..geometry import Extent
from ..layers import CanvasLayer, pixels_hash, resize_rgba
from .dataset import BACKGROUND, DatasetIndex, ImageRecord, LayerRecord, SceneRecord


@dataclass(frozen=True)
class SamplingConfig:
    lock_probability: float = 0.5  # each layer is locked independently with this probability
    scale_jitter: float = 0.1  # unlocked people are scaled by U(1 - s, 1 + s) after box matching
    shift_jitter: float = 0.05  # ... and shifted by U(-s, s) times their box size
    color_jitter: float = 0.1  # brightness, contrast and saturation of unlocked layers, U(1 +- c)
    min_donor_seconds: float = 3.0  # a donor from the target's own shot is at least this far away


@dataclass(frozen=True)
class LayerSource:
    """Where a sampled layer came from (for tests, debugging and sample sheets)."""

    identity: str
    image: str  # the dataset image its pixels were taken from
    locked: bool


@dataclass
class TrainingSample:
    target: np.ndarray  # (R, R, 3) uint8: the loss target
    target_file: str  # the dataset image it is
    caption: str
    layers: list[CanvasLayer]  # background first, then people in the target's order
    sources: list[LayerSource]


def sample_example(
    index: DatasetIndex, rng: np.random.Generator, config: SamplingConfig
) -> TrainingSample:
    """Draw one locking-aware training example from the dataset."""
    scene = index.scenes[rng.integers(len(index.scenes))]
    target = scene.images[rng.integers(len(scene.images))]
    canvas = Extent(index.resolution, index.resolution)
    ordered = sorted(target.layers, key=lambda layer: layer.identity != BACKGROUND)
    layers, sources = [], []
    for record in ordered:
        donors = donor_images(scene, target, record.identity, config.min_donor_seconds)
        locked = not donors or rng.random() < config.lock_probability
        if locked:
            pixels, origin, image = index.rgba(record.file), record.box[:2], target
        else:
            image = donors[rng.integers(len(donors))]
            donor = image.layer(record.identity)
            pixels, origin = _place_like(index.rgba(donor.file), donor, record, rng, config)
            pixels = _jitter_colour(pixels, rng, config.color_jitter)
        kind = "background" if record.identity == BACKGROUND else "subject"
        layer = CanvasLayer(
            record.identity,
            kind,
            locked,
            pixels,
            tuple(int(v) for v in origin),
            canvas,
            pixels_hash(pixels),
        )
        layers.append(layer)
        sources.append(LayerSource(record.identity, image.file, locked))
    target_pixels = index.rgba(target.file)[..., :3]
    return TrainingSample(target_pixels, target.file, target.caption, layers, sources)


def shot_of(image: ImageRecord) -> str:
    """The shot an image belongs to; in an index written before shots were recorded, its own."""
    return image.shot if image.shot is not None else image.file


def donor_images(
    scene: SceneRecord, target: ImageRecord, identity: str, min_seconds: float
) -> list[ImageRecord]:
    """The images an unlocked layer of `identity` may be taken from, for this target.

    The other images of the scene with that identity in another shot than the target's; if
    there are none, those of the target's own shot at least `min_seconds` from it (a frame with
    no time is never far enough unless `min_seconds` is 0); else none (the layer is locked).
    """
    others = [
        image for image in scene.images if image is not target and image.layer(identity) is not None
    ]
    target_shot = shot_of(target)
    elsewhere = [image for image in others if shot_of(image) != target_shot]
    if elsewhere:
        return elsewhere
    return [image for image in others if _apart(image, target, min_seconds)]


def _apart(image: ImageRecord, target: ImageRecord, min_seconds: float) -> bool:
    if min_seconds <= 0:
        return True
    if image.seconds is None or target.seconds is None:
        return False
    return abs(image.seconds - target.seconds) >= min_seconds


def _place_like(
    pixels: np.ndarray,
    donor: LayerRecord,
    record: LayerRecord,
    rng: np.random.Generator,
    config: SamplingConfig,
) -> tuple[np.ndarray, tuple[int, int]]:
    """Scale the donor layer to fit the target's box, centre it there, then jitter both."""
    if record.identity == BACKGROUND:
        return pixels, donor.box[:2]  # backgrounds fill the image: only their colour is jittered
    tx0, ty0, tx1, ty1 = record.box
    sx0, sy0, sx1, sy1 = donor.box
    fit = min((tx1 - tx0) / (sx1 - sx0), (ty1 - ty0) / (sy1 - sy0))
    scale = fit * rng.uniform(1 - config.scale_jitter, 1 + config.scale_jitter)
    size = (max(1, round(pixels.shape[1] * scale)), max(1, round(pixels.shape[0] * scale)))
    resized = resize_rgba(pixels, size)
    shift = rng.uniform(-config.shift_jitter, config.shift_jitter, 2) * (tx1 - tx0, ty1 - ty0)
    centre_x = (tx0 + tx1) / 2 + shift[0]
    centre_y = (ty0 + ty1) / 2 + shift[1]
    return resized, (round(centre_x - size[0] / 2), round(centre_y - size[1] / 2))


def _jitter_colour(pixels: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Random brightness, contrast and saturation on RGB; alpha untouched."""
    if strength <= 0:
        return pixels
    rgb = pixels[..., :3].astype(np.float32)
    brightness, contrast, saturation = rng.uniform(1 - strength, 1 + strength, 3)
    rgb = rgb * brightness
    mean = rgb.mean()
    rgb = (rgb - mean) * contrast + mean
    grey = rgb.mean(axis=-1, keepdims=True)
    rgb = (rgb - grey) * saturation + grey
    out = pixels.copy()
    out[..., :3] = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    return out
