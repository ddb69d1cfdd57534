"""Outputs end with the permissions a plain write would give them: 0666 minus the umask for a
new file, the old file's own for a replaced one. A temporary file is private while written
(mkstemp, and safetensors' own writer), which once left every image, manifest, canvas, LoRA
and table at 0600 on a shared machine."""

from __future__ import annotations

import os
import stat
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import REPO
from layercomposer.cli.main import app
from layercomposer.files import (
    TEMP_SUFFIX,
    atomic_path,
    current_umask,
    write_bytes_atomic,
    write_json_atomic,
    write_png_atomic,
)

runner = CliRunner()


@contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002, 0o077])
def test_new_files_get_the_mode_the_umask_gives(tmp_path, mask):
    with umask(mask):
        assert current_umask() == mask
        written = [
            write_bytes_atomic(tmp_path / "a.bin", b"x"),
            write_json_atomic(tmp_path / "b.json", {"a": 1}),
            write_png_atomic(tmp_path / "c.png", np.zeros((4, 4, 3), np.uint8)),
        ]
        with atomic_path(tmp_path / "d.bin") as temp:
            temp.write_bytes(b"by a writer that wants a file name")
        written.append(tmp_path / "d.bin")
        with open(tmp_path / "plain.bin", "wb") as handle:  # the reference: a plain write
            handle.write(b"x")
    expected = mode(tmp_path / "plain.bin")
    assert expected == 0o666 & ~mask
    assert {p.name: mode(p) for p in written} == {p.name: expected for p in written}
    assert not list(tmp_path.glob(f"*{TEMP_SUFFIX}"))


def test_a_replaced_file_keeps_its_own_mode(tmp_path):
    target = tmp_path / "manifest.json"
    target.write_text("{}")
    target.chmod(0o640)
    with umask(0o022):
        write_json_atomic(target, {"new": True})
        assert mode(target) == 0o640
        with atomic_path(target) as temp:
            temp.write_text("{}")
    assert mode(target) == 0o640


def test_a_failed_write_leaves_nothing_behind(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError), atomic_path(target) as temp:
        temp.write_bytes(b"half")
        raise RuntimeError("killed")
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_safetensors_files_get_the_umask_mode(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    with umask(0o022):
        with atomic_path(tmp_path / "lora.safetensors") as temp:
            save_file({"w": torch.zeros(2)}, str(temp))  # safetensors itself writes 0600
        from layercomposer.latents import LatentCache

        cache = LatentCache(str(tmp_path / "cache"))
        cache.put("key", torch.zeros(1, 4))
    files = [tmp_path / "lora.safetensors", *(tmp_path / "cache").rglob("*.safetensors")]
    assert len(files) == 2 and all(mode(p) == 0o644 for p in files), [oct(mode(p)) for p in files]


def test_commands_write_outputs_readable_by_the_group_and_others(tmp_path):
    out = tmp_path / "preview.png"
    with umask(0o022):
        done = runner.invoke(
            app, ["preview", str(REPO / "canvases/four_people.yaml"), "-o", str(out)]
        )
    assert done.exit_code == 0, done.output
    assert mode(out) == 0o644
