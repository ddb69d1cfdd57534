"""VQAScore and HPSv3 run in another Python environment, from lc: a second interpreter (a
wrapper around this python that puts fake `t2v_metrics` and `hpsv3` packages on its path, which
this process cannot import) really runs the worker as a subprocess; lc merges its scores."""

from __future__ import annotations

import csv
import importlib.util
import json
import shutil
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import REPO
from layercomposer.cli.main import app
from layercomposer.render import Renderer, RenderSettings, render_batch

pytest.importorskip("torch", reason="rendering needs lc's [render] extra")

runner = CliRunner()

FAKE_T2V = """
import os

import numpy as np
import torch
from PIL import Image


class VQAScore:
    def __init__(self, model, device, cache_dir):
        if os.environ.get("FAKE_METRIC_FAIL"):
            raise RuntimeError("no weights in this test")
        print("fake t2v_metrics: loaded", model)  # libraries print; lc must not mind

    def __call__(self, images, texts):
        pixels = np.asarray(Image.open(images[0]).convert("RGB"), np.float64)
        return torch.tensor([[pixels.mean() / 255 * len(texts[0]) / 100]])
"""
FAKE_HPSV3 = """
import numpy as np
from PIL import Image


class HPSv3RewardInferencer:
    def __init__(self, checkpoint_path, device):
        pass

    def reward(self, image_paths, prompts):
        return [[float(np.asarray(Image.open(p), np.float64).std()), 1.0] for p in image_paths]
"""


def expected_vqascore(image, prompt) -> float:
    return np.asarray(Image.open(image).convert("RGB"), np.float64).mean() / 255 * len(prompt) / 100


def expected_hpsv3(image) -> float:
    return float(np.asarray(Image.open(image), np.float64).std())


@pytest.fixture(scope="module")
def metric_python(tmp_path_factory):
    """An executable that is this python with the fake metric packages importable."""
    root = tmp_path_factory.mktemp("metric_env")
    packages = root / "site"
    packages.mkdir()
    (packages / "t2v_metrics.py").write_text(FAKE_T2V)
    (packages / "hpsv3.py").write_text(FAKE_HPSV3)
    wrapper = root / "python"
    wrapper.write_text(
        textwrap.dedent(f"""\
            #!/bin/sh
            PYTHONPATH="{packages}${{PYTHONPATH:+:$PYTHONPATH}}" exec "{sys.executable}" "$@"
        """)
    )
    wrapper.chmod(0o755)
    return str(wrapper)


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """Two builtin:tiny renders of one canvas (two seeds)."""
    root = tmp_path_factory.mktemp("renders")
    shutil.copy(REPO / "canvases" / "images" / "collins.png", root / "collins.png")
    (root / "one.yaml").write_text(
        "prompt: a pioneer at a launch pad\nsize: [96, 64]\nsteps: 1\nlayers:\n"
        "  - {name: collins, image: collins.png, position: [48, 64], anchor: bottom, "
        "scale: 0.15}\n"
    )
    results = render_batch(
        [root / "one.yaml"], Renderer(RenderSettings(model="builtin:tiny")), root / "out",
        seed=0, num_images=2,
    )  # fmt: skip
    assert [r.status for r in results] == ["rendered", "rendered"]
    return root / "out"


def lc(*args, **kwargs):
    return runner.invoke(app, [str(a) for a in args], **kwargs)


