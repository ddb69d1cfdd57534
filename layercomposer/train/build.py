"""`lc dataset build`: scenes of photos -> a layered dataset (people and background per image).

For each scene (a folder of images of the same people): every image is cropped to a square at
the dataset's resolution; faces are detected; each person gets a mask (the user's
`<image>.mask.<k>.png`, or person segmentation split between the faces); faces are embedded and
matched across the scene's images, so a person has one identity in every image. Each scene is
written on its own (`<scene>/scene.json` last), so a killed build resumes where it stopped.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import LcError
from ..files import write_json_atomic, write_png_atomic
from .dataset import (
    INDEX_VERSION,
    DatasetIndex,
    ImageRecord,
    LayerRecord,
    SceneRecord,
    scene_from_dict,
    split_layers,
    write_index,
)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}
SCENE_FILE = "scene.json"


@dataclass(frozen=True)
class BuildOptions:
    resolution: int = 512
    detector: str = "mediapipe"
    embedder: str = "dlib"
    max_identities: int = 4
    min_face_score: float = 0.5


@dataclass
class SceneResult:
    """What one scene gave: its record (or None) and why things were dropped."""

    name: str
    scene: SceneRecord | None
    dropped: dict[str, list[str]] = field(default_factory=dict)

    def drop(self, reason: str, item: str) -> None:
        self.dropped.setdefault(reason, []).append(item)


class _Backends:
    """Detector, embedder and segmenter, opened once per process."""

    def __init__(self, options: BuildOptions):
        from ..autolayout.segment import open_segmenter
        from ..faces import open_detector, open_embedder

        self.detector = open_detector(options.detector)
        self.embedder = open_embedder(options.embedder)
        self._segmenter = None
        self._open_segmenter = open_segmenter

    @property
    def segmenter(self):
        if self._segmenter is None:  # only scenes without user masks need it
            self._segmenter = self._open_segmenter("mediapipe")
        return self._segmenter


_backends: _Backends | None = None


def _get_backends(options: BuildOptions) -> _Backends:
    global _backends
    if _backends is None:
        _backends = _Backends(options)
    return _backends


def square(image: Image.Image, resolution: int) -> Image.Image:
    """The image centre-cropped to a square and resized to `resolution` (EXIF applied)."""
    return ImageOps.fit(
        ImageOps.exif_transpose(image).convert("RGB"),
        (resolution, resolution),
        Image.Resampling.LANCZOS,
    )


def scene_images(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and ".mask." not in p.name
    )


def build_scene(folder: Path, out: Path, options: BuildOptions) -> SceneResult:
    """Turn one scene folder into layers under `out/<scene>/`; return its record."""
    from ..autolayout.segment import keep_person_of
    from ..faces.embed import face_distance

    backends = _get_backends(options)
    result = SceneResult(folder.name, None)
    images: list[tuple[str, np.ndarray, list, dict[int, np.ndarray], str | None]] = []
    for path in scene_images(folder):
        try:
            with Image.open(path) as opened:
                pixels = np.asarray(square(opened, options.resolution))
        except (UnidentifiedImageError, OSError):
            result.drop("unreadable image", str(path))
            continue
        faces = [f for f in backends.detector.detect(pixels) if f.score >= options.min_face_score]
        if not faces:
            result.drop("no face", str(path))
            continue
        if len(faces) > options.max_identities:
            result.drop(f"more than {options.max_identities} people", str(folder))
            return result
        masks = _user_masks(path, options.resolution)
        if masks:
            person_masks = _assign_masks_to_faces(masks, faces)
        else:
            alpha = backends.segmenter.segment(pixels)
            person_masks = {
                i: keep_person_of(alpha, face, [other for other in faces if other is not face])
                for i, face in enumerate(faces)
            }
        caption_file = path.with_suffix(".txt")
        caption = caption_file.read_text().strip() if caption_file.exists() else None
        images.append((path.stem, pixels, faces, person_masks, caption))

    # Match faces across the scene's images: the closest pairs first, under the embedder's
    # same-person distance; a face that matches nobody starts a new identity.
    embeddings = [
        [backends.embedder.embed(pixels, face) for face in faces]
        for _, pixels, faces, _, _ in images
    ]
    identities: list[list[np.ndarray]] = []  # identity -> its embeddings so far
    assigned: list[dict[int, int]] = []
    for face_vectors in embeddings:
        pairs = sorted(
            (min(face_distance(backends.embedder, vector, known) for known in identity), face, k)
            for face, vector in enumerate(face_vectors)
            for k, identity in enumerate(identities)
        )
        mapping: dict[int, int] = {}
        for distance, face, k in pairs:
            if (
                distance < backends.embedder.same_person_distance
                and face not in mapping
                and k not in mapping.values()
            ):
                mapping[face] = k
        for face, vector in enumerate(face_vectors):
            if face not in mapping:
                mapping[face] = len(identities)
                identities.append([])
            identities[mapping[face]].append(vector)
        assigned.append(mapping)

    if len(identities) > options.max_identities:
        result.drop(f"more than {options.max_identities} people", str(folder))
        return result
    if len(images) < 2:
        result.drop("fewer than two usable images", str(folder))
        return result

    records = []
    for (stem, pixels, faces, person_masks, caption), mapping in zip(images, assigned, strict=True):
        masks = {f"{folder.name}/p{mapping[i]}": mask for i, mask in person_masks.items()}
        file = f"{folder.name}/{stem}.png"
        write_png_atomic(out / file, pixels)
        layers = []
        for identity, (rgba, box) in split_layers(pixels, masks).items():
            layer_file = f"{folder.name}/{stem}.{identity.rsplit('/', 1)[-1]}.png"
            write_png_atomic(out / layer_file, rgba)
            face_index = next(
                (i for i, k in mapping.items() if f"{folder.name}/p{k}" == identity), None
            )
            face_box = (
                tuple(round(v) for v in faces[face_index].box) if face_index is not None else None
            )
            layers.append(LayerRecord(identity, layer_file, box, face_box))
        people = len(faces)
        records.append(
            ImageRecord(
                file,
                caption or f"a photo of {people} {'person' if people == 1 else 'people'}",
                tuple(layers),
            )
        )
    result.scene = SceneRecord(folder.name, tuple(records))
    write_json_atomic(
        out / folder.name / SCENE_FILE, {"scene": asdict(result.scene), "dropped": result.dropped}
    )
    return result


def _user_masks(path: Path, resolution: int) -> list[np.ndarray]:
    masks = []
    for mask_path in sorted(path.parent.glob(f"{path.stem}.mask.*.png")):
        with Image.open(mask_path) as opened:
            masks.append(np.asarray(square(opened, resolution).convert("L")))
    return masks


def _assign_masks_to_faces(masks: list[np.ndarray], faces: list) -> dict[int, np.ndarray]:
    """Each user mask belongs to the face whose centre it covers most."""
    owned: dict[int, np.ndarray] = {}
    for mask in masks:
        scores = [
            mask[
                int(min(max(f.center[1], 0), mask.shape[0] - 1)),
                int(min(max(f.center[0], 0), mask.shape[1] - 1)),
            ]
            for f in faces
        ]
        best = int(np.argmax(scores))
        if scores[best] > 127 and best not in owned:
            owned[best] = mask
    return owned


def build_dataset(
    scenes_dir: str | Path,
    out_dir: str | Path,
    options: BuildOptions = BuildOptions(),
    workers: int = 1,
    resume: bool = False,
    on_scene: Callable[[SceneResult], None] | None = None,
) -> DatasetIndex:
    """Build (or resume) a layered dataset from a folder of scene folders; return its index."""
    scenes_dir, out = Path(scenes_dir), Path(out_dir)
    if not scenes_dir.is_dir():
        raise LcError(
            f"{scenes_dir} is not a folder of scenes",
            hint="SCENES/<scene>/<image>.jpg, two or more images a scene",
        )
    folders = sorted(p for p in scenes_dir.iterdir() if p.is_dir())
    if not folders:
        raise LcError(
            f"{scenes_dir} has no scene folders",
            hint="SCENES/<scene>/<image>.jpg, two or more images a scene",
        )
    out.mkdir(parents=True, exist_ok=True)
    results: list[SceneResult] = []
    todo = []
    for folder in folders:
        done = out / folder.name / SCENE_FILE
        if resume and done.exists():
            saved = json.loads(done.read_text())
            results.append(
                SceneResult(folder.name, scene_from_dict(saved["scene"]), saved["dropped"])
            )
        else:
            todo.append(folder)
    if workers > 1 and len(todo) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for result in pool.map(build_scene, todo, [out] * len(todo), [options] * len(todo)):
                results.append(result)
                if on_scene:
                    on_scene(result)
    else:
        for folder in todo:
            result = build_scene(folder, out, options)
            results.append(result)
            if on_scene:
                on_scene(result)

    dropped: dict[str, list[str]] = {}
    for result in results:
        for reason, items in result.dropped.items():
            dropped.setdefault(reason, []).extend(items)
    scenes = tuple(sorted((r.scene for r in results if r.scene is not None), key=lambda s: s.name))
    index = DatasetIndex(out, options.resolution, scenes, dropped)
    write_index(index)
    return index


__all__ = ["INDEX_VERSION", "BuildOptions", "SceneResult", "build_dataset", "build_scene"]
