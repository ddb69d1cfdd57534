"""Scenes across shots: a unit's shots grouped by the people in them (pure, tested alone).

A shot (or a photo) comes with its people already matched across its own frames: for each
person, the face embeddings of the frames they are in. Shots are taken in order. Each joins the
scene it shares the most people with, the earlier scene on a tie, if that scene then holds at
most `max_identities` people; a shot that shares nobody with any scene, or would make every
scene it shares people with too large, starts a scene of its own. Scenes are never merged
afterwards, so the result depends only on the shots and their order.

A person of a shot is a person of a scene when their mean face embeddings are closer than the
embedder's same-person distance; pairs are taken closest first, each person once on each side.
Mean embeddings, not the closest frames: two people wrongly made one would give a donor of the
wrong person, while a missed match only loses donors, so the rule leans to missing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

Distance = Callable[[np.ndarray, np.ndarray], float]
# One shot's people: for each person of the shot, the embeddings of their faces, (dim,) each.
ShotPeople = Sequence[Sequence[np.ndarray]]


@dataclass(frozen=True)
class SceneGroup:
    """Shots that show the same people, and who is who across them."""

    shots: tuple[int, ...]  # indices of its shots in the input, in input order
    people: dict[tuple[int, int], int]  # (shot, person of that shot) -> person of the scene
    count: int  # people in the scene

    def person(self, shot: int, local: int) -> int:
        return self.people[(shot, local)]


def match_one_to_one(distances: np.ndarray, threshold: float) -> dict[int, int]:
    """Row -> column pairs with a distance under `threshold`, closest first, each used once.

    `distances` is (rows, columns); ties are broken by row, then column, so the result is
    deterministic.
    """
    pairs = sorted(
        (float(distances[i, j]), i, j)
        for i in range(distances.shape[0])
        for j in range(distances.shape[1])
    )
    matched: dict[int, int] = {}
    taken: set[int] = set()
    for distance, i, j in pairs:
        if distance < threshold and i not in matched and j not in taken:
            matched[i] = j
            taken.add(j)
    return matched


def group_shots(
    shots: Sequence[ShotPeople], distance: Distance, same_person: float, max_identities: int
) -> list[SceneGroup]:
    """The shots grouped into scenes of the same people (see the module docstring)."""
    # Per scene: its shots, its people's running embedding sums and counts, and who is who.
    members: list[list[int]] = []
    sums: list[list[np.ndarray]] = []
    counts: list[list[int]] = []
    people: list[dict[tuple[int, int], int]] = []
    for s, shot in enumerate(shots):
        means = [np.mean(np.stack(vectors), axis=0) for vectors in shot]
        best: tuple[int, int, dict[int, int]] | None = None  # (shared, scene, matches)
        for g in range(len(members)):
            centres = [total / n for total, n in zip(sums[g], counts[g], strict=True)]
            table = np.array([[distance(m, c) for c in centres] for m in means]).reshape(
                len(means), len(centres)
            )
            matches = match_one_to_one(table, same_person)
            if not matches or len(centres) + len(means) - len(matches) > max_identities:
                continue
            if best is None or len(matches) > best[0]:
                best = (len(matches), g, matches)
        if best is None:
            members.append([])
            sums.append([])
            counts.append([])
            people.append({})
            g, matches = len(members) - 1, {}
        else:
            _, g, matches = best
        members[g].append(s)
        for local, vectors in enumerate(shot):
            if local in matches:
                person = matches[local]
            else:
                person = len(sums[g])
                sums[g].append(np.zeros_like(means[local], dtype=np.float64))
                counts[g].append(0)
            sums[g][person] = sums[g][person] + np.sum(np.stack(vectors), axis=0)
            counts[g][person] += len(vectors)
            people[g][(s, local)] = person
    return [
        SceneGroup(tuple(shots_of), mapping, len(sums[g]))
        for g, (shots_of, mapping) in enumerate(zip(members, people, strict=True))
    ]


__all__ = ["SceneGroup", "group_shots", "match_one_to_one"]