def rows(path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_prompt_metrics_run_in_the_given_interpreter_and_merge(outputs, metric_python, tmp_path):
    assert importlib.util.find_spec("t2v_metrics") is None  # only the other python has it
    ev = tmp_path / "ev"
    result = lc(
        "eval", outputs, "--identity-backend", "dlib", "--vqascore-python", metric_python,
        "-o", ev, "--no-figure",
        env={"LC_HPSV3_PYTHON": metric_python},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "skipped metrics" not in result.output
    results = rows(ev / "results.csv")
    assert len(results) == 2
    for row in results:
        assert float(row["vqascore"]) == pytest.approx(
            expected_vqascore(row["image"], "a pioneer at a launch pad"), abs=1e-4
        )
        assert float(row["hpsv3"]) == pytest.approx(expected_hpsv3(row["image"]), abs=1e-4)
        assert row["identity"] != ""  # identity ran here, beside them
    records = [json.loads(line) for line in (ev / "scores.jsonl").read_text().splitlines()]
    remote = [r for r in records if r["metric"] in ("vqascore", "hpsv3")]
    assert len(remote) == 4 and {r["python"] for r in remote} == {metric_python}
    assert {r["variant"] for r in remote} == {"t2v_metrics/clip-flant5-xxl", "hpsv3/MizzenAI/HPSv3"}
    # The stored scores are what an `lc eval` inside that environment would reuse: nothing again.
    again = lc("eval", outputs, "--identity-backend", "dlib", "-o", ev, "--no-figure", "--json")
    assert again.exit_code == 0
    summary = json.loads(again.stdout.strip().splitlines()[-1])
    assert summary["methods"][0]["counts"]["vqascore"] == 2


def test_a_failing_worker_is_a_model_error_with_its_message(outputs, metric_python, tmp_path):
    result = lc(
        "eval", outputs, "--identity-backend", "dlib", "--metrics", "vqascore",
        "--vqascore-python", metric_python, "-o", tmp_path / "ev", "--no-figure",
        env={"FAKE_METRIC_FAIL": "1"},
    )  # fmt: skip
    assert result.exit_code == 1
    assert "vqascore in" in result.output and "no weights in this test" in result.output
    assert "Traceback" not in result.output


def test_check_lists_each_metric_where_and_how(metric_python, tmp_path):
    result = lc("eval", "--check", "--identity-backend", "dlib", "--json")
    assert result.exit_code == 0, result.output
    status = {m["metric"]: m for m in json.loads(result.stdout)["metrics"]}
    assert list(status) == ["identity", "vqascore", "hpsv3", "fidelity"]
    assert status["identity"]["available"] and status["fidelity"]["available"]
    assert (
        not status["vqascore"]["available"] and "--vqascore-python" in status["vqascore"]["enable"]
    )
    assert sys.executable in status["vqascore"]["where"]

    result = lc("eval", "--check", "--json", "--vqascore-python", metric_python,
                "--hpsv3-python", tmp_path / "missing" / "python")  # fmt: skip
    status = {m["metric"]: m for m in json.loads(result.stdout)["metrics"]}
    assert status["vqascore"]["available"] and "--vqascore-python" in status["vqascore"]["where"]
    assert not status["hpsv3"]["available"] and "no such executable" in status["hpsv3"]["problem"]
    table = lc("eval", "--check", "--vqascore-python", metric_python)
    assert table.exit_code == 0 and "vqascore" in table.output and "to enable" in table.output


def test_a_named_metric_that_cannot_run_stops_before_any_work(outputs, tmp_path):
    result = lc(
        "eval", outputs, "--metrics", "vqascore", "--vqascore-python", tmp_path / "nope",
        "-o", tmp_path / "ev",
    )  # fmt: skip
    assert result.exit_code == 1 and "no such executable" in result.output
    assert not (tmp_path / "ev").exists()
    assert lc("eval").exit_code == 2  # no outputs and no --check


def test_default_eval_runs_what_can_run_and_names_the_rest_in_one_line(
    outputs, tmp_path, monkeypatch
):
    monkeypatch.setenv("HOME", str(tmp_path))  # no InsightFace pack anywhere
    monkeypatch.setenv("LC_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.delenv("LC_VQASCORE_PYTHON", raising=False)
    monkeypatch.delenv("LC_HPSV3_PYTHON", raising=False)
    result = lc("eval", outputs, "-o", tmp_path / "ev", "--no-figure")
    assert result.exit_code == 0, result.output
    (line,) = [x for x in result.output.splitlines() if "skipped metrics:" in x]
    for metric, how in (
        ("identity", "--identity-backend dlib"),
        ("vqascore", "--vqascore-python PATH"),
        ("hpsv3", "--hpsv3-python PATH"),
    ):
        assert f"{metric} (" in line and how in line
    assert all(
        r["identity"] == "" and r["locked_layers"] == "0"
        for r in rows(tmp_path / "ev" / "results.csv")
    )
    table = (tmp_path / "ev" / "results.md").read_text()
    assert table.count("- Not measured:") == 3
