"""Hostile inputs, round two (issue 18): terminal escapes in echoed text, files that are not
regular files, crafted JSON in manifests and LoRA headers, decoder bombs under the header
bounds. Each is refused (exit 2, the file named) or shown harmlessly, never a hang."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import threading
import zlib

import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import disc_rgba
from layercomposer.cli.main import app
from layercomposer.errors import InputError, printable

runner = CliRunner()

# Clears the screen, then retitles the terminal window (OSC 0 ... BEL).
ESCAPES = "\x1b[2J\x1b]0;title\x07"
SHOWN = "\\x1b[2J\\x1b]0;title\\x07"  # what a person should read instead


def lc(*args):
    # a wide terminal, so that a table cell is not wrapped inside what a test looks for
    return runner.invoke(app, [str(arg) for arg in args], env={"COLUMNS": "400"})


# --- class 7: control characters in echoed text are shown, not sent -----------------------------


def test_printable_escapes_controls_and_keeps_unicode():
    assert printable(ESCAPES) == SHOWN
    assert printable("\r\b\x7f\x9b\u202e\x00") == "\\r\\x08\\x7f\\x9b\\u202e\\x00"
    assert printable("Zoë 日本 🙂\tline\nnext [red]") == "Zoë 日本 🙂\tline\nnext [red]"


def test_validate_shows_escapes_in_an_image_path_instead_of_sending_them(make_canvas):
    canvas = make_canvas(
        {
            "prompt": "p",
            "size": [64, 64],
            "layers": [{"name": "a", "image": f"face{ESCAPES}.png", "position": [32, 32]}],
        }
    )
    result = lc("validate", canvas)
    assert result.exit_code == 2
    assert "\x1b" not in result.output and "\x07" not in result.output
    assert f"face{SHOWN}.png" in result.output


def test_validate_shows_escapes_in_the_canvas_path_itself(tmp_path):
    result = lc("validate", tmp_path / f"scene{ESCAPES}.yaml")
    assert result.exit_code == 2
    assert "\x1b" not in result.output
    assert f"scene{SHOWN}.yaml" in result.output


def _lora_with_metadata(path, metadata):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    tensors = {
        "transformer.a.lora_A.weight": torch.zeros(4, 8),
        "transformer.a.lora_B.weight": torch.zeros(8, 4),
    }
    save_file(tensors, path, metadata=metadata)
    return path


def test_lora_info_shows_escapes_in_metadata_and_keeps_them_in_json(tmp_path):
    metadata = {"lc.base_model": f"evil{ESCAPES}", f"note{ESCAPES}": f"hi{ESCAPES}"}
    lora = _lora_with_metadata(tmp_path / f"l{ESCAPES}.safetensors", metadata)
    shown = lc("lora", "info", lora)
    assert shown.exit_code == 0, shown.output
    assert "\x1b" not in shown.output and "\x07" not in shown.output
    assert f"evil{SHOWN}" in shown.output and f"note{SHOWN}" in shown.output

    as_json = lc("lora", "info", lora, "--json")
    assert as_json.exit_code == 0
    assert "\x1b" not in as_json.output  # JSON escapes it as \u001b
    info = json.loads(as_json.output)
    assert info["lc"]["base_model"] == f"evil{ESCAPES}"
    assert info["other_metadata"] == {f"note{ESCAPES}": f"hi{ESCAPES}"}
    assert info["path"].endswith(f"l{ESCAPES}.safetensors")


def test_inspect_shows_escapes_in_the_canvas_path_in_its_table(make_canvas):
    spec = {
        "prompt": "p",
        "size": [64, 64],
        "layers": [{"name": "a", "image": "a.png", "position": [32, 32]}],
    }
    canvas = make_canvas(spec, {"a.png": disc_rgba(32)}, name=f"s{ESCAPES}.yaml")
    result = lc("inspect", canvas)
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output and f"s{SHOWN}.yaml" in result.output


# --- class 2: a FIFO, socket or device where a file is expected is refused unread ---------------


def lc_not_blocking(fifos, *args, seconds: float = 20.0):
    """`lc ARGS` in a thread; a test fails, instead of hanging, if lc waits on one of `fifos`:
    they are then opened for writing, which lets the blocked reader go on, and closed."""
    outcome = []
    worker = threading.Thread(target=lambda: outcome.append(lc(*args)), daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        for fifo in fifos:
            with contextlib.suppress(OSError):  # no reader has it open
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        worker.join(10)
        pytest.fail(f"lc {' '.join(map(str, args))} waited on a FIFO")
    return outcome[0]


def _fifo(path):
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("role", ["layer", "mask", "background"])
def test_validate_refuses_a_fifo_named_as_a_canvas_image(make_canvas, tmp_path, role):
    layer = {"name": "a", "image": "a.png", "position": [32, 32]}
    spec = {"prompt": "p", "size": [64, 64], "layers": [layer]}
    images = {"a.png": disc_rgba(32)}
    if role == "layer":
        layer["image"] = "fifo.png"
    elif role == "mask":
        layer["mask"] = "fifo.png"
    else:
        spec["background"] = {"image": "fifo.png"}
    canvas = make_canvas(spec, images)
    fifo = _fifo(tmp_path / "fifo.png")
    result = lc_not_blocking([fifo], "validate", canvas)
    assert result.exit_code == 2, result.output
    assert f"{fifo} is a FIFO (named pipe), not a regular file" in result.output


def test_a_canvas_given_as_a_pipe_still_reads_but_its_images_must_be_files(tmp_path):
    # `lc validate <(...)`: the canvas file is /dev/fd/N, a pipe whose writer is the shell.
    Image.fromarray(disc_rgba(32)).save(tmp_path / "a.png")
    fifo = _fifo(tmp_path / "fifo.png")

    def piped(image) -> str:
        read, write = os.pipe()
        text = f"prompt: p\nsize: [64, 64]\nlayers:\n  - {{name: a, image: {image}, position: [32, 32]}}\n"
        os.write(write, text.encode())
        os.close(write)
        return f"/dev/fd/{read}"

    ok = lc_not_blocking([], "validate", piped(tmp_path / "a.png"), "--allow-outside")
    assert ok.exit_code == 0, ok.output
    refused = lc_not_blocking([fifo], "validate", piped(fifo), "--allow-outside")
    assert refused.exit_code == 2 and "not a regular file" in refused.output


def test_lora_info_and_render_refuse_a_fifo_lora(tmp_path, make_canvas):
    fifo = _fifo(tmp_path / "fifo.safetensors")
    info = lc_not_blocking([fifo], "lora", "info", fifo)
    assert info.exit_code == 2, info.output
    assert f"{fifo} is a FIFO (named pipe), not a regular file" in info.output

    canvas = make_canvas(
        {
            "prompt": "p",
            "size": [64, 64],
            "layers": [{"name": "a", "image": "a.png", "position": [32, 32]}],
        },
        {"a.png": disc_rgba(32)},
    )
    render = lc_not_blocking(
        [fifo], "render", canvas, "--model", "builtin:tiny", "--lora", fifo, "-o", tmp_path / "o"
    )
    assert render.exit_code == 2, render.output
    assert "not a regular file" in render.output and "internal error" not in render.output


def test_render_from_manifest_refuses_a_fifo_manifest(tmp_path):
    fifo = _fifo(tmp_path / "4.json")
    result = lc_not_blocking([fifo], "render", "--from-manifest", fifo, "-o", tmp_path / "o")
    assert result.exit_code == 2, result.output
    assert f"{fifo} is a FIFO (named pipe), not a regular file" in result.output


def test_autolayout_refuses_a_fifo_subject_photo(tmp_path):
    fifo = _fifo(tmp_path / "alice.jpg")
    result = lc_not_blocking(
        [fifo], "autolayout", "--prompt", "p", "--subject", fifo, "-o", tmp_path / "scene.yaml"
    )
    assert result.exit_code == 2, result.output
    assert "not a regular file" in result.output


def test_a_dataset_image_that_is_a_fifo_is_refused_unread(tmp_path):
    from layercomposer.limits import UnreadableImageError, read_bytes_bounded
    from layercomposer.train.dataset import DatasetIndex

    (tmp_path / "scene").mkdir()
    fifo = _fifo(tmp_path / "scene" / "0.png")
    index = DatasetIndex(tmp_path, 64, ())
    outcome = []

    def read():
        with pytest.raises(UnreadableImageError, match="not a regular file") as refused:
            index.rgba("scene/0.png")
        outcome.append(refused.value.kind)
        with pytest.raises(InputError, match="not a regular file"):
            read_bytes_bounded(fifo, 1024)  # captions, image hashes
        outcome.append("bytes")

    worker = threading.Thread(target=read, daemon=True)
    worker.start()
    worker.join(30)
    if worker.is_alive():
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("reading a dataset image waited on a FIFO")
    assert outcome == ["special", "bytes"]


# --- class 3: a crafted manifest is exit 2 naming the file, never an internal error -------------


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """One small canvas rendered with builtin:tiny at seeds 0 and 1: out/scene/{0,1}.json."""
    root = tmp_path_factory.mktemp("manifests")
    Image.fromarray(disc_rgba(32)).save(root / "a.png")
    (root / "scene.yaml").write_text(
        "prompt: p\nsize: [64, 64]\nsteps: 1\nlayers:\n"
        "  - {name: a, image: a.png, position: [32, 32], lock: true}\n"
    )
    for seed in (0, 1):
        result = lc("render", root / "scene.yaml", "--model", "builtin:tiny", "--seed", seed,
                    "-o", root / "out")  # fmt: skip
        assert result.exit_code == 0, result.output
    return root / "out"


def _damage(manifest: dict, how: str) -> None:
    if how == "no inputs":
        del manifest["inputs"]
    elif how == "canvas not a mapping":
        manifest["inputs"]["canvas"] = "scene.yaml"
    elif how == "unknown speed key":
        manifest["inputs"]["speed"] = {"compile": False, "turbo": True}
    elif how == "resolved canvas invalid":
        manifest["inputs"]["canvas"]["resolved"]["size"] = "big"
    elif how == "seed a string":
        manifest["inputs"]["seed"] = "zero"


DAMAGE = {
    "no inputs": "[inputs] Field required",
    "canvas not a mapping": "[inputs -> canvas]",
    "unknown speed key": "[inputs -> speed -> turbo] Extra inputs are not permitted",
    "resolved canvas invalid": "[inputs -> canvas -> resolved -> size]",
    "seed a string": "[inputs -> seed]",
}


@pytest.mark.parametrize("how", DAMAGE)
def test_render_from_a_damaged_manifest_is_exit_2_naming_the_key(rendered, tmp_path, how):
    manifest = json.loads((rendered / "scene" / "0.json").read_text())
    _damage(manifest, how)
    path = tmp_path / "0.json"
    path.write_text(json.dumps(manifest))
    result = lc("render", "--from-manifest", path, "-o", tmp_path / "again")
    assert result.exit_code == 2, result.output
    assert f"{path} is not a valid lc run manifest" in result.output
    assert DAMAGE[how] in result.output
    assert "internal error" not in result.output


def test_eval_evaluates_the_other_manifests_and_names_the_damaged_one(rendered, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(rendered, out)
    bad = out / "scene" / "1.json"
    manifest = json.loads(bad.read_text())
    _damage(manifest, "canvas not a mapping")
    bad.write_text(json.dumps(manifest))
    result = lc("eval", out, "--metrics", "fidelity", "-o", tmp_path / "ev", "--no-figure")
    assert result.exit_code == 2, result.output
    assert f"{bad} is not a valid lc run manifest" in result.output
    assert "internal error" not in result.output
    with open(tmp_path / "ev" / "results.csv", newline="") as handle:
        evaluated = [(row["canvas"], row["seed"], row["error"]) for row in csv.DictReader(handle)]
    assert evaluated == [("scene", "0", "")]


# --- class 3: LoRA headers the safetensors loader refuses are refused, never an internal error --


def _safetensors(path, header, data: bytes = b"", raw: bytes | None = None):
    text = raw if raw is not None else json.dumps(header).encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text + data)
    return path


def _entry(dtype="F32", shape=(1,), offsets=(0, 4)):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


CRAFTED_HEADERS = {
    # 2^40 x 2^40 float32s claimed in 16 bytes: "rank 1099511627776" before
    "a 2^40 x 2^40 shape in 16 bytes": ({"t.lora_A.weight": _entry("F32", (2**40, 2**40), (0, 16))}, 16),
    "dtype F128": ({"t.lora_A.weight": _entry("F128", (1,), (0, 16))}, 16),
    "a gap before the first tensor": ({"t.lora_A.weight": _entry(offsets=(4, 8))}, 8),
    "two tensors on the same bytes": (
        {"t.lora_A.weight": _entry(), "t.lora_B.weight": _entry()}, 4,
    ),
    "bytes no tensor holds": ({"t.lora_A.weight": _entry()}, 8),
}  # fmt: skip


@pytest.mark.parametrize("case", CRAFTED_HEADERS)
def test_lora_info_refuses_what_the_safetensors_loader_refuses(tmp_path, case):
    safe_open = pytest.importorskip("safetensors").safe_open
    header, data_bytes = CRAFTED_HEADERS[case]
    path = _safetensors(tmp_path / "crafted.safetensors", header, bytes(data_bytes))
    # the reference: the loader itself refuses the file
    with pytest.raises(Exception, match="deserializing header"), safe_open(str(path), "np") as f:
        list(f.keys())
    result = lc("lora", "info", path)
    assert result.exit_code == 2, result.output
    assert str(path) in result.output and "internal error" not in result.output


def test_lora_info_reads_what_the_safetensors_loader_reads(tmp_path):
    safe_open = pytest.importorskip("safetensors").safe_open
    header = {
        "t.lora_A.weight": _entry("F32", (2, 3), (0, 24)),
        "t.lora_B.weight": _entry("F4", (3, 2), (24, 27)),  # 4-bit: 6 of them in 3 bytes
    }
    path = _safetensors(tmp_path / "ok.safetensors", header, bytes(27))
    with safe_open(str(path), "np") as handle:
        assert sorted(handle.keys()) == sorted(header)
    result = lc("lora", "info", path, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["tensors"] == 2


def test_a_lora_header_nested_200000_deep_is_refused_as_input(tmp_path):
    raw = b'{"t.lora_A.weight": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    path = _safetensors(tmp_path / "deep.safetensors", None, raw=raw)
    result = lc("lora", "info", path)
    assert result.exit_code == 2, result.output
    assert f"{path}: the header is nested too deeply" in result.output


def test_lc_metadata_nested_5000_deep_is_shown_as_text_not_an_internal_error(tmp_path):
    deep = "[" * 5000 + "]" * 5000
    lora = _lora_with_metadata(
        tmp_path / "l.safetensors", {"lc.target_modules": deep, "lora_adapter_metadata": deep}
    )
    result = lc("lora", "info", lora, "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["lc"] == {"target_modules": deep}  # undecodable: kept as the text it is
    assert info["adapter"] is None
    shown = lc("lora", "info", lora)
    assert shown.exit_code == 0 and "internal error" not in shown.output


def test_json_deeper_than_the_bound_is_refused_and_the_bound_itself_reads():
    from layercomposer.limits import MAX_JSON_DEPTH, loads_json_bounded

    at_bound = "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH
    assert loads_json_bounded(at_bound) is not None
    with pytest.raises(ValueError, match=f"nested too deeply \\(over {MAX_JSON_DEPTH} levels\\)"):
        loads_json_bounded("[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1))


# --- class 1: decoder work bounded before decoding, not only the header's size ------------------


def _progressive_jpeg(scans: int, size: int = 256) -> bytes:
    """A flat progressive JPEG whose last scan is repeated until it has `scans` scans: a few
    bytes a scan, each one more pass of the decoder over every coefficient."""
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (120, 130, 140)).save(buffer, "JPEG", progressive=True)
    data = buffer.getvalue()
    written = data.count(b"\xff\xda")
    last_scan = data[data.rindex(b"\xff\xda") : -2]  # up to the EOI marker
    return data[:-2] + last_scan * (scans - written) + data[-2:]


def _png_with_empty_chunks(count: int) -> bytes:
    """A 16x16 PNG with `count` empty private ancillary chunks after its IHDR."""
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), "red").save(buffer, "PNG")
    data = buffer.getvalue()
    after_ihdr = 8 + 12 + 13  # signature, then IHDR: length, type, 13 bytes, CRC
    empty = (0).to_bytes(4, "big") + b"prVt" + zlib.crc32(b"prVt").to_bytes(4, "big")
    return data[:after_ihdr] + empty * count + data[after_ihdr:]


@pytest.mark.parametrize(
    ("name", "make", "reason"),
    [
        ("bomb.jpg", lambda: _progressive_jpeg(20_000), "a JPEG of more than 100 scans"),
        (
            "bomb.png",
            lambda: _png_with_empty_chunks(6_000_000),
            "a PNG of more than 100,000 chunks",
        ),
    ],
)
def test_validate_refuses_a_decoder_bomb_under_the_header_bounds(
    make_canvas, tmp_path, name, make, reason
):
    (tmp_path / name).write_bytes(make())
    canvas = make_canvas(
        {
            "prompt": "p",
            "size": [64, 64],
            "layers": [{"name": "a", "image": name, "position": [32, 32]}],
        }
    )
    result = lc("validate", canvas)
    assert result.exit_code == 2, result.output
    assert f"[layers -> 0 -> image] {tmp_path / name} is {reason}, over lc's limit" in result.output


def test_the_upload_path_refuses_the_same_bombs_from_bytes():
    from layercomposer.limits import (
        MAX_JPEG_SCANS,
        MAX_PNG_CHUNKS,
        TooLargeError,
        open_image_bounded,
    )

    with pytest.raises(TooLargeError, match="more than 100 scans"):
        open_image_bounded(_progressive_jpeg(MAX_JPEG_SCANS + 1))
    with pytest.raises(TooLargeError, match="more than 100,000 chunks"):
        open_image_bounded(_png_with_empty_chunks(MAX_PNG_CHUNKS))  # + IHDR, IDAT, IEND
    # at the bounds, and ordinary files, they open
    assert open_image_bounded(_progressive_jpeg(MAX_JPEG_SCANS)).size == (256, 256)
    assert open_image_bounded(_png_with_empty_chunks(MAX_PNG_CHUNKS - 3)).size == (16, 16)
