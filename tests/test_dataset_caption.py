"""`lc dataset caption` on a tiny random-weight Qwen2.5-VL: one caption per image, sidecars kept,
the captioner recorded, resumed after a SIGKILL, missing weights and bad inputs reported."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from train_data import make_dataset
from typer.testing import CliRunner

import layercomposer.train.caption as caption_module
from layercomposer.captioner import CaptionerInfo, Generated, load_captioner
from layercomposer.cli.main import app
from layercomposer.limits import MAX_CAPTION_BYTES
from layercomposer.tiny_qwen import tiny_qwen_vl_captioner
from layercomposer.train.caption import (
    DEFAULT_PROMPT,
    JOURNAL_NAME,
    KILL_AFTER_ENV,
    CaptionOptions,
    caption_dataset,
    captioner_record,
    clean_caption,
)
from layercomposer.train.dataset import load_index

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]
TINY = ("--model", "builtin:tiny", "--device", "cpu", "--max-new-tokens", "12")
SIDECAR = "scene0/img1.png"


def lc(*args):
    return runner.invoke(app, [str(a) for a in args])


def captions(root: Path) -> dict[str, tuple[str, str]]:
    """file -> (caption, caption_source), as `load_index` reads them."""
    index = load_index(root)
    return {i.file: (i.caption, i.caption_source) for s in index.scenes for i in s.images}


@pytest.fixture
def data(tmp_path) -> Path:
    """Six images with lc's default caption, one of them with a sidecar caption instead."""
    root = tmp_path / "data"
    make_dataset(root, scenes=2, images=3)
    index = json.loads((root / "index.json").read_text())
    for scene in index["scenes"]:
        for image in scene["images"]:
            image["caption"] = "a photo of 2 people"
            if image["file"] == SIDECAR:
                image.update(caption="two astronauts in a garden", caption_source="sidecar")
    (root / "index.json").write_text(json.dumps(index))
    return root


def test_every_image_gets_its_own_caption_and_sidecars_are_kept(data):
    done = lc("dataset", "caption", data, *TINY, "--batch-size", "4", "--json")
    assert done.exit_code == 0, done.output
    after = captions(data)
    models = {file: text for file, (text, source) in after.items() if file != SIDECAR}
    assert after[SIDECAR] == ("two astronauts in a garden", "sidecar")
    assert {source for file, (_, source) in after.items() if file != SIDECAR} == {
        "model:builtin:tiny"
    }
    assert "a photo of 2 people" not in models.values()
    for text in models.values():  # one clean line each
        assert text and text == text.strip() and "\n" not in text
        assert len(text.encode()) <= MAX_CAPTION_BYTES
    # Each image's own caption, not a neighbour's: the same as captioning it alone.
    captioner = load_captioner("builtin:tiny", device="cpu")
    for file, text in models.items():
        with Image.open(data / file) as image:
            (alone,) = captioner.caption([image.convert("RGB")], DEFAULT_PROMPT, 12)
        assert text == clean_caption(alone.text, alone.finished), file
    assert len(set(models.values())) > 1  # the tiny captioner's answer depends on the image

    summary = json.loads(done.stdout)
    assert sorted(summary["captioned"]) == sorted(models) and summary["sidecar_kept"] == [SIDECAR]
    index = json.loads((data / "index.json").read_text())
    (recorded,) = index["captioners"]
    assert recorded["id"] == "builtin:tiny" and recorded["random_weights"] is True
    assert recorded["prompt"] == DEFAULT_PROMPT and recorded["max_new_tokens"] == 12
    assert recorded["lc_version"] and recorded["date"] and recorded["images"] == 5
    assert not (data / JOURNAL_NAME).exists()

    # Again: a model captioned them all already; nothing changes.
    again = lc("dataset", "caption", data, *TINY)
    assert again.exit_code == 0 and "nothing to caption" in again.output
    assert captions(data) == after

    # --overwrite: every image, the sidecar's too, with the new prompt.
    prompt = "Describe the people."
    over = lc("dataset", "caption", data, *TINY, "--overwrite", "--prompt", prompt)
    assert over.exit_code == 0, over.output
    rewritten = captions(data)
    assert {source for _, source in rewritten.values()} == {"model:builtin:tiny"}
    assert rewritten[SIDECAR][0] != "two astronauts in a garden"
    (recorded,) = json.loads((data / "index.json").read_text())["captioners"]
    assert recorded["prompt"] == prompt and recorded["images"] == 6


