"""A training run that cannot silently go wrong: bounded text cache off the device, no update from
a non-finite step, no rerun over another run, resume only of the same run, several datasets."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file
from train_data import REPO, make_dataset
from typer.testing import CliRunner

from layercomposer.cli.main import app
from layercomposer.errors import LcError
from layercomposer.train.config import load_train_config
from layercomposer.train.dataset import load_datasets, load_index, write_index
from layercomposer.train.text_cache import TextEmbeddingCache, embeddings_bytes
from layercomposer.train.trainer import LORA_FILE, Trainer

runner = CliRunner()
CONFIG = REPO / "configs" / "tiny.yaml"


def config_for(dataset, output, *sets):
    overrides = [f"data.path={dataset}", f"output_dir={output}", "validation_canvases=[]"]
    return load_train_config(CONFIG, [*overrides, *sets])


def metrics(run) -> list[dict]:
    with open(run / "metrics.csv") as handle:
        return list(csv.DictReader(handle))


def folder_state(folder) -> dict[str, str]:
    """Every file under `folder` by relative path -> sha256 of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# --- the text cache ---------------------------------------------------------------------------


def fake_embeddings(caption: str) -> tuple[torch.Tensor, ...]:
    """Embeddings of the tiny model's shapes (T5 512 x 32, pooled 32, ids 512 x 3)."""
    seed = int(hashlib.sha256(caption.encode()).hexdigest()[:8], 16)
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(1, 512, 32, generator=g),
        torch.randn(1, 32, generator=g),
        torch.zeros(512, 3),
    )


def test_ten_thousand_captions_stay_in_cpu_memory_within_the_cap():
    per_caption = embeddings_bytes(fake_embeddings("x"))
    cap = 300 * per_caption + per_caption // 2  # room for 300 captions
    cache = TextEmbeddingCache(cap)
    encoded = []

    def encode(caption):
        encoded.append(caption)
        return fake_embeddings(caption)

    # "meta" stands in for an accelerator: what the step gets is there, what is kept is not.
    for i in range(10_000):
        on_device = cache.get(f"caption {i}", encode, "meta")
        assert all(t.device.type == "meta" for t in on_device)
        assert cache.bytes <= cap
    assert len(cache) == 300 and cache.evictions == 10_000 - 300
    assert all(t.device.type == "cpu" for entry in cache.values() for t in entry)
    # The most recent captions are kept; an old one is encoded again when drawn.
    assert "caption 9999" in cache and "caption 0" not in cache
    cache.get("caption 9999", encode, "cpu")
    cache.get("caption 0", encode, "cpu")
    assert encoded.count("caption 9999") == 1 and encoded.count("caption 0") == 2


def test_the_trainer_encodes_each_caption_once_into_cpu_memory(dataset, tmp_path):
    trainer = Trainer(config_for(dataset, tmp_path / "run", "train.text_cache_gb=0.0002"))
    calls = []
    real = trainer._encode_caption
    trainer._encode_caption = lambda caption: calls.append(caption) or real(caption)
    captions = [f"person {i} standing in a field" for i in range(6)]
    first = [trainer._text(c) for c in captions]
    again = [trainer._text(c) for c in captions[-2:]]
    for a, b in zip(first[-2:], again, strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))  # the same embeddings
    assert calls == captions  # the two most recent came from the cache
    assert trainer.text_cache.bytes <= 0.0002e9
    assert all(t.device.type == "cpu" for entry in trainer.text_cache.values() for t in entry)


def test_estimate_counts_the_text_cache_in_cpu_memory_from_the_captions(tmp_path):
    make_dataset(tmp_path / "data", resolution=64, scenes=1, images=2)
    index = load_index(tmp_path / "data")
    scene = index.scenes[0]
    # 10,000 distinct captions (the same two images, captioned differently).
    images = tuple(
        type(scene.images[0])(**{**scene.images[i % 2].__dict__, "caption": f"caption {i}"})
        for i in range(10_000)
    )
    write_index(type(index)(index.root, 64, (type(scene)(scene.name, images),)))

    def host_cache(*sets):
        result = runner.invoke(
            app,
            [
                "train",
                str(CONFIG),
                "--estimate",
                "--json",
                "--set",
                f"data.path={tmp_path / 'data'}",
                *sets,
            ],
        )
        assert result.exit_code == 0, result.output
        budget = json.loads(result.stdout)
        assert "text embedding cache" not in {item["item"] for item in budget["memory"]}
        return {i["item"]: i for i in budget["host_memory"]}["text embedding cache"]

    whole = host_cache("--set", "train.text_cache_gb=100")
    assert whole["note"].startswith("10,000 distinct captions")
    capped = host_cache("--set", "train.text_cache_gb=0.1")
    assert capped["bytes"] <= 1e8 < whole["bytes"] and "keeps" in capped["note"]


