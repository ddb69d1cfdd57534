"""Face identity embeddings behind one small interface (for identity metrics and training).

`open_embedder("dlib" | "insightface")` returns a `FaceEmbedder`: a vector per face such that
two faces of one person are closer than `same_person_distance`.
"""

from __future__ import annotations

from typing import Literal, Protocol, runtime_checkable

import numpy as np

from ..choices import Embedder, names
from .registry import ResolvedFile
from .types import Face

EmbedderName = Embedder
EMBEDDERS = names(Embedder)


@runtime_checkable
class FaceEmbedder(Protocol):
    """Maps a face in an image to an identity vector."""

    name: str
    dim: int
    metric: Literal["euclidean", "cosine"]
    same_person_distance: float  # the backend's usual decision threshold

    def embed(self, rgb: np.ndarray, face: Face) -> np.ndarray:
        """(dim,) float32: the identity vector of `face` in an (H, W, 3) uint8 image."""
        ...

    def models(self) -> list[ResolvedFile]: ...

    def close(self) -> None: ...


def face_distance(embedder: FaceEmbedder, a: np.ndarray, b: np.ndarray) -> float:
    """The distance the embedder's threshold is meant for (0: identical)."""
    if embedder.metric == "cosine":
        return float(1.0 - np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))
    return float(np.linalg.norm(a - b))


def open_embedder(name: str, download: bool = False) -> FaceEmbedder:
    """Return a ready embedder, or raise `ModelError` (package or model file missing)."""
    if name == "dlib":
        from .dlib_backend import DlibFaceEmbedder

        return DlibFaceEmbedder(download=download)
    if name == "insightface":
        from .insightface_backend import InsightFaceEmbedder

        return InsightFaceEmbedder(download=download)
    from ..errors import UsageError

    raise UsageError(f"embedder {name!r}: choose one of {', '.join(EMBEDDERS)}")