def test_a_killed_run_resumes_without_redoing_finished_images(data):
    before = captions(data)
    command = [sys.executable, "-m", "layercomposer", "dataset", "caption", str(data), *TINY]
    env = {**os.environ, KILL_AFTER_ENV: "2", "HF_HUB_OFFLINE": "1"}
    killed = subprocess.run(
        [*command, "--batch-size", "2"], env=env, capture_output=True, text=True, timeout=300
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    journal = data / JOURNAL_NAME
    lines = [json.loads(line) for line in journal.read_text().splitlines()]
    finished = {line["file"]: line["caption"] for line in lines}
    assert len(finished) == 2
    assert captions(data) == before  # index.json is only rewritten at the end
    with open(journal, "a") as handle:  # a line cut short by the kill
        handle.write('{"file": "scene1/img2.png", "sha256": "ab')

    done = lc("dataset", "caption", data, *TINY, "--batch-size", "2", "--json")
    assert done.exit_code == 0, done.output
    summary = json.loads(done.stdout)
    to_caption = {file for file, (_, source) in before.items() if source == "default"}
    assert sorted(summary["resumed"]) == sorted(finished)
    assert sorted(summary["captioned"]) == sorted(to_caption - set(finished))
    after = captions(data)
    for file, caption in finished.items():
        assert after[file] == (caption, "model:builtin:tiny")
    assert {after[file][1] for file in to_caption} == {"model:builtin:tiny"}
    assert not journal.exists()


def pixels_key(image: Image.Image) -> str:
    return hashlib.sha256(image.convert("RGB").tobytes()).hexdigest()


class FakeCaptioner:
    """Answers from a table (by image) and remembers which images it was asked about."""

    def __init__(self, answers: dict[str, str] | None = None, model: str = "fake/captioner"):
        self.info = CaptionerInfo(model, "hub", "0" * 40, None, None, False)
        self.answers = answers or {}
        self.seen: list[str] = []

    def caption(self, images, prompt, max_new_tokens):
        keys = [pixels_key(image) for image in images]
        self.seen += keys
        return [Generated(self.answers.get(k, f"people {k[:8]}."), True) for k in keys]


def image_keys(root: Path) -> dict[str, str]:
    """file -> pixels_key of each image of the dataset."""
    keys = {}
    for file in captions(root):
        with Image.open(root / file) as image:
            keys[file] = pixels_key(image)
    return keys


def test_an_empty_answer_keeps_the_old_caption_and_is_reported(data, monkeypatch):
    keys = image_keys(data)
    fake = FakeCaptioner({keys["scene1/img0.png"]: "  \n\x00 "})
    monkeypatch.setattr(caption_module, "_load", lambda options: fake)
    done = lc("dataset", "caption", data, "--model", "fake/captioner")
    assert done.exit_code == 0, done.output
    assert "1 images got an empty caption" in done.output and "scene1/img0.png" in done.output
    after = captions(data)
    assert after["scene1/img0.png"] == ("a photo of 2 people", "default")
    assert after["scene0/img0.png"] == (
        f"people {keys['scene0/img0.png'][:8]}.",
        "model:fake/captioner",
    )


def test_the_journal_is_reused_only_for_the_same_captioner_and_unchanged_images(data):
    keys = image_keys(data)
    fake = FakeCaptioner()
    options = CaptionOptions(model="fake/captioner")
    key = captioner_record(fake.info, options)["key"]
    sha = {f: hashlib.sha256((data / f).read_bytes()).hexdigest() for f in keys}
    lines = [
        {
            "file": "scene0/img0.png",
            "sha256": sha["scene0/img0.png"],
            "key": key,
            "caption": "kept",
        },
        {
            "file": "scene0/img2.png",
            "sha256": sha["scene0/img2.png"],
            "key": "other",
            "caption": "x",
        },
        {"file": "scene1/img0.png", "sha256": "0" * 64, "key": key, "caption": "old image"},
    ]
    (data / JOURNAL_NAME).write_text("".join(json.dumps(line) + "\n" for line in lines))
    summary = caption_dataset(data, options, load=lambda _: fake)
    assert summary.resumed == ["scene0/img0.png"]
    defaults = {f for f, (_, source) in captions(data).items() if f != SIDECAR}
    assert sorted(fake.seen) == sorted(keys[f] for f in defaults - {"scene0/img0.png"})
    after = captions(data)
    assert after["scene0/img0.png"] == ("kept", "model:fake/captioner")
    assert after["scene1/img0.png"][0] != "old image"


def test_an_index_from_before_caption_sources_keeps_its_sidecar_captions(data):
    index = json.loads((data / "index.json").read_text())
    for scene in index["scenes"]:
        for image in scene["images"]:
            del image["caption_source"]  # as lc wrote index.json before recording it
    (data / "index.json").write_text(json.dumps(index))
    summary = caption_dataset(data, CaptionOptions(), load=lambda _: FakeCaptioner())
    assert summary.sidecar_kept == [SIDECAR] and len(summary.captioned) == 5
    assert captions(data)[SIDECAR] == ("two astronauts in a garden", "sidecar")


def test_clean_caption_makes_one_bounded_line():
    assert clean_caption('  "Two women\n\tstand\x00 in a park."  ') == "Two women stand in a park."
    cut = "A man rides a bike. A woman waves at hi"
    assert clean_caption(cut, finished=False) == "A man rides a bike."
    assert clean_caption(cut, finished=True) == cut
    assert clean_caption("no sentence end here", finished=False) == "no sentence end here"
    long = "é" * 40_000 + " end"  # 80,004 bytes of UTF-8
    bounded = clean_caption(long)
    assert len(bounded.encode()) <= MAX_CAPTION_BYTES and set(bounded) == {"é"}
    assert clean_caption("\x00\u200b \n") == ""


def save_hub_layout(folder: Path) -> None:
    """The tiny captioner saved as the Qwen2.5-VL repos on the hub are laid out: legacy
    preprocessor_config.json and chat_template.json, a Qwen2_5_VLProcessor in the config."""
    model, processor = tiny_qwen_vl_captioner()
    model.save_pretrained(folder)
    processor.tokenizer.save_pretrained(folder)
    processor.image_processor.save_pretrained(folder)
    config = json.loads((folder / "preprocessor_config.json").read_text())
    config.update(
        image_processor_type="Qwen2VLImageProcessor", processor_class="Qwen2_5_VLProcessor"
    )
    (folder / "preprocessor_config.json").write_text(json.dumps(config))
    (folder / "chat_template.json").write_text(
        json.dumps({"chat_template": processor.chat_template})
    )


def empty_hub_cache(monkeypatch, folder: Path) -> None:
    """Point huggingface_hub, offline, at `folder` as its cache (its constants are read at import)."""
    import huggingface_hub.constants

    folder.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(folder))