# --- a non-finite step ------------------------------------------------------------------------


def lora_weights(trainer) -> dict[str, torch.Tensor]:
    return {
        name: p.detach().clone()
        for name, p in trainer.pipe.transformer.named_parameters()
        if p.requires_grad
    }


def test_a_nan_at_step_k_leaves_the_lora_and_checkpoint_as_after_step_k_minus_1(dataset, tmp_path):
    k = 3
    sets = ("train.steps=5", "checkpoint_every=1", "train.batch_size=2")
    clean = Trainer(config_for(dataset, tmp_path / "clean", *sets, "train.steps=2"))
    clean.run()
    after_k_minus_1 = lora_weights(clean)

    trainer = Trainer(config_for(dataset, tmp_path / "run", *sets))
    real, calls = trainer.example_loss, []

    def poisoned(sample, sigma, noise_seed):
        calls.append(1)
        loss = real(sample, sigma, noise_seed)
        step = (len(calls) + 1) // 2  # two examples a step
        return loss * float("nan") if step == k else loss

    trainer.example_loss = poisoned
    checkpoint = tmp_path / "run" / "checkpoints" / f"step-{k - 1:07d}"
    with pytest.raises(LcError, match=f"at step {k}: training stopped before") as failure:
        trainer.run()
    assert f"after step {k - 1}" in failure.value.message
    # In memory: exactly the weights of a clean run stopped at step k-1.
    now = lora_weights(trainer)
    assert now.keys() == after_k_minus_1.keys()
    assert all(torch.equal(now[n], after_k_minus_1[n]) for n in now)
    # On disk: the newest checkpoint is step k-1's, finite, equal to the clean run's; no LoRA.
    assert (
        sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())[-1] == checkpoint.name
    )
    saved, reference = (
        load_file(folder / LORA_FILE)
        for folder in (checkpoint, tmp_path / "clean" / "checkpoints" / f"step-{k - 1:07d}")
    )
    assert all(torch.isfinite(t).all() and torch.equal(t, reference[n]) for n, t in saved.items())
    assert not (tmp_path / "run" / LORA_FILE).exists()
    assert [int(r["step"]) for r in metrics(tmp_path / "run")] == [1, 2]
    assert all(math.isfinite(float(r["loss"])) for r in metrics(tmp_path / "run"))


def test_infinite_or_nan_settings_are_refused_before_training(tmp_path):
    for setting in ("optim.learning_rate=.inf", "train.logit_mean=.nan", "optim.betas=[2,2]"):
        result = runner.invoke(app, ["train", str(CONFIG), "--set", setting])
        assert result.exit_code == 2, (setting, result.output)
        assert setting.split("=")[0].split(".")[-1] in result.output


# --- reruns and resume ------------------------------------------------------------------------


def train_cli(dataset, output, *args):
    return runner.invoke(
        app,
        [
            "train", str(CONFIG), "-q", "--set", f"data.path={dataset}", "--set",
            f"output_dir={output}", "--set", "validation_canvases=[]", "--set", "checkpoint_every=1",
            *args,
        ],
    )  # fmt: skip


def test_a_rerun_without_resume_is_refused_and_changes_nothing(dataset, tmp_path):
    run = tmp_path / "run"
    first = train_cli(dataset, run, "--set", "train.steps=3")
    assert first.exit_code == 0, first.output
    before = folder_state(run)
    again = train_cli(dataset, run, "--set", "train.steps=2")
    assert again.exit_code == 2, again.output
    assert "already holds a training run" in again.output and "--overwrite" in again.output
    assert "Traceback" not in again.output
    assert folder_state(run) == before

    # --overwrite starts over: no checkpoint or metric row of the old run is left.
    fresh = train_cli(dataset, run, "--set", "train.steps=2", "--overwrite")
    assert fresh.exit_code == 0, fresh.output
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "step-0000001",
        "step-0000002",
    ]
    assert [int(r["step"]) for r in metrics(run)] == [1, 2]
    assert load_file(run / LORA_FILE)  # the new run's LoRA


