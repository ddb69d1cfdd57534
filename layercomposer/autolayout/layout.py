"""`lc autolayout` as a plain function: subjects + a prior -> a canvas, its layers and a manifest.

Steps: read the inputs; get the prior; detect faces on it and on every subject; cut each subject
out; match subjects to prior faces; place each; write everything at once (see output.py).
"""

from __future__ import annotations

import platform
import re
import time
from collections.abc import Callable
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml

from .. import __version__
from ..canvas import Canvas, CanvasSpec
from ..choices import Fallback
from ..errors import InputError, UsageError
from ..faces.detect import FaceDetector, open_detector
from ..faces.types import Face
from ..files import png_bytes, write_bytes_atomic, write_json_atomic, write_png_atomic
from ..layers import build_layers
from ..preview import render_preview
from .inputs import InputImage, read_image, read_mask
from .output import Staging
from .place import (
    Placement,
    assign_faces,
    grid_targets,
    left_to_right,
    place_subject,
    pseudo_face,
)
from .prior import Prior, PriorSettings, canvas_size_for, fit_to, generate_prior
from .segment import crop_to_alpha, keep_person_of, open_segmenter

MIN_SUBJECT_FACE_PX = 24  # a smaller face gives a layer too blurry to keep an identity


@dataclass(frozen=True)
class AutolayoutRequest:
    """Everything `lc autolayout` was asked to do."""

    prompt: str
    subjects: list[Path]
    output: Path  # the canvas file to write
    prior: Path | None = None  # a given prior image; None: generate one
    prior_settings: PriorSettings = field(default_factory=PriorSettings)
    size: tuple[int, int] | None = None  # canvas size; None: from the prior
    detector: str = "mediapipe"
    segmenter: str = "mediapipe"
    masks: dict[str, Path] = field(default_factory=dict)  # subject name or path -> mask
    assign: str = "order"
    faces: list[int] | None = None  # --assign manual
    fallback: Fallback = "error"
    no_face_ok: bool = False
    background: str | None = None  # None, "prior", or an image path
    download_models: bool = False
    force: bool = False
    notes: str | None = None  # the canvas's `notes` (copied into every run manifest)


@dataclass(frozen=True)
class Subject:
    name: str
    image: InputImage
    faces: list[Face]  # detected, largest first (photo pixels)
    face: Face  # the one placed by (cut-out pixels); a pseudo-face without a detection
    face_source: Literal["detector", "segmentation"]
    cutout: np.ndarray  # (h, w, 4) uint8
    alpha_source: Literal["mask", "alpha", "segmenter"]
    mask: Path | None
    mask_sha256: str | None


@dataclass(frozen=True)
class AutolayoutResult:
    canvas: Path
    folder: Path
    size: tuple[int, int]
    prior_faces: list[Face]
    placements: list[Placement]
    warnings: list[str]
    manifest: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """What `--json` prints (documented in docs/autolayout.md)."""
        return {
            "canvas": str(self.canvas),
            "folder": str(self.folder),
            "size": list(self.size),
            "prior_faces": [face.to_dict() for face in self.prior_faces],
            "placements": [p.to_dict() for p in self.placements],
            "warnings": self.warnings,
        }


def layer_names(subjects: list[Path]) -> list[str]:
    """A canvas layer name per subject, from its file name, made unique."""
    names: list[str] = []
    for path in subjects:
        base = re.sub(r"[^A-Za-z0-9_-]+", "_", path.stem).strip("_-")[:60] or "subject"
        if not re.match(r"[A-Za-z0-9_]", base):
            base = f"s{base}"
        name, n = base, 2
        while name in names or name == "background":
            name, n = f"{base}_{n}", n + 1
        names.append(name)
    return names


