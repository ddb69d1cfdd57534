"""The layered dataset on disk: an index of scenes, their images, and each image's layers.

    DATASET/index.json
    DATASET/<scene>/<image>.png              the image, at the dataset's square resolution
    DATASET/<scene>/<image>.<identity>.png   one RGBA layer per person, cropped to its box
    DATASET/<scene>/<image>.background.png   the image with the people removed (alpha 0 there)

Every image of a scene is stored at the same square resolution, so a layer copied from the target
is the target's pixels exactly, and a layer from another image lands on the same pixel grid.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Annotated

import numpy as np
from pydantic import AfterValidator, Field, ValidationError

from ..errors import InputError, LcError
from ..limits import MAX_CAPTION_BYTES, eight_bit, open_image_bounded, read_json_bounded
from ..records import OpenRecord, invalid_record

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
    # Where the image came from, so the sampler can take donors from another shot: a photo is a
    # shot of its own (its path); a video frame names its shot (`clip.mp4#3`) and its time.
    shot: str | None = None  # None: an index written before shots were recorded
    seconds: float | None = None  # a video frame's time in its video
    # Who wrote the caption: "sidecar" (a `.txt` beside the source), "default" ("a photo of N
    # people"), or "model:<hub id>" (`lc dataset caption`).
    caption_source: str = "default"

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
    # What the data can teach (`train/stats.py`), as `lc dataset build` wrote it; None in an
    # index written before stats were recorded.
    stats: dict | None = None
    shard: str | None = None  # "K/N": the part of the sources a `--shard K/N` build holds
    # How `lc dataset caption` made the model captions (`train/caption.py`), oldest first.
    captioners: list | None = None

    def to_json(self) -> dict:
        data = {
            "version": INDEX_VERSION,
            "resolution": self.resolution,
            "scenes": [asdict(scene) for scene in self.scenes],
            "dropped": self.dropped,
        }
        if self.stats is not None:
            data["stats"] = self.stats
        if self.shard is not None:
            data["shard"] = self.shard
        if self.captioners:
            data["captioners"] = self.captioners
        return data

    def rgba(self, relative: str) -> np.ndarray:
        """(h, w, 4) uint8 pixels of a layer or image file of this dataset."""
        return _read_rgba(str(self.root / relative))


@lru_cache(maxsize=256)
def _read_rgba(path: str) -> np.ndarray:
    pixels = np.asarray(eight_bit(open_image_bounded(path)).convert("RGBA"))
    pixels.setflags(write=False)  # shared by the cache: nobody may change it
    return pixels


def load_index(root: str | Path, allow_empty: bool = False) -> DatasetIndex:
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
        raise InputError(f"{path} is not a dataset index (a JSON object)")
    if data.get("version") != INDEX_VERSION:
        raise InputError(
            f"{path}: dataset index version {data.get('version')!r}; this lc reads {INDEX_VERSION}"
        )
    check_index_json(data, path)
    scenes = tuple(scene_from_dict(scene) for scene in data["scenes"])
    if not scenes and not allow_empty:
        raise LcError(
            f"{path} has no scenes", hint="every scene needs two or more images of the same people"
        )
    return DatasetIndex(
        root,
        int(data["resolution"]),
        scenes,
        data.get("dropped", {}),
        data.get("stats"),
        data.get("shard"),
        data.get("captioners") if isinstance(data.get("captioners"), list) else None,
    )


def load_datasets(paths: str | Path | list[str] | tuple[str, ...]) -> DatasetIndex:
    """One index over the scenes of one or several dataset folders (`data.path` as a list).

    The scenes of all folders are sorted by name, as one `lc dataset build` sorts its own, so
    the parts of a `--shard K/N` build train exactly like the unsharded dataset. File paths
    become absolute (each folder's own root), so two folders may reuse a scene name.
    """
    if isinstance(paths, (str, Path)):
        return load_index(paths)
    if not paths:
        raise InputError("data.path is an empty list", hint="name one or more dataset folders")
    # A part of a sharded build may hold no scenes (more parts than sources): it adds nothing.
    indexes = [load_index(path, allow_empty=True) for path in paths]
    if not any(index.scenes for index in indexes):
        raise LcError(
            f"none of the datasets in data.path has a scene ({', '.join(map(str, paths))})",
            hint="every scene needs two or more images of the same people",
        )
    resolutions = {index.resolution for index in indexes}
    if len(resolutions) > 1:
        sizes = ", ".join(f"{index.root}: {index.resolution}" for index in indexes)
        raise InputError(
            f"the datasets in data.path have different resolutions ({sizes})",
            hint="build them at one --resolution",
        )
    scenes = [
        (scene.name, k, _rooted(scene, index.root.resolve()))
        for k, index in enumerate(indexes)
        for scene in index.scenes
    ]
    dropped: dict[str, list[str]] = {}
    for index in indexes:
        for reason, items in index.dropped.items():
            dropped.setdefault(reason, []).extend(items)
    ordered = tuple(scene for _, _, scene in sorted(scenes, key=lambda item: item[:2]))
    return DatasetIndex(Path("/"), indexes[0].resolution, ordered, dropped)


def _rooted(scene: SceneRecord, root: Path) -> SceneRecord:
    """The scene with every file path made absolute under `root`."""
    images = tuple(
        replace(
            image,
            file=str(root / image.file),
            layers=tuple(replace(layer, file=str(root / layer.file)) for layer in image.layers),
        )
        for image in scene.images
    )
    return replace(scene, images=images)


def check_index_json(data: dict, path: Path) -> None:
    """Refuse an `index.json` lc did not write (exit 2, with where): wrong types, a resolution
    lc cannot train at, or a file path that leaves the dataset folder."""
    try:
        _IndexJson.model_validate(data)
    except ValidationError as exc:
        raise invalid_record(
            path, exc, "lc dataset index", "rebuild the dataset with `lc dataset build`"
        ) from None


def _inside_dataset(file: str) -> str:
    parts = Path(file).parts
    if not file or Path(file).is_absolute() or ".." in parts or "\\" in file:
        raise ValueError(f"{file!r} is not a path inside the dataset folder")
    return file


DatasetFile = Annotated[str, AfterValidator(_inside_dataset)]
Box4 = tuple[int, int, int, int]


class _LayerJson(OpenRecord):
    identity: str = Field(max_length=1024)
    file: DatasetFile
    box: Box4
    face: Box4 | None = None


class _ImageJson(OpenRecord):
    file: DatasetFile
    caption: str = Field(max_length=MAX_CAPTION_BYTES)
    layers: list[_LayerJson] = Field(max_length=64)
    shot: str | None = Field(None, max_length=4096)
    seconds: float | None = Field(None, ge=0)
    caption_source: str = Field("default", max_length=1024)


class _SceneJson(OpenRecord):
    name: str = Field(max_length=1024)
    images: list[_ImageJson]


class _IndexJson(OpenRecord):
    """What `check_index_json` holds an index.json to."""

    version: int
    resolution: int = Field(ge=64, le=2048, multiple_of=16)
    scenes: list[_SceneJson]
    dropped: dict[str, list[str]] = {}


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
                image.get("shot"),
                image.get("seconds"),
                image.get("caption_source", "default"),
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
