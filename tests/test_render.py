"""`lc render` end to end with builtin:tiny: files, manifests, reproduction, resume and batches."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import EXAMPLES, disc_rgba
from layercomposer.cli.main import app
from layercomposer.files import sha256_file

runner = CliRunner()
TINY = ["--model", "builtin:tiny"]
REPO = Path(__file__).resolve().parents[1]


def lc(*args):
    return runner.invoke(app, [str(a) for a in args])


def small_canvases(make_canvas, count: int, steps: int = 2) -> list[Path]:
    paths = []
    for i in range(count):
        spec = {
            "prompt": f"scene {i}",
            "size": [128, 128],
            "steps": steps,
            "layers": [
                {"name": "a", "image": "a.png", "position": [40 + 4 * i, 64], "lock": i % 2 == 0},
                {"name": "b", "image": "b.png", "position": [88, 64]},
            ],
        }
        images = {"a.png": disc_rgba(64), "b.png": disc_rgba(48, (20, 20, 200))}
        paths.append(make_canvas(spec, images, name=f"scene{i}.yaml"))
    return paths


def assert_output_is_whole(image: Path, manifest: Path) -> dict:
    data = json.loads(manifest.read_text())
    assert data["output"]["sha256"] == sha256_file(image)
    with Image.open(image) as opened:
        opened.load()
        assert list(opened.size) == data["output"]["size"]
    return data


def test_four_subject_example_renders_with_a_full_manifest(tmp_path):
    four = next(p for p in EXAMPLES if p.stem == "four_people")
    result = lc(
        "render",
        four,
        *TINY,
        "-o",
        tmp_path,
        "--set",
        "steps=2",
        "--mode",
        "layered",
        "--seed",
        "3",
    )
    assert result.exit_code == 0, result.output
    manifest = assert_output_is_whole(
        tmp_path / "four_people" / "3.png", tmp_path / "four_people" / "3.json"
    )
    assert manifest["inputs"]["seed"] == 3 and manifest["mode_used"] == "layered"
    assert manifest["inputs"]["canvas"]["resolved"]["steps"] == 2
    assert set(manifest["inputs"]["images"]) == {
        layer["image"] for layer in manifest["inputs"]["canvas"]["resolved"]["layers"]
    }
    assert manifest["model"]["random_weights"] and "noise" in manifest["warning"]
    report = json.loads(lc("inspect", four, "--json").output)
    assert manifest["tokens"]["conditioning"] == report["tokens"]["conditioning"]
    assert manifest["tokens"]["total"] == report["tokens"]["sequence"]
    for stage in ("load", "text", "encode", "denoise", "decode", "total"):
        assert manifest["timings"][stage] >= 0
    assert manifest["peak_memory_bytes"] > 0
    assert manifest["versions"]["torch"] and manifest["versions"]["diffusers"]


def test_from_manifest_reproduces_bit_for_bit(tmp_path, make_canvas):
    (canvas,) = small_canvases(make_canvas, 1)
    assert lc("render", canvas, *TINY, "-o", tmp_path / "out", "--seed", "5").exit_code == 0
    manifest = tmp_path / "out" / "scene0" / "5.json"
    result = lc("render", "--from-manifest", manifest, "-o", tmp_path / "again")
    assert result.exit_code == 0, result.output
    assert "identical" in result.output
    assert sha256_file(tmp_path / "again" / "scene0" / "5.png") == sha256_file(
        tmp_path / "out" / "scene0" / "5.png"
    )


def test_from_manifest_notices_a_different_output(tmp_path, make_canvas):
    (canvas,) = small_canvases(make_canvas, 1)
    lc("render", canvas, *TINY, "-o", tmp_path / "out")
    manifest = tmp_path / "out" / "scene0" / "0.json"
    data = json.loads(manifest.read_text())
    data["output"]["sha256"] = "0" * 64
    manifest.write_text(json.dumps(data))
    result = lc("render", "--from-manifest", manifest, "-o", tmp_path / "again")
    assert result.exit_code == 1 and "differs" in result.output


def test_seeds_num_images_json_lines_and_resume(tmp_path, make_canvas):
    (canvas,) = small_canvases(make_canvas, 1)
    first = lc("render", canvas, *TINY, "-o", tmp_path, "--seed", "10", "-n", "2", "--json")
    assert first.exit_code == 0, first.output
    lines = [json.loads(line) for line in first.stdout.splitlines() if line.startswith("{")]
    assert [(r["seed"], r["status"]) for r in lines] == [(10, "rendered"), (11, "rendered")]
    a, b = (np.asarray(Image.open(tmp_path / "scene0" / f"{s}.png")) for s in (10, 11))
    assert (a != b).any(), "different seeds give different images"

    again = lc(
        "render", canvas, *TINY, "-o", tmp_path, "--seed", "10", "-n", "2", "--json", "--resume"
    )
    assert [
        json.loads(line)["status"] for line in again.stdout.splitlines() if line.startswith("{")
    ] == ["skipped"] * 2
    changed = lc(
        "render",
        canvas,
        *TINY,
        "-o",
        tmp_path,
        "--seed",
        "10",
        "--json",
        "--resume",
        "--set",
        "prompt=other",
    )
    assert json.loads(changed.stdout.splitlines()[0])["status"] == "rendered"


def test_a_failing_canvas_does_not_stop_the_batch(tmp_path, make_canvas):
    good = small_canvases(make_canvas, 2)
    bad = make_canvas({"prompt": "p", "size": [100, 100], "layers": []}, name="bad.yaml")
    result = lc("render", good[0], bad, good[1], *TINY, "-o", tmp_path / "out", "--json")
    assert result.exit_code == 2, result.output
    statuses = {
        Path(r["canvas"]).stem: r["status"]
        for r in map(json.loads, result.stdout.splitlines())
        if r
    }
    assert statuses == {"scene0": "rendered", "bad": "failed", "scene1": "rendered"}
    assert "summary: 2 rendered, 0 skipped, 1 failed" in result.output
    stopped = lc("render", bad, good[0], *TINY, "-o", tmp_path / "ff", "--json", "--fail-fast")
    assert stopped.exit_code == 2 and not (tmp_path / "ff" / "scene0").exists()


def test_missing_weights_are_a_clear_runtime_error(tmp_path, make_canvas, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    (canvas,) = small_canvases(make_canvas, 1)
    result = lc("render", canvas, "-o", tmp_path / "out")
    assert result.exit_code == 1, result.output
    assert (
        "black-forest-labs/FLUX.1-Kontext-dev" in result.output and "hf download" in result.output
    )
    assert "Traceback" not in result.output
    folder = lc("render", canvas, "--model", tmp_path / "nowhere", "-o", tmp_path / "out")
    assert folder.exit_code == 1 and "does not exist" in folder.output


def test_bad_options_are_usage_errors(tmp_path, make_canvas):
    (canvas,) = small_canvases(make_canvas, 1)
    assert lc("render", canvas, *TINY, "--mode", "stacked").exit_code == 2
    assert lc("render", *TINY).exit_code == 2
    assert lc("render", canvas, "--from-manifest", canvas).exit_code == 2
    assert lc("render", tmp_path / "*.nothing", *TINY).exit_code == 2


def test_quoted_globs_expand(tmp_path, make_canvas):
    small_canvases(make_canvas, 2)
    result = lc("render", str(tmp_path / "scene*.yaml"), *TINY, "-o", tmp_path / "out", "--json")
    assert result.exit_code == 0 and len(result.stdout.splitlines()) == 2


def lc_process(*args, env=None):
    return subprocess.Popen(
        [sys.executable, "-m", "layercomposer", *map(str, args)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
    )  # fmt: skip


def test_sigkill_mid_batch_then_resume_leaves_every_output_whole(tmp_path, make_canvas):
    canvases = small_canvases(make_canvas, 6, steps=6)
    out = tmp_path / "out"
    batch = lc_process("render", *canvases, *TINY, "-o", out, "-n", "2", "--quiet")
    deadline = time.monotonic() + 120
    while not list(out.glob("*/*.json")) and time.monotonic() < deadline and batch.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)
    batch.send_signal(signal.SIGKILL)
    batch.wait()
    done_before = len(list(out.glob("*/*.json")))
    assert 0 < done_before < 12, "the kill should land mid-batch"

    rerun = lc_process("render", *canvases, *TINY, "-o", out, "-n", "2", "--json", "--resume")
    stdout, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, stdout.decode()
    statuses = [
        json.loads(line)["status"] for line in stdout.decode().splitlines() if line.startswith("{")
    ]
    assert statuses.count("skipped") >= done_before - 1 and len(statuses) == 12
    for canvas in canvases:
        for seed in (0, 1):
            assert_output_is_whole(
                out / canvas.stem / f"{seed}.png", out / canvas.stem / f"{seed}.json"
            )
    assert not [p for p in out.rglob("*") if p.name.endswith(".lc-tmp")]


@pytest.mark.skipif(sys.platform != "linux", reason="two local processes over gloo")
def test_accelerate_launch_splits_canvases_across_two_processes(tmp_path, make_canvas):
    canvases = small_canvases(make_canvas, 3)
    command = [
        # `--cpu` would make accelerate start one process: the DDP config starts two on the CPU.
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / "configs/accelerate/ddp.yaml"),
        "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
        "--dynamo_backend", "no", "--main_process_port", "29533",
        "-m", "layercomposer", "render", *map(str, canvases), *TINY, "-o", str(tmp_path / "out"), "--json",
    ]  # fmt: skip
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert sorted(Path(r["canvas"]).stem for r in records) == ["scene0", "scene1", "scene2"]
    assert done.stderr.count("summary:") == 1
    assert "3 rendered, 0 skipped, 0 failed (2 processes)" in done.stderr
    for canvas in canvases:
        assert_output_is_whole(
            tmp_path / "out" / canvas.stem / "0.png", tmp_path / "out" / canvas.stem / "0.json"
        )


def test_a_lora_without_lc_metadata_leaves_auto_collage_and_is_recorded(tmp_path, make_canvas):
    from diffusers import FluxKontextPipeline
    from peft import LoraConfig, get_peft_model_state_dict

    from layercomposer.tiny import tiny_kontext_components

    transformer = tiny_kontext_components()["transformer"]
    config = LoraConfig(
        r=4,
        lora_alpha=4,
        target_modules=["to_q", "to_k", "to_v", "to_out.0"],
        init_lora_weights=False,
    )
    transformer.add_adapter(config)
    FluxKontextPipeline.save_lora_weights(
        tmp_path / "lora", transformer_lora_layers=get_peft_model_state_dict(transformer)
    )
    lora_file = tmp_path / "lora" / "pytorch_lora_weights.safetensors"

    (canvas,) = small_canvases(make_canvas, 1)
    result = lc(
        "render", canvas, *TINY, "--lora", lora_file, "--lora-scale", "0.5", "-o", tmp_path / "out"
    )
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "out" / "scene0" / "0.json").read_text())
    # A plain peft LoRA says nothing of the layered canvas: auto stays collage, naming the file.
    assert manifest["mode_used"] == "collage"
    assert "pytorch_lora_weights.safetensors has no lc.* metadata" in manifest["mode_reason"]
    assert "pytorch_lora_weights.safetensors has no lc.* metadata" in result.output
    assert manifest["lora"]["sha256"] == sha256_file(lora_file) and manifest["lora"]["rank"] == 4
    assert manifest["inputs"]["lora"]["scale"] == 0.5

    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    failed = lc("render", canvas, *TINY, "--lora", garbage, "-o", tmp_path / "out2")
    assert failed.exit_code == 1 and "Traceback" not in failed.output


def test_out_of_memory_is_answered_with_the_options_that_help(tmp_path, make_canvas, monkeypatch):
    import torch

    from layercomposer.pipeline import LayerComposerPipeline

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(LayerComposerPipeline, "__call__", out_of_memory)
    (canvas,) = small_canvases(make_canvas, 1)
    result = lc("render", canvas, *TINY, "-o", tmp_path / "out")
    assert result.exit_code == 1, result.output
    assert "out of GPU memory" in result.output and "--offload model" in result.output
    assert not (tmp_path / "out" / "scene0" / "0.png").exists()


def test_offload_needs_a_gpu(tmp_path, make_canvas):
    (canvas,) = small_canvases(make_canvas, 1)
    result = lc(
        "render", canvas, *TINY, "--device", "cpu", "--offload", "model", "-o", tmp_path / "out"
    )
    assert result.exit_code == 2 and "--offload none" in result.output


def test_a_missing_manifest_is_an_input_error(tmp_path):
    result = lc("render", "--from-manifest", tmp_path / "none.json")
    assert result.exit_code == 2, result.output
    assert f"no manifest at {tmp_path / 'none.json'}" in result.output
    assert "OUT/<canvas>/<seed>.json" in result.output


def test_the_help_example_reproduces_the_manifest_the_first_example_writes():
    from layercomposer.canvas import load_canvas
    from layercomposer.cli.render import render_cli

    examples = render_cli.__doc__.split("Examples:")[1].splitlines()
    first = next(
        line.split() for line in examples if line.strip().startswith("lc render canvases/")
    )
    reproduce = next(line.split() for line in examples if "--from-manifest" in line)
    canvas = load_canvas(REPO / first[2])
    manifest = reproduce[reproduce.index("--from-manifest") + 1]
    assert manifest == f"out/{canvas.name}/{canvas.spec.seed}.json"  # -o defaults to out


def test_a_log_line_per_output_says_how_far_the_batch_is(tmp_path, make_canvas):
    canvases = small_canvases(make_canvas, 2)
    result = lc("render", *canvases, *TINY, "-o", tmp_path / "out", "-n", "2")
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("rendered ")]
    assert len(lines) == 4
    assert re.search(r"\([\d.]+ s; 1/4, [\d.]+ s each, about [\d.]+ s left\)$", lines[0]), lines
    assert re.search(r"\([\d.]+ s; 4/4, [\d.]+ s each, [\d.]+ s in all\)$", lines[3]), lines
