"""`lc dataset caption`: one caption per dataset image, written by a vision-language model.

    DATASET/captions.jsonl   one line per finished image while a run is under way

A run captions the images whose caption is lc's default ("a photo of N people"), or every image
with `overwrite`. Each finished caption is appended to `captions.jsonl` and flushed to disk
before the next batch starts, so a killed run loses at most the batch in flight; the next run
with the same captioner (model, revision, prompt, token budget) reads the file back and
captions only the rest. At the end `index.json` is rewritten atomically with the new captions
and a record of the captioner, and the journal is removed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .. import __version__
from ..errors import LcError, UsageError
from ..files import write_bytes_atomic
from ..limits import (
    MAX_CAPTION_BYTES,
    MAX_IMAGE_BYTES,
    MAX_JSON_BYTES,
    MAX_JSON_LINES_BYTES,
    TooLargeError,
    open_image_bounded,
    read_bytes_bounded,
    read_json_bounded,
    read_json_lines_bounded,
    size_text,
)
from ..models import DEFAULT_CAPTIONER
from .dataset import INDEX_NAME, load_index

if TYPE_CHECKING:  # transformers is imported when the captioner is loaded
    from PIL import Image

    from ..captioner import CaptionerInfo, Generated

JOURNAL_NAME = "captions.jsonl"
DEFAULT_PROMPT = (
    "Write a caption for this photo in one or two sentences, to be used as a prompt for an image "
    "generator. Say who the people are (how many, their apparent age, clothing and hair), what "
    "each of them is doing, and the setting (place, light, time of day). Do not name anyone. "
    "Answer with the caption only."
)
DEFAULT_MAX_NEW_TOKENS = 96  # two sentences are ~40-60 tokens; FLUX's T5 reads 512
DEFAULT_BATCH_SIZE = 16  # Qwen2.5-VL-7B in bfloat16: ~17 GiB at 512 px, ~20 GiB at 1024 px
MAX_PROMPT_BYTES = 4096
SENTENCE_ENDS = ".!?"
DEFAULT_CAPTION = re.compile(r"a photo of \d+ (person|people)")  # what `lc dataset build` writes
# Tests only: SIGKILL this process once this many captions are on disk (a deterministic crash).
KILL_AFTER_ENV = "LC_TEST_CAPTION_KILL_AFTER"


class CaptionModel(Protocol):
    """What the loop needs of a captioner (`layercomposer.captioner.Captioner`, or a test's)."""

    info: CaptionerInfo

    def caption(
        self, images: list[Image.Image], prompt: str, max_new_tokens: int
    ) -> list[Generated]: ...


@dataclass(frozen=True)
class CaptionOptions:
    model: str = DEFAULT_CAPTIONER
    revision: str | None = None
    prompt: str = DEFAULT_PROMPT
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    batch_size: int = DEFAULT_BATCH_SIZE
    overwrite: bool = False  # recaption every image, sidecar captions included
    device: str = "auto"
    dtype: str = "auto"


@dataclass
class CaptionSummary:
    """What a run did, image by image (dataset-relative files)."""

    captioned: list[str] = field(default_factory=list)  # captioned by this run
    resumed: list[str] = field(default_factory=list)  # finished by an interrupted run
    empty: list[str] = field(default_factory=list)  # the model said nothing: caption kept
    sidecar_kept: list[str] = field(default_factory=list)  # `.txt` captions (no --overwrite)
    already: list[str] = field(default_factory=list)  # a model had captioned them before
    cut_off: int = 0  # answers that ran into max_new_tokens
    seconds: float = 0.0  # captioning only, not loading
    captioner: dict[str, Any] | None = None  # as recorded in index.json; None: nothing to do

    def to_dict(self) -> dict[str, Any]:
        return {
            "captioned": self.captioned,
            "resumed": self.resumed,
            "empty": self.empty,
            "sidecar_kept": self.sidecar_kept,
            "already_captioned": self.already,
            "cut_off": self.cut_off,
            "seconds": round(self.seconds, 3),
            "captioner": self.captioner,
        }


def caption_dataset(
    root: str | Path,
    options: CaptionOptions,
    load: Callable[[CaptionOptions], CaptionModel] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> CaptionSummary:
    """Caption the dataset at `root` in place; returns what was done.

    `load` builds the captioner (by default `load_captioner` with the options' model, revision,
    device and dtype); it is called only when some image needs a caption. `on_progress(done,
    total)` is called after each batch, counting images taken from the journal as done.
    """
    root = Path(root)
    check_options(options)
    load_index(root)  # the one message for a folder that is not a dataset
    data = _read_index(root)
    summary = CaptionSummary()
    pending: list[str] = []
    for image in _images(data):
        source = caption_source(image)
        if options.overwrite or source == "default":
            pending.append(image["file"])
        elif source == "sidecar":
            summary.sidecar_kept.append(image["file"])
        else:
            summary.already.append(image["file"])
    if not pending:
        return summary

    captioner = (load or _load)(options)
    record = captioner_record(captioner.info, options)
    key = record["key"]
    journal = root / JOURNAL_NAME
    finished = _resume(journal, key, root, set(pending))
    results: dict[str, str | None] = {}  # file -> caption (None: the model said nothing)
    for file, entry in finished.items():
        results[file] = entry["caption"]
        summary.resumed.append(file)
    todo = [file for file in pending if file not in finished]
    total = len(pending)
    if on_progress:
        on_progress(total - len(todo), total)

    kill_after = os.environ.get(KILL_AFTER_ENV, "")
    kill_after = int(kill_after) if kill_after.isdigit() else 0
    started = time.perf_counter()
    for start in range(0, len(todo), options.batch_size):
        batch = todo[start : start + options.batch_size]
        images, hashes = zip(*(_read_image(root, file) for file in batch), strict=True)
        answers = captioner.caption(list(images), options.prompt, options.max_new_tokens)
        if len(answers) != len(batch):
            raise LcError(f"the captioner returned {len(answers)} captions for {len(batch)} images")
        lines = []
        for file, digest, answer in zip(batch, hashes, answers, strict=True):
            caption = clean_caption(answer.text, finished=answer.finished) or None
            summary.cut_off += not answer.finished
            results[file] = caption
            summary.captioned.append(file)
            lines.append({"file": file, "sha256": digest, "key": key, "caption": caption})
        _append(journal, lines)
        if on_progress:
            on_progress(total - len(todo) + start + len(batch), total)
        if kill_after and len(summary.captioned) >= kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
    summary.seconds = time.perf_counter() - started

    summary.empty = [file for file in pending if results[file] is None]
    summary.captioner = {**record, "images": sum(c is not None for c in results.values())}
    _write_captions(root, data, results, summary.captioner)
    journal.unlink(missing_ok=True)
    return summary


def check_options(options: CaptionOptions) -> None:
    """UsageError for options no run could use."""
    prompt = options.prompt.strip()
    if not prompt:
        raise UsageError("--prompt is empty: it is what the captioner is asked about each image")
    if len(prompt.encode()) > MAX_PROMPT_BYTES:
        raise UsageError(f"--prompt is over {size_text(MAX_PROMPT_BYTES)}")
    if options.batch_size < 1:
        raise UsageError(f"--batch-size {options.batch_size}: at least 1")
    if not 1 <= options.max_new_tokens <= 1024:
        raise UsageError(f"--max-new-tokens {options.max_new_tokens}: between 1 and 1024")


def caption_source(image: dict[str, Any]) -> str:
    """Who wrote an index image's caption. An index written before lc recorded it: the
    builder's default caption is "default", any other caption came from a sidecar."""
    if "caption_source" in image:
        return str(image["caption_source"])
    return "default" if DEFAULT_CAPTION.fullmatch(str(image.get("caption", ""))) else "sidecar"


def captioner_record(info: CaptionerInfo, options: CaptionOptions) -> dict[str, Any]:
    """How the captions were made, as index.json records it; `key` names the combination
    (weights, prompt, token budget) that a journal line must match to be reused."""
    what = [info.id, info.revision, info.config_sha256, options.prompt, options.max_new_tokens]
    key = hashlib.sha256(json.dumps(what).encode()).hexdigest()[:16]
    return {
        "key": key,
        "caption_source": f"model:{info.id}",
        **info.to_dict(),
        "prompt": options.prompt,
        "max_new_tokens": options.max_new_tokens,
        "overwrite": options.overwrite,
        "lc_version": __version__,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def clean_caption(text: str, finished: bool = True, max_bytes: int = MAX_CAPTION_BYTES) -> str:
    """The caption in a model's answer: one line, no control characters, no wrapping quotes,
    at most `max_bytes` of UTF-8; an answer cut off mid-sentence ends at its last full
    sentence (when it has one). Empty when nothing is left."""
    kept = []
    for char in text:
        if char.isspace():
            kept.append(" ")
        elif not unicodedata.category(char).startswith("C"):  # control, format, unassigned
            kept.append(char)
    caption = " ".join("".join(kept).split())
    if len(caption) >= 2 and caption[0] == caption[-1] and caption[0] in "\"'`":
        caption = caption[1:-1].strip()
    if not finished:
        end = max(caption.rfind(mark) for mark in SENTENCE_ENDS)
        if end > 0:
            caption = caption[: end + 1]
    data = caption.encode()
    if len(data) > max_bytes:
        caption = data[:max_bytes].decode(errors="ignore")
        caption = caption[: caption.rfind(" ")] if " " in caption else caption
    return caption.strip()


def _load(options: CaptionOptions) -> CaptionModel:
    from ..captioner import load_captioner

    return load_captioner(options.model, options.revision, options.device, options.dtype)


def _read_index(root: Path) -> dict[str, Any]:
    """index.json as written, so keys this module does not know are kept when it is rewritten."""
    return read_json_bounded(root / INDEX_NAME)


def _images(data: dict[str, Any]):
    for scene in data["scenes"]:
        yield from scene["images"]


def _read_image(root: Path, file: str) -> tuple[Image.Image, str]:
    """A dataset image and the SHA-256 of its file."""
    data = read_bytes_bounded(root / file, MAX_IMAGE_BYTES, "image")
    image = open_image_bounded(data).convert("RGB")
    return image, hashlib.sha256(data).hexdigest()


def _resume(journal: Path, key: str, root: Path, pending: set[str]) -> dict[str, dict]:
    """The journal's captions that this run can reuse: same captioner `key`, an image still to
    caption whose file has not changed since. Others are dropped from the journal."""
    if not journal.is_file():
        return {}
    try:
        lines = read_json_lines_bounded(journal)
    except TooLargeError:
        raise LcError(
            f"{journal} is over lc's limit of {size_text(MAX_JSON_LINES_BYTES)}",
            hint="delete it to start the captions over",
        ) from None
    reusable: dict[str, dict] = {}
    for line in lines:
        ok = isinstance(line, dict) and line.get("key") == key and line.get("file") in pending
        if not ok or not isinstance(line.get("caption", 0), (str, type(None))):
            continue
        if line["caption"] is not None:  # bounded like a caption the model just wrote
            line["caption"] = clean_caption(line["caption"]) or None
        reusable[line["file"]] = line
    for file, line in list(reusable.items()):
        path = root / file
        if not path.is_file() or _sha256(path) != line.get("sha256"):
            del reusable[file]  # the image was rebuilt since: caption it again
    if len(reusable) != len(lines):  # only reusable lines stay, so the journal stays small
        text = "".join(json.dumps(line) + "\n" for line in reusable.values())
        write_bytes_atomic(journal, text.encode())
    return reusable


def _sha256(path: Path) -> str:
    return hashlib.sha256(read_bytes_bounded(path, MAX_IMAGE_BYTES, "image")).hexdigest()


def _append(journal: Path, lines: list[dict]) -> None:
    """Append `lines`, on disk before this returns: a kill loses at most a line being written,
    which the reader skips."""
    with open(journal, "a", encoding="utf-8") as handle:
        handle.write("".join(json.dumps(line) + "\n" for line in lines))
        handle.flush()
        os.fsync(handle.fileno())


def _write_captions(
    root: Path, data: dict[str, Any], results: dict[str, str | None], record: dict[str, Any]
) -> None:
    """Rewrite index.json with the new captions and the captioner, atomically."""
    untouched = set()  # the caption sources of the images this run leaves as they were
    for image in _images(data):
        caption = results.get(image["file"])
        if caption is None:  # an index from before caption sources gets them written down
            untouched.add(image.setdefault("caption_source", caption_source(image)))
        else:
            image["caption"] = caption
            image["caption_source"] = record["caption_source"]
    # One entry per captioner whose captions are in the dataset, the newest last.
    earlier = [
        entry
        for entry in data.get("captioners", [])
        if isinstance(entry, dict)
        and entry.get("caption_source") in untouched
        and entry.get("key") != record["key"]
    ]
    data["captioners"] = [*earlier, record] if record["images"] else earlier
    payload = (json.dumps(data, indent=2) + "\n").encode()
    if len(payload) > MAX_JSON_BYTES:
        raise LcError(
            f"{root / INDEX_NAME} with these captions would be {size_text(len(payload))}, over "
            f"lc's limit of {size_text(MAX_JSON_BYTES)} for a JSON file",
            hint="lower --max-new-tokens, or split the dataset",
        )
    write_bytes_atomic(root / INDEX_NAME, payload)
