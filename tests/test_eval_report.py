"""results.md: the paper's columns, the published row, counts and definitions (pure)."""

from __future__ import annotations

import math

from layercomposer.eval.bench import PUBLISHED
from layercomposer.eval.report import MethodSummary, markdown_table


def summary(method: str, backend: str | None = "insightface", **changes) -> MethodSummary:
    values = dict(
        method=method, outputs=32, identity=0.5123, identity_backend=backend, vqascore=0.8,
        hpsv3=11.94, subjects=64, misses=3, locked_psnr=None, locked_ssim=None,
        counts={"identity": 32, "vqascore": 32, "hpsv3": 30, "locked": 0}, errors=0,
    )  # fmt: skip
    values.update(changes)
    return MethodSummary(**values)


def test_arcface_table_has_table_1_columns_and_the_published_row():
    table = markdown_table([summary("layered"), summary("collage")], PUBLISHED["4p"], "4P")
    lines = table.splitlines()
    assert lines[0] == "# 4P"
    assert lines[2] == "| method | outputs | ArcFace ↑ | VQAScore ↑ | HPSv3 ↑ | faces missed |"
    assert lines[4] == "| LayerComposer (paper, Table 1) |  | 0.533 | 0.840 | 12.5 |  |"
    assert lines[5] == "| layered | 32 | 0.512 | 0.800 | 11.94 (n=30) | 3 / 64 |"
    assert "buffalo_l (w600k_r50)" in table and "(alpha > 0.5)" not in table


def test_dlib_identity_is_never_shown_as_comparable_to_arcface():
    table = markdown_table([summary("layered", "dlib")], PUBLISHED["1p"])
    assert "identity (dlib) ↑" in table and "| (ArcFace 0.487) | 0.893 |" in table
    assert "Not on ArcFace's scale" in table


def test_locked_columns_appear_only_with_locked_layers():
    locked = summary(
        "layered", vqascore=None, hpsv3=None, locked_psnr=math.inf, locked_ssim=0.991,
        counts={"identity": 32, "vqascore": 0, "hpsv3": 0, "locked": 5},
    )  # fmt: skip
    table = markdown_table([locked])
    assert "| faces missed | locked PSNR (dB) ↑ | locked SSIM ↑ |" in table
    assert "| layered | 32 | 0.512 | — | — | 3 / 64 | inf | 0.991 |" in table
    assert "(alpha > 0.5)" in table
    assert locked.to_dict()["locked_psnr"] == "inf"
