"""What a dataset can teach: scenes, images and shots, donors from other shots, and how far
donors are from their targets in appearance.

`lc dataset build` prints these and writes them into `index.json` (`stats`). The measures:

- **people**: person-image pairs (a person in one image), the examples an unlocked layer is
  made for;
- **other-shot share**: of them, those whose person is in another shot of the scene too, so an
  unlocked layer has a donor without pixel correspondence;
- **no-donor share**: those with no donor allowed at all (not in another shot, and no frame of
  their own shot `min_donor_seconds` away): such a layer is always locked;
- **appearance distance**: for each pair with an allowed donor, the mean distance to its allowed
  donors (the sampler draws among them evenly), where the distance between two person layers is
  the mean absolute difference of their RGB, each composited over mid grey and resized to
  64x64 (aspect ignored), in 0..1. Near 0: donors are near-copies of the target. On the test
  clip (two real portraits walking) the same person in another frame is 0.03-0.16 from
  themself, two different people 0.18-0.22 apart.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .dataset import BACKGROUND, SceneRecord
from .sampler import donor_images, shot_of

THUMBNAIL_SIDE = 64
GREY = 128.0  # what a layer's transparent pixels count as


def person_thumbnail(rgba: np.ndarray) -> np.ndarray:
    """(64, 64, 3) float32 in 0..1: an RGBA layer over mid grey, resized to a fixed square."""
    alpha = rgba[..., 3:].astype(np.float32) / 255
    rgb = rgba[..., :3].astype(np.float32) * alpha + GREY * (1 - alpha)
    image = Image.fromarray(np.clip(np.rint(rgb), 0, 255).astype(np.uint8))
    small = image.resize((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.Resampling.BILINEAR)
    return np.asarray(small, np.float32) / 255


def appearance_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two thumbnails (`person_thumbnail`): 0 identical .. 1."""
    return float(np.abs(a - b).mean())


@dataclass(frozen=True)
class Spread:
    """Smallest, median, mean and largest of some values."""

    min: float
    median: float
    mean: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread | None:
        if not len(values):
            return None
        array = np.asarray(values, np.float64)
        return cls(
            float(array.min()), float(np.median(array)), float(array.mean()), float(array.max())
        )

    def to_json(self, digits: int = 4) -> dict[str, float]:
        return {k: round(v, digits) for k, v in vars(self).items()}


@dataclass(frozen=True)
class DatasetStats:
    scenes: int
    images: int
    shots: int
    images_per_scene: Spread | None
    shots_per_scene: Spread | None
    people: int  # person-image pairs
    other_shot: int  # ... whose person is in another shot of the scene too
    no_donor: int  # ... with no allowed donor: always locked
    min_donor_seconds: float
    appearance: Spread | None  # target-donor appearance distance over pairs with a donor

    @property
    def other_shot_share(self) -> float:
        return self.other_shot / self.people if self.people else 0.0

    @property
    def no_donor_share(self) -> float:
        return self.no_donor / self.people if self.people else 0.0

    def to_json(self) -> dict:
        def spread(value: Spread | None) -> dict | None:
            return value.to_json() if value else None

        return {
            "scenes": self.scenes,
            "images": self.images,
            "shots": self.shots,
            "images_per_scene": spread(self.images_per_scene),
            "shots_per_scene": spread(self.shots_per_scene),
            "people": self.people,
            "people_with_other_shot_donor": self.other_shot,
            "other_shot_donor_share": round(self.other_shot_share, 4),
            "people_without_donor": self.no_donor,
            "no_donor_share": round(self.no_donor_share, 4),
            "min_donor_seconds": self.min_donor_seconds,
            "appearance_distance": spread(self.appearance),
        }


def dataset_stats(
    scenes: Sequence[SceneRecord],
    layer_pixels: Callable[[str], np.ndarray],
    min_donor_seconds: float,
) -> DatasetStats:
    """The stats of these scenes; `layer_pixels(file)` gives a layer file's (h, w, 4) pixels.

    Donors are the sampler's own (`donor_images`), so the numbers describe what training sees.
    Each layer file is read once.
    """
    images_per_scene, shots_per_scene, distances = [], [], []
    people = other_shot = no_donor = 0
    for scene in scenes:
        images_per_scene.append(len(scene.images))
        shots_per_scene.append(len({shot_of(image) for image in scene.images}))
        thumbnails: dict[str, np.ndarray] = {}

        def thumbnail(file: str, cache: dict[str, np.ndarray] = thumbnails) -> np.ndarray:
            if file not in cache:
                cache[file] = person_thumbnail(layer_pixels(file))
            return cache[file]

        for target in scene.images:
            target_shot = shot_of(target)
            for layer in target.layers:
                if layer.identity == BACKGROUND:
                    continue
                people += 1
                donors = donor_images(scene, target, layer.identity, min_donor_seconds)
                if any(shot_of(donor) != target_shot for donor in donors):
                    other_shot += 1
                if not donors:
                    no_donor += 1
                    continue
                own = thumbnail(layer.file)
                distances.append(
                    float(
                        np.mean(
                            [
                                appearance_distance(
                                    own, thumbnail(donor.layer(layer.identity).file)
                                )
                                for donor in donors
                            ]
                        )
                    )
                )
    return DatasetStats(
        scenes=len(scenes),
        images=sum(images_per_scene),
        shots=sum(shots_per_scene),
        images_per_scene=Spread.of(images_per_scene),
        shots_per_scene=Spread.of(shots_per_scene),
        people=people,
        other_shot=other_shot,
        no_donor=no_donor,
        min_donor_seconds=min_donor_seconds,
        appearance=Spread.of(distances),
    )


__all__ = ["DatasetStats", "Spread", "appearance_distance", "dataset_stats", "person_thumbnail"]
