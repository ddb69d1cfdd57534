"""`lc bench` end to end with builtin:tiny on a 2-prompt suite: the canvases come from a
synthetic group prior (the astronaut and Grace Hopper pasted on a plain image), the renders are
noise, so the test checks files, columns, rows and resuming, not scores."""

from __future__ import annotations

import csv
import importlib.util
import json
import re
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import REPO
from layercomposer.cli.main import app
from layercomposer.eval import bench as bench_module
from layercomposer.eval.bench import BenchRequest, plan_cases, read_prompts
from layercomposer.eval.report import RESULT_COLUMNS
from layercomposer.faces.types import Face

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


def bench(suite, *extra, priors="priors"):
    return lc(
        "bench", "--suite", "2p", "--identities", suite / "identities", "--prompts",
        suite / "prompts.txt", "--priors", suite / priors, "--model", "builtin:tiny",
        "--steps", "1", "--identity-backend", "dlib", "-o", suite / "bench", *extra,
    )  # fmt: skip


def test_bench_2p_with_builtin_tiny_writes_tables_and_figures_and_resumes(suite):
    # No --metrics: every metric that can run here runs; one line names the others.
    assert importlib.util.find_spec("t2v_metrics") is None
    assert importlib.util.find_spec("hpsv3") is None
    result = bench(suite)
    assert result.exit_code == 0, result.output
    (line,) = [x for x in result.output.splitlines() if "skipped metrics:" in x]
    assert "vqascore (t2v_metrics is not installed: --vqascore-python PATH or LC_VQASCORE_" in line
    assert "hpsv3 (hpsv3 is not installed: --hpsv3-python PATH or LC_HPSV3_PYTHON)" in line
    assert "identity" not in line.split("skipped metrics:")[1].split("(")[0]
    out = suite / "bench"
    suite_record = json.loads((out / "suite.json").read_text())
    assert suite_record["protocol"]["priors"] == "given"
    assert suite_record["protocol"]["fallback"] == "error"
    cases = suite_record["cases"]
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
    for manifest in (out / "renders").rglob("*.json"):  # each output says how it was laid out
        case = manifest.parent.name
        notes = json.loads(manifest.read_text())["notes"]
        assert notes.startswith(f"lc bench 2p case {case}: laid out on a "), notes
    with open(out / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == RESULT_COLUMNS
    assert sorted((r["method"], r["canvas"]) for r in rows) == [
        ("collage", "2p-00"), ("collage", "2p-01"), ("layered", "2p-00"), ("layered", "2p-01"),
    ]  # fmt: skip
    assert {r["mode_used"] for r in rows if r["method"] == "layered"} == {"layered"}
    assert all(r["identity"] != "" and r["subjects"] == "2" for r in rows)  # ~0 on noise
    assert all(r["vqascore"] == "" and r["hpsv3"] == "" and r["locked_layers"] for r in rows)
    table = (out / "results.md").read_text()
    assert table.startswith("# lc bench 2p: 2 prompts, methods layered, collage")
    # Random weights measure the pipeline, not the method: said so, and not beside the paper.
    assert "**Not a measurement of the method:** `layered` ran with random weights" in table
    assert (
        "| LayerComposer | paper, copied (`layered` ran here, not comparable: see below) |  |  | "
        "(ArcFace 0.547) | 0.796 | 11.6 |  |"
    ) in table
    assert "| layered | run here, not comparable: random weights (builtin:tiny) | 2 | 0 |" in table
    assert "reproduced here" not in table.split("| --- |")[1]  # no row claims to reproduce
    console = " ".join(result.output.split())
    assert (
        "not comparable with the paper: layered ran with random weights (builtin:tiny)" in console
    )
    # Off a terminal: a line per finished unit with the count and the time left; the files.
    assert re.search(r"render layered 1/2: [\d.]+ s each, about [\d.]+ s left", result.output)
    assert re.search(r"render collage 2/2: [\d.]+ s each, [\d.]+ s in all", result.output)
    assert "identity and fidelity 4/4" in result.output
    assert re.search(
        r"wrote results\.md, results\.csv, .*figure_metrics\.png, figure_samples\.png", console
    )
    assert table.count("paper, copied (outside diffusers") == 4  # UniPortrait ... OmniGen2
    assert "- Not measured: vqascore (t2v_metrics is not installed" in table
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
    """Stands in for FluxPipeline: records each call; its image says which prompt and seed
    made it (red = seed, green = the prompt's number), so FakeDetector can answer per prior."""

    def __init__(self, prompts):
        self.prompts, self.calls = prompts, []

    def __call__(self, **kwargs):
        self.calls.append(kwargs)
        images = np.zeros((1, kwargs["height"], kwargs["width"], 3), np.float32)
        images[..., 0] = kwargs["generator"].initial_seed() / 255
        images[..., 1] = next(i for i, p in enumerate(self.prompts) if p in kwargs["prompt"]) / 255
        return type("Output", (), {"images": images})()


class FakeDetector:
    """Finds `faces[(prompt number, seed)]` usable faces in a FakeFlux prior."""

    def __init__(self, faces):
        self.faces, self.closed = faces, False

    def detect(self, rgb):
        key = (int(rgb[0, 0, 1]), int(rgb[0, 0, 0]))
        return [Face((10.0 * i, 0.0, 10.0 * i + 40, 40.0), 0.9) for i in range(self.faces[key])]

    def close(self):
        self.closed = True


def test_priors_use_the_prompt_as_given_and_try_next_seeds_for_enough_faces(tmp_path, monkeypatch):
    prompts = ["two people reading", "two people cooking"]
    pipes, detectors = [], []
    # Prompt 0 shows 1 face at seed 0 and 2 at seed 1; prompt 1 never shows 2 faces.
    faces = {(0, 0): 1, (0, 1): 2, (1, 0): 0, (1, 1): 1, (1, 2): 1, (1, 3): 2}
    monkeypatch.setattr(
        bench_module, "_load_prior_pipeline", lambda s: pipes.append(FakeFlux(prompts)) or pipes[-1]
    )
    monkeypatch.setattr(
        bench_module, "open_detector",
        lambda name, download: detectors.append(FakeDetector(faces)) or detectors[-1],
    )  # fmt: skip
    cases = plan_cases("2p", prompts, [tmp_path / "a.png", tmp_path / "b.png"])
    request = BenchRequest(
        suite="2p", identities=tmp_path, output=tmp_path / "b", size=(128, 96), prior_seeds=3
    )
    paths, failures = bench_module._priors(cases, request, None)
    assert len(pipes) == 1 and detectors[0].closed
    assert [c["prompt"] for c in pipes[0].calls] == [prompts[0]] * 2 + [prompts[1]] * 3
    assert [c["generator"].initial_seed() for c in pipes[0].calls] == [0, 1, 0, 1, 2]
    call = pipes[0].calls[0]
    assert (call["width"], call["height"], call["num_inference_steps"], call["guidance_scale"]) == (
        128, 96, 28, 3.5,
    )  # fmt: skip
    first = json.loads((tmp_path / "b" / "priors" / "2p-00.json").read_text())
    assert first["prompt"] == prompts[0] and first["prompt_mode"] == "given"
    assert first["seed"] == 1 and first["attempts"] == [
        {"seed": 0, "faces": 1}, {"seed": 1, "faces": 2},
    ]  # fmt: skip
    assert np.asarray(Image.open(paths["2p-00"]))[0, 0, 0] == 1  # the prior kept: seed 1's
    second = json.loads((tmp_path / "b" / "priors" / "2p-01.json").read_text())
    assert second["seed"] is None and [a["seed"] for a in second["attempts"]] == [0, 1, 2]
    assert list(failures) == ["2p-01"] and "fewer than 2 usable faces" in failures["2p-01"]

    again, failures_again = bench_module._priors(cases, request, None)
    assert len(pipes) == 1 and again == paths  # both kept: nothing loaded
    assert failures_again == failures  # a recorded failure is still a failure
    assert bench_module._priors(cases, replace(request, fallback="grid"), None)[1] == {}
    # More tries: the prior that had enough faces is kept, the failed one is tried further.
    _, failures_more = bench_module._priors(cases, replace(request, prior_seeds=5), None)
    assert failures_more == {} and len(pipes) == 2
    assert [(prompts.index(c["prompt"]), c["generator"].initial_seed()) for c in pipes[1].calls] == [
        (1, 0), (1, 1), (1, 2), (1, 3),
    ]  # fmt: skip
    bench_module._priors(cases, replace(request, prior_prompt="rewrite"), None)
    assert len(pipes) == 3 and pipes[2].calls[0]["prompt"] == (
        "two people reading. A group photo of 2 people side by side, every face clearly "
        "visible, looking at the camera."
    )


def test_a_case_without_a_canvas_is_failed_in_the_table_not_laid_out_in_a_row(suite):
    """The second case's prior shows one person for two: with bench's default --fallback
    error it gets no canvas, is listed, and counted as failed for every method."""
    priors = suite / "two_priors"
    priors.mkdir()
    group = Image.open(suite / "priors" / "group.png")
    group.save(priors / "a_group.png")
    single = np.array(group)
    single[:, 96:] = (118, 140, 160)  # Hopper painted over
    Image.fromarray(single).save(priors / "b_single.png")
    result = bench(suite, "--metrics", "fidelity", "--methods", "layered", priors="two_priors")
    assert result.exit_code == 1, result.output
    assert "no canvas" in result.output and "2p-01" in result.output
    out = suite / "bench"
    assert not (out / "canvases" / "2p-01.yaml").exists()
    with open(out / "results.csv", newline="") as handle:
        assert [r["canvas"] for r in csv.DictReader(handle)] == ["2p-00"]
    assert (
        "| layered | run here, not comparable: random weights (builtin:tiny) | 1 | 1 |"
        in (out / "results.md").read_text()
    )


def test_bench_usage_errors(suite):
    assert bench(suite, "--methods", "layered,inpaint").exit_code == 2
    too_few = lc(
        "bench", "--suite", "4p", "--identities", suite / "identities", "--prompts",
        suite / "prompts.txt", "--model", "builtin:tiny", "--metrics", "fidelity",
    )  # fmt: skip
    assert too_few.exit_code == 2 and "at least 4 identity photos, got 2" in too_few.output


def test_1p_canvas_is_the_cropped_head_on_black_for_every_method(suite):
    """1P: the layer is the photo's head (a square twice the face's size around its face box),
    eye-aligned on the prior's face; everything else on the canvas is empty, so the layered
    input is that head on black; the collage method renders the same canvas."""
    from layercomposer.canvas import load_canvas
    from layercomposer.faces.detect import open_detector
    from layercomposer.layers import build_layers, flatten

    single = np.array(Image.open(suite / "priors" / "group.png"))
    single[:, 96:] = (118, 140, 160)  # only the astronaut is left
    Image.fromarray(single).save(suite / "single.png")
    (suite / "one.txt").write_text("a person at a launch pad\n")
    result = lc(
        "bench", "--suite", "1p", "--identities", suite / "identities" / "astronaut.png",
        "--prompts", suite / "one.txt", "--priors", suite / "single.png", "--model",
        "builtin:tiny", "--steps", "1", "--metrics", "fidelity", "--no-figure",
        "-o", suite / "b1",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    out = suite / "b1"
    record = json.loads((out / "suite.json").read_text())
    assert record["cases"][0]["prompt"] == "a person at a launch pad"  # the plain prompt
    assert (
        record["protocol"]["subject_input"] == "head" and record["protocol"]["head_margin"] == 0.5
    )

    photo = skimage_data.astronaut()
    detector = open_detector("mediapipe")
    try:
        face = detector.detect(photo)[0]
    finally:
        detector.close()
    side = 2 * face.size
    x0, y0 = round(face.center[0] - side / 2), round(face.center[1] - side / 2)
    head = np.asarray(Image.open(out / "heads" / "1p-00" / "astronaut.png"))
    assert abs(head.shape[0] - side) <= 1 and abs(head.shape[1] - side) <= 1
    assert np.array_equal(head, photo[max(0, y0) : y0 + head.shape[0], x0 : x0 + head.shape[1]])

    (layer,) = build_layers(load_canvas(out / "canvases" / "1p-00.yaml"))
    alpha = layer.rgba[..., 3]
    layered_input = flatten([layer], base=(0, 0, 0))  # transparent pixels: the black canvas
    assert (layered_input[alpha == 0] == 0).all()  # outside the head: black
    ys, xs = np.nonzero(alpha)
    box_w, box_h = xs.max() - xs.min() + 1, ys.max() - ys.min() + 1
    assert 0.8 < box_w / box_h < 1.25  # a square head crop, not a person's outline
    assert (alpha > 0).sum() > 0.75 * box_w * box_h  # opaque across the crop (turned a little)
    assert (alpha == 0).mean() > 0.5 and layered_input[alpha == 255].mean() > 20
    canvases = {
        json.loads(m.read_text())["inputs"]["canvas"]["path"]
        for m in (out / "renders").rglob("*.json")
    }
    assert len(canvases) == 1  # layered and collage got the same cropped head


def test_a_warning_every_case_repeats_is_printed_once_then_the_cases_listed(tmp_path, monkeypatch):
    from layercomposer.cli import bench as bench_cli_module
    from layercomposer.eval.bench import BenchResult

    def fake_run_bench(request, progress, warn):
        for message in ("2p-00: the prior has 4 faces", "2p-01: the prior has 4 faces",
                        "2p-02: no face in it", "2p-03: the prior has 4 faces"):  # fmt: skip
            warn(message)
        return BenchResult([], {}, {}, None)

    monkeypatch.setattr(bench_cli_module, "run_bench", fake_run_bench)
    (tmp_path / "ids").mkdir()
    result = lc("bench", "--suite", "2p", "--identities", tmp_path / "ids")
    warnings = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert warnings == [
        "warning: 2p-00: the prior has 4 faces",
        "warning: 2p-02: no face in it",
        "warning: 2p-01, 2p-03: as 2p-00, the prior has 4 faces",
    ]
    quiet = lc("bench", "--suite", "2p", "--identities", tmp_path / "ids", "--quiet")
    assert "warning:" not in quiet.output
