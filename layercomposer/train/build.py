"""`lc dataset build`: photos and videos -> a layered dataset (people and background per image).

The sources are split into **units**, each built on its own (in parallel with `--workers`, or on
another machine with `--shard K/N`):

- a sub-folder of SCENES holding photos only: one scene, named after the folder;
- a video at the top of SCENES: its shots, grouped into scenes by who is in them;
- a sub-folder holding videos: the shots of all its videos, and its photos (each a shot of its
  own), grouped together.

Every image is cropped to a square at the dataset's resolution; faces are detected; each person
gets a mask (the user's `<image>.mask.<k>.png`, or person segmentation split between the faces);
faces are embedded and matched across the images of a photo folder or of a video shot, so a
person has one identity there. A video's shots are then grouped into scenes of the same people
(`grouping.py`), so a scene spans shots and the sampler can take donors from another shot.

A unit's images are staged under `DATASET/.staging/<unit>/` as they are made (memory holds one
shot's frames, never a video's) and moved into their scene folders once the unit's scenes are
known. A unit's record is written last (`<scene>/scene.json` for a folder of photos,
`<unit>.video.json` for videos), so a killed build resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import re
import shutil
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ..errors import InputError, LcError, UsageError
from ..files import write_json_atomic, write_png_atomic
from ..limits import (
    MAX_CAPTION_BYTES,
    TooLargeError,
    UnreadableImageError,
    eight_bit,
    open_image_bounded,
    read_bytes_bounded,
    read_json_bounded,
)
from .dataset import (
    BACKGROUND,
    INDEX_VERSION,
    DatasetIndex,
    ImageRecord,
    LayerRecord,
    SceneRecord,
    load_index,
    scene_from_dict,
    split_layers,
    write_index,
)
from .grouping import SceneGroup, group_shots
from .video import VideoOptions

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}
SCENE_FILE = "scene.json"  # DATASET/<scene>/scene.json: a folder of photos, done
VIDEO_RECORD_SUFFIX = ".video.json"  # DATASET/<unit>.video.json: a unit of videos, done
STAGING = ".staging"  # DATASET/.staging/<unit>/: a unit's images before its scenes are known


@dataclass(frozen=True)
class BuildOptions:
    resolution: int = 512
    detector: str = "mediapipe"
    embedder: str = "dlib"
    max_identities: int = 4
    min_face_score: float = 0.5
    video: VideoOptions = VideoOptions()


@dataclass(frozen=True)
class Unit:
    """One unit of work: a folder of photos (one scene), or videos whose shots are grouped."""

    name: str  # a photo folder's scene name; for videos, its scenes are `<name>-scene001`, ...
    path: Path  # the folder or the video
    label: str  # how images name it in `shot`: its path relative to SCENES
    videos: tuple[Path, ...] = ()  # none: a folder of photos
    photos: tuple[Path, ...] = ()

    @property
    def is_photos(self) -> bool:
        return not self.videos

    def label_of(self, source: Path) -> str:
        """A source's name in `shot`: `clip.mp4` at the top of SCENES, else `folder/clip.mp4`."""
        return self.label if source == self.path else f"{self.label}/{source.name}"

    def scene_name(self, number: int) -> str:
        return self.name if self.is_photos else f"{self.name}-scene{number:03d}"


@dataclass
class UnitResult:
    """What one unit gave: its scenes and why things were dropped."""

    name: str
    scenes: list[SceneRecord] = field(default_factory=list)
    dropped: dict[str, list[str]] = field(default_factory=dict)

    def drop(self, reason: str, item: str) -> None:
        self.dropped.setdefault(reason, []).append(item)


