"""Face detection behind one small interface, whatever the backend.

`open_detector("mediapipe" | "dlib" | "insightface")` returns a `FaceDetector`; each backend
imports its package only when opened, so `lc` starts without any of them installed.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from ..choices import Detector, names
from .registry import ResolvedFile
from .types import Face

DetectorName = Detector
DETECTORS = names(Detector)


@runtime_checkable
class FaceDetector(Protocol):
    """Finds faces in an RGB image."""

    name: str

    def detect(self, rgb: np.ndarray) -> list[Face]:
        """Faces in an (H, W, 3) uint8 image, largest first."""
        ...

    def min_face_size(self, width: int, height: int) -> float:
        """Smallest face (px) found reliably in a `width` x `height` image: the range's floor."""
        ...

    def models(self) -> list[ResolvedFile]:
        """The model files in use, for manifests."""
        ...

    def close(self) -> None: ...


def open_detector(name: str, download: bool = False) -> FaceDetector:
    """Return a ready detector, or raise `ModelError` (package or model file missing)."""
    if name == "mediapipe":
        from .mediapipe_backend import MediaPipeFaceDetector

        return MediaPipeFaceDetector(download=download)
    if name == "dlib":
        from .dlib_backend import DlibFaceDetector

        return DlibFaceDetector(download=download)
    if name == "insightface":
        from .insightface_backend import InsightFaceDetector

        return InsightFaceDetector(download=download)
    from ..errors import UsageError

    raise UsageError(f"--detector {name!r}: choose one of {', '.join(DETECTORS)}")


def largest_first(faces: list[Face]) -> list[Face]:
    return sorted(faces, key=lambda face: face.size, reverse=True)
