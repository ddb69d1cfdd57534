"""Identity preservation: how much each subject in an output looks like its reference photo.

For one output: find its faces, embed them and each subject's reference face, match subjects
to faces one to one (the assignment with the largest total similarity), and report each
subject's similarity. A subject with no face left for it is a miss and scores 0.

Similarity, per backend (`similarity`):
- insightface (ArcFace from the buffalo_l pack, w600k_r50) and antelopev2 (ArcFace from the
  antelopev2 pack, glintr100): cosine similarity of the 512-d embeddings, as ArcFace scores
  are reported.
- dlib (offline): 1 - d / (2 * 0.6), clipped to [0, 1], with d the euclidean distance of the
  128-d descriptors and 0.6 dlib's same-person threshold: 1 is the same photo, 0.5 the threshold,
  0 a distance of 1.2 or more. It is not on ArcFace's scale; compare dlib numbers only with dlib
  numbers.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from PIL import Image, ImageOps

from ..canvas import Canvas, LayerSpec
from ..choices import IdentityBackend, names
from ..errors import ModelError, UsageError
from ..faces import dlib_backend, insightface_backend
from ..faces.detect import FaceDetector, open_detector
from ..faces.embed import FaceEmbedder, face_distance, open_embedder
from ..faces.registry import resolve_model_file
from ..faces.types import Face
from ..limits import open_image_bounded
from . import antelopev2
from .matching import best_matching

IDENTITY_BACKENDS = names(IdentityBackend)
REFERENCE_BACKDROP = (128, 128, 128)  # behind a transparent cut-out: a neutral grey
Status = Literal["matched", "missed", "no_reference"]


# What each backend needs, checked without loading it (loading dlib's ResNet takes ~1 s).
_NEEDS = {
    "dlib": ("dlib", dlib_backend.INSTALL_HINT,
             (dlib_backend.LANDMARKS_MODEL, dlib_backend.RESNET_MODEL)),
    "insightface": ("insightface", insightface_backend.INSTALL_HINT,
                    (insightface_backend.RECOGNITION_MODEL, insightface_backend.DETECTION_MODEL)),
    "antelopev2": ("insightface", insightface_backend.INSTALL_HINT,
                   (antelopev2.RECOGNITION_MODEL, antelopev2.DETECTION_MODEL)),
}  # fmt: skip


def check_backend(backend: str, download: bool = False) -> None:
    """Raise what opening `backend` would raise for a missing model file or package."""
    if backend not in IDENTITY_BACKENDS:
        raise UsageError(
            f"--identity-backend {backend!r}: choose one of {', '.join(IDENTITY_BACKENDS)}"
        )
    package, hint, files = _NEEDS[backend]
    for key in files:  # the files first: their message says where to put them
        if backend == "antelopev2":
            antelopev2.resolve(key)
        else:
            resolve_model_file(key, download=download)
    if importlib.util.find_spec(package) is None:
        raise ModelError(
            f"the {backend} identity backend needs {package}, which is not installed", hint=hint
        )


def open_backend(backend: str, download: bool = False) -> tuple[FaceDetector, FaceEmbedder]:
    """A detector and an embedder of one backend, ready."""
    check_backend(backend, download)
    if backend == "antelopev2":
        embedder = antelopev2.Antelopev2Embedder()
        return embedder.detector, embedder
    # The embedder first: for InsightFace its missing pack is the likeliest error.
    embedder = open_embedder(backend, download=download)
    return open_detector(backend, download=download), embedder


def similarity(embedder: FaceEmbedder, a: np.ndarray, b: np.ndarray) -> float:
    """The identity similarity the tables report (see the module docstring)."""
    distance = face_distance(embedder, a, b)
    if embedder.metric == "cosine":
        return 1.0 - distance
    return float(np.clip(1.0 - distance / (2.0 * embedder.same_person_distance), 0.0, 1.0))


@dataclass(frozen=True)
class SubjectIdentity:
    """One subject in one output."""

    name: str
    status: Status
    similarity: float | None  # 0.0 for a miss; None without a reference face
    face: Face | None = None  # the output face it was matched to

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "similarity": self.similarity,
            "face_box": None if self.face is None else self.face.to_dict()["box"],
        }


@dataclass(frozen=True)
class IdentityScore:
    """All subjects of one output, and how many faces the output has."""

    backend: str
    faces_found: int
    subjects: list[SubjectIdentity] = field(default_factory=list)

    @property
    def scored(self) -> list[SubjectIdentity]:
        return [s for s in self.subjects if s.status != "no_reference"]

    @property
    def mean(self) -> float | None:
        """Mean similarity over subjects with a reference face (misses count as 0)."""
        scored = self.scored
        return float(np.mean([s.similarity for s in scored])) if scored else None

    @property
    def misses(self) -> int:
        return sum(1 for s in self.subjects if s.status == "missed")

    def to_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "faces_found": self.faces_found,
            "subjects": [s.to_dict() for s in self.subjects],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IdentityScore:
        subjects = [
            SubjectIdentity(
                s["name"],
                s["status"],
                s["similarity"],
                None if s["face_box"] is None else Face(tuple(s["face_box"]), 0.0),
            )
            for s in data["subjects"]
        ]
        return cls(data["backend"], data["faces_found"], subjects)


def match_subjects(
    names: list[str],
    references: list[np.ndarray | None],
    faces: list[tuple[Face, np.ndarray]],
    embedder: FaceEmbedder,
    backend: str,
) -> IdentityScore:
    """Match subjects (with reference vectors) to output faces (with vectors), one to one."""
    with_reference = [i for i, ref in enumerate(references) if ref is not None]
    table = np.array(
        [
            [similarity(embedder, references[i], vector) for _, vector in faces]
            for i in with_reference
        ]
    ).reshape(len(with_reference), len(faces))  # (subjects with a reference, faces)
    matched = {with_reference[row]: col for row, col in best_matching(table)}
    subjects = []
    for i, name in enumerate(names):
        if references[i] is None:
            subjects.append(SubjectIdentity(name, "no_reference", None))
        elif i in matched:
            row = with_reference.index(i)
            face = faces[matched[i]][0]
            subjects.append(SubjectIdentity(name, "matched", float(table[row, matched[i]]), face))
        else:
            subjects.append(SubjectIdentity(name, "missed", 0.0))
    return IdentityScore(backend, len(faces), subjects)


class IdentityScorer:
    """A detector and an embedder of one backend, and the identity score of outputs."""

    def __init__(self, backend: str, download: bool = False):
        self.backend = backend
        self.detector, self.embedder = open_backend(backend, download)
        self._references: dict[str, np.ndarray | None] = {}

    def describe(self) -> dict[str, Any]:
        """The backend and its model files, for the evaluation record."""
        models = {m.key: m.to_dict() for m in self.detector.models() + self.embedder.models()}
        return {"backend": self.backend, "models": list(models.values())}

    def faces(self, rgb: np.ndarray) -> list[tuple[Face, np.ndarray]]:
        """Every face in an (H, W, 3) uint8 image with its identity vector."""
        return [(face, self.embedder.embed(rgb, face)) for face in self.detector.detect(rgb)]

    def reference(self, rgb: np.ndarray, key: str | None = None) -> np.ndarray | None:
        """The identity vector of the largest face in a subject's image; None: no face.

        `key` (e.g. the image's hash) remembers it: 32 prompts share a handful of subjects.
        """
        if key is not None and key in self._references:
            return self._references[key]
        faces = self.detector.detect(rgb)
        vector = self.embedder.embed(rgb, faces[0]) if faces else None
        if key is not None:
            self._references[key] = vector
        return vector

    def score(
        self, output: np.ndarray, names: list[str], references: list[np.ndarray | None]
    ) -> IdentityScore:
        """Each subject's similarity in `output` (H, W, 3) uint8."""
        return match_subjects(names, references, self.faces(output), self.embedder, self.backend)

    def close(self) -> None:
        self.detector.close()
        self.embedder.close()


def reference_image(canvas: Canvas, spec: LayerSpec) -> np.ndarray:
    """(H, W, 3) uint8: a subject layer's own image, as the identity reference.

    Its crop and flip apply (they choose the person), its scale and rotation don't (a face
    shrunk to fit the canvas would be harder to detect). Transparent parts show a neutral grey.
    """
    image = open_image_bounded(canvas.resolve(spec.image, ()), upright=True).convert("RGBA")
    if spec.mask is not None:
        mask = open_image_bounded(canvas.resolve(spec.mask, ()), upright=True)
        image.putalpha(mask.convert("L"))
    if spec.crop is not None:
        image = image.crop(spec.crop)
    if spec.flip in ("horizontal", "both"):
        image = ImageOps.mirror(image)
    if spec.flip in ("vertical", "both"):
        image = ImageOps.flip(image)
    backdrop = Image.new("RGBA", image.size, (*REFERENCE_BACKDROP, 255))
    backdrop.alpha_composite(image)
    return np.asarray(backdrop.convert("RGB"))
