"""results.md: the paper's columns, every published row of the setting, ours beside the row it
reproduces, failed cases counted, definitions (pure)."""

from __future__ import annotations

import math
import re

from layercomposer.eval.published import TABLE_1, layercomposer_row
from layercomposer.eval.report import MethodSummary, markdown_table

# Table 1 as issue 12 quotes it from the paper: the independent reference for published.py.
ISSUE_TABLE_1 = """
4P — FLUX Kontext 0.217 / 0.869 / 12.3, Overlay Kontext 0.251 / 0.828 / 11.2, Qwen-Image-Edit
0.236 / 0.869 / 11.6, Nano-Banana 0.434 / 0.826 / 10.4, LayerComposer 0.533 / 0.840 / 12.5.
2P — UniPortrait 0.536 / 0.723 / 8.01, StoryMaker 0.542 / 0.523 / 4.97, UNO 0.071 / 0.870 /
11.2, OmniGen2 0.121 / 0.828 / 12.8, LayerComposer 0.547 / 0.796 / 11.6. 1P — IPA-FLUX 0.453 /
0.790 / 9.88, PuLID-FLUX 0.639 / 0.859 / 11.5, InfiniteYou 0.528 / 0.853 / 13.2, LayerComposer
0.487 / 0.893 / 12.5.
"""


def issue_rows() -> dict[str, list[tuple[str, float, float, float]]]:
    text = " ".join(ISSUE_TABLE_1.split())
    rows: dict[str, list] = {}
    for setting, body in re.findall(r"(\dP) — (.*?)(?= \dP — |$)", text):
        found = re.findall(
            r"([A-Za-z][\w-]*(?: [A-Z][\w-]*)?) ([\d.]+) / ([\d.]+) / ([\d.]+)", body
        )
        rows[setting.lower()] = [
            (n, float(a), float(v), float(h.rstrip("."))) for n, a, v, h in found
        ]
    return rows


def summary(method: str, backend: str | None = "insightface", **changes) -> MethodSummary:
    values = dict(
        method=method, outputs=32, identity=0.5123, identity_backend=backend, vqascore=0.8,
        hpsv3=11.94, subjects=64, misses=3, locked_psnr=None, locked_ssim=None,
        counts={"identity": 32, "vqascore": 32, "hpsv3": 30, "locked": 0}, errors=0,
    )  # fmt: skip
    values.update(changes)
    return MethodSummary(**values)


def test_published_rows_are_the_issues_table_1():
    expected = issue_rows()
    assert [len(expected[s]) for s in ("4p", "2p", "1p")] == [5, 5, 4]
    for suite, rows in TABLE_1.items():
        assert [(r.method, r.arcface, r.vqascore, r.hpsv3) for r in rows] == expected[suite]
    assert {r.lc_method for r in TABLE_1["4p"]} == {
        "collage", "overlay-kontext", "qwen-image-edit", None, "layered",
    }  # fmt: skip
    assert all(r.lc_method in (None, "layered") for s in ("1p", "2p") for r in TABLE_1[s])
    assert layercomposer_row("2p").arcface == 0.547


def test_4p_table_shows_every_published_row_and_ours_after_the_one_it_reproduces():
    ours = [summary("layered"), summary("collage", identity=0.2)]
    table = markdown_table(ours, TABLE_1["4p"], "4P", failed={"layered": 2, "collage": 2})
    lines = table.splitlines()
    assert lines[0] == "# 4P"
    assert lines[2] == (
        "| method | source | outputs | failed | ArcFace ↑ | VQAScore ↑ | HPSv3 ↑ | faces missed |"
    )
    body = lines[4:13]
    assert body == [
        "| FLUX Kontext | paper, copied |  |  | 0.217 | 0.869 | 12.3 |  |",
        "| FLUX Kontext | reproduced here: `collage` | 32 | 2 | 0.200 | 0.800 | 11.94 (n=30) "
        "| 3 / 64 |",
        "| Overlay Kontext | paper, copied (not run here: add `overlay-kontext` to --methods) "
        "|  |  | 0.251 | 0.828 | 11.2 |  |",
        "| Qwen-Image-Edit | paper, copied (not run here: add `qwen-image-edit` to --methods) "
        "|  |  | 0.236 | 0.869 | 11.6 |  |",
        "| Nano-Banana | paper, copied (a closed API: not run) |  |  | 0.434 | 0.826 | 10.4 |  |",
        "| LayerComposer | paper, copied |  |  | 0.533 | 0.840 | 12.5 |  |",
        "| LayerComposer | reproduced here: `layered` | 32 | 2 | 0.512 | 0.800 | 11.94 (n=30) "
        "| 3 / 64 |",
        "",
        "Means over each method's outputs; `(n=...)` where fewer outputs have the score. "
        "`failed`: cases with no output (no canvas could be laid out, or the render failed) "
        "and outputs that could not be evaluated; they are left out of the means.",
    ]
    assert "buffalo_l (w600k_r50)" in table and "(alpha > 0.5)" not in table


