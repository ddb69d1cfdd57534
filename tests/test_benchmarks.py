"""The benchmarks keep working: the scaling sweep's smallest case, the full-size model's build
path, and the prepare-after-move measurement (behaviour only; no timing is asserted)."""

from __future__ import annotations

import csv
import importlib
import sys

import pytest
import torch

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
scaling = importlib.import_module("scaling")
prepare = importlib.import_module("prepare")

SMALL_FULL = dict(
    num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
    joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=(4, 4, 8),
)  # fmt: skip


def test_smallest_cpu_case_writes_the_table_csv_and_plot(tmp_path, capsys):
    out = tmp_path / "scaling.csv"
    args = ["--model", "tiny", "--resolutions", "256", "--subjects", "1", "2", "--reps", "1"]
    args += ["--warmup", "0", "--min-timed-s", "0", "--no-prepare", "--csv", str(out)]
    scaling.main([*args, "--plot", str(tmp_path / "scaling.png")])

    with open(out, newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert tuple(reader.fieldnames) == scaling.CSV_COLUMNS
    assert len(rows) == 2 * 2 * 3  # areas x subjects x variants
    grid = (256 // 16) ** 2
    by = {(r["variant"], int(r["subjects"]), r["area"]): r for r in rows}
    for (variant, n, _), row in by.items():
        cond = int(row["cond_tokens"])
        assert int(row["seq_len"]) == 512 + grid + cond
        assert float(row["step_ms"]) > 0 and row["resolution"] == "256"
        if variant == "unpruned":
            assert cond == n * grid
        if variant == "collage":
            assert cond == grid
    one, two = (int(by[("layered", n, "fixed")]["cond_tokens"]) for n in (1, 2))
    assert abs(two - one) <= 0.1 * one  # pruning: the visible area sets the length, not N
    grown = (int(by[("layered", n, "growing")]["cond_tokens"]) for n in (1, 2))
    assert next(grown) < next(grown)
    assert (tmp_path / "scaling.png").stat().st_size > 0
    printed = capsys.readouterr().out
    assert "| 2 | unpruned |" in printed and "N=8" not in printed  # no N=8 was run


def test_full_size_model_is_built_in_the_requested_dtype_without_an_fp32_copy():
    transformer = scaling.build_transformer("full", "cpu", torch.bfloat16, **SMALL_FULL)
    assert {p.dtype for p in transformer.parameters()} == {torch.bfloat16}
    assert transformer.config.guidance_embeds and transformer.config.in_channels == 64
    assert torch.get_default_dtype() == torch.float32  # restored
    cases = scaling.sequence_cases([128], [1], ["fixed"])
    result = scaling.measure(transformer, cases, "cpu", warmup=0, reps=1, min_timed_s=0)
    assert all(r.step_ms > 0 for r in result.values())


def test_compute_floor_counts_the_flux_matmuls():
    config = type("Config", (), dict(scaling.MODEL_CONFIGS["full"]))
    length = 5_000
    expected = 2 * 6.46e9 * length + 57 * 4 * length**2 * 3072  # the estimate
    assert scaling.step_flops(config, length) == pytest.approx(expected, rel=1e-3)


def test_prepare_after_a_move_encodes_nothing_with_box_and_one_layer_with_canvas():
    pipe = prepare.prepare_pipeline("tiny", "cpu", torch.float32)
    layers = scaling.subject_layers(4, "growing", 256)
    rows = {row["encode"]: row for row in prepare.move_rows(pipe, layers, reps=1)}
    assert rows["box"]["encodes_after_move"] == 0
    assert rows["canvas"]["encodes_after_move"] == 1
    assert "after move ms" in prepare.format_move_table(list(rows.values()), "test")
