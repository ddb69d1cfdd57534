"""Sharded (FSDP2) and data-parallel (DDP) training with two CPU processes over gloo, launched
the way users launch it (`accelerate launch --config_file configs/accelerate/fsdp.yaml`, or
`ddp.yaml`), against one process.

Two processes with 2 examples each and one process with 4 draw the same examples per step, so
their loss curves, weights and optimizer moments must agree up to float rounding: the gradient
is summed in a different order (per-process partial sums, then the all-reduce). Tolerances: the
losses to the 6 significant digits metrics.csv keeps (rtol 1e-5), the LoRA weights to atol 5e-5
(about 4e-6 measured, weights of order 1), the Adam moments to 1e-4 of each tensor's largest
value. Gradient clipping is made to bite (max_grad_norm 0.01), so a norm taken per shard instead
of over the whole gradient would show; gradient checkpointing is on, as in the GPU configs (its
recomputed forward gathers each block again).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from train_data import REPO, make_dataset

from layercomposer.train.config import load_train_config
from layercomposer.train.trainer import Trainer

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="two local processes over gloo")

CONFIG = REPO / "configs" / "tiny.yaml"
LAUNCH = {name: REPO / "configs" / "accelerate" / f"{name}.yaml" for name in ("fsdp", "ddp")}
PER_PROCESS = 2  # two processes x 2 examples = the single process's 4


def settings(data, output, steps: int, batch: int) -> list[str]:
    return [
        f"data.path={data}", f"output_dir={output}", "validation_canvases=[]",
        f"train.steps={steps}", f"train.batch_size={batch}", "checkpoint_every=2",
        "optim.max_grad_norm=0.01", "device=cpu", "train.gradient_checkpointing=true",
    ]  # fmt: skip


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch_two_processes(launch: str, data, output, steps: int, resume: bool = False) -> str:
    """Run `lc train` in two processes; returns what they printed."""
    sets = [arg for item in settings(data, output, steps, PER_PROCESS) for arg in ("--set", item)]
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(LAUNCH[launch]),
        "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
        "--dynamo_backend", "no", "--main_process_port", str(free_port()),
        "-m", "layercomposer", "train", str(CONFIG), *sets, "--quiet", *(["--resume"] * resume),
    ]  # fmt: skip
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 0, done.stdout + done.stderr[-4000:]
    return done.stdout + done.stderr


def losses(run) -> dict[int, float]:
    with open(run / "metrics.csv") as handle:
        return {int(row["step"]): float(row["loss"]) for row in csv.DictReader(handle)}


def assert_same_weights(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].shape == b[key].shape, key
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=atol, msg=key)


def lora(run, step: int | None = None) -> dict[str, torch.Tensor]:
    folder = run if step is None else run / "checkpoints" / f"step-{step:07d}"
    return load_file(folder / "pytorch_lora_weights.safetensors")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One process, 4 examples a step, 5 steps (checkpoints at 2, 4, 5); two FSDP processes with
    2 examples each, resumed (`--resume`) from the single process's step-2 checkpoint to step 4,
    and the same with two DDP processes. One launch each keeps the test short; the single
    process then resumes the sharded checkpoint."""
    root = tmp_path_factory.mktemp("sharded")
    data = root / "data"
    make_dataset(data)
    single = root / "single"
    Trainer(load_train_config(CONFIG, settings(data, single, 5, 2 * PER_PROCESS))).run()
    runs = {"data": data, "single": single}
    for launch, name in (("fsdp", "sharded"), ("ddp", "ddp")):
        runs[name] = root / name
        shutil.copytree(
            single / "checkpoints" / "step-0000002", runs[name] / "checkpoints" / "step-0000002"
        )
        runs[f"{name} output"] = launch_two_processes(launch, data, runs[name], 4, resume=True)
    return runs


