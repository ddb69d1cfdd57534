"""Cutting a subject out of its photo: a person mask, then an RGBA cut-out of one person."""

from __future__ import annotations

import numpy as np

from ..choices import Segmenter, names
from ..faces.mediapipe_backend import create_task, import_mediapipe, mediapipe_image
from ..faces.native import quiet_native_stderr
from ..faces.registry import ResolvedFile, resolve_model_file
from ..faces.types import Face

SEGMENTERS = names(Segmenter)
SELFIE_MODEL = "mediapipe/selfie_segmentation.tflite"


class MediaPipePersonSegmenter:
    """MediaPipe Selfie Segmentation: each pixel's probability of being a person."""

    name = "mediapipe"

    def __init__(self, download: bool = False):
        _, BaseOptions, vision = import_mediapipe()
        self._model = resolve_model_file(SELFIE_MODEL, download=download)
        options = vision.ImageSegmenterOptions(
            base_options=BaseOptions(model_asset_path=self._model.path),
            output_confidence_masks=True,
            output_category_mask=False,
        )
        self._segmenter = create_task(vision.ImageSegmenter, options, self._model)

    def models(self) -> list[ResolvedFile]:
        return [self._model]

    def segment(self, rgb: np.ndarray) -> np.ndarray:
        """(H, W) uint8 alpha: 255 where the model is sure of a person."""
        with quiet_native_stderr():
            result = self._segmenter.segment(mediapipe_image(rgb))
        confidence = np.asarray(result.confidence_masks[0].numpy_view(), np.float32)
        confidence = confidence.reshape(rgb.shape[:2])  # (H, W, 1) -> (H, W)
        return np.rint(np.clip(confidence, 0.0, 1.0) * 255).astype(np.uint8)

    def close(self) -> None:
        with quiet_native_stderr():
            self._segmenter.close()


def open_segmenter(name: str, download: bool = False) -> MediaPipePersonSegmenter:
    if name != "mediapipe":
        from ..errors import UsageError

        raise UsageError(f"--segmenter {name!r}: choose one of {', '.join(SEGMENTERS)}")
    return MediaPipePersonSegmenter(download=download)


def keep_person_of(alpha: np.ndarray, face: Face | None, others: list[Face] = ()) -> np.ndarray:
    """The alpha of the person whose face is `face`; the other people in the photo dropped.

    A segmenter marks every person, and often joins neighbours into one region. Each pixel
    goes to the face it is nearest to (distance measured in face sizes, so a large face claims
    more room); of the pixels left, the connected region that holds `face` is kept.
    """
    if face is None:
        return alpha
    alpha = alpha.copy()
    if others:
        ys, xs = np.mgrid[: alpha.shape[0], : alpha.shape[1]]
        own = np.hypot(xs - face.center[0], ys - face.center[1]) / face.size
        for other in others:
            theirs = np.hypot(xs - other.center[0], ys - other.center[1]) / max(other.size, 1.0)
            alpha[theirs < own] = 0
    try:
        import cv2
    except ImportError:  # comes with mediapipe; without it, keep every region
        return alpha
    count, labels = cv2.connectedComponents((alpha > 127).astype(np.uint8), connectivity=8)
    if count <= 2:  # background plus at most one region
        return alpha
    x0, y0, x1, y1 = (round(v) for v in face.box)
    inside = labels[max(y0, 0) : max(y1, 0), max(x0, 0) : max(x1, 0)]
    hits = np.bincount(inside.ravel(), minlength=count)
    hits[0] = 0
    if hits.max() == 0:
        return alpha
    # Soft edges belong to the nearest region; keep pixels near the chosen one.
    region = (labels == int(hits.argmax())).astype(np.uint8)
    near = cv2.dilate(region, np.ones((9, 9), np.uint8)) > 0
    return np.where(near, alpha, 0).astype(np.uint8)


def crop_to_alpha(
    rgb: np.ndarray, alpha: np.ndarray, margin: int = 2
) -> tuple[np.ndarray, tuple[int, int]]:
    """(h, w, 4) uint8 cut-out cropped to where alpha > 0, and its top-left in the photo."""
    ys, xs = np.nonzero(alpha)
    if len(xs) == 0:
        return np.zeros((0, 0, 4), np.uint8), (0, 0)
    height, width = alpha.shape
    x0, x1 = max(int(xs.min()) - margin, 0), min(int(xs.max()) + 1 + margin, width)
    y0, y1 = max(int(ys.min()) - margin, 0), min(int(ys.max()) + 1 + margin, height)
    rgba = np.dstack([rgb[y0:y1, x0:x1], alpha[y0:y1, x0:x1]])
    return np.ascontiguousarray(rgba), (x0, y0)