@dataclass(frozen=True)
class Shard:
    """Part K of N of the units: unit i (of the sorted list) is in part i mod N."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        """`K/N` as a shard, or a UsageError saying what is wrong."""
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
        if not match:
            raise UsageError(
                f"--shard {text!r}: expected K/N, two whole numbers (e.g. 0/4)",
                hint="K is this part's number, 0 to N-1; N is the number of parts",
            )
        index, count = int(match[1]), int(match[2])
        if count < 1 or index >= count:
            raise UsageError(
                f"--shard {text!r}: K must be 0 to N-1 and N at least 1 (e.g. 0/{max(count, 2)})",
                hint="a Slurm array --array=0-3 gives SLURM_ARRAY_TASK_ID 0..3 for --shard K/4",
            )
        return cls(index, count)

    def select(self, units: list[Unit]) -> list[Unit]:
        return [unit for i, unit in enumerate(units) if i % self.count == self.index]

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


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


@dataclass
class SceneImage:
    """One image of a unit, squared to the dataset's resolution, before faces are found."""

    stem: str  # the file name it gets in the dataset: `<scene>/<stem>.png`
    source: str  # how a drop names it: the photo's path, or `clip.mp4@1.25s`
    pixels: np.ndarray  # (resolution, resolution, 3) uint8
    shot: str  # `folder/photo.jpg` (a photo is its own shot) or `clip.mp4#3`
    seconds: float | None = None  # a video frame's time
    caption: str | None = None  # a sidecar caption, if there is one
    mask_source: Path | None = None  # a photo, whose `<stem>.mask.<k>.png` files are looked for


# A check of a scene image's faces: why the image is unusable ("face blurred"), or None.
FaceCheck = Callable[[np.ndarray, list], "str | None"]


def read_caption(source: Path) -> str | None:
    """The caption in `<source stem>.txt` beside a photo or video, or None if there is none."""
    caption_file = source.with_suffix(".txt")
    if not caption_file.exists():
        return None
    data = read_bytes_bounded(caption_file, MAX_CAPTION_BYTES, "caption")
    try:
        return data.decode("utf-8").strip() or None
    except UnicodeDecodeError:
        raise InputError(f"{caption_file}: a caption must be UTF-8 text") from None


# --- one set of images whose faces are matched together (a photo folder, a shot, a photo) -------


@dataclass
class _Analysed:
    image: SceneImage
    faces: list  # [Face]
    masks: dict[int, np.ndarray]  # face -> its person's (R, R) uint8 alpha
    vectors: list[np.ndarray]  # face -> identity embedding


@dataclass(frozen=True)
class _StagedImage:
    """An image written to the staging folder, with its layers named by the take's people."""

    stem: str
    shot: str
    seconds: float | None
    caption: str | None
    people: int
    # (person of the take, or None for the background; box; face box) per layer
    layers: tuple[tuple[int | None, tuple[int, int, int, int], tuple | None], ...]


@dataclass
class _Take:
    """Images whose faces were matched together: a photo folder, a video shot, or one photo."""

    where: str  # how a drop names it
    images: list[_StagedImage]
    people: list[list[np.ndarray]]  # person of the take -> the embeddings of their faces


def _analyse(
    images: list[SceneImage],
    where: str,
    options: BuildOptions,
    result: UnitResult,
    face_check: FaceCheck | None = None,
) -> list[_Analysed] | None:
    """Faces, person masks and embeddings of each usable image; None if `where` is dropped
    whole (an image with more than `max_identities` people)."""
    from ..autolayout.segment import keep_person_of

    backends = _get_backends(options)
    kept = []
    for image in images:
        pixels = image.pixels
        faces = [f for f in backends.detector.detect(pixels) if f.score >= options.min_face_score]
        if not faces:
            result.drop("no face", image.source)
            continue
        if len(faces) > options.max_identities:
            result.drop(f"more than {options.max_identities} people", where)
            return None
        problem = face_check(pixels, faces) if face_check else None
        if problem:
            result.drop(problem, image.source)
            continue
        masks = _user_masks(image.mask_source, options.resolution) if image.mask_source else []
        if masks:
            person_masks = _assign_masks_to_faces(masks, faces)
        else:
            alpha = backends.segmenter.segment(pixels)
            person_masks = {
                i: keep_person_of(alpha, face, [other for other in faces if other is not face])
                for i, face in enumerate(faces)
            }
        vectors = [backends.embedder.embed(pixels, face) for face in faces]
        kept.append(_Analysed(image, faces, person_masks, vectors))
    return kept


