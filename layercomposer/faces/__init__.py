"""Faces: detection and identity embeddings behind small interfaces, with pluggable backends.

- `types.Face`: a box, a score, the eyes and other landmarks, in image pixels.
- `detect.open_detector(name)`: mediapipe (default, bundled model), dlib, insightface.
- `embed.open_embedder(name)`: dlib (128-d), insightface (ArcFace, 512-d).
- `registry.resolve_model_file(key)`: every model file, found offline or downloaded, by SHA-256.
"""

from .detect import DETECTORS, FaceDetector, open_detector
from .embed import EMBEDDERS, FaceEmbedder, face_distance, open_embedder
from .registry import MODEL_FILES, ModelFile, ResolvedFile, cache_dir, resolve_model_file
from .types import Face

__all__ = [
    "DETECTORS",
    "EMBEDDERS",
    "MODEL_FILES",
    "Face",
    "FaceDetector",
    "FaceEmbedder",
    "ModelFile",
    "ResolvedFile",
    "cache_dir",
    "face_distance",
    "open_detector",
    "open_embedder",
    "resolve_model_file",
]
