"""MediaPipe BlazeFace (short range) through the MediaPipe Tasks API, run on tiles."""

from __future__ import annotations

import numpy as np
from PIL import Image

from ..errors import ModelError
from .native import quiet_native_stderr
from .registry import ResolvedFile, resolve_model_file
from .tiles import detect_tiled, tile_grid
from .types import Face

FACE_MODEL = "mediapipe/face_detection_short_range.tflite"
INSTALL_HINT = "pip install 'mediapipe>=1.2' (or lc's [autolayout] extra)"
WORK_SIDE = 1024  # larger images are detected at this longer side: faces stay in range
MIN_TILE = 128  # the model's input side: smaller tiles would only be upscaled
MIN_FRACTION = 0.14  # smallest face the model finds, as a fraction of what it looks at
# Tiles show the model many face-sized patches of texture: false finds there score 0.5-0.67,
# real faces 0.7-0.98 (0.6-0.7 only at the very floor of the range).
MIN_SCORE = 0.7
# BlazeFace keypoints, in its order; "right"/"left" are the person's own (checked on photos).
KEYPOINTS = ("right_eye", "left_eye", "nose_tip", "mouth_center", "right_ear", "left_ear")


def import_mediapipe():
    """The mediapipe package with its Tasks vision API, or a `ModelError` saying how to get it."""
    try:
        import mediapipe as mp
        from mediapipe.tasks.python import BaseOptions, vision
    except ImportError as exc:
        raise ModelError(f"MediaPipe is not installed ({exc})", hint=INSTALL_HINT) from None
    return mp, BaseOptions, vision


def create_task(task_class, options, model: ResolvedFile):
    """A MediaPipe Tasks object (detector, segmenter) from its options, quietly, or a ModelError."""
    try:
        with quiet_native_stderr():
            return task_class.create_from_options(options)
    except (RuntimeError, ValueError) as exc:
        raise ModelError(f"MediaPipe cannot load {model.path}: {exc}") from None


def mediapipe_image(rgb: np.ndarray):
    mp, _, _ = import_mediapipe()
    return mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(rgb))


class MediaPipeFaceDetector:
    """Faces from MediaPipe's short-range BlazeFace, on the image and on overlapping tiles."""

    name = "mediapipe"

    def __init__(self, download: bool = False, min_score: float = MIN_SCORE):
        _, BaseOptions, vision = import_mediapipe()
        self._model = resolve_model_file(FACE_MODEL, download=download)
        options = vision.FaceDetectorOptions(
            base_options=BaseOptions(model_asset_path=self._model.path),
            min_detection_confidence=min_score,
        )
        self._detector = create_task(vision.FaceDetector, options, self._model)
        self.min_score = min_score

    def models(self) -> list[ResolvedFile]:
        return [self._model]

    def min_face_size(self, width: int, height: int) -> float:
        """Smallest face width (px) this detector finds in a `width` x `height` image."""
        factor = max(width, height) / WORK_SIDE if max(width, height) > WORK_SIDE else 1.0
        work_w, work_h = round(width / factor), round(height / factor)
        smallest_tile = min(max(x1 - x0, 1) for x0, _, x1, _ in tile_grid(work_w, work_h, MIN_TILE))
        return MIN_FRACTION * max(smallest_tile, MIN_TILE) * factor

    def detect(self, rgb: np.ndarray) -> list[Face]:
        """Faces in an (H, W, 3) uint8 image, largest first."""
        height, width = rgb.shape[:2]
        factor = max(width, height) / WORK_SIDE if max(width, height) > WORK_SIDE else 1.0
        work = rgb
        if factor > 1.0:
            size = (round(width / factor), round(height / factor))
            work = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR))
        with quiet_native_stderr():
            faces = detect_tiled(self._detect_once, work, MIN_TILE)
        faces = [face.mapped(factor) for face in faces] if factor > 1.0 else faces
        return sorted(faces, key=lambda face: face.size, reverse=True)

    def _detect_once(self, rgb: np.ndarray) -> list[Face]:
        height, width = rgb.shape[:2]
        result = self._detector.detect(mediapipe_image(rgb))
        faces = []
        for detection in result.detections:
            b = detection.bounding_box
            points = {
                name: (k.x * width, k.y * height)
                for name, k in zip(KEYPOINTS, detection.keypoints, strict=False)
            }
            faces.append(
                Face(
                    box=(b.origin_x, b.origin_y, b.origin_x + b.width, b.origin_y + b.height),
                    score=float(detection.categories[0].score),
                    right_eye=points.pop("right_eye", None),
                    left_eye=points.pop("left_eye", None),
                    landmarks=points,
                )
            )
        return faces

    def close(self) -> None:
        with quiet_native_stderr():
            self._detector.close()