def _match_faces(
    analysed: list[_Analysed], options: BuildOptions
) -> tuple[list[dict[int, int]], list[list[np.ndarray]]]:
    """Each image's face -> person mapping, and each person's embeddings.

    The closest pairs first, under the embedder's same-person distance (to the closest face of
    a person so far); a face that matches nobody is a new person, numbered in order of first
    appearance.
    """
    from ..faces.embed import face_distance

    embedder = _get_backends(options).embedder
    people: list[list[np.ndarray]] = []
    assigned: list[dict[int, int]] = []
    for item in analysed:
        pairs = sorted(
            (min(face_distance(embedder, vector, known) for known in person), face, k)
            for face, vector in enumerate(item.vectors)
            for k, person in enumerate(people)
        )
        mapping: dict[int, int] = {}
        for distance, face, k in pairs:
            if (
                distance < embedder.same_person_distance
                and face not in mapping
                and k not in mapping.values()
            ):
                mapping[face] = k
        for face, vector in enumerate(item.vectors):
            if face not in mapping:
                mapping[face] = len(people)
                people.append([])
            people[mapping[face]].append(vector)
        assigned.append(mapping)
    return assigned, people


def _stage(
    analysed: list[_Analysed], assigned: list[dict[int, int]], stage: Path
) -> list[_StagedImage]:
    """Write each image and its layers to the staging folder; keep only what records need."""
    staged = []
    for item, mapping in zip(analysed, assigned, strict=True):
        image = item.image
        write_png_atomic(stage / f"{image.stem}.png", image.pixels)
        masks = {f"l{mapping[face]}": mask for face, mask in item.masks.items()}
        layers = []
        for key, (rgba, box) in split_layers(image.pixels, masks).items():
            write_png_atomic(stage / f"{image.stem}.{key}.png", rgba)
            person = None if key == BACKGROUND else int(key[1:])
            face = next((f for f, k in mapping.items() if k == person), None)
            face_box = tuple(round(v) for v in item.faces[face].box) if face is not None else None
            layers.append((person, box, face_box))
        staged.append(
            _StagedImage(
                image.stem, image.shot, image.seconds, image.caption, len(item.faces), tuple(layers)
            )
        )
    return staged


def _take(
    images: list[SceneImage],
    where: str,
    options: BuildOptions,
    result: UnitResult,
    stage: Path,
    face_check: FaceCheck | None = None,
) -> _Take | None:
    """Analyse, match and stage a set of images; None if nothing usable is left of it."""
    analysed = _analyse(images, where, options, result, face_check)
    if not analysed:
        return None
    assigned, people = _match_faces(analysed, options)
    if len(people) > options.max_identities:
        result.drop(f"more than {options.max_identities} people", where)
        return None
    return _Take(where, _stage(analysed, assigned, stage), people)


def _place(
    takes: list[_Take], group: SceneGroup, scene: str, stage: Path, out: Path
) -> SceneRecord:
    """Move a scene's staged files into `out/<scene>/`, people named `<scene>/pN`."""
    (out / scene).mkdir(parents=True, exist_ok=True)
    records = []
    for t in group.shots:
        for image in takes[t].images:
            file = f"{scene}/{image.stem}.png"
            os.replace(stage / f"{image.stem}.png", out / file)
            layers = []
            for person, box, face_box in image.layers:
                key = BACKGROUND if person is None else f"l{person}"
                name = BACKGROUND if person is None else f"p{group.person(t, person)}"
                layer_file = f"{scene}/{image.stem}.{name}.png"
                os.replace(stage / f"{image.stem}.{key}.png", out / layer_file)
                identity = BACKGROUND if person is None else f"{scene}/{name}"
                layers.append(LayerRecord(identity, layer_file, box, face_box))
            people = image.people
            caption = (
                image.caption or f"a photo of {people} {'person' if people == 1 else 'people'}"
            )
            records.append(
                ImageRecord(
                    file,
                    caption,
                    tuple(layers),
                    image.shot,
                    image.seconds,
                    "sidecar" if image.caption else "default",
                )
            )
    return SceneRecord(scene, tuple(records))


