"""Pruning and position ids against slow, independent references, and their invariants."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from layercomposer.tokens import (
    TEXT_TOKENS,
    grid_position_ids,
    layer_indices,
    noisy_position_ids,
    plan_tokens,
    valid_token_mask,
)


class FakeLayer:
    def __init__(self, name, alpha, lock):
        self.name, self.lock = name, lock
        self.token_mask = valid_token_mask(alpha)


def slow_token_mask(alpha: np.ndarray) -> np.ndarray:
    """Loop over cells; sample the pixel nearest to each cell's centre (pixel centres at k + 0.5)."""
    rows, cols = alpha.shape[0] // 16, alpha.shape[1] // 16
    mask = np.zeros((rows, cols), bool)
    for i in range(rows):
        for j in range(cols):
            centre_y, centre_x = 16 * i + 8.0, 16 * j + 8.0  # continuous coordinates
            py, px = int(np.floor(centre_y)), int(np.floor(centre_x))
            mask[i, j] = alpha[py, px] > 0.5
    return mask


def slow_ids(masks, locks):
    rows, unlocked_seen = [], 0
    for mask, lock in zip(masks, locks, strict=True):
        if not lock:
            unlocked_seen += 1
        for y in range(mask.shape[0]):
            for x in range(mask.shape[1]):
                if mask[y, x]:
                    rows.append([0 if lock else unlocked_seen, y, x])
    return np.array(rows, np.int64).reshape(-1, 3)


alphas = st.tuples(st.integers(1, 6), st.integers(1, 6)).flatmap(
    lambda g: arrays(
        np.float32, (16 * g[0], 16 * g[1]), elements=st.sampled_from([0.0, 0.3, 0.5, 0.51, 1.0])
    )
)


@given(alphas)
@settings(max_examples=60, deadline=None)
def test_mask_matches_pixel_loop_and_torch_nearest_exact(alpha):
    mask = valid_token_mask(alpha)
    np.testing.assert_array_equal(mask, slow_token_mask(alpha))
    grid = (alpha.shape[0] // 16, alpha.shape[1] // 16)
    by_torch = F.interpolate(torch.from_numpy(alpha)[None, None], size=grid, mode="nearest-exact")[
        0, 0
    ]
    np.testing.assert_array_equal(mask, (by_torch > 0.5).numpy())


def test_alpha_exactly_half_is_pruned_and_just_above_is_kept():
    alpha = np.zeros((32, 32), np.float32)
    alpha[8, 8] = 0.5
    alpha[8, 24] = 0.5 + 1e-3
    assert valid_token_mask(alpha).tolist() == [[False, True], [False, False]]


def test_sample_is_the_cell_centre_not_its_corner():
    alpha = np.zeros((16, 16), np.float32)
    alpha[0, 0] = 1.0  # only the corner is opaque
    assert not valid_token_mask(alpha).any()
    alpha[8, 8] = 1.0
    assert valid_token_mask(alpha).all()


layer_sets = st.integers(1, 5).flatmap(
    lambda n: st.tuples(
        st.lists(
            arrays(np.float32, (64, 48), elements=st.sampled_from([0.0, 1.0])),
            min_size=n,
            max_size=n,
        ),
        st.lists(st.booleans(), min_size=n, max_size=n),
    )
)


@given(layer_sets)
@settings(max_examples=60, deadline=None)
def test_plan_ids_match_slow_reference(case):
    alphas_, locks = case
    layers = [
        FakeLayer(f"l{i}", a, lock) for i, (a, lock) in enumerate(zip(alphas_, locks, strict=True))
    ]
    plan = plan_tokens(layers)
    reference = slow_ids([slow_token_mask(a) for a in alphas_], locks)
    np.testing.assert_array_equal(plan.conditioning_position_ids(), reference)
    assert plan.conditioning_tokens == len(reference)
    assert plan.sequence_length == TEXT_TOKENS + 4 * 3 + len(reference)
    assert plan.unpruned_tokens == len(layers) * 12


@given(st.lists(st.booleans(), max_size=12))
def test_locked_share_zero_and_unlocked_are_one_to_k(locks):
    indices = layer_indices(locks)
    assert all(i == 0 for i, lock in zip(indices, locks, strict=True) if lock)
    free = [i for i, lock in zip(indices, locks, strict=True) if not lock]
    assert free == list(range(1, len(free) + 1))


@given(
    arrays(np.bool_, (8, 8), elements=st.booleans()),
    st.integers(1, 8),
    st.randoms(use_true_random=False),
)
@settings(max_examples=50, deadline=None)
def test_conditioning_length_depends_on_area_not_on_layer_count(region, n_layers, rnd):
    """The same visible cells split over 1 or n layers cost the same number of tokens."""
    owner = np.array([rnd.randrange(n_layers) for _ in range(region.size)]).reshape(region.shape)
    layers = []
    for k in range(n_layers):
        cells = region & (owner == k)
        alpha = np.kron(cells, np.ones((16, 16))).astype(np.float32)
        layers.append(FakeLayer(f"l{k}", alpha, lock=False))
    whole = FakeLayer("whole", np.kron(region, np.ones((16, 16))).astype(np.float32), lock=False)
    assert (
        plan_tokens(layers).conditioning_tokens
        == plan_tokens([whole]).conditioning_tokens
        == region.sum()
    )


def test_noisy_ids_cover_the_grid_row_major_with_index_zero():
    ids = noisy_position_ids(2, 3)
    assert ids.tolist() == [[0, 0, 0], [0, 0, 1], [0, 0, 2], [0, 1, 0], [0, 1, 1], [0, 1, 2]]
    mask = np.array([[False, True], [True, False]])
    assert grid_position_ids(mask, 4).tolist() == [[4, 0, 1], [4, 1, 0]]
