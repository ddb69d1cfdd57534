"""InsightFace (buffalo_l): SCRFD detection and ArcFace embeddings, when the pack is present.

The pack downloads from the internet at first use in InsightFace itself; lc never lets it: the
files must already be in ~/.insightface/models/buffalo_l (or lc's cache folder). Its weights
are for non-commercial research only.
"""

from __future__ import annotations

import numpy as np

from ..errors import ModelError
from .registry import ResolvedFile, resolve_model_file
from .types import Face, iou

DETECTION_MODEL = "insightface/buffalo_l/det_10g.onnx"
RECOGNITION_MODEL = "insightface/buffalo_l/w600k_r50.onnx"
INSTALL_HINT = "pip install insightface onnxruntime"
DET_SIZE = (640, 640)
MIN_FACE = 16  # SCRFD at 640x640 input


def model_zoo():
    try:
        from insightface import model_zoo
    except ImportError as exc:
        raise ModelError(f"InsightFace is not installed ({exc})", hint=INSTALL_HINT) from None
    return model_zoo


def load_model(model_zoo, path: str):
    try:
        return model_zoo.get_model(path, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises many kinds on a bad file
        raise ModelError(f"InsightFace cannot load {path}: {exc}") from None


class InsightFaceDetector:
    """Faces from SCRFD-10G (buffalo_l), with its 5 keypoints."""

    name = "insightface"

    def __init__(self, download: bool = False, min_score: float = 0.5):
        # Files first: a missing pack is the common case, and its message says what to do.
        self._model = resolve_model_file(DETECTION_MODEL, download=download)
        self._detector = load_model(model_zoo(), self._model.path)
        self._detector.prepare(ctx_id=-1, input_size=DET_SIZE, det_thresh=min_score)

    def models(self) -> list[ResolvedFile]:
        return [self._model]

    def min_face_size(self, width: int, height: int) -> float:
        return MIN_FACE * max(width, height) / max(DET_SIZE)

    def detect(self, rgb: np.ndarray) -> list[Face]:
        bgr = np.ascontiguousarray(rgb[..., ::-1])
        boxes, keypoints = self._detector.detect(bgr, input_size=DET_SIZE)
        faces = []
        for i, (x0, y0, x1, y1, score) in enumerate(boxes):
            kps = keypoints[i] if keypoints is not None else None
            faces.append(
                Face(
                    box=(float(x0), float(y0), float(x1), float(y1)),
                    score=float(score),
                    # SCRFD's points: image-left eye, image-right eye, nose, mouth corners.
                    right_eye=tuple(map(float, kps[0])) if kps is not None else None,
                    left_eye=tuple(map(float, kps[1])) if kps is not None else None,
                    landmarks=(
                        {
                            "nose": tuple(map(float, kps[2])),
                            "mouth_right": tuple(map(float, kps[3])),
                            "mouth_left": tuple(map(float, kps[4])),
                        }
                        if kps is not None
                        else {}
                    ),
                )
            )
        return sorted(faces, key=lambda face: face.size, reverse=True)

    def keypoints_for(self, rgb: np.ndarray, face: Face) -> np.ndarray:
        """(5, 2): SCRFD's keypoints of the detection that best overlaps `face`."""
        found = [f for f in self.detect(rgb) if "mouth_left" in f.landmarks]
        if not found:
            raise ModelError("InsightFace found no face to align for embedding")
        best = max(found, key=lambda f: iou(f, face))
        marks = best.landmarks
        return np.array(
            [
                best.right_eye,
                best.left_eye,
                marks["nose"],
                marks["mouth_right"],
                marks["mouth_left"],
            ],
            np.float32,
        )

    def close(self) -> None:
        pass


class InsightFaceEmbedder:
    """ArcFace (w600k_r50, 512-d); cosine distance under ~0.6 is usually one person."""

    name = "insightface"
    dim = 512
    metric = "cosine"
    same_person_distance = 0.6

    def __init__(self, download: bool = False):
        self._file = resolve_model_file(RECOGNITION_MODEL, download=download)
        self._detector = InsightFaceDetector(download=download)
        self._arcface = load_model(model_zoo(), self._file.path)
        self._arcface.prepare(ctx_id=-1)

    def models(self) -> list[ResolvedFile]:
        return [*self._detector.models(), self._file]

    def embed(self, rgb: np.ndarray, face: Face) -> np.ndarray:
        from insightface.utils import face_align

        keypoints = self._detector.keypoints_for(rgb, face)
        bgr = np.ascontiguousarray(rgb[..., ::-1])
        crop = face_align.norm_crop(bgr, landmark=keypoints, image_size=112)
        return np.asarray(self._arcface.get_feat(crop), np.float32).reshape(-1)

    def close(self) -> None:
        pass