def _fresh_stage(out: Path, unit: Unit) -> Path:
    stage = out / STAGING / unit.name
    shutil.rmtree(stage, ignore_errors=True)  # what a killed build left
    stage.mkdir(parents=True)
    return stage


def _user_masks(path: Path, resolution: int) -> list[np.ndarray]:
    masks = []
    for mask_path in sorted(path.parent.glob(f"{path.stem}.mask.*.png")):
        masks.append(np.asarray(square(open_image_bounded(mask_path), resolution).convert("L")))
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


def _read_photo(unit: Unit, path: Path, options: BuildOptions, result: UnitResult):
    """A photo as a scene image, or None (dropped: too large or unreadable)."""
    try:
        pixels = np.asarray(square(open_image_bounded(path), options.resolution))
    except TooLargeError:  # over lc's pixel bound: refused before decoding
        result.drop("image too large", str(path))
        return None
    except UnreadableImageError as exc:
        reason = "not a regular file" if exc.kind == "special" else "unreadable image"
        result.drop(reason, str(path))
        return None
    except (OSError, ValueError, SyntaxError):  # a damaged EXIF
        result.drop("unreadable image", str(path))
        return None
    return SceneImage(
        path.stem, str(path), pixels, unit.label_of(path), None, read_caption(path), path
    )


# --- units ---------------------------------------------------------------------------------------


# A progress report from inside one unit: (what, done, total or None).
StepCallback = Callable[[str, int, "int | None"], None]


def build_photo_scene(unit: Unit, out: Path, options: BuildOptions) -> UnitResult:
    """A folder of photos as one scene, `out/<folder>/`, people matched across its photos."""
    result = UnitResult(unit.name)
    images = [image for p in unit.photos if (image := _read_photo(unit, p, options, result))]
    where = str(unit.path)
    analysed = _analyse(images, where, options, result)
    if analysed is None:
        return result
    assigned, people = _match_faces(analysed, options)
    if len(people) > options.max_identities:
        result.drop(f"more than {options.max_identities} people", where)
        return result
    if len(analysed) < 2:
        result.drop("fewer than two usable images", where)
        return result
    stage = _fresh_stage(out, unit)
    take = _Take(where, _stage(analysed, assigned, stage), people)
    whole = SceneGroup((0,), {(0, k): k for k in range(len(people))}, len(people))
    result.scenes.append(_place([take], whole, unit.name, stage, out))
    write_json_atomic(
        out / unit.name / SCENE_FILE,
        {"scene": asdict(result.scenes[0]), "dropped": result.dropped},
    )
    shutil.rmtree(stage, ignore_errors=True)
    return result


