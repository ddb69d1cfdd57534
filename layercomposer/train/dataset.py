"""The layered dataset on disk: an index of scenes, their images, and each image's layers.

    DATASET/index.json
    DATASET/<scene>/<image>.png              the image, at the dataset's square resolution
    DATASET/<scene>/<image>.<identity>.png   one RGBA layer per person, cropped to its box
    DATASET/<scene>/<image>.background.png   the image with the people removed (alpha 0 there)

Every image of a scene is stored at the same square resolution, so a layer copied from the target
is the target's pixels exactly, and a layer from another image lands on the same pixel grid.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..errors import LcError
from ..limits import eight_bit, open_image_bounded, read_json_bounded

INDEX_NAME = "index.json"
INDEX_VERSION = 1
BACKGROUND = "background"


@dataclass(frozen=True)
class LayerRecord:
    """One layer of one image: a person (by identity) or the background."""

    identity: str  # "<scene>/<person id>" for people, "background" for the background
    file: str  # relative to the dataset folder
    box: tuple[int, int, int, int]  # where the cropped layer sits in its image
    face: tuple[int, int, int, int] | None = None


@dataclass(frozen=True)
class ImageRecord:
    file: str
    caption: str
    layers: tuple[LayerRecord, ...]

    def layer(self, identity: str) -> LayerRecord | None:
        return next((layer for layer in self.layers if layer.identity == identity), None)


@dataclass(frozen=True)
class SceneRecord:
    name: str
    images: tuple[ImageRecord, ...]


@dataclass(frozen=True)
class DatasetIndex:
    """Everything `lc dataset build` wrote, as `index.json` says it."""

    root: Path
    resolution: int
    scenes: tuple[SceneRecord, ...]
    dropped: dict[str, list[str]] = field(default_factory=dict)  # reason -> items

    def to_json(self) -> dict:
        return {
            "version": INDEX_VERSION,
            "resolution": self.resolution,
            "scenes": [asdict(scene) for scene in self.scenes],
            "dropped": self.dropped,
        }

    def rgba(self, relative: str) -> np.ndarray:
        """(h, w, 4) uint8 pixels of a layer or image file of this dataset."""
        return _read_rgba(str(self.root / relative))


@lru_cache(maxsize=256)
def _read_rgba(path: str) -> np.ndarray:
    pixels = np.asarray(eight_bit(open_image_bounded(path)).convert("RGBA"))
    pixels.setflags(write=False)  # shared by the cache: nobody may change it
    return pixels


def load_index(root: str | Path) -> DatasetIndex:
    """Return the dataset index at `root`, or an LcError saying how to make one."""
    root = Path(root)
    path = root / INDEX_NAME
    try:
        data = read_json_bounded(path)
    except FileNotFoundError:
        raise LcError(
            f"no dataset at {root} (no {INDEX_NAME})",
            hint="build one with `lc dataset build SCENES -o DATASET`",
        ) from None
    except (OSError, ValueError) as exc:
        raise LcError(f"{path} is not a readable dataset index ({exc})") from None
    if not isinstance(data, dict):
        raise LcError(f"{path} is not a dataset index (a JSON object)")
    if data.get("version") != INDEX_VERSION:
        raise LcError(
            f"{path}: dataset index version {data.get('version')!r}; this lc reads {INDEX_VERSION}"
        )
    scenes = tuple(scene_from_dict(scene) for scene in data["scenes"])
    if not scenes:
        raise LcError(
            f"{path} has no scenes", hint="every scene needs two or more images of the same people"
        )
    return DatasetIndex(root, int(data["resolution"]), scenes, data.get("dropped", {}))


def scene_from_dict(data: dict) -> SceneRecord:
    """A scene record from its JSON form (as `asdict` wrote it)."""
    return SceneRecord(
        data["name"],
        tuple(
            ImageRecord(
                image["file"],
                image["caption"],
                tuple(
                    LayerRecord(
                        layer["identity"],
                        layer["file"],
                        tuple(layer["box"]),
                        tuple(layer["face"]) if layer.get("face") else None,
                    )
                    for layer in image["layers"]
                ),
            )
            for image in data["images"]
        ),
    )


def write_index(index: DatasetIndex) -> Path:
    """Write `index.json` atomically; return its path."""
    from ..files import write_json_atomic

    return write_json_atomic(index.root / INDEX_NAME, index.to_json())


def split_layers(
    image: np.ndarray, masks: dict[str, np.ndarray]
) -> dict[str, tuple[np.ndarray, tuple[int, int, int, int]]]:
    """Cut an image into layers: each identity's RGBA crop and box, plus the background.

    `image` is (H, W, 3) uint8, `masks` maps identity -> (H, W) uint8 alpha. A layer's colours
    are the image's own pixels (never un-blended), so a layer copied into the target is the
    target exactly where it is opaque. The background keeps the pixels no person covers.
    """
    height, width = image.shape[:2]
    layers: dict[str, tuple[np.ndarray, tuple[int, int, int, int]]] = {}
    covered = np.zeros((height, width), np.uint8)
    for identity, alpha in masks.items():
        ys, xs = np.nonzero(alpha)
        if not len(ys):
            continue
        box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
        rgba = np.dstack([image, alpha])[box[1] : box[3], box[0] : box[2]]
        layers[identity] = (np.ascontiguousarray(rgba), box)
        covered = np.maximum(covered, alpha)
    background = np.dstack([image, np.where(covered > 0, 0, 255).astype(np.uint8)])
    layers[BACKGROUND] = (background, (0, 0, width, height))
    return layers
