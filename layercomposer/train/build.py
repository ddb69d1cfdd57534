"""`lc dataset build`: scenes of photos -> a layered dataset (people and background per image).

For each scene (a folder of images of the same people): every image is cropped to a square at
the dataset's resolution; faces are detected; each person gets a mask (the user's
`<image>.mask.<k>.png`, or person segmentation split between the faces); faces are embedded and
matched across the scene's images, so a person has one identity in every image. Each scene is
written on its own (`<scene>/scene.json` last), so a killed build resumes where it stopped.

A video is cut into shots and each shot is a scene of frames sampled across it (`video.py`);
its frames go through the same detection, masks and identity matching as a folder of photos,
after near-duplicate frames are dropped, and frames whose faces are too small or blurred too.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ..errors import InputError, LcError
from ..files import write_json_atomic, write_png_atomic
from ..limits import (
    MAX_CAPTION_BYTES,
    TooLargeError,
    UnreadableImageError,
    open_image_bounded,
    read_bytes_bounded,
    read_json_bounded,
)
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
from .video import VideoOptions

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}
SCENE_FILE = "scene.json"
VIDEO_RECORD_SUFFIX = ".video.json"  # DATASET/<video stem>.video.json: the video's shots, done


@dataclass(frozen=True)
class BuildOptions:
    resolution: int = 512
    detector: str = "mediapipe"
    embedder: str = "dlib"
    max_identities: int = 4
    min_face_score: float = 0.5
    video: VideoOptions = VideoOptions()


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


@dataclass
class SceneImage:
    """One image of a scene, squared to the dataset's resolution, before faces are found."""

    stem: str  # the file name it gets in the dataset: `<scene>/<stem>.png`
    source: str  # how a drop names it: the photo's path, or `clip.mp4@1.25s`
    pixels: np.ndarray  # (resolution, resolution, 3) uint8
    caption: str | None = None
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


def build_scene(folder: Path, out: Path, options: BuildOptions) -> SceneResult:
    """Turn one scene folder of photos into layers under `out/<scene>/`; return its record."""
    result = SceneResult(folder.name, None)
    images = []
    for path in scene_images(folder):
        try:
            pixels = np.asarray(square(open_image_bounded(path), options.resolution))
        except TooLargeError:  # over lc's pixel bound: refused before decoding
            result.drop("image too large", str(path))
            continue
        except (UnreadableImageError, OSError, ValueError, SyntaxError):  # or a damaged EXIF
            result.drop("unreadable image", str(path))
            continue
        images.append(SceneImage(path.stem, str(path), pixels, read_caption(path), path))
    return compose_scene(result, str(folder), images, out, options)


