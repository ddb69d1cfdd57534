"""Placement math: which prior face each subject takes, and the scale, rotation and position
that put the subject's face on it. Pure functions of boxes and points; no images here.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any, Literal

from ..canvas import MAX_SCALE
from ..choices import Assign, names
from ..errors import InputError, UsageError
from ..faces.types import Face, Point

AssignMode = Assign
ASSIGN_MODES = names(Assign)


@dataclass(frozen=True)
class Placement:
    """Where one subject's layer goes: a canvas layer with `anchor: center`."""

    name: str
    face_index: int | None  # the prior face it was put on (left to right from 0); None: grid
    target: Face  # where its face lands on the canvas
    scale: float
    rotate: float  # degrees, counter-clockwise
    position: Point  # the cut-out's centre on the canvas
    aligned_by: Literal["eyes", "box"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "face_index": self.face_index,
            "target_center": [round(v, 1) for v in self.target.center],
            "target_size": round(self.target.size, 1),
            "scale": round(self.scale, 5),
            "rotate": round(self.rotate, 3),
            "position": [round(v, 2) for v in self.position],
            "aligned_by": self.aligned_by,
        }


def left_to_right(faces: list[Face]) -> list[Face]:
    return sorted(faces, key=lambda face: face.center[0])


def assign_faces(
    n_subjects: int, prior_faces: list[Face], mode: str, manual: list[int] | None = None
) -> list[int | None]:
    """For each subject, the index of its prior face (faces numbered left to right), or None.

    order: the subjects, as given, take the faces left to right (with more faces than subjects,
    the largest ones); size: the first subject takes the largest face, the next the next
    largest; manual: `manual[i]` is subject i's face. None: no face left for that subject.
    """
    indices = list(range(len(prior_faces)))
    by_size = sorted(indices, key=lambda i: prior_faces[i].size, reverse=True)
    if mode == "order":
        chosen = sorted(by_size[:n_subjects], key=lambda i: prior_faces[i].center[0])
    elif mode == "size":
        chosen = by_size[:n_subjects]
    elif mode == "manual":
        if manual is None or len(manual) != n_subjects:
            got = "none" if manual is None else len(manual)
            raise UsageError(
                f"--assign manual needs one prior face index per subject ({n_subjects}), got {got}",
                hint="e.g. --faces 2,0,1 (faces are numbered left to right from 0)",
            )
        bad = [i for i in manual if not 0 <= i < len(prior_faces)]
        if bad:
            raise UsageError(
                f"--faces {','.join(map(str, manual))}: the prior has {len(prior_faces)} faces "
                f"(0..{len(prior_faces) - 1}); no face {bad[0]}"
            )
        if len(set(manual)) != len(manual):
            raise UsageError(f"--faces {','.join(map(str, manual))}: a face is used twice")
        return list(manual)
    else:
        raise UsageError(f"--assign {mode!r}: choose one of {', '.join(ASSIGN_MODES)}")
    return chosen + [None] * (n_subjects - len(chosen))


def grid_targets(count: int, canvas: tuple[int, int], prior_faces: list[Face]) -> list[Face]:
    """`count` face targets in a row across the canvas, for subjects the prior has no face for.

    They are as large as the prior's median face, at its median height; with no prior face,
    a sixth of the canvas height, centred at 35% of it.
    """
    width, height = canvas
    if prior_faces:
        size = statistics.median(face.size for face in prior_faces)
        y = statistics.median(face.center[1] for face in prior_faces)
    else:
        size, y = height / 6, height * 0.35
    targets = []
    for i in range(count):
        x = (i + 0.5) * width / count
        targets.append(Face((x - size / 2, y - size / 2, x + size / 2, y + size / 2), 0.0))
    return targets


def place_subject(
    name: str,
    face: Face,
    cutout_size: tuple[int, int],
    target: Face,
    face_index: int | None,
    align_eyes: bool,
) -> Placement:
    """The scale, rotation and centre position that put `face` (cut-out pixels) on `target`.

    By box: the scale matches box sizes and the box centres coincide, no rotation. By eyes
    (`align_eyes`, both faces with eyes): the eye line of the subject is turned, scaled and moved
    onto the target's.
    """
    by_eyes = align_eyes and face.has_eyes and target.has_eyes and face.eye_distance > 0
    if by_eyes:
        scale = target.eye_distance / face.eye_distance
        rotate = _wrap(target.eye_angle - face.eye_angle)
        source, goal = face.eye_center, target.eye_center
    else:
        if face.size <= 0:
            raise InputError(f"subject '{name}': its face box is empty")
        scale = target.size / face.size
        rotate = 0.0
        source, goal = face.center, target.center
    if not 0 < scale <= MAX_SCALE:
        raise InputError(
            f"subject '{name}': its face ({face.size:.0f} px) would need scaling by {scale:.1f} "
            f"to match a {target.size:.0f} px face in the prior (a layer scales at most "
            f"{MAX_SCALE:g}x)",
            hint="use a larger photo of this subject, or a prior with smaller faces",
        )
    # The canvas file stores these rounded; compute the position from what it will say.
    scale, rotate = round(scale, 5), round(rotate, 3)
    # Mirror layers.py exactly: the cut-out is resized to whole pixels, then turned about its
    # centre with the canvas grown to hold it, and that centre sits at `position`.
    width, height = cutout_size
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    dx = source[0] * new_w / width - new_w / 2
    dy = source[1] * new_h / height - new_h / 2
    theta = math.radians(rotate)
    # A counter-clockwise turn as seen, with y pointing down.
    rx = dx * math.cos(theta) + dy * math.sin(theta)
    ry = -dx * math.sin(theta) + dy * math.cos(theta)
    position = (goal[0] - rx, goal[1] - ry)
    return Placement(
        name, face_index, target, scale, rotate, position, "eyes" if by_eyes else "box"
    )


def _wrap(degrees: float) -> float:
    """An angle in (-180, 180]."""
    wrapped = math.fmod(degrees + 180.0, 360.0)
    return (wrapped + 360.0 if wrapped <= 0 else wrapped) - 180.0


def pseudo_face(alpha_box: tuple[int, int, int, int]) -> Face:
    """A stand-in face for a subject without one, from its cut-out's box (`--no-face-ok`).

    A head-and-shoulders heuristic: a square 40% of the box's width (at most half its
    height), centred horizontally, its top at the box's top.
    """
    x0, y0, x1, y1 = alpha_box
    side = min(0.4 * (x1 - x0), 0.5 * (y1 - y0))
    cx = (x0 + x1) / 2
    return Face((cx - side / 2, y0, cx + side / 2, y0 + side), 0.0)
