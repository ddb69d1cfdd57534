"""Locking-aware sampling, asserted exactly over many seeds."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from train_data import make_dataset

from layercomposer.train.dataset import (
    BACKGROUND,
    ImageRecord,
    LayerRecord,
    SceneRecord,
    load_index,
)
from layercomposer.train.sampler import SamplingConfig, donor_images, sample_example


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    root = tmp_path_factory.mktemp("dataset")
    make_dataset(root)
    return load_index(root)


def find_image(index, file):
    return next(
        (scene, image) for scene in index.scenes for image in scene.images if image.file == file
    )


def test_index_round_trips(index):
    assert index.resolution == 64 and len(index.scenes) == 2
    assert all(len(scene.images) == 3 for scene in index.scenes)


@pytest.mark.parametrize("seed", range(40))
def test_locked_layers_are_the_target_and_unlocked_come_from_another_image(index, seed):
    sample = sample_example(
        index, np.random.default_rng(seed), SamplingConfig(lock_probability=0.5)
    )
    scene, target = find_image(index, sample.target_file)
    assert np.array_equal(index.rgba(target.file)[..., :3], sample.target)
    assert {layer.name for layer in sample.layers} == {record.identity for record in target.layers}
    assert sample.layers[0].name == BACKGROUND

    for layer, source in zip(sample.layers, sample.sources, strict=True):
        if layer.lock:
            # pixel for pixel: wherever the layer is opaque, it shows exactly the target image
            opaque = layer.rgba[..., 3] == 255
            assert np.array_equal(layer.rgba[..., :3][opaque], sample.target[opaque])
            assert source.image == target.file
        else:
            # the same identity, from a different image of the same scene
            assert source.image != target.file
            donor = next(img for img in scene.images if img.file == source.image)
            assert donor.layer(layer.name) is not None


def test_locked_layers_get_index_zero_and_unlocked_one_to_k(index):
    from layercomposer.tokens import plan_tokens

    for seed in range(20):
        sample = sample_example(index, np.random.default_rng(seed), SamplingConfig())
        plan = plan_tokens(sample.layers)
        free = [p.index for p in plan.layers if not p.lock]
        assert free == list(range(1, len(free) + 1))
        assert all(p.index == 0 for p in plan.layers if p.lock)


def test_lock_probability_extremes(index):
    rng = np.random.default_rng(0)
    assert all(
        all(
            s.locked
            for s in sample_example(index, rng, SamplingConfig(lock_probability=1.0)).sources
        )
        for _ in range(10)
    )
    assert not any(
        any(
            s.locked
            for s in sample_example(index, rng, SamplingConfig(lock_probability=0.0)).sources
        )
        for _ in range(10)
    )


def test_unlocked_person_lands_on_the_target_box(index):
    config = SamplingConfig(
        lock_probability=0.0, scale_jitter=0.0, shift_jitter=0.0, color_jitter=0.0
    )
    sample = sample_example(index, np.random.default_rng(3), config)
    _, target = find_image(index, sample.target_file)
    for layer in sample.layers[1:]:
        x0, y0, x1, y1 = target.layer(layer.name).box
        placed = layer.placed
        assert abs((placed.x0 + placed.x1) / 2 - (x0 + x1) / 2) <= 1
        assert abs((placed.y0 + placed.y1) / 2 - (y0 + y1) / 2) <= 1
        assert placed.width <= x1 - x0 + 1 and placed.height <= y1 - y0 + 1


def test_sampling_is_reproducible(index):
    a = sample_example(index, np.random.default_rng(9), SamplingConfig())
    b = sample_example(index, np.random.default_rng(9), SamplingConfig())
    assert a.sources == b.sources
    assert all(np.array_equal(x.rgba, y.rgba) for x, y in zip(a.layers, b.layers, strict=True))


# --- donors from other shots ---------------------------------------------------------------------


def frame(file: str, shot: str | None, seconds: float | None, *people: str) -> ImageRecord:
    layers = [LayerRecord(p, f"{file}.{p}.png", (0, 0, 8, 8)) for p in people]
    return ImageRecord(file, "", (LayerRecord(BACKGROUND, f"{file}.bg.png", (0, 0, 8, 8)), *layers), shot, seconds)  # fmt: skip


def test_donors_come_from_another_shot_first_then_far_frames_of_the_same_shot():
    a0, a1, a2 = (frame(f"a{k}", "clip.mp4#1", t, "P", "Q") for k, t in enumerate((0.0, 1.0, 4.0)))
    b0 = frame("b0", "clip.mp4#2", 20.0, "P")  # Q is in shot 1 only
    scene = SceneRecord("s", (a0, a1, a2, b0))
    # P is in another shot: only that shot, even where the same shot has far frames
    assert donor_images(scene, a0, "P", 3.0) == [b0]
    assert donor_images(scene, b0, "P", 3.0) == [a0, a1, a2]
    # Q is in one shot only: frames of it at least 3 s away, never the closer ones
    assert donor_images(scene, a0, "Q", 3.0) == [a2]
    assert donor_images(scene, a1, "Q", 3.0) == [a2]  # exactly 3 s counts
    assert donor_images(scene, a2, "Q", 3.0) == [a0, a1]
    assert donor_images(scene, a0, "Q", 5.0) == []  # no donor: the layer is always locked
    assert donor_images(scene, a0, "Q", 0.0) == [a1, a2]  # 0: any other frame of the shot
    # the background is a layer like any other
    assert donor_images(scene, a0, BACKGROUND, 3.0) == [b0]


def test_images_without_shots_are_each_their_own_shot():
    old = [frame(f"img{k}", None, None, "P") for k in range(3)]  # an index from before shots
    scene = SceneRecord("s", tuple(old))
    assert donor_images(scene, old[0], "P", 3.0) == old[1:]
    # a frame of a shot without a time is never far enough, unless any frame is allowed
    timeless = [frame(f"t{k}", "clip.mp4#1", None, "P") for k in range(2)]
    scene = SceneRecord("t", tuple(timeless))
    assert donor_images(scene, timeless[0], "P", 3.0) == []
    assert donor_images(scene, timeless[0], "P", 0.0) == [timeless[1]]


def test_sampling_follows_the_donor_rule_and_locks_a_person_with_no_donor(index):
    # scene0: img0 and img1 are one shot, a second apart; img2 another shot.
    # scene1: one shot, frames at 0, 1 and 2 s: with a 1.5 s minimum, img1 has no donor.
    times = {"scene0": [("v0#1", 0.0), ("v0#1", 1.0), ("v0#2", 0.0)],
             "scene1": [("v1#1", 0.0), ("v1#1", 1.0), ("v1#1", 2.0)]}  # fmt: skip
    shots = dataclasses.replace(
        index,
        scenes=tuple(
            dataclasses.replace(
                scene,
                images=tuple(
                    dataclasses.replace(image, shot=shot, seconds=seconds)
                    for image, (shot, seconds) in zip(scene.images, times[scene.name], strict=True)
                ),
            )
            for scene in index.scenes
        ),
    )
    expected = {"scene0/img0.png": {"scene0/img2.png"}, "scene0/img1.png": {"scene0/img2.png"},
                "scene0/img2.png": {"scene0/img0.png", "scene0/img1.png"},
                "scene1/img0.png": {"scene1/img2.png"}, "scene1/img1.png": set(),
                "scene1/img2.png": {"scene1/img0.png"}}  # fmt: skip
    config = SamplingConfig(lock_probability=0.0, min_donor_seconds=1.5)
    seen: dict[str, set[str]] = {}
    rng = np.random.default_rng(0)
    for _ in range(300):
        sample = sample_example(shots, rng, config)
        for source in sample.sources:
            if sample.target_file == "scene1/img1.png":
                assert source.locked  # no allowed donor: locked, whatever lock_probability says
            else:
                assert not source.locked
                seen.setdefault(sample.target_file, set()).add(source.image)
    assert {k: v for k, v in expected.items() if v} == seen


def test_the_config_default_is_the_samplers():
    from layercomposer.train.config import DataConfig

    assert DataConfig(path="d").min_donor_seconds == SamplingConfig().min_donor_seconds == 3.0