def autolayout(
    request: AutolayoutRequest, warn: Callable[[str], None] | None = None
) -> AutolayoutResult:
    """Build the canvas for `request` and write it with its files; nothing is written on error."""
    warnings: list[str] = []

    def warning(message: str) -> None:
        warnings.append(message)
        if warn:
            warn(message)

    if not request.subjects:
        raise UsageError("no subject given", hint="--subject alice.jpg (repeat per person)")
    timings: dict[str, float] = {}
    clock = [time.perf_counter()]

    def lap(step: str) -> None:
        now = time.perf_counter()
        timings[step] = round(now - clock[0], 3)
        clock[0] = now

    names = layer_names(request.subjects)
    masks = _masks_by_name(request, names)
    images = [read_image(path, "subject") for path in request.subjects]
    staging = Staging(request.output, request.force)  # refuses to overwrite before any work
    try:
        with ExitStack() as stack:
            prior, prior_record = _prior(request, len(names))
            lap("prior")
            height, width = prior.shape[:2]

            detector = open_detector(request.detector, download=request.download_models)
            stack.callback(detector.close)
            prior_faces = left_to_right(_usable(detector.detect(prior)))
            subject_faces = [detector.detect(image.rgb) for image in images]
            lap("detect")

            segmenter = None
            subjects = []
            for name, image, faces in zip(names, images, subject_faces, strict=True):
                alpha, alpha_source, mask = None, "segmenter", masks.get(name)
                if mask is not None:
                    alpha = read_mask(mask, image.size, f"mask for '{name}'")
                    alpha_source = "mask"
                elif image.alpha is not None:
                    alpha, alpha_source = image.alpha, "alpha"
                else:
                    if segmenter is None:
                        segmenter = open_segmenter(request.segmenter, request.download_models)
                        stack.callback(segmenter.close)
                    alpha = segmenter.segment(image.rgb)
                subjects.append(
                    _subject(
                        name, image, faces, alpha, alpha_source, mask, detector, request, warning
                    )
                )
            lap("segment")

            placements = _placements(
                subjects, prior_faces, (width, height), request, detector, warning
            )
            models = {
                "detector": {
                    "backend": detector.name,
                    "models": [m.to_dict() for m in detector.models()],
                },
                "segmenter": (
                    {"backend": segmenter.name, "models": [m.to_dict() for m in segmenter.models()]}
                    if segmenter
                    else None
                ),
            }

        # --- write everything into the staging folder, check it as lc will read it -----------
        folder = staging.dir
        write_png_atomic(folder / "prior.png", prior)
        background = _background(request, folder, (width, height))
        for subject in subjects:
            write_png_atomic(folder / f"{subject.name}.png", subject.cutout)
        check = _canvas_spec(request, (width, height), subjects, placements, background, "")
        layers = build_layers(Canvas(check, folder / request.output.name, ""))
        write_png_atomic(folder / "preview.png", render_preview(layers))
        lap("write")

        prefix = f"{staging.assets.name}/"
        spec = _canvas_spec(request, (width, height), subjects, placements, background, prefix)
        canvas_text = _canvas_yaml(spec, staging.assets.name)
        manifest = _manifest(
            request,
            spec,
            prior_record,
            prior_faces,
            subjects,
            placements,
            models,
            warnings,
            timings,
        )
        write_json_atomic(folder / "manifest.json", manifest)
        staging.commit(canvas_text)
    except BaseException:
        staging.discard()
        raise
    return AutolayoutResult(
        request.output, staging.assets, (width, height), prior_faces, placements, warnings, manifest
    )


# --- steps ------------------------------------------------------------------------------------


def _sha(path: Path) -> str:
    from ..files import sha256_file

    return sha256_file(path)


def _masks_by_name(request: AutolayoutRequest, names: list[str]) -> dict[str, Path]:
    """--mask keys may be a layer name, a subject's path or its file name."""
    keys: dict[str, str] = {}
    for name, path in zip(names, request.subjects, strict=True):
        for key in (name, str(path), path.name):
            keys.setdefault(key, name)
    masks: dict[str, Path] = {}
    for key, mask in request.masks.items():
        if key not in keys:
            raise UsageError(
                f"--mask {key}={mask}: no subject called {key!r}",
                hint=f"use a subject's name ({', '.join(names)}) or its file name",
            )
        masks[keys[key]] = Path(mask)
    return masks


def _prior(request: AutolayoutRequest, people: int) -> tuple[np.ndarray, dict[str, Any]]:
    if request.prior is not None:
        given = read_image(request.prior, "prior")
        size = canvas_size_for(*given.size, request.size)
        record = {
            "source": "file",
            "path": str(given.path),
            "sha256": given.sha256,
            "exif_orientation": given.orientation,
            "original_size": list(given.size),
            "size": list(size),
        }
        return fit_to(given.rgb, size), record
    settings = request.prior_settings
    if request.size is not None:
        from dataclasses import replace

        settings = replace(settings, size=request.size)
    prior: Prior = generate_prior(request.prompt, people, settings)
    return prior.rgb, prior.record