def compose_scene(
    result: SceneResult,
    where: str,
    images: list[SceneImage],
    out: Path,
    options: BuildOptions,
    face_check: FaceCheck | None = None,
) -> SceneResult:
    """Faces, person masks and matched identities for a scene's images, written as layers.

    Photos and video shots both come through here. `where` names the scene in drops;
    `face_check` (videos) drops an image whose faces are unusable, with its reason.
    """
    from ..autolayout.segment import keep_person_of
    from ..faces.embed import face_distance

    backends = _get_backends(options)
    name = result.name
    kept: list[tuple[str, np.ndarray, list, dict[int, np.ndarray], str | None]] = []
    for image in images:
        pixels = image.pixels
        faces = [f for f in backends.detector.detect(pixels) if f.score >= options.min_face_score]
        if not faces:
            result.drop("no face", image.source)
            continue
        if len(faces) > options.max_identities:
            result.drop(f"more than {options.max_identities} people", where)
            return result
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
        kept.append((image.stem, pixels, faces, person_masks, image.caption))

    # Match faces across the scene's images: the closest pairs first, under the embedder's
    # same-person distance; a face that matches nobody starts a new identity.
    embeddings = [
        [backends.embedder.embed(pixels, face) for face in faces] for _, pixels, faces, _, _ in kept
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
        result.drop(f"more than {options.max_identities} people", where)
        return result
    if len(kept) < 2:
        result.drop("fewer than two usable images", where)
        return result

    records = []
    for (stem, pixels, faces, person_masks, caption), mapping in zip(kept, assigned, strict=True):
        masks = {f"{name}/p{mapping[i]}": mask for i, mask in person_masks.items()}
        file = f"{name}/{stem}.png"
        write_png_atomic(out / file, pixels)
        layers = []
        for identity, (rgba, box) in split_layers(pixels, masks).items():
            layer_file = f"{name}/{stem}.{identity.rsplit('/', 1)[-1]}.png"
            write_png_atomic(out / layer_file, rgba)
            face_index = next((i for i, k in mapping.items() if f"{name}/p{k}" == identity), None)
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
    result.scene = SceneRecord(name, tuple(records))
    write_json_atomic(
        out / name / SCENE_FILE, {"scene": asdict(result.scene), "dropped": result.dropped}
    )
    return result


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


def video_record_path(out: Path, video_path: Path) -> Path:
    """Where a finished video's shots are recorded (written last, so resume can trust it)."""
    return out / f"{video_path.stem}{VIDEO_RECORD_SUFFIX}"


# A progress report from inside one source: (what, done, total or None).
StepCallback = Callable[[str, int, "int | None"], None]


def build_video(
    path: Path, out: Path, options: BuildOptions, on_step: StepCallback | None = None
) -> list[SceneResult]:
    """Cut a video into shots and build each shot as a scene; return one result per shot.

    Shot k of `clip.mp4` is the scene `clip-shot00k`; `clip.txt` beside the video, if there,
    captions all its frames. Every dropped frame is reported as `clip.mp4@<seconds>s`.
    """
    from . import video

    settings = options.video
    info = video.probe_video(path)
    min_shot_frames = max(1, round(settings.min_shot_seconds * info.fps))

    def frames_decoded(done: int) -> None:
        if on_step:
            on_step(f"{path.name}: finding cuts", done, info.frames)

    distances = video.cut_distances(info, frames_decoded)
    shots = video.find_shots(distances, settings.cut_threshold, min_shot_frames)
    caption = read_caption(path)
    number = {shot: k for k, shot in enumerate(shots, 1)}
    results: list[SceneResult] = []
    if not shots:
        results.append(SceneResult(path.stem, None, {"no frames decoded": [str(path)]}))

    def face_check(pixels: np.ndarray, faces: list) -> str | None:
        return video.face_problem(pixels, faces, settings)

    for shot, frames in video.shot_frames(info, shots, settings.frames_per_shot):
        result = SceneResult(f"{path.stem}-shot{number[shot]:03d}", None)
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
            images.append(SceneImage(f"f{frame.index:06d}", source, pixels, caption))
        where = f"{path} frames {shot.start}-{shot.end - 1}"
        results.append(compose_scene(result, where, images, out, options, face_check))
        if on_step:
            on_step(f"{path.name}: shots", number[shot], len(shots))
    write_json_atomic(
        video_record_path(out, path),
        {
            "video": str(path),
            "shots": [
                {
                    "name": r.name,
                    "scene": asdict(r.scene) if r.scene else None,
                    "dropped": r.dropped,
                }
                for r in results
            ],
        },
    )
    return results


def build_source(
    source: Path, out: Path, options: BuildOptions, on_step: StepCallback | None = None
) -> list[SceneResult]:
    """One unit of work: a folder of photos (one scene) or a video (a scene per shot)."""
    from .video import is_video

    return (
        build_video(source, out, options, on_step)
        if is_video(source)
        else [build_scene(source, out, options)]
    )


def finished_results(source: Path, out: Path) -> list[SceneResult] | None:
    """What a previous run recorded for `source`, or None if it did not finish it.

    A record that cannot be read (damaged, edited) counts as unfinished: the source is redone.
    """
    from .video import is_video

    record = video_record_path(out, source) if is_video(source) else out / source.name / SCENE_FILE
    if not record.exists():
        return None
    try:
        saved = read_json_bounded(record)
        if is_video(source):
            return [
                SceneResult(
                    shot["name"],
                    scene_from_dict(shot["scene"]) if shot["scene"] else None,
                    dict(shot["dropped"]),
                )
                for shot in saved["shots"]
            ]
        return [SceneResult(source.name, scene_from_dict(saved["scene"]), dict(saved["dropped"]))]
    except (LcError, OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def dataset_sources(scenes: Path) -> list[Path]:
    """The scene folders and videos to build: `scenes` itself if it is a video."""
    from .video import is_video, probe_video

    hint = "SCENES/<scene>/<image>.jpg (two or more images a scene) and/or SCENES/<video>.mp4"
    if is_video(scenes):
        sources = [scenes]
    elif scenes.is_dir():
        # Dot files are skipped: macOS copies leave `._clip.mp4` beside `clip.mp4`, not a video.
        sources = sorted(
            p
            for p in scenes.iterdir()
            if p.is_dir() or (is_video(p) and not p.name.startswith("."))
        )
        if not sources:
            raise LcError(f"{scenes} has no scene folders and no videos", hint=hint)
    else:
        raise LcError(f"{scenes} is not a folder of scenes or a video file", hint=hint)
    videos = [p for p in sources if is_video(p)]
    stems: dict[str, Path] = {}
    for path in videos:
        if path.stem in stems:
            raise InputError(
                f"{stems[path.stem]} and {path} would both make scenes {path.stem}-shot*",
                hint="rename one of them",
            )
        stems[path.stem] = path
        probe_video(path)  # refuse an unreadable or oversized video before any work starts
    return sources


def build_dataset(
    scenes_dir: str | Path,
    out_dir: str | Path,
    options: BuildOptions = BuildOptions(),
    workers: int = 1,
    resume: bool = False,
    on_scene: Callable[[SceneResult], None] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    on_step: StepCallback | None = None,
) -> DatasetIndex:
    """Build (or resume) a layered dataset from scene folders and videos; return its index.

    `scenes_dir` is a folder of scene folders and/or video files, or one video file.
    `on_progress(done, total)` is called as sources (folders, videos) finish, and with one
    worker `on_step(what, done, total)` as a video's frames are decoded and its shots built.
    """
    scenes_dir, out = Path(scenes_dir), Path(out_dir)
    sources = dataset_sources(scenes_dir)
    out.mkdir(parents=True, exist_ok=True)
    results: list[SceneResult] = []
    todo = []
    for source in sources:
        finished = finished_results(source, out) if resume else None
        if finished is None:
            todo.append(source)
        else:
            results.extend(finished)
    done, total = len(sources) - len(todo), len(sources)
    if on_progress:
        on_progress(done, total)

    def finish(source_results: list[SceneResult]) -> None:
        nonlocal done
        results.extend(source_results)
        done += 1
        for result in source_results:
            if on_scene:
                on_scene(result)
        if on_progress:
            on_progress(done, total)

    if workers > 1 and len(todo) > 1:
        # Fresh interpreters, not forks: a fork of a process whose threads (torch's, MediaPipe's,
        # PyAV's) hold locks can hang forever in the child.
        spawn = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=spawn) as pool:
            for source_results in pool.map(
                build_source, todo, [out] * len(todo), [options] * len(todo)
            ):
                finish(source_results)
    else:
        for source in todo:
            finish(build_source(source, out, options, on_step))

    dropped: dict[str, list[str]] = {}
    for result in results:
        for reason, items in result.dropped.items():
            dropped.setdefault(reason, []).extend(items)
    scenes = tuple(sorted((r.scene for r in results if r.scene is not None), key=lambda s: s.name))
    index = DatasetIndex(out, options.resolution, scenes, dropped)
    write_index(index)
    return index


__all__ = [
    "INDEX_VERSION",
    "BuildOptions",
    "SceneResult",
    "build_dataset",
    "build_scene",
    "build_video",
]