@pytest.mark.parametrize("name", ["sharded", "ddp"])
def test_two_processes_follow_the_single_process_loss_curve(runs, name):
    single, sharded = losses(runs["single"]), losses(runs[name])
    assert list(sharded) == [3, 4]  # the resumed steps, each over the 4-example global batch
    assert len(set(single.values())) == 5  # a real curve, not one repeated number
    for step in sharded:
        assert sharded[step] == pytest.approx(single[step], rel=1e-5), step
    assert_same_weights(lora(runs["single"], 4), lora(runs[name]), atol=5e-5)
    assert runs[f"{name} output"].count("wrote ") == 1  # rank 0 reports, not every process


def test_sharded_checkpoints_hold_full_tensors_by_parameter_name(runs):
    checkpoint = runs["sharded"] / "checkpoints" / "step-0000004"
    state = json.loads((checkpoint / "state.json").read_text())
    assert (state["step"], state["processes"], state["global_batch"]) == (4, 2, 4)
    # Whole tensors, gathered from both shards: the final LoRA, not one half of it.
    assert_same_weights(lora(runs["sharded"], 4), lora(runs["sharded"]), atol=0)
    sharded = torch.load(checkpoint / "optimizer.pt", weights_only=True)
    single = torch.load(
        runs["single"] / "checkpoints" / "step-0000004" / "optimizer.pt", weights_only=True
    )
    assert sharded["state"].keys() == single["state"].keys()
    for name, moments in single["state"].items():
        for key in ("exp_avg", "exp_avg_sq"):
            assert sharded["state"][name][key].shape == moments[key].shape, name
            scale = float(moments[key].abs().max())
            torch.testing.assert_close(
                sharded["state"][name][key], moments[key], rtol=1e-3, atol=1e-4 * scale
            )


def test_one_process_resumes_the_sharded_checkpoint(runs, tmp_path):
    # Checkpoints hold full tensors by parameter name: the process count may change on resume.
    resumed = tmp_path / "resumed"
    source = runs["sharded"] / "checkpoints" / "step-0000004"
    shutil.copytree(source, resumed / "checkpoints" / source.name)
    config = load_train_config(CONFIG, settings(runs["data"], resumed, 5, 2 * PER_PROCESS))
    Trainer(config, resume=True).run()
    assert list(losses(resumed)) == [5]
    assert losses(resumed)[5] == pytest.approx(losses(runs["single"])[5], rel=1e-5)
    assert_same_weights(lora(runs["single"]), lora(resumed), atol=5e-5)


def test_an_fsdp1_config_or_unknown_block_class_is_refused(monkeypatch):
    from layercomposer.errors import LcError
    from layercomposer.train.sharding import ShardingSettings, settings_from_launch, shard_model

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "2")
    monkeypatch.setenv("FSDP_AUTO_WRAP_POLICY", "TRANSFORMER_BASED_WRAP")
    monkeypatch.setenv("FSDP_TRANSFORMER_CLS_TO_WRAP", "FluxTransformerBlock")
    assert settings_from_launch().wrap_classes == ("FluxTransformerBlock",)
    monkeypatch.setenv("FSDP_VERSION", "1")
    with pytest.raises(LcError, match="FSDP2") as refused:
        settings_from_launch()
    assert "fsdp_version: 2" in refused.value.hint
    with pytest.raises(LcError, match="no module of class LlamaDecoderLayer"):
        shard_model(
            torch.nn.Linear(2, 2), ShardingSettings(("LlamaDecoderLayer",), True, False), "cpu"
        )


def test_a_checkpoint_that_does_not_fit_is_refused(runs, tmp_path):
    from layercomposer.errors import LcError

    run = tmp_path / "old"
    checkpoint = run / "checkpoints" / "step-0000002"
    shutil.copytree(runs["single"] / "checkpoints" / "step-0000002", checkpoint)
    # An optimizer state keyed by position, as lc wrote it before checkpoints were by name.
    torch.save({"state": {0: {}}, "param_groups": []}, checkpoint / "optimizer.pt")
    config = load_train_config(CONFIG, settings(runs["data"], run, 4, 2 * PER_PROCESS))
    with pytest.raises(LcError, match="does not fit this run") as refused:
        Trainer(config, resume=True).run()
    assert "start a new output_dir" in refused.value.hint
