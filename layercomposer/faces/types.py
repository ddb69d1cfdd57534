"""What a face detector finds: a box, a score and (when the backend gives them) landmarks."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

Point = tuple[float, float]


@dataclass(frozen=True)
class Face:
    """One detected face, in image pixels (x right, y down).

    `right_eye` and `left_eye` are the person's own eyes: on an upright face looking at the
    camera the right eye appears on the image's left. Every backend maps its landmarks to
    these names, so the eye line means the same thing whichever detector found it.
    """

    box: tuple[float, float, float, float]  # x0, y0, x1, y1
    score: float
    right_eye: Point | None = None
    left_eye: Point | None = None
    landmarks: dict[str, Point] = field(default_factory=dict)  # nose, mouth, ... per backend

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]

    @property
    def size(self) -> float:
        """The box's side as one number: the geometric mean of its width and height."""
        return math.sqrt(max(self.width, 0.0) * max(self.height, 0.0))

    @property
    def center(self) -> Point:
        return (self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2

    @property
    def has_eyes(self) -> bool:
        return self.right_eye is not None and self.left_eye is not None

    @property
    def eye_center(self) -> Point:
        if not self.has_eyes:
            return self.center
        return (self.right_eye[0] + self.left_eye[0]) / 2, (
            self.right_eye[1] + self.left_eye[1]
        ) / 2

    @property
    def eye_distance(self) -> float | None:
        if not self.has_eyes:
            return None
        return math.dist(self.right_eye, self.left_eye)

    @property
    def eye_angle(self) -> float | None:
        """Degrees counter-clockwise (as seen) of the line from the right to the left eye."""
        if not self.has_eyes:
            return None
        dx = self.left_eye[0] - self.right_eye[0]
        dy = self.left_eye[1] - self.right_eye[1]
        return math.degrees(math.atan2(-dy, dx))  # y points down: flip it for "as seen"

    def mapped(self, scale: float, offset: Point = (0.0, 0.0)) -> Face:
        """This face in another image: coordinates times `scale`, then shifted by `offset`."""

        def point(p: Point | None) -> Point | None:
            return None if p is None else (p[0] * scale + offset[0], p[1] * scale + offset[1])

        x0, y0 = point(self.box[:2])
        x1, y1 = point(self.box[2:])
        return replace(
            self,
            box=(x0, y0, x1, y1),
            right_eye=point(self.right_eye),
            left_eye=point(self.left_eye),
            landmarks={name: point(p) for name, p in self.landmarks.items()},
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, rounded to 0.1 px."""

        def r(values) -> list[float]:
            return [round(float(v), 1) for v in values]

        out: dict[str, Any] = {"box": r(self.box), "score": round(float(self.score), 3)}
        if self.has_eyes:
            out["right_eye"] = r(self.right_eye)
            out["left_eye"] = r(self.left_eye)
        if self.landmarks:
            out["landmarks"] = {name: r(p) for name, p in self.landmarks.items()}
        return out


def iou(a: Face, b: Face) -> float:
    """Intersection over union of two faces' boxes."""
    ix = max(0.0, min(a.box[2], b.box[2]) - max(a.box[0], b.box[0]))
    iy = max(0.0, min(a.box[3], b.box[3]) - max(a.box[1], b.box[1]))
    inter = ix * iy
    union = a.width * a.height + b.width * b.height - inter
    return inter / union if union > 0 else 0.0


def overlap_of_smaller(a: Face, b: Face) -> float:
    """How much of the smaller box lies inside the other (1.0: fully inside)."""
    ix = max(0.0, min(a.box[2], b.box[2]) - max(a.box[0], b.box[0]))
    iy = max(0.0, min(a.box[3], b.box[3]) - max(a.box[1], b.box[1]))
    smaller = min(a.width * a.height, b.width * b.height)
    return ix * iy / smaller if smaller > 0 else 0.0
