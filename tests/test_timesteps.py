"""The training timestep shift: FLUX's resolution-dependent rule, against diffusers' own code."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.pipelines.flux.pipeline_flux import calculate_shift

from layercomposer.tiny import KONTEXT_SCHEDULER_CONFIG
from layercomposer.train.config import TrainLoopConfig
from layercomposer.train.timesteps import flux_shift, resolve_shift, shift_sigmas


@pytest.mark.parametrize(
    "tokens, expected",
    [
        (256, math.exp(0.5)),  # the base: 1.6487
        (4096, math.exp(1.15)),  # the max: 3.1582
        # 512x512 px: mu = 0.5 + 0.65 * 768 / 3840 = 0.63 -> 1.8776, not the 3.0 once configured
        (1024, 1.8776105792643432),
        (2304, math.exp(0.5 + 0.65 * 2048 / 3840)),  # 768x768 px: 2.3853
    ],
)
def test_flux_shift_by_hand(tokens, expected):
    assert flux_shift(tokens) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("tokens", [16, 256, 1024, 1600, 4096, 6000])
def test_flux_shift_equals_diffusers_calculate_shift(tokens):
    assert flux_shift(tokens) == pytest.approx(math.exp(calculate_shift(tokens)), rel=1e-12)
    custom = dict(base_seq_len=64, max_seq_len=1024, base_shift=0.3, max_shift=2.0)
    ours = flux_shift(
        tokens, base_image_seq_len=64, max_image_seq_len=1024, base_shift=0.3, max_shift=2.0
    )
    assert ours == pytest.approx(math.exp(calculate_shift(tokens, **custom)), rel=1e-12)


def test_auto_reads_the_scheduler_config_and_a_number_is_taken_as_given():
    assert resolve_shift("auto", 1024, KONTEXT_SCHEDULER_CONFIG) == pytest.approx(1.8776, abs=1e-4)
    steeper = {**KONTEXT_SCHEDULER_CONFIG, "max_shift": 2.0}
    assert resolve_shift("auto", 1024, steeper) == pytest.approx(
        math.exp(calculate_shift(1024, max_shift=2.0)), rel=1e-12
    )
    assert resolve_shift("auto", 1024, {}) == pytest.approx(1.8776, abs=1e-4)  # FLUX's defaults
    assert resolve_shift(3.0, 1024, KONTEXT_SCHEDULER_CONFIG) == 3.0
    assert resolve_shift(1.0, 1024, KONTEXT_SCHEDULER_CONFIG) == 1.0


def test_shifted_sigmas_are_the_ones_flux_samples_with_at_that_resolution():
    # Inference: the scheduler applies exp(mu) to its sigmas (time_shift_type exponential).
    scheduler = FlowMatchEulerDiscreteScheduler(**KONTEXT_SCHEDULER_CONFIG)
    sigmas = np.linspace(1.0, 1 / 28, 28)
    mu = calculate_shift(1024)
    scheduler.set_timesteps(sigmas=sigmas, mu=mu)
    ours = shift_sigmas(sigmas, resolve_shift("auto", 1024, KONTEXT_SCHEDULER_CONFIG))
    torch.testing.assert_close(
        scheduler.sigmas[:-1], torch.from_numpy(ours).float(), rtol=1e-6, atol=1e-6
    )
    np.testing.assert_array_equal(shift_sigmas(sigmas, 1.0), sigmas)  # 1 = none


def test_config_shift_is_auto_by_default_and_accepts_a_positive_number():
    assert TrainLoopConfig(steps=1).shift == "auto"
    assert TrainLoopConfig(steps=1, shift=2.5).shift == 2.5
    with pytest.raises(ValueError):
        TrainLoopConfig(steps=1, shift=0)
    with pytest.raises(ValueError):
        TrainLoopConfig(steps=1, shift="fast")