def test_real_weights_load_from_a_folder_and_from_the_hub_cache(tmp_path, monkeypatch):
    local = tmp_path / "Qwen2.5-VL-tiny"
    save_hub_layout(local)
    image = Image.new("RGB", (64, 48), (200, 40, 30))
    reference = load_captioner("builtin:tiny", device="cpu").caption([image], "Who?", 8)
    from_folder = load_captioner(str(local), device="cpu")
    assert from_folder.info.source == "local" and from_folder.caption([image], "Who?", 8) == (
        reference
    )

    cache = tmp_path / "cache"
    commit = "1" * 40
    repo = cache / "models--lc-test--tiny-captioner"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(local, repo / "snapshots" / commit)
    empty_hub_cache(monkeypatch, cache)
    from_hub = load_captioner("lc-test/tiny-captioner", device="cpu")
    assert from_hub.info.source == "hub" and from_hub.info.revision == commit
    assert from_hub.caption([image], "Who?", 8) == reference


def test_missing_weights_and_bad_inputs_are_clear_errors(data, tmp_path, monkeypatch):
    empty_hub_cache(monkeypatch, tmp_path / "empty-cache")
    missing = lc("dataset", "caption", data, "--device", "cpu")  # the default model
    assert missing.exit_code == 1, missing.output
    assert "cannot load Qwen/Qwen2.5-VL-7B-Instruct" in missing.output
    assert "not in the Hugging Face cache (HF_HUB_OFFLINE is set)" in missing.output
    assert "hf download Qwen/Qwen2.5-VL-7B-Instruct" in missing.output
    assert "Traceback" not in missing.output
    assert captions(data)["scene0/img0.png"][1] == "default"  # nothing written

    nowhere = lc("dataset", "caption", data, "--model", tmp_path / "nowhere", "--device", "cpu")
    assert nowhere.exit_code == 1 and "does not exist" in nowhere.output
    other = tmp_path / "llama"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "llama"}))
    wrong = lc("dataset", "caption", data, "--model", other, "--device", "cpu")
    assert wrong.exit_code == 1 and "'llama' model" in wrong.output, wrong.output

    no_dataset = lc("dataset", "caption", tmp_path / "no-such-dataset", *TINY)
    assert no_dataset.exit_code == 1 and "no dataset at" in no_dataset.output
    assert "lc dataset build" in no_dataset.output and "Traceback" not in no_dataset.output
    empty_prompt = lc("dataset", "caption", data, *TINY, "--prompt", " ")
    assert empty_prompt.exit_code == 2 and "--prompt" in empty_prompt.output
    bad_device = lc("dataset", "caption", data, *TINY[:2], "--device", "tpu:9")
    assert bad_device.exit_code == 2 and "Traceback" not in bad_device.output
