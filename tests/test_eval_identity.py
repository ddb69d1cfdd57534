"""The identity metric: real photos of two different people (the astronaut, Eileen Collins, from
scikit-image; Grace Hopper from matplotlib) against the example canvas's cut-outs of them, the
one-to-one matching checked against brute force, and misses."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from conftest import REPO
from layercomposer.canvas import load_canvas
from layercomposer.eval.identity import (
    IdentityScore,
    IdentityScorer,
    match_subjects,
    reference_image,
    similarity,
)
from layercomposer.eval.matching import best_matching
from layercomposer.faces.types import Face

MARGIN = 0.25  # measured: the smallest same-minus-other gap is 0.34 (the grey astronaut)
BACKDROP = (118, 140, 160)


# --- matching: pure, against brute force -------------------------------------------------------


def brute_force_best(table: np.ndarray) -> float:
    rows, cols = table.shape
    k = min(rows, cols)
    return max(
        sum(table[r, c] for r, c in zip(chosen, order, strict=True))
        for chosen in itertools.combinations(range(rows), k)
        for order in itertools.permutations(range(cols), k)
    )


@pytest.mark.parametrize("shape", [(1, 1), (2, 2), (3, 5), (5, 3), (4, 4), (1, 4), (4, 1)])
def test_matching_maximises_total_similarity_one_to_one(shape):
    rng = np.random.default_rng(sum(shape))
    for trial in range(40):
        table = rng.normal(size=shape)
        if trial % 4 == 0:
            table = np.round(table)  # ties
        pairs = best_matching(table)
        assert len(pairs) == min(shape)
        assert len({r for r, _ in pairs}) == len(pairs) == len({c for _, c in pairs})
        assert sum(table[r, c] for r, c in pairs) == pytest.approx(brute_force_best(table))


def test_matching_an_empty_table_gives_no_pairs():
    assert best_matching(np.zeros((2, 0))) == [] and best_matching(np.zeros((0, 3))) == []


class UnitEmbedder:
    """Cosine embedder on hand-made vectors: no model, so the matching logic is seen alone."""

    metric = "cosine"
    same_person_distance = 0.6


def face_at(x: float) -> Face:
    return Face((x, 10, x + 20, 30), 1.0)


def test_swapped_subjects_are_matched_by_identity_not_by_position():
    alice, bob = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
    # Bob stands left, Alice right; the subjects are listed Alice first.
    faces = [(face_at(0), bob + 0.1), (face_at(100), alice + 0.2)]
    score = match_subjects(["alice", "bob"], [alice, bob], faces, UnitEmbedder(), "test")
    assert [s.face.box[0] for s in score.subjects] == [100, 0]
    assert all(s.status == "matched" and s.similarity > 0.9 for s in score.subjects)


def test_a_subject_without_a_face_left_is_a_miss_scoring_zero():
    alice, bob = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    score = match_subjects(["alice", "bob"], [alice, bob], [(face_at(0), bob)], UnitEmbedder(), "t")
    assert [(s.name, s.status) for s in score.subjects] == [("alice", "missed"), ("bob", "matched")]
    assert score.subjects[0].similarity == 0.0 and score.misses == 1
    assert score.mean == pytest.approx(0.5)
    nobody = match_subjects(["alice", "bob"], [alice, bob], [], UnitEmbedder(), "t")
    assert nobody.mean == 0.0 and nobody.misses == 2 and nobody.faces_found == 0


def test_a_subject_without_a_reference_face_is_left_out_of_the_mean():
    alice = np.array([1.0, 0.0])
    score = match_subjects(
        ["alice", "rocket"], [alice, None], [(face_at(0), alice)], UnitEmbedder(), "t"
    )
    assert [s.status for s in score.subjects] == ["matched", "no_reference"]
    assert score.mean == pytest.approx(1.0) and score.misses == 0
    assert IdentityScore.from_dict(score.to_dict()).mean == pytest.approx(1.0)


def test_dlib_similarity_puts_its_threshold_at_one_half():
    class Euclidean:
        metric, same_person_distance = "euclidean", 0.6

    a = np.zeros(128, np.float32)
    for distance, expected in [(0.0, 1.0), (0.3, 0.75), (0.6, 0.5), (1.2, 0.0), (2.0, 0.0)]:
        b = a.copy()
        b[0] = distance
        assert similarity(Euclidean(), a, b) == pytest.approx(expected)


# --- dlib on real photographs -----------------------------------------------------------------

skimage_data = pytest.importorskip("skimage.data", reason="scikit-image is in lc's [dev] extra")
cbook = pytest.importorskip("matplotlib.cbook", reason="matplotlib is in lc's [dev] extra")


@pytest.fixture(scope="module")
def scorer():
    pytest.importorskip("dlib", reason="dlib-bin is in lc's [autolayout] extra")
    scorer = IdentityScorer("dlib")
    yield scorer
    scorer.close()


@pytest.fixture(scope="module")
def photos():
    hopper = np.asarray(Image.open(cbook.get_sample_data("grace_hopper.jpg")).convert("RGB"))
    return {"collins": skimage_data.astronaut(), "hopper": hopper}


@pytest.fixture(scope="module")
def references(scorer):
    """The example canvas's RGBA cut-outs, as `lc eval` reads them."""
    canvas = load_canvas(REPO / "canvases" / "four_people.yaml")
    layers = {layer.name: layer for layer in canvas.spec.layers}
    return {
        name: scorer.reference(reference_image(canvas, layers[name]))
        for name in ("collins", "hopper")
    }


