"""Tiled detection: find faces far smaller than a detector's input, then merge the finds.

MediaPipe's short-range model sees a 128x128 input and misses faces under ~13% of the image's
side, which every face of a group photo is. Running it also on overlapping tiles (half, then a
quarter of the shorter side, with 50% overlap) finds faces down to ~3.5% of the side.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .types import Face, iou, overlap_of_smaller

TileBox = tuple[int, int, int, int]  # x0, y0, x1, y1
REFINE_CONTEXTS = (2.0, 2.3, 2.6, 2.9, 3.2)  # crop side / face size for the second looks


def tile_grid(width: int, height: int, min_tile: int, levels: int = 2) -> list[TileBox]:
    """The whole image, then square tiles of 1/2, 1/4, ... the shorter side (50% overlap)."""
    tiles: list[TileBox] = [(0, 0, width, height)]
    side = min(width, height)
    for _ in range(levels):
        side //= 2
        if side < min_tile:
            break
        stride = side // 2
        xs = _starts(width, side, stride)
        ys = _starts(height, side, stride)
        tiles += [(x, y, x + side, y + side) for y in ys for x in xs]
    return tiles


def _starts(length: int, side: int, stride: int) -> list[int]:
    starts = list(range(0, max(length - side, 0) + 1, stride))
    if starts[-1] + side < length:  # the last tile ends flush with the edge
        starts.append(length - side)
    return starts


def detect_tiled(
    detect: Callable[[np.ndarray], list[Face]],
    rgb: np.ndarray,
    min_tile: int,
    levels: int = 2,
    edge_margin: float = 0.02,
    refine_faces: bool = True,
) -> list[Face]:
    """Faces found on the whole image or any tile, in image pixels, duplicates merged.

    With `refine_faces`, each face is then looked at again (see `refine`).
    """
    height, width = rgb.shape[:2]
    found: list[Face] = []
    for x0, y0, x1, y1 in tile_grid(width, height, min_tile, levels):
        tile = np.ascontiguousarray(rgb[y0:y1, x0:x1])
        margin = edge_margin * (x1 - x0)
        for face in detect(tile):
            # A face cut by a tile's inner edge gets a wrong box; an overlapping tile holds it
            # whole. Edges that are the image's own edges are fine.
            bx0, by0, bx1, by1 = face.box
            cut = (
                (x0 > 0 and bx0 < margin)
                or (y0 > 0 and by0 < margin)
                or (x1 < width and bx1 > (x1 - x0) - margin)
                or (y1 < height and by1 > (y1 - y0) - margin)
            )
            if not cut:
                found.append(face.mapped(1.0, (x0, y0)))
    faces = merge_duplicates(found)
    if not refine_faces:
        return faces
    refined = [refine(detect, rgb, face) for face in faces]
    return merge_duplicates([face for face in refined if face is not None])


def refine(
    detect: Callable[[np.ndarray], list[Face]],
    rgb: np.ndarray,
    face: Face,
    contexts: tuple[float, ...] = REFINE_CONTEXTS,
) -> Face | None:
    """The face found again in square crops a few times its size, centred on it, averaged.

    The model's boxes are coarse: the same face gets boxes up to ~9% apart at different sizes
    or tiles. Looking again with the face at fixed fractions of the model's input, and
    averaging those looks, makes sizes comparable between images (to ~3%), which placement
    relies on. A find that is not found again in any crop is dropped: on tiles the model takes
    star patterns and folds for faces (scores up to 0.76), and those do not survive.
    """
    looks = [look for context in contexts if (look := _look_again(detect, rgb, face, context))]
    if not looks:
        return None
    return average_faces(looks)


def _look_again(detect, rgb: np.ndarray, face: Face, context: float) -> Face | None:
    side = max(8, round(face.size * context))
    cx, cy = face.center
    x0, y0 = round(cx - side / 2), round(cy - side / 2)
    height, width = rgb.shape[:2]
    crop = np.full((side, side, 3), 127, np.uint8)  # grey where the crop leaves the image
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x0 + side, width), min(y0 + side, height)
    crop[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = rgb[sy0:sy1, sx0:sx1]
    again = [f.mapped(1.0, (x0, y0)) for f in detect(crop)]
    if not again:
        return None
    best = max(again, key=lambda f: iou(f, face))
    return best if iou(best, face) > 0.3 else None


def average_faces(faces: list[Face]) -> Face:
    """One face whose box, score and landmarks are the means of `faces` (of one person)."""

    def mean(points) -> tuple[float, float]:
        return tuple(float(v) for v in np.mean(np.asarray(points, np.float64), axis=0))

    with_eyes = [f for f in faces if f.has_eyes]
    shared = set.intersection(*(set(f.landmarks) for f in faces))
    return Face(
        box=tuple(float(v) for v in np.mean([f.box for f in faces], axis=0)),
        score=float(np.mean([f.score for f in faces])),
        right_eye=mean([f.right_eye for f in with_eyes]) if with_eyes else None,
        left_eye=mean([f.left_eye for f in with_eyes]) if with_eyes else None,
        landmarks={name: mean([f.landmarks[name] for f in faces]) for name in sorted(shared)},
    )


def merge_duplicates(faces: list[Face], iou_threshold: float = 0.3) -> list[Face]:
    """Keep the best-scoring face of each group of overlapping ones (non-maximum suppression)."""
    kept: list[Face] = []
    for face in sorted(faces, key=lambda f: f.score, reverse=True):
        if all(
            iou(face, other) < iou_threshold and overlap_of_smaller(face, other) < 0.6
            for other in kept
        ):
            kept.append(face)
    return kept