def test_a_method_with_no_output_still_has_its_row_and_other_labels_follow():
    table = markdown_table(
        [summary("mine", errors=1)], TABLE_1["2p"], failed={"layered": 3, "mine": 0}
    )
    assert "| LayerComposer | reproduced here: `layered` | 0 | 3 | — | — | — | — |" in table
    assert table.count("paper, copied (outside diffusers: published figures only)") == 4
    last_row = [line for line in table.splitlines() if line.startswith("| ")][-1]
    assert last_row.startswith("| mine | measured here | 32 | 1 | 0.512 |")
    assert "1 output(s) could not be fully evaluated" in table


def test_dlib_identity_is_never_shown_as_comparable_to_arcface():
    table = markdown_table([summary("layered", "dlib")], TABLE_1["1p"], skipped=["vqascore (x)"])
    assert "identity (dlib) ↑" in table
    assert "| LayerComposer | paper, copied |  |  | (ArcFace 0.487) | 0.893 | 12.5 |  |" in table
    assert "| PuLID-FLUX | paper, copied (outside diffusers" in table
    assert "Not on ArcFace's scale" in table and "- Not measured: vqascore (x)" in table


def test_locked_columns_appear_only_with_locked_layers():
    locked = summary(
        "layered", vqascore=None, hpsv3=None, locked_psnr=math.inf, locked_ssim=0.991,
        counts={"identity": 32, "vqascore": 0, "hpsv3": 0, "locked": 5},
    )  # fmt: skip
    table = markdown_table([locked])
    assert "| faces missed | locked PSNR (dB) ↑ | locked SSIM ↑ |" in table
    assert "| layered | measured here | 32 | 0 | 0.512 | — | — | 3 / 64 | inf | 0.991 |" in table
    assert "(alpha > 0.5)" in table
    assert locked.to_dict()["locked_psnr"] == "inf"


def test_runs_that_do_not_measure_the_method_are_labelled_and_kept_apart():
    tiny = [summary("layered", random_weights=True), summary("collage", random_weights=True)]
    table = markdown_table(tiny, TABLE_1["4p"], "4P", failed={"layered": 0, "collage": 0})
    assert "**Not a measurement of the method:** `layered` ran with random weights" in table
    rows = [line for line in table.splitlines() if line.startswith("| ")][2:]
    published = [r for r in rows if "paper, copied" in r]
    assert rows[: len(published)] == published  # every paper row first, none of ours between
    assert rows[-2:] == [
        "| layered | run here, not comparable: random weights (builtin:tiny) | 32 | 0 | 0.512 "
        "| 0.800 | 11.94 (n=30) | 3 / 64 |",
        "| collage | run here, not comparable: random weights (builtin:tiny) | 32 | 0 | 0.512 "
        "| 0.800 | 11.94 (n=30) | 3 / 64 |",
    ]
    assert (
        "| FLUX Kontext | paper, copied (`collage` ran here, not comparable: see below) |" in table
    )
    assert "reproduced here" not in " ".join(rows)

    # Real weights without a LayerComposer LoRA: stock Kontext is a fair `collage`, not `layered`.
    no_lora = [summary("layered", lora=False), summary("collage", lora=False, identity=0.2)]
    table = markdown_table(no_lora, TABLE_1["4p"], "4P")
    assert "`layered` ran with no LayerComposer LoRA" in table
    assert "| FLUX Kontext | reproduced here: `collage` | 32 |" in table
    assert "| layered | run here, not comparable: no LayerComposer LoRA | 32 |" in table
    with_lora = markdown_table([summary("layered", lora=True)], TABLE_1["4p"], "4P")
    assert "| LayerComposer | reproduced here: `layered` | 32 |" in with_lora
    assert "Not a measurement" not in with_lora
    assert summary("layered", lora=False).to_dict()["caveat"].startswith("no LayerComposer LoRA")