def variants(photo: np.ndarray) -> dict[str, np.ndarray]:
    image, (h, w) = Image.fromarray(photo), photo.shape[:2]
    return {
        "crop": photo[h // 10 : h * 8 // 10, w // 8 : w * 7 // 8],
        "flip": photo[:, ::-1],
        "half size": np.asarray(image.resize((w // 2, h // 2), Image.Resampling.LANCZOS)),
        "warm": np.clip(photo * np.array([1.15, 1.0, 0.8]), 0, 255).astype(np.uint8),
        "grey": np.asarray(image.convert("L").convert("RGB")),
        "dark": np.asarray(ImageEnhance.Brightness(image).enhance(0.6)),
    }


@pytest.mark.parametrize("person,other", [("collins", "hopper"), ("hopper", "collins")])
def test_the_same_person_scores_clearly_above_the_other(scorer, photos, references, person, other):
    for name, photo in variants(photos[person]).items():
        faces = scorer.faces(np.ascontiguousarray(photo))
        assert len(faces) == 1, name
        vector = faces[0][1]
        same = similarity(scorer.embedder, references[person], vector)
        different = similarity(scorer.embedder, references[other], vector)
        assert same > 0.5 > different, (name, same, different)  # dlib's own threshold
        assert same - different >= MARGIN, (name, same, different)


def paste(photos: dict[str, np.ndarray], placements, size=(640, 360)) -> np.ndarray:
    canvas = np.full((size[1], size[0], 3), BACKDROP, np.uint8)
    for name, scale, (x, y) in placements:
        image = Image.fromarray(photos[name])
        image = image.resize((round(image.width * scale), round(image.height * scale)))
        pixels = np.asarray(image)[: size[1] - y, : size[0] - x]
        canvas[y : y + pixels.shape[0], x : x + pixels.shape[1]] = pixels
    return canvas


def test_a_group_photo_matches_each_subject_to_its_own_face(scorer, photos, references):
    # Hopper on the left, Collins on the right; the subjects are listed Collins first.
    group = paste(photos, [("hopper", 0.55, (10, 20)), ("collins", 0.6, (330, 40))])
    score = scorer.score(
        group, ["collins", "hopper"], [references["collins"], references["hopper"]]
    )
    collins, hopper = score.subjects
    assert score.faces_found == 2 and score.misses == 0
    assert collins.face.center[0] > 330 > hopper.face.center[0]
    assert collins.similarity > 0.5 and hopper.similarity > 0.5


def test_a_missing_person_is_a_miss(scorer, photos, references):
    alone = paste(photos, [("collins", 0.6, (100, 40))])
    score = scorer.score(
        alone, ["collins", "hopper"], [references["collins"], references["hopper"]]
    )
    assert [s.status for s in score.subjects] == ["matched", "missed"]
    assert score.subjects[1].similarity == 0.0
    assert score.mean == pytest.approx(score.subjects[0].similarity / 2)
    noise = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    assert scorer.score(noise, ["collins"], [references["collins"]]).misses == 1