def test_resume_takes_only_a_checkpoint_of_the_same_run(dataset, tmp_path):
    run = tmp_path / "run"
    assert train_cli(dataset, run, "--set", "train.steps=2").exit_code == 0
    before = folder_state(run)
    other = train_cli(
        dataset, run, "--set", "train.steps=4", "--set", "optim.learning_rate=0.5", "--resume"
    )
    assert other.exit_code == 2, other.output
    assert "optim.learning_rate" in other.output and "other settings" in other.output
    assert folder_state(run) == before
    # More steps (a schedule setting) continue the same run, with one contiguous metrics file.
    longer = train_cli(dataset, run, "--set", "train.steps=4", "--resume")
    assert longer.exit_code == 0, longer.output
    assert [int(r["step"]) for r in metrics(run)] == [1, 2, 3, 4]
    state = json.loads((run / "checkpoints" / "step-0000004" / "state.json").read_text())
    assert len(state["config_sha256"]) == 64


def test_resume_and_overwrite_together_are_refused(dataset, tmp_path):
    result = train_cli(dataset, tmp_path / "run", "--resume", "--overwrite")
    assert result.exit_code == 2 and "contradict" in result.output


def test_the_lora_records_both_guidance_values(dataset, tmp_path):
    from layercomposer.lora_metadata import describe_lora_file

    trainer = Trainer(
        config_for(dataset, tmp_path / "run", "train.steps=1", "train.sample_guidance=3.0")
    )
    info = describe_lora_file(trainer.run())
    assert info.lc["guidance"] == 1.0 and info.lc["sample_guidance"] == 3.0
    assert info.lc["config_sha256"] == trainer.fingerprint
    assert info.lc["conditioning"] == "layered"  # what --mode auto reads


# --- several dataset folders ------------------------------------------------------------------


def split_dataset(source, parts):
    """Copy each scene of `source` into the part that names it: {folder: [scene names]}."""
    index = load_index(source)
    for folder, names in parts.items():
        for name in names:
            shutil.copytree(source / name, folder / name)
        scenes = tuple(s for s in index.scenes if s.name in names)
        write_index(type(index)(folder, index.resolution, scenes))


def test_training_on_two_folders_equals_training_on_the_merged_one(tmp_path):
    merged = tmp_path / "merged"
    make_dataset(merged, scenes=3, images=2)
    first, second = tmp_path / "part0", tmp_path / "part1"
    split_dataset(merged, {first: ["scene1"], second: ["scene0", "scene2"]})
    sets = ("train.steps=3",)
    one = Trainer(config_for(merged, tmp_path / "one", *sets))
    one.run()
    both = Trainer(config_for(f"[{first},{second}]", tmp_path / "both", *sets))
    both.run()
    assert [s.name for s in both.index.scenes] == ["scene0", "scene1", "scene2"]
    assert [r["loss"] for r in metrics(tmp_path / "both")] == [
        r["loss"] for r in metrics(tmp_path / "one")
    ]
    a, b = load_file(tmp_path / "one" / LORA_FILE), load_file(tmp_path / "both" / LORA_FILE)
    assert all(torch.equal(a[n], b[n]) for n in a)


def test_datasets_of_different_resolutions_are_refused(tmp_path):
    make_dataset(tmp_path / "a", resolution=64, scenes=1, images=2)
    make_dataset(tmp_path / "b", resolution=80, scenes=1, images=2)
    with pytest.raises(LcError, match="different resolutions"):
        load_datasets([str(tmp_path / "a"), str(tmp_path / "b")])


# --- a crafted index.json ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "damage, said",
    [
        (lambda d: d.pop("scenes"), "[scenes] Field required"),
        (lambda d: d.update(resolution=100_000), "[resolution]"),
        (lambda d: d.update(scenes={"a": 1}), "[scenes]"),
        (lambda d: d["scenes"][0]["images"][0].update(file="/etc/passwd"), "inside the dataset"),
        (
            lambda d: d["scenes"][0]["images"][0]["layers"][0].update(file="../../outside.png"),
            "[scenes -> 0 -> images -> 0 -> layers -> 0 -> file]",
        ),
        (lambda d: d["scenes"][0]["images"][0].update(seconds=float("nan")), "finite"),
        (
            lambda d: d["scenes"][0]["images"][0]["layers"][0].update(box=[0, 0]),
            "box -> 3] Field required",
        ),
    ],
)
def test_a_crafted_index_is_refused_naming_the_file(tmp_path, damage, said):
    make_dataset(tmp_path / "data", resolution=64, scenes=1, images=2)
    path = tmp_path / "data" / "index.json"
    data = json.loads(path.read_text())
    damage(data)
    path.write_text(json.dumps(data))
    result = train_cli(tmp_path / "data", tmp_path / "run", "--set", "train.steps=1")
    assert result.exit_code == 2, result.output
    assert str(path) in result.output and said in result.output.replace("\n", " ")
    assert "Traceback" not in result.output and not (tmp_path / "run").exists()