def _video_takes(
    unit: Unit,
    path: Path,
    options: BuildOptions,
    result: UnitResult,
    stage: Path,
    on_step: StepCallback | None,
) -> list[_Take]:
    """A video cut into shots, each shot's sampled frames analysed, matched and staged."""
    from . import video

    settings = options.video
    info = video.probe_video(path)
    min_shot_frames = max(1, round(settings.min_shot_seconds * info.fps))

    def frames_decoded(done: int) -> None:
        if on_step:
            on_step(f"{path.name}: finding cuts", done, info.frames)

    distances = video.cut_distances(info, frames_decoded)
    shots = video.find_shots(distances, settings.cut_threshold, min_shot_frames)
    if not shots:
        result.drop("no frames decoded", str(path))
    caption = read_caption(path)
    number = {shot: k for k, shot in enumerate(shots, 1)}
    label = unit.label_of(path)

    def face_check(pixels: np.ndarray, faces: list) -> str | None:
        return video.face_problem(pixels, faces, settings)

    takes = []
    for shot, frames in video.shot_frames(info, shots, settings.frames_per_shot):
        hashes: list[int] = []
        images = []
        for frame in frames:
            pixels = np.asarray(square(Image.fromarray(frame.pixels), options.resolution))
            source = video.frame_name(path, frame)
            frame_hash = video.difference_hash(pixels)
            if any(
                video.hash_distance(frame_hash, seen) <= settings.duplicate_bits for seen in hashes
            ):
                result.drop("near-duplicate frame", source)
                continue
            hashes.append(frame_hash)
            stem = f"{path.stem}-f{frame.index:06d}"
            shot_label = f"{label}#{number[shot]}"
            images.append(SceneImage(stem, source, pixels, shot_label, frame.seconds, caption))
        where = f"{path} frames {shot.start}-{shot.end - 1}"
        take = _take(images, where, options, result, stage, face_check)
        if take:
            takes.append(take)
        if on_step:
            on_step(f"{path.name}: shots", number[shot], len(shots))
    return takes


def build_videos(
    unit: Unit, out: Path, options: BuildOptions, on_step: StepCallback | None = None
) -> UnitResult:
    """A video, or a folder of videos and photos: its shots grouped into scenes by identity.

    Sources are taken in name order, a video's shots in time order; each photo of the folder is
    a shot of its own. Scenes are `<unit>-scene001`, ... in order of their first shot; a scene
    needs two images (from any of its shots). Every dropped frame is reported as
    `clip.mp4@<seconds>s`; `<video stem>.txt` beside a video captions all its frames.
    """
    from ..faces.embed import face_distance

    result = UnitResult(unit.name)
    stage = _fresh_stage(out, unit)
    takes: list[_Take] = []
    for source in sorted((*unit.videos, *unit.photos), key=lambda p: p.name):
        if source in unit.videos:
            takes.extend(_video_takes(unit, source, options, result, stage, on_step))
        elif image := _read_photo(unit, source, options, result):
            take = _take([image], str(source), options, result, stage)
            if take:
                takes.append(take)
    embedder = _get_backends(options).embedder
    groups = group_shots(
        [take.people for take in takes],
        partial(face_distance, embedder),
        embedder.same_person_distance,
        options.max_identities,
    )
    for group in groups:
        if sum(len(takes[t].images) for t in group.shots) < 2:
            where = "; ".join(takes[t].where for t in group.shots)
            result.drop("fewer than two usable images", where)
            continue
        scene = unit.scene_name(len(result.scenes) + 1)
        result.scenes.append(_place(takes, group, scene, stage, out))
    write_json_atomic(
        unit_record_path(out, unit),
        {
            "unit": str(unit.path),
            "scenes": [asdict(scene) for scene in result.scenes],
            "dropped": result.dropped,
        },
    )
    shutil.rmtree(stage, ignore_errors=True)
    return result


def build_unit(
    unit: Unit, out: Path, options: BuildOptions, on_step: StepCallback | None = None
) -> UnitResult:
    """Build one unit: a folder of photos, or a video or a folder of videos."""
    if unit.is_photos:
        return build_photo_scene(unit, out, options)
    return build_videos(unit, out, options, on_step)


def unit_record_path(out: Path, unit: Unit) -> Path:
    """Where a finished unit is recorded (written last, so resume can trust it)."""
    if unit.is_photos:
        return out / unit.name / SCENE_FILE
    return out / f"{unit.name}{VIDEO_RECORD_SUFFIX}"