def _usable(faces: list[Face]) -> list[Face]:
    """Prior faces big enough to put a subject on (smaller ones are background people)."""
    return [face for face in faces if face.size >= MIN_SUBJECT_FACE_PX]


def _range_note(detector: FaceDetector, image: np.ndarray) -> str:
    floor = detector.min_face_size(image.shape[1], image.shape[0])
    return (
        f"the {detector.name} detector misses faces smaller than about {floor:.0f} px in this "
        f"{image.shape[1]}x{image.shape[0]} image, turned far from the camera, or covered"
    )


def _subject(name, image, faces, alpha, alpha_source, mask, detector, request, warning) -> Subject:
    path = image.path
    face = faces[0] if faces else None
    if face is not None and face.size < MIN_SUBJECT_FACE_PX:
        raise InputError(
            f"subject {path}: its face is only {face.size:.0f} px wide, below the "
            f"{MIN_SUBJECT_FACE_PX} px needed to place and render it",
            hint="use a larger or closer photo of this person",
        )
    if face is None and not request.no_face_ok:
        raise InputError(
            f"subject {path}: no face found ({_range_note(detector, image.rgb)})",
            hint="use a photo where the face is visible, or pass --no-face-ok to place it by "
            "its cut-out's outline",
        )
    if len(faces) > 1:
        warning(
            f"subject {path}: {len(faces)} faces found; using the largest "
            f"({face.size:.0f} px at {face.center[0]:.0f},{face.center[1]:.0f}) and cutting out "
            "only that person"
        )
    if alpha_source == "segmenter":
        alpha = keep_person_of(alpha, face, faces[1:])
    cutout, (ox, oy) = crop_to_alpha(image.rgb, alpha)
    if cutout.size == 0 or not (cutout[..., 3] > 127).any():
        what = {"mask": "its mask is empty", "alpha": "its alpha is empty"}.get(
            alpha_source, "the person segmenter found no person in it"
        )
        raise InputError(
            f"subject {path}: {what}", hint=f"pass --mask {name}=MASK.png (white = the person)"
        )
    if face is None:
        ys, xs = np.nonzero(cutout[..., 3] > 127)
        placed_face = pseudo_face(
            (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
        )
        warning(
            f"subject {path}: no face found; placing it by its cut-out's outline (--no-face-ok)"
        )
        source = "segmentation"
    else:
        placed_face = face.mapped(1.0, (-ox, -oy))
        source = "detector"
    mask_sha = _sha(mask) if mask is not None else None
    return Subject(name, image, faces, placed_face, source, cutout, alpha_source, mask, mask_sha)


def _placements(subjects, prior_faces, size, request, detector, warning) -> list[Placement]:
    indices = assign_faces(len(subjects), prior_faces, request.assign, request.faces)
    missing = [s.name for s, i in zip(subjects, indices, strict=True) if i is None]
    if missing and request.fallback != "grid":
        raise InputError(
            f"the prior has {_count(len(prior_faces), 'usable face')} for "
            f"{_count(len(subjects), 'subject')} ({_range_note_size(detector, size)})",
            hint="pass --fallback grid to place the rest in a row, use another --seed or "
            "--prior, or ask for fewer people",
        )
    if missing:
        warning(
            f"the prior has {_count(len(prior_faces), 'usable face')} for "
            f"{_count(len(subjects), 'subject')}; placing {', '.join(missing)} in a row "
            "(--fallback grid)"
        )
    if len(prior_faces) > len(subjects):
        taken = [
            f"{s.name} on face {i} (at {_at(prior_faces[i])})"
            for s, i in zip(subjects, indices, strict=True)
            if i is not None
        ]
        left = [f"{i} (at {_at(f)})" for i, f in enumerate(prior_faces) if i not in indices]
        warning(
            f"the prior has {_count(len(prior_faces), 'face')} for "
            f"{_count(len(subjects), 'subject')}: {', '.join(taken)}; "
            f"{'face' if len(left) == 1 else 'faces'} {', '.join(left)} left empty "
            "(--assign size|manual and --faces choose others)"
        )
    grid = iter(grid_targets(len(missing), size, prior_faces))
    align_eyes = len(subjects) == 1
    placements = []
    for subject, index in zip(subjects, indices, strict=True):
        target = prior_faces[index] if index is not None else next(grid)
        height, width = subject.cutout.shape[:2]
        placements.append(
            place_subject(subject.name, subject.face, (width, height), target, index, align_eyes)
        )
    return placements


def _at(face: Face) -> str:
    """A face's centre in canvas pixels, `630,410`."""
    return f"{face.center[0]:.0f},{face.center[1]:.0f}"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _range_note_size(detector: FaceDetector, size: tuple[int, int]) -> str:
    floor = detector.min_face_size(*size)
    return (
        f"the {detector.name} detector misses faces smaller than about {floor:.0f} px at "
        f"{size[0]}x{size[1]}, turned far from the camera, or covered"
    )


def _background(request: AutolayoutRequest, folder: Path, size: tuple[int, int]) -> str | None:
    if request.background is None or request.background == "none":
        return None
    if request.background == "prior":
        return "prior.png"
    given = read_image(request.background, "background")
    write_bytes_atomic(folder / "background.png", png_bytes(given.rgb))
    return "background.png"


def _canvas_spec(request, size, subjects, placements, background, prefix) -> CanvasSpec:
    layers = [
        {
            "name": subject.name,
            "image": f"{prefix}{subject.name}.png",
            "position": [round(p.position[0], 2), round(p.position[1], 2)],
            "anchor": "center",
            "scale": p.scale,
            "rotate": p.rotate,
        }
        for subject, p in zip(subjects, placements, strict=True)
    ]
    data: dict[str, Any] = {"prompt": request.prompt, "size": list(size), "layers": layers}
    if request.notes:
        data["notes"] = request.notes
    if background:
        data["background"] = {"image": f"{prefix}{background}", "fit": "cover", "lock": True}
    return CanvasSpec.model_validate(data)


def _canvas_yaml(spec: CanvasSpec, folder: str) -> str:
    """The canvas file's text: the placement keys always written, short lists on one line."""
    data: dict[str, Any] = {"prompt": spec.prompt, "size": list(spec.size)}
    if spec.notes:
        data["notes"] = spec.notes
    if spec.background is not None:
        data["background"] = spec.background.model_dump()
    data["layers"] = [
        {
            "name": layer.name,
            "image": layer.image,
            "position": list(layer.position),
            "anchor": layer.anchor,
            "scale": layer.scale,
            **({"rotate": layer.rotate} if layer.rotate else {}),
        }
        for layer in spec.layers
    ]
    header = f"# Written by lc autolayout: layers, prior, preview and manifest are in {folder}/.\n"
    return header + yaml.dump(data, Dumper=_FlowListDumper, sort_keys=False, allow_unicode=True)


class _FlowListDumper(yaml.SafeDumper):
    """Writes lists of plain values as `[a, b]`."""


_FlowListDumper.add_representer(
    list,
    lambda dumper, items: dumper.represent_sequence(
        "tag:yaml.org,2002:seq",
        items,
        flow_style=all(isinstance(item, int | float | str) for item in items),
    ),
)


def _manifest(
    request, spec, prior_record, prior_faces, subjects, placements, models, warnings, timings
) -> dict[str, Any]:
    import importlib.metadata as metadata

    versions = {"lc": __version__, "python": platform.python_version()}
    for package in ("mediapipe", "dlib-bin", "numpy", "pillow", "diffusers", "torch"):
        with suppress(metadata.PackageNotFoundError):
            versions[package] = metadata.version(package)
    return {
        "command": "autolayout",
        "canvas": request.output.name,
        "prompt": request.prompt,
        "size": list(spec.size),
        "prior": prior_record,
        "background": request.background,
        **models,
        "prior_faces": [face.to_dict() for face in prior_faces],
        "subjects": [
            {
                "name": s.name,
                "image": str(s.image.path),
                "sha256": s.image.sha256,
                "exif_orientation": s.image.orientation,
                "size": list(s.image.size),
                "alpha_source": s.alpha_source,
                "mask": str(s.mask) if s.mask else None,
                "mask_sha256": s.mask_sha256,
                "faces": [face.to_dict() for face in s.faces],
                "face_source": s.face_source,
                "face_in_cutout": s.face.to_dict(),
                "cutout": f"{s.name}.png",
                "cutout_size": [s.cutout.shape[1], s.cutout.shape[0]],
            }
            for s in subjects
        ],
        "assignment": {
            "mode": request.assign,
            "fallback": request.fallback,
            "pairs": [{"subject": p.name, "face_index": p.face_index} for p in placements],
        },
        "placements": [p.to_dict() for p in placements],
        "warnings": warnings,
        "seconds": timings,
        "versions": versions,
    }
