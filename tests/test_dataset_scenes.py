"""Scenes across shots, without models: the grouping rule, the units and shards of a build, and
what a dataset can teach (its stats)."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from layercomposer.cli.main import app
from layercomposer.errors import InputError, UsageError
from layercomposer.train.build import Shard, Unit, dataset_units
from layercomposer.train.dataset import BACKGROUND, ImageRecord, LayerRecord, SceneRecord
from layercomposer.train.grouping import group_shots, match_one_to_one
from layercomposer.train.stats import appearance_distance, dataset_stats, person_thumbnail

runner = CliRunner()

# Four people far apart in a 2-d "embedding"; the same person's faces land within 0.2 of them.
X, Y, Z, W = (np.array(v, np.float64) for v in ([0, 0], [10, 0], [0, 10], [10, 10]))


def euclid(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b))


def person(centre: np.ndarray, frames: int = 3, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [centre + rng.uniform(-0.1, 0.1, 2) for _ in range(frames)]


def group(shots, max_identities: int = 4):
    return group_shots(shots, euclid, 0.6, max_identities)


# --- the grouping rule ---------------------------------------------------------------------------


def test_two_shots_of_the_same_people_are_one_scene_and_people_keep_their_number():
    shots = [[person(X), person(Y)], [person(Y, seed=1), person(X, seed=1)]]  # sides swapped
    (scene,) = group(shots)
    assert scene.shots == (0, 1) and scene.count == 2
    assert scene.person(0, 0) == scene.person(1, 1) == 0  # X
    assert scene.person(0, 1) == scene.person(1, 0) == 1  # Y


def test_overlapping_people_merge_up_to_max_identities():
    shots = [[person(X), person(Y)], [person(X, seed=1), person(Z)]]
    (scene,) = group(shots)
    assert scene.count == 3 and scene.person(1, 0) == scene.person(0, 0)
    assert scene.person(1, 1) == 2  # Z: new in the scene, numbered after X and Y
    # with at most two people a scene, the second shot cannot join: a scene of its own
    first, second = group(shots, max_identities=2)
    assert (first.shots, second.shots) == ((0,), (1,))
    assert (first.count, second.count) == (2, 2)


def test_strangers_make_separate_scenes_and_a_shot_joins_the_scene_it_shares_most_with():
    shots = [
        [person(X), person(Y)],  # scene 0
        [person(Z), person(W)],  # nobody in common: scene 1
        [person(Z, seed=1), person(W, seed=1), person(X, seed=1)],  # 2 in scene 1, 1 in 0
        [person(Y, seed=2), person(Z, seed=2)],  # 1 each: the earlier scene, 0
    ]
    scenes = group(shots)
    assert [s.shots for s in scenes] == [(0, 3), (1, 2)]
    assert scenes[0].count == 3 and scenes[1].count == 3  # scenes are never merged afterwards
    assert scenes[0].person(3, 1) == 2  # Z, new to scene 0


def test_people_match_by_mean_embedding_not_by_their_closest_face():
    near_and_far = [X + [0.5, 0], X + [1.3, 0]]  # one face 0.5 from X, the mean 0.9 from it
    scenes = group([[person(X)], [near_and_far]])
    assert [s.shots for s in scenes] == [(0,), (1,)]  # missed rather than wrongly merged


def test_matching_is_one_to_one_closest_first():
    distances = np.array([[0.1, 0.2], [0.15, 0.9], [0.3, 0.4]])
    assert match_one_to_one(distances, 0.6) == {0: 0, 2: 1}  # row 1 lost column 0 to row 0
    assert match_one_to_one(distances, 0.12) == {0: 0}
    assert match_one_to_one(np.zeros((2, 0)), 0.6) == {}


# --- units and shards ----------------------------------------------------------------------------


def touch(path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


def test_units_are_photo_folders_videos_and_folders_of_videos(tmp_path):
    for name in ("walk.mp4", "._walk.mp4", "photos/a.png", "photos/b.jpg", "photos/a.mask.0.png",
                 "trip/one.mp4", "trip/two.mov", "trip/pic.jpg", ".cache/x.mp4"):  # fmt: skip
        touch(tmp_path / name)
    touch(tmp_path / "trip" / "one.jpg")  # a poster beside its video: no clash
    units = dataset_units(tmp_path)
    assert [(u.name, u.is_photos) for u in units] == [
        ("photos", True),
        ("trip", False),
        ("walk", False),
    ]
    photos, trip, walk = units
    assert [p.name for p in photos.photos] == ["a.png", "b.jpg"]
    assert [p.name for p in trip.videos] == ["one.mp4", "two.mov"]
    assert [p.name for p in trip.photos] == ["one.jpg", "pic.jpg"]
    assert trip.label_of(tmp_path / "trip" / "one.mp4") == "trip/one.mp4"
    assert walk.label_of(tmp_path / "walk.mp4") == "walk.mp4"
    assert photos.scene_name(1) == "photos" and trip.scene_name(2) == "trip-scene002"
    (only,) = dataset_units(tmp_path / "walk.mp4")  # SCENES may be one video
    assert (only.name, only.label) == ("walk", "walk.mp4")


@pytest.mark.parametrize(
    ("files", "message"),
    [
        (["trip.mp4", "trip/one.mp4"], "would both make scenes trip-scene*"),
        (["walk.mp4", "walk-scene001/a.png"], "would both make scene walk-scene001"),
        (["trip/one.mp4", "trip/one.mov"], "would both write images named one*.png"),
        (["duo/img.png", "duo/img.jpg"], "would both write images named img*.png"),
    ],
)
def test_sources_that_would_write_the_same_files_are_refused(tmp_path, files, message):
    for name in files:
        touch(tmp_path / name)
    with pytest.raises(InputError, match=message.replace("*", r"\*")):
        dataset_units(tmp_path)


def test_shards_split_the_units_round_robin():
    units = [Unit(f"u{k}", None, f"u{k}") for k in range(5)]
    parts = [Shard(k, 3).select(units) for k in range(3)]
    assert [[u.name for u in part] for part in parts] == [["u0", "u3"], ["u1", "u4"], ["u2"]]
    assert Shard(0, 1).select(units) == units
    assert Shard.parse("1/3") == Shard(1, 3) and Shard.parse(" 0 / 8 ") == Shard(0, 8)
    assert str(Shard(2, 8)) == "2/8"


@pytest.mark.parametrize("text", ["2/2", "5/2", "1/0", "-1/2", "a/b", "3", "0/2/1", "", "0.5/2"])
def test_a_bad_shard_is_a_usage_error(text):
    with pytest.raises(UsageError, match="--shard"):
        Shard.parse(text)


@pytest.mark.parametrize("text", ["2/2", "x"])
def test_lc_dataset_build_refuses_a_bad_shard_before_any_work(tmp_path, text):
    touch(tmp_path / "scenes" / "duo" / "a.png")
    out = tmp_path / "out"
    result = runner.invoke(
        app, ["dataset", "build", str(tmp_path / "scenes"), "-o", str(out), "--shard", text]
    )
    assert result.exit_code == 2, result.output
    assert f"--shard {text!r}" in result.output and "Traceback" not in result.output
    assert not out.exists()


# --- what a dataset can teach --------------------------------------------------------------------


def flat(value: int, size=(10, 6), alpha: int = 255) -> np.ndarray:
    rgba = np.full((*size, 4), value, np.uint8)
    rgba[..., 3] = alpha
    return rgba


def image(file: str, shot: str | None, seconds: float | None, people: list[str]) -> ImageRecord:
    layers = [LayerRecord(BACKGROUND, f"{file}.bg", (0, 0, 8, 8))]
    layers += [LayerRecord(p, f"{file}.{p}", (0, 0, 8, 8)) for p in people]
    return ImageRecord(file, "", tuple(layers), shot, seconds)


def test_appearance_distance_is_zero_for_copies_and_ignores_size_and_transparent_pixels():
    grey = person_thumbnail(flat(128))
    assert person_thumbnail(flat(7, alpha=0)).tolist() == grey.tolist()  # transparent = grey
    assert appearance_distance(grey, grey) == 0.0
    assert appearance_distance(person_thumbnail(flat(0)), person_thumbnail(flat(255))) == 1.0
    picture = flat(0, (40, 20))
    picture[..., :3] = np.linspace(0, 255, 40).astype(np.uint8)[:, None, None]  # dark to light
    bigger = np.repeat(np.repeat(picture, 2, 0), 2, 1)
    assert appearance_distance(person_thumbnail(picture), person_thumbnail(bigger)) < 0.02
    upside_down = picture[::-1]
    assert appearance_distance(person_thumbnail(picture), person_thumbnail(upside_down)) > 0.4


def test_stats_count_donors_from_other_shots_and_people_without_donor():
    # P is in both shots; Q only in shot 1, in two frames 1 s apart
    a0, a1 = image("a0", "v#1", 0.0, ["P", "Q"]), image("a1", "v#1", 1.0, ["P", "Q"])
    b0 = image("b0", "v#2", 9.0, ["P"])
    photos = [image(f"p{k}", f"photos/p{k}.png", None, ["R"]) for k in range(3)]
    scenes = [SceneRecord("v", (a0, a1, b0)), SceneRecord("photos", tuple(photos))]
    pixels = {"a0.P": flat(100), "a1.P": flat(100), "b0.P": flat(150), "a0.Q": flat(20),
              "a1.Q": flat(60), "p0.R": flat(10), "p1.R": flat(10), "p2.R": flat(40)}  # fmt: skip
    read: list[str] = []

    def layer_pixels(file: str) -> np.ndarray:
        read.append(file)
        return pixels[file]

    stats = dataset_stats(scenes, layer_pixels, min_donor_seconds=3.0)
    assert (stats.scenes, stats.images, stats.shots) == (2, 6, 5)
    assert (stats.images_per_scene.min, stats.images_per_scene.max) == (3, 3)
    assert (stats.shots_per_scene.min, stats.shots_per_scene.max) == (2, 3)
    assert stats.people == 8  # P x3, Q x2, R x3
    assert stats.other_shot == 6 and stats.no_donor == 2  # Q: in one shot, frames too close
    assert stats.other_shot_share == 0.75 and stats.no_donor_share == 0.25
    # P: every target's donors are 50 levels apart; R: p0 -> (0 + 30)/2, p1 the same, p2 -> 30
    expected = sorted([50 / 255] * 3 + [15 / 255, 15 / 255, 30 / 255])
    assert stats.appearance.min == pytest.approx(expected[0], abs=1e-6)
    assert stats.appearance.max == pytest.approx(expected[-1], abs=1e-6)
    assert stats.appearance.mean == pytest.approx(np.mean(expected), abs=1e-6)
    assert sorted(read) == sorted(set(read))  # each layer file read once
    assert "a0.Q" not in read  # no donor, no distance

    loose = dataset_stats(scenes, layer_pixels, min_donor_seconds=0.5)
    assert loose.other_shot == 6 and loose.no_donor == 0  # Q's frames are now far enough
    json = stats.to_json()
    assert json["other_shot_donor_share"] == 0.75 and json["min_donor_seconds"] == 3.0
    assert json["appearance_distance"]["max"] == round(50 / 255, 4)


def test_stats_of_an_index_without_shots_treat_each_image_as_its_own_shot():
    old = [image(f"i{k}", None, None, ["P"]) for k in range(2)]
    stats = dataset_stats([SceneRecord("s", tuple(old))], lambda f: flat(9), 3.0)
    assert stats.shots == 2 and stats.other_shot_share == 1.0 and stats.appearance.max == 0.0
    empty = dataset_stats([], lambda f: flat(9), 3.0).to_json()
    assert empty["people"] == 0 and empty["appearance_distance"] is None


def test_a_record_from_an_lc_that_made_a_scene_per_shot_is_built_again(tmp_path):
    from layercomposer.files import write_json_atomic
    from layercomposer.train.build import finished_result, unit_record_path

    touch(tmp_path / "scenes" / "walk.mp4")
    (unit,) = dataset_units(tmp_path / "scenes")
    out = tmp_path / "out"
    old = {"video": "walk.mp4", "shots": [{"name": "walk-shot001", "scene": None, "dropped": {}}]}
    write_json_atomic(unit_record_path(out, unit), old)
    assert finished_result(unit, out) is None
    write_json_atomic(
        unit_record_path(out, unit), {"unit": "walk.mp4", "scenes": [], "dropped": {}}
    )
    assert finished_result(unit, out).scenes == []


def test_a_shard_with_no_units_writes_an_empty_dataset(tmp_path):
    import json

    touch(tmp_path / "scenes" / "duo" / "a.png")
    out = tmp_path / "out"
    result = runner.invoke(
        app, ["dataset", "build", str(tmp_path / "scenes"), "-o", str(out), "--shard", "1/2"]
    )
    assert result.exit_code == 0, result.output
    assert "shard 1/2 holds no scenes" in result.output
    index = json.loads((out / "index.json").read_text())
    assert index["scenes"] == [] and index["shard"] == "1/2" and index["stats"]["people"] == 0
