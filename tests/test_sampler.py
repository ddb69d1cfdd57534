"""Locking-aware sampling, asserted exactly over many seeds."""

from __future__ import annotations

import numpy as np
import pytest
from train_data import make_dataset

from layercomposer.train.dataset import BACKGROUND, load_index
from layercomposer.train.sampler import SamplingConfig, sample_example


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
