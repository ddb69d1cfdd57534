"""`lc eval` end to end on builtin:tiny renders (noise images: the scores are not the point;
the files, the columns, the stored scores and the errors are)."""

from __future__ import annotations

import csv
import json
import math
import shutil
import sys

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import REPO
from layercomposer.canvas import load_canvas
from layercomposer.cli.main import app
from layercomposer.eval.fidelity import MASK_THRESHOLD
from layercomposer.eval.report import LOCKED_COLUMNS, RESULT_COLUMNS, SUBJECT_COLUMNS
from layercomposer.files import sha256_file, write_json_atomic
from layercomposer.layers import build_layers
from layercomposer.render import Renderer, RenderSettings, render_batch

pytest.importorskip("torch", reason="rendering needs lc's [render] extra")
pytest.importorskip("dlib", reason="dlib-bin is in lc's [autolayout] extra")

runner = CliRunner()
DLIB = ["--identity-backend", "dlib"]


def lc(*args):
    return runner.invoke(app, [str(a) for a in args])


def rows(path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def renders(tmp_path_factory):
    """Two canvases with the example cut-outs of two real people (Hopper locked), each rendered
    in both modes with builtin:tiny into a folder of its own."""
    root = tmp_path_factory.mktemp("eval")
    for name in ("collins.png", "hopper.png"):
        shutil.copy(REPO / "canvases" / "images" / name, root / name)
    for i in range(2):
        (root / f"pair{i}.yaml").write_text(
            f"prompt: two pioneers, take {i}\nsize: [128, 96]\nsteps: 1\nlayers:\n"
            f"  - {{name: collins, image: collins.png, position: [{36 + 4 * i}, 96], "
            "anchor: bottom, scale: 0.22}\n"
            "  - {name: hopper, image: hopper.png, position: [92, 96], anchor: bottom, "
            "scale: 0.18, lock: true}\n"
        )
    # Both modes from one model load (as lc bench does): two `lc render` calls would load twice.
    renderer = None
    for mode in ("layered", "collage"):
        previous, renderer = renderer, Renderer(RenderSettings(model="builtin:tiny", mode=mode))
        if previous is not None:
            renderer.pipe, renderer.model_info = previous.pipe, previous.model_info
        canvases = [root / "pair0.yaml", root / "pair1.yaml"]
        results = render_batch(canvases, renderer, root / "out" / mode)
        assert [r.status for r in results] == ["rendered", "rendered"], results
    return root


@pytest.fixture
def outputs(renders, tmp_path):
    """A private copy of the rendered outputs (tests may change them)."""
    shutil.copytree(renders / "out", tmp_path / "out")
    return tmp_path / "out"


def test_eval_writes_one_row_per_output_with_every_column(outputs, tmp_path):
    result = lc(
        "eval", outputs, *DLIB, "--metrics", "identity,fidelity", "--suite", "2p", "-o",
        tmp_path / "ev",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    results = rows(tmp_path / "ev" / "results.csv")
    assert list(results[0]) == RESULT_COLUMNS
    assert sorted((r["method"], r["canvas"]) for r in results) == [
        ("collage", "pair0"), ("collage", "pair1"), ("layered", "pair0"), ("layered", "pair1"),
    ]  # fmt: skip
    for row in results:
        # Noise has no face: both subjects are misses, which score 0.
        assert (row["identity"], row["faces_found"], row["identity_misses"]) == ("0.0000", "0", "2")
        assert row["identity_backend"] == "dlib" and row["subjects"] == "2"
        assert row["locked_layers"] == "1" and 0 < float(row["locked_psnr"]) < 20
        assert row["vqascore"] == "" and row["model"] == "builtin:tiny" and row["error"] == ""
    subjects = rows(tmp_path / "ev" / "subjects.csv")
    assert list(subjects[0]) == SUBJECT_COLUMNS and len(subjects) == 8
    assert {s["status"] for s in subjects} == {"missed"}
    locked = rows(tmp_path / "ev" / "locked.csv")
    assert list(locked[0]) == LOCKED_COLUMNS and {r["layer"] for r in locked} == {"hopper"}
    table = (tmp_path / "ev" / "results.md").read_text()
    assert (
        "| LayerComposer | paper, copied (`layered` ran here, not comparable: see below) |  |  | "
        "(ArcFace 0.547) | 0.796 | 11.6 |  |"
    ) in table
    assert "identity (dlib) ↑" in table
    # builtin:tiny's noise measures the pipeline, not the method: kept apart from the paper's
    assert (
        "| layered | run here, not comparable: random weights (builtin:tiny) | 2 | 0 | 0.000 | — "
        "| — | 4 / 4 |"
    ) in table
    for figure in ("figure_metrics.png", "figure_samples.png"):
        assert Image.open(tmp_path / "ev" / figure).size[0] > 300
    said = " ".join(result.output.split())  # the console names every file it wrote
    assert (
        "wrote results.md, results.csv, subjects.csv, locked.csv, figure_metrics.png, "
        f"figure_samples.png, scores.jsonl in {tmp_path / 'ev'}/"
    ) in said


def test_an_untouched_locked_layer_is_infinite_psnr(outputs, tmp_path):
    manifest_path = outputs / "layered" / "pair0" / "0.json"
    manifest = json.loads(manifest_path.read_text())
    layers = build_layers(load_canvas(manifest["inputs"]["canvas"]["path"]))
    image_path = manifest_path.with_name("0.png")
    output = np.asarray(Image.open(image_path).convert("RGB")).copy()
    (hopper,) = [layer for layer in layers if layer.lock]
    mask = hopper.rgba[..., 3] > MASK_THRESHOLD * 255
    output[mask] = hopper.rgba[..., :3][mask]  # what perfect locking would give back
    Image.fromarray(output).save(image_path)
    manifest["output"]["sha256"] = sha256_file(image_path)
    write_json_atomic(manifest_path, manifest)

    result = lc(
        "eval",
        f"ours={manifest_path}",
        *DLIB,
        "--metrics",
        "fidelity",
        "-o",
        tmp_path / "ev",
        "--no-figure",
    )
    assert result.exit_code == 0, result.output
    (row,) = rows(tmp_path / "ev" / "results.csv")
    assert row["method"] == "ours" and row["locked_psnr"] == "inf"
    assert float(row["locked_ssim"]) > 0.8  # < 1 only where windows reach the noise outside
    assert row["identity"] == ""  # not asked for, and nothing stored


def test_scores_are_stored_reused_and_merged_across_runs(outputs, tmp_path, monkeypatch):
    from test_eval_adapters import FakeHPSv3, FakeVQAScore, fake_module

    monkeypatch.setitem(
        sys.modules, "t2v_metrics", fake_module("t2v_metrics", VQAScore=FakeVQAScore)
    )
    monkeypatch.setitem(sys.modules, "hpsv3", fake_module("hpsv3", HPSv3RewardInferencer=FakeHPSv3))
    FakeVQAScore.instances.clear()
    FakeHPSv3.instances.clear()
    ev = tmp_path / "ev"
    base = ["eval", outputs, *DLIB, "-o", ev, "--no-figure"]
    assert lc(*base, "--metrics", "identity,vqascore").exit_code == 0
    assert len(FakeVQAScore.instances) == 1 and len(FakeVQAScore.instances[0].calls) == 4
    # Another run (as in another environment) adds HPSv3; VQAScore and identity come back stored.
    result = lc(*base, "--metrics", "hpsv3", "--json")
    assert result.exit_code == 0, result.output
    assert len(FakeVQAScore.instances) == 1 and len(FakeHPSv3.instances) == 1
    for row in rows(ev / "results.csv"):
        assert row["vqascore"] and row["hpsv3"] and row["identity"] == "0.0000"
    summary = json.loads(result.stdout)
    assert [m["method"] for m in summary["methods"]] == ["collage", "layered"]
    assert summary["methods"][0]["counts"] == {
        "identity": 2,
        "vqascore": 2,
        "hpsv3": 2,
        "locked": 0,
    }
    lines = (ev / "scores.jsonl").read_text().splitlines()
    assert len(lines) == 4 + 4 + 4  # identity, vqascore, hpsv3 per output, each once
    # A rerun asking for everything it already has computes nothing.
    assert lc(*base, "--metrics", "identity,vqascore,hpsv3").exit_code == 0
    assert len(FakeVQAScore.instances) == 1 and len(FakeHPSv3.instances) == 1


def test_a_changed_image_is_reported_and_exits_1(outputs, tmp_path):
    Image.new("RGB", (128, 96), "white").save(outputs / "collage" / "pair1" / "0.png")
    result = lc(
        "eval", outputs, *DLIB, "--metrics", "identity", "-o", tmp_path / "ev", "--no-figure"
    )
    assert result.exit_code == 1
    assert "not the image its manifest describes" in result.output
    bad = [r for r in rows(tmp_path / "ev" / "results.csv") if r["error"]]
    assert [(r["method"], r["canvas"]) for r in bad] == [("collage", "pair1")]


def test_usage_and_model_errors(outputs, tmp_path, monkeypatch):
    assert lc("eval", outputs, "--metrics", "sharpness").exit_code == 2
    assert lc("eval", outputs, "--identity-backend", "arcface").exit_code == 2
    assert lc("eval", tmp_path / "nothing-here").exit_code == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    result = lc("eval", empty)
    assert result.exit_code == 2 and "no lc run manifest" in result.output
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("LC_MODELS_DIR", str(tmp_path / "models"))
    result = lc("eval", outputs, "--metrics", "identity", "-o", tmp_path / "ev")  # insightface
    assert result.exit_code == 1 and "buffalo_l" in result.output
    assert not (tmp_path / "ev").exists()  # checked before any work
    result = lc("eval", outputs, "--metrics", "identity", "--identity-backend", "antelopev2")
    assert result.exit_code == 1 and "glintr100.onnx" in result.output
    assert "~/.insightface/models/antelopev2" in result.output


def test_manifests_can_be_named_one_by_one_or_by_image(outputs, tmp_path):
    result = lc(
        "eval", f"a={outputs / 'layered' / 'pair0' / '0.png'}",
        f"b={outputs / 'collage' / 'pair0' / '0.json'}", *DLIB, "--metrics", "identity",
        "-o", tmp_path / "ev", "--no-figure", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert [m["method"] for m in json.loads(result.stdout)["methods"]] == ["a", "b"]
    assert math.isclose(json.loads(result.stdout)["methods"][0]["identity"], 0.0)
