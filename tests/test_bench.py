"""`lc bench` end to end with builtin:tiny on a 2-prompt suite: the canvases come from a
synthetic group prior (the astronaut and Grace Hopper pasted on a plain image), the renders are
noise, so the test checks files, columns, rows and resuming, not scores."""

from __future__ import annotations

import csv
import json
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import REPO
from layercomposer.cli.main import app
from layercomposer.eval import bench as bench_module
from layercomposer.eval.bench import PUBLISHED, BenchRequest, plan_cases, read_prompts
from layercomposer.eval.report import RESULT_COLUMNS

runner = CliRunner()


def lc(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_shipped_prompt_lists_have_32_distinct_prompts_each():
    for suite, people in (("1p", "a person"), ("2p", "two"), ("4p", "four")):
        prompts = read_prompts(REPO / "benchmarks" / "prompts" / f"{suite}.txt")
        assert len(prompts) == len(set(prompts)) == 32
        assert all(p.startswith(people) for p in prompts), suite


def test_cases_rotate_through_the_identities_without_repeats(tmp_path):
    photos = [tmp_path / f"{name}.png" for name in "abcde"]
    cases = plan_cases("4p", [f"prompt {i}" for i in range(3)], photos)
    assert [c.id for c in cases] == ["4p-00", "4p-01", "4p-02"]
    assert [[p.stem for p in c.subjects] for c in cases] == [
        list("abcd"), list("eabc"), list("deab"),
    ]  # fmt: skip
    assert all(len(set(c.subjects)) == 4 for c in cases)


def test_published_figures_are_the_papers():
    assert [(p.arcface, p.vqascore, p.hpsv3) for p in PUBLISHED.values()] == [
        (0.487, 0.893, 12.5), (0.547, 0.796, 11.6), (0.533, 0.840, 12.5),
    ]  # fmt: skip


skimage_data = pytest.importorskip("skimage.data", reason="scikit-image is in lc's [dev] extra")
cbook = pytest.importorskip("matplotlib.cbook", reason="matplotlib is in lc's [dev] extra")
pytest.importorskip("mediapipe", reason="mediapipe is in lc's [autolayout] extra")
pytest.importorskip("dlib", reason="dlib-bin is in lc's [autolayout] extra")
pytest.importorskip("torch", reason="rendering needs lc's [render] extra")


@pytest.fixture
def suite(tmp_path):
    """Identity photos, a group prior with both people in it, and two prompts."""
    astronaut = skimage_data.astronaut()
    hopper = Image.open(cbook.get_sample_data("grace_hopper.jpg")).convert("RGB")
    ids = tmp_path / "identities"
    ids.mkdir()
    Image.fromarray(astronaut).save(ids / "astronaut.png")
    hopper.save(ids / "hopper.jpg", quality=95)
    prior = np.full((128, 192, 3), (118, 140, 160), np.uint8)
    pastes = ((Image.fromarray(astronaut), 0.32, (0, 20)), (hopper, 0.24, (102, 20)))
    for photo, scale, (x, y) in pastes:
        pixels = np.asarray(photo.resize((round(photo.width * scale), round(photo.height * scale))))
        pixels = pixels[: 128 - y, : 192 - x]
        prior[y : y + pixels.shape[0], x : x + pixels.shape[1]] = pixels
    priors = tmp_path / "priors"
    priors.mkdir()
    Image.fromarray(prior).save(priors / "group.png")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# two of them\ntwo pioneers at a launch pad\n\ntwo friends in a library\n")
    return tmp_path


def bench(suite, *extra):
    return lc(
        "bench", "--suite", "2p", "--identities", suite / "identities", "--prompts",
        suite / "prompts.txt", "--priors", suite / "priors", "--model", "builtin:tiny",
        "--steps", "1", "--identity-backend", "dlib", "--metrics", "identity,fidelity",
        "-o", suite / "bench", *extra,
    )  # fmt: skip


def test_bench_2p_with_builtin_tiny_writes_tables_and_figures_and_resumes(suite):
    result = bench(suite)
    assert result.exit_code == 0, result.output
    out = suite / "bench"
    cases = json.loads((out / "suite.json").read_text())["cases"]
    assert [c["prompt"] for c in cases] == [
        "two pioneers at a launch pad",
        "two friends in a library",
    ]
    assert [[s["path"].rsplit("/", 1)[-1] for s in c["subjects"]] for c in cases] == [
        ["astronaut.png", "hopper.jpg"]
    ] * 2
    for case in ("2p-00", "2p-01"):
        layout = json.loads((out / "canvases" / f"{case}.autolayout" / "manifest.json").read_text())
        assert [p["face_index"] for p in layout["placements"]] == [0, 1]  # on the prior's faces
    with open(out / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == RESULT_COLUMNS
    assert sorted((r["method"], r["canvas"]) for r in rows) == [
        ("collage", "2p-00"), ("collage", "2p-01"), ("layered", "2p-00"), ("layered", "2p-01"),
    ]  # fmt: skip
    assert {r["mode_used"] for r in rows if r["method"] == "layered"} == {"layered"}
    assert all(r["identity"] != "" and r["subjects"] == "2" for r in rows)  # ~0 on noise
    table = (out / "results.md").read_text()
    assert table.startswith("# lc bench 2p: 2 prompts, methods layered, collage")
    assert "| LayerComposer (paper, Table 1) |  | (ArcFace 0.547) | 0.796 | 11.6 |" in table
    assert (out / "figure_metrics.png").is_file() and (out / "figure_samples.png").is_file()

    images = sorted((out / "renders").rglob("*.png"))
    assert len(images) == 4
    stamps = [p.stat().st_mtime_ns for p in images]
    scores = (out / "scores.jsonl").read_text()
    again = bench(suite)
    assert again.exit_code == 0, again.output
    assert [p.stat().st_mtime_ns for p in images] == stamps  # every render was resumed
    assert (out / "scores.jsonl").read_text() == scores  # and every score


class FakeFlux:
    """Stands in for FluxPipeline: records each call, returns a flat image of the asked size."""

    def __init__(self):
        self.calls = []

    def __call__(self, **kwargs):
        self.calls.append(kwargs)
        images = np.full((1, kwargs["height"], kwargs["width"], 3), 0.5, np.float32)
        return type("Output", (), {"images": images})()


def test_priors_are_generated_in_one_load_and_kept_across_runs(tmp_path, monkeypatch):
    pipes = []

    def load(settings):
        pipes.append(FakeFlux())
        return pipes[-1]

    monkeypatch.setattr(bench_module, "_load_prior_pipeline", load)
    cases = plan_cases("1p", ["a person reading", "a person cooking"], [tmp_path / "a.png"])
    request = BenchRequest(suite="1p", identities=tmp_path, output=tmp_path / "b", size=(128, 96))
    paths = bench_module._priors(cases, request, None)
    assert len(pipes) == 1 and [p.name for p in paths.values()] == ["1p-00.png", "1p-01.png"]
    call = pipes[0].calls[1]
    assert call["prompt"] == (
        "a person cooking. A photo of one person, face clearly visible, looking at the camera."
    )
    assert (call["width"], call["height"], call["num_inference_steps"], call["guidance_scale"]) == (
        128, 96, 28, 3.5,
    )  # fmt: skip
    record = json.loads((tmp_path / "b" / "priors" / "1p-01.json").read_text())
    assert record["prompt"] == call["prompt"] and record["model"] == "black-forest-labs/FLUX.1-dev"
    assert Image.open(paths["1p-00"]).size == (128, 96)
    bench_module._priors(cases, request, None)
    assert len(pipes) == 1  # both kept: nothing loaded
    bench_module._priors(cases, replace(request, seed=1), None)
    assert len(pipes) == 2 and len(pipes[1].calls) == 2  # another seed: both made again


def test_bench_usage_errors(suite):
    assert bench(suite, "--methods", "layered,inpaint").exit_code == 2
    too_few = lc(
        "bench", "--suite", "4p", "--identities", suite / "identities", "--prompts",
        suite / "prompts.txt", "--model", "builtin:tiny", "--metrics", "fidelity",
    )  # fmt: skip
    assert too_few.exit_code == 2 and "at least 4 identity photos, got 2" in too_few.output