def finished_result(unit: Unit, out: Path) -> UnitResult | None:
    """What a previous run recorded for `unit`, or None if it did not finish it.

    A record that cannot be read (damaged, edited, or written by an lc that made a scene of
    each shot) counts as unfinished: the unit is built again.
    """
    record = unit_record_path(out, unit)
    if not record.exists():
        return None
    try:
        saved = read_json_bounded(record)
        if unit.is_photos:
            scenes = [scene_from_dict(saved["scene"])]
        else:
            scenes = [scene_from_dict(scene) for scene in saved["scenes"]]
        return UnitResult(unit.name, scenes, dict(saved["dropped"]))
    except (LcError, OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def dataset_units(scenes: Path) -> list[Unit]:
    """The units to build, sorted by name; `scenes` itself if it is a video.

    Names are checked here, before anything is probed, so every shard of a build agrees.
    """
    from .video import is_video

    hint = "SCENES/<scene>/<image>.jpg (two or more images a scene) and/or SCENES/<video>.mp4"
    if is_video(scenes):
        units = [Unit(scenes.stem, scenes, scenes.name, (scenes,))]
    elif scenes.is_dir():
        units = []
        # Dot files are skipped: macOS copies leave `._clip.mp4` beside `clip.mp4`, not a video.
        for path in sorted(scenes.iterdir(), key=lambda p: p.name):
            if path.name.startswith("."):
                continue
            if path.is_dir():
                videos = sorted(
                    (p for p in path.iterdir() if is_video(p) and not p.name.startswith(".")),
                    key=lambda p: p.name,
                )
                units.append(
                    Unit(path.name, path, path.name, tuple(videos), tuple(scene_images(path)))
                )
            elif is_video(path):
                units.append(Unit(path.stem, path, path.name, (path,)))
        if not units:
            raise LcError(f"{scenes} has no scene folders and no videos", hint=hint)
    elif not scenes.exists():
        raise InputError(f"{scenes} does not exist", hint=hint)
    else:
        raise InputError(f"{scenes} is not a folder of scenes or a video file", hint=hint)
    _check_names(units)
    return units


def _check_names(units: list[Unit]) -> None:
    """InputError if two sources would write the same scene or the same image file."""
    made_by: dict[str, Path] = {}
    for unit in units:
        if unit.is_photos:
            continue
        if unit.name in made_by:
            raise InputError(
                f"{made_by[unit.name]} and {unit.path} would both make scenes {unit.name}-scene*",
                hint="rename one of them",
            )
        made_by[unit.name] = unit.path
    for unit in units:
        match = re.fullmatch(r"(.+)-scene\d{3,}", unit.name)
        if unit.is_photos and match and match[1] in made_by:
            raise InputError(
                f"{unit.path} and {made_by[match[1]]} would both make scene {unit.name}",
                hint="rename the folder",
            )
        for sources in (unit.videos, unit.photos):  # frames are `<video stem>-f<frame>.png`
            stems: dict[str, Path] = {}
            for source in sources:
                if source.stem in stems:
                    raise InputError(
                        f"{stems[source.stem]} and {source} would both write images named "
                        f"{source.stem}*.png",
                        hint="rename one of them",
                    )
                stems[source.stem] = source


def probe_units(units: list[Unit]) -> None:
    """Refuse an unreadable or oversized video of these units before any work starts."""
    from .video import probe_video

    for unit in units:
        for path in unit.videos:
            probe_video(path)


def _read_layer(path: Path) -> np.ndarray:
    return np.asarray(eight_bit(open_image_bounded(path)).convert("RGBA"))


def build_dataset(
    scenes_dir: str | Path,
    out_dir: str | Path,
    options: BuildOptions = BuildOptions(),
    workers: int = 1,
    resume: bool = False,
    on_unit: Callable[[UnitResult], None] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    on_step: StepCallback | None = None,
    shard: Shard | None = None,
) -> DatasetIndex:
    """Build (or resume) a layered dataset from photo folders and videos; return its index.

    `scenes_dir` is a folder of photo folders, video folders and/or video files, or one video
    file. With `shard`, only that part of the units is built, into a complete dataset of its
    own. `on_progress(done, total)` is called as units finish, and with one worker
    `on_step(what, done, total)` as a video's frames are decoded and its shots built.
    """
    from .sampler import SamplingConfig
    from .stats import dataset_stats

    scenes_dir, out = Path(scenes_dir), Path(out_dir)
    units = dataset_units(scenes_dir)
    if shard is not None:
        units = shard.select(units)
    probe_units(units)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[int, UnitResult] = {}
    todo = []
    for k, unit in enumerate(units):
        finished = finished_result(unit, out) if resume else None
        if finished is None:
            todo.append(k)
        else:
            results[k] = finished
    done, total = len(units) - len(todo), len(units)
    if on_progress:
        on_progress(done, total)

    def finish(k: int, result: UnitResult) -> None:
        nonlocal done
        results[k] = result
        done += 1
        if on_unit:
            on_unit(result)
        if on_progress:
            on_progress(done, total)

    if workers > 1 and len(todo) > 1:
        # Fresh interpreters, not forks: a fork of a process whose threads (torch's, MediaPipe's,
        # PyAV's) hold locks can hang forever in the child.
        spawn = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=spawn) as pool:
            pending = [units[k] for k in todo]
            for k, result in zip(
                todo,
                pool.map(build_unit, pending, [out] * len(todo), [options] * len(todo)),
                strict=True,
            ):
                finish(k, result)
    else:
        for k in todo:
            finish(k, build_unit(units[k], out, options, on_step))
    staging = out / STAGING
    if staging.is_dir() and not any(staging.iterdir()):
        staging.rmdir()

    dropped: dict[str, list[str]] = {}
    for k in sorted(results):  # in unit order, however the units were finished
        for reason, items in results[k].dropped.items():
            dropped.setdefault(reason, []).extend(items)
    scenes = tuple(sorted((s for r in results.values() for s in r.scenes), key=lambda s: s.name))
    # The model captions of the units a resumed build kept (their images are as they were):
    # `lc dataset caption` wrote them into the index this build replaces.
    rebuilt = {image.file for k in todo for s in results[k].scenes for image in s.images}
    scenes, captioners = keep_model_captions(out, scenes, rebuilt) if resume else (scenes, None)
    min_seconds = SamplingConfig().min_donor_seconds
    stats = dataset_stats(scenes, lambda file: _read_layer(out / file), min_seconds)
    index = DatasetIndex(
        out,
        options.resolution,
        scenes,
        dropped,
        stats.to_json(),
        str(shard) if shard is not None else None,
        captioners,
    )
    write_index(index)
    return index


