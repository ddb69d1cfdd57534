"""dlib: HOG face detection, 5-point landmarks and the 128-d face-recognition ResNet.

Fully offline: `dlib-bin` provides `import dlib` without compiling, and the model files come
from the `face_recognition_models` package (or the cache folder), found without importing it.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from ..errors import ModelError
from .registry import ResolvedFile, resolve_model_file
from .types import Face

LANDMARKS_MODEL = "dlib/shape_predictor_5_face_landmarks.dat"
RESNET_MODEL = "dlib/dlib_face_recognition_resnet_model_v1.dat"
INSTALL_HINT = "pip install dlib-bin face_recognition_models (or lc's [autolayout] extra)"
WORK_SIDE = 1024  # HOG time grows with pixels; faces stay in range at this side
# HOG finds faces down to ~80 px; one 2x upsampling of the image brings that to ~40 px.
UPSAMPLE = 1
HOG_MIN_FACE = 40
MIN_SCORE = 0.5  # HOG's SVM margin: false finds on portraits score ~0.1, faces ~1.0+


def import_dlib():
    try:
        import dlib
    except ImportError as exc:
        raise ModelError(f"dlib is not installed ({exc})", hint=INSTALL_HINT) from None
    return dlib


def _shape_points(shape) -> list[tuple[float, float]]:
    return [(float(p.x), float(p.y)) for p in shape.parts()]


def _rectangle(dlib, face: Face):
    x0, y0, x1, y1 = (round(v) for v in face.box)
    return dlib.rectangle(x0, y0, x1, y1)


# HOG scans a pyramid with 5/6 steps, so its boxes come in sizes ~17% apart: the same face
# scaled by 0.9 may get the same box. The landmarks are fitted to sub-pixel precision, so the
# box is rebuilt from them: a square this many eye distances wide, centred between the eyes'
# midpoint and the nose (on frontal faces it matches the HOG box to a few percent).
BOX_PER_EYE_DISTANCE = 2.15


def _box_from_landmarks(right_eye, left_eye, nose) -> tuple[float, float, float, float]:
    side = BOX_PER_EYE_DISTANCE * float(
        np.hypot(left_eye[0] - right_eye[0], left_eye[1] - right_eye[1])
    )
    cx = ((right_eye[0] + left_eye[0]) / 2 + nose[0]) / 2
    cy = ((right_eye[1] + left_eye[1]) / 2 + nose[1]) / 2
    return cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2


class DlibFaceDetector:
    """Faces from dlib's HOG detector, with eyes from its 5-point landmark model."""

    name = "dlib"

    def __init__(self, download: bool = False, min_score: float = MIN_SCORE):
        dlib = import_dlib()
        self._model = resolve_model_file(LANDMARKS_MODEL, download=download)
        self._detector = dlib.get_frontal_face_detector()
        self._landmarks = dlib.shape_predictor(self._model.path)
        self._dlib = dlib
        self.min_score = min_score

    def models(self) -> list[ResolvedFile]:
        return [self._model]

    def min_face_size(self, width: int, height: int) -> float:
        factor = max(width, height) / WORK_SIDE if max(width, height) > WORK_SIDE else 1.0
        return HOG_MIN_FACE * factor

    def detect(self, rgb: np.ndarray) -> list[Face]:
        height, width = rgb.shape[:2]
        factor = max(width, height) / WORK_SIDE if max(width, height) > WORK_SIDE else 1.0
        work = np.ascontiguousarray(rgb)
        if factor > 1.0:
            size = (round(width / factor), round(height / factor))
            work = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR))
        rects, scores, _ = self._detector.run(work, UPSAMPLE, 0.0)
        faces = []
        for rect, score in zip(rects, scores, strict=True):
            if score < self.min_score:
                continue
            points = _shape_points(self._landmarks(work, rect))
            # 5-point model: 0-1 the image-right eye's corners (the person's left eye),
            # 2-3 the image-left eye's (their right), 4 below the nose.
            left = tuple(np.mean(points[0:2], axis=0).tolist())
            right = tuple(np.mean(points[2:4], axis=0).tolist())
            face = Face(
                box=_box_from_landmarks(right, left, points[4]),
                score=float(score),
                right_eye=right,
                left_eye=left,
                landmarks={"nose": points[4]},
            )
            faces.append(face.mapped(factor) if factor > 1.0 else face)
        return sorted(faces, key=lambda face: face.size, reverse=True)

    def close(self) -> None:
        pass


class DlibFaceEmbedder:
    """dlib's 128-d face descriptor; one person's faces lie within 0.6 of each other."""

    name = "dlib"
    dim = 128
    metric = "euclidean"
    same_person_distance = 0.6

    def __init__(self, download: bool = False):
        dlib = import_dlib()
        self._files = [
            resolve_model_file(LANDMARKS_MODEL, download=download),
            resolve_model_file(RESNET_MODEL, download=download),
        ]
        self._landmarks = dlib.shape_predictor(self._files[0].path)
        self._resnet = dlib.face_recognition_model_v1(self._files[1].path)
        self._dlib = dlib

    def models(self) -> list[ResolvedFile]:
        return list(self._files)

    def embed(self, rgb: np.ndarray, face: Face) -> np.ndarray:
        """(128,) float32 for `face`, aligned by dlib's own 5 landmarks inside its box."""
        image = np.ascontiguousarray(rgb)
        shape = self._landmarks(image, _rectangle(self._dlib, face))
        return np.asarray(self._resnet.compute_face_descriptor(image, shape), np.float32)

    def close(self) -> None:
        pass