def keep_model_captions(
    out: Path, scenes: tuple[SceneRecord, ...], rebuilt: set[str]
) -> tuple[tuple[SceneRecord, ...], list | None]:
    """`scenes` with the model captions of the index already in `out` for every image that
    was not rebuilt, and the captioners still behind a caption; unchanged without an index."""
    try:
        previous = load_index(out, allow_empty=True)
    except LcError:
        return scenes, None
    captions = {
        image.file: (image.caption, image.caption_source)
        for scene in previous.scenes
        for image in scene.images
        if image.caption_source.startswith("model:") and image.file not in rebuilt
    }
    kept = tuple(
        dataclasses.replace(
            scene,
            images=tuple(
                dataclasses.replace(
                    image, caption=captions[image.file][0], caption_source=captions[image.file][1]
                )
                if image.file in captions
                else image
                for image in scene.images
            ),
        )
        for scene in scenes
    )
    sources = {source for _, source in captions.values()}
    captioners = [
        entry
        for entry in previous.captioners or []
        if isinstance(entry, dict) and entry.get("caption_source") in sources
    ]
    return kept, captioners or None


__all__ = [
    "INDEX_VERSION",
    "BuildOptions",
    "Shard",
    "Unit",
    "UnitResult",
    "build_dataset",
    "build_unit",
    "dataset_units",
]
