"""Messages say what happened and what to do: another library's text is quoted whole words at a
time, a missing optional package names the extra and the install line, a closed pipe ends
quietly. (One place shapes them: layercomposer/errors.py and cli/_errors.py.)"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from conftest import REPO
from layercomposer.errors import (
    QUOTE_LIMIT,
    LcError,
    describe,
    exception_text,
    missing_package,
    shorten,
)

# What huggingface_hub says when a model is not cached and the hub cannot be reached.
HUB_TEXT = (
    "Cannot load model black-forest-labs/FLUX.1-Kontext-dev: the model is not fully cached "
    "locally (Cannot find an appropriate cached snapshot folder for the specified revision on "
    "the local disk and outgoing traffic has been disabled. To enable repo look-ups and "
    "downloads online, pass 'local_files_only=False' as input.) and an error occurred while "
    "trying to fetch metadata from the Hub. Please check out the root cause in the stacktrace."
)


def test_a_long_quote_ends_after_a_whole_word():
    words = {word.strip("(),.") for word in HUB_TEXT.split()}
    for limit in range(40, len(HUB_TEXT), 7):
        short = shorten(HUB_TEXT, limit)
        assert len(short) <= limit and short.endswith("…")
        assert short[:-1].split()[-1].strip("(),.") in words, short  # the last word is whole
    assert shorten("short enough", 40) == "short enough"
    assert shorten("line one\n   line two", 40) == "line one line two"
    assert len(shorten("x" * 1000, 50)) == 50  # one endless token is still cut


def test_exception_text_is_the_first_line_or_the_type():
    assert exception_text(OSError(HUB_TEXT + "\nsecond line")) == shorten(HUB_TEXT, QUOTE_LIMIT)
    assert exception_text(ValueError("")) == "ValueError"


class ConnectError(Exception):
    """Stands for httpx's: only its class name tells it is about the network."""


def test_an_unreachable_hub_is_said_so_not_cut_mid_word(monkeypatch):
    pytest.importorskip("torch", reason="loading a model needs lc's [render] extra")
    from layercomposer import models
    from layercomposer.errors import ModelError
    from layercomposer.pipeline import LayerComposerPipeline

    def from_pretrained(*args, **kwargs):
        try:
            raise ConnectError("[Errno -2] Name or service not known")
        except ConnectError as cause:
            raise OSError(HUB_TEXT) from cause

    monkeypatch.setattr(LayerComposerPipeline, "from_pretrained", from_pretrained)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(ModelError) as raised:
        models._from_pretrained("black-forest-labs/FLUX.1-Kontext-dev", None, None)
    message = raised.value.message
    assert message.endswith("(the hub cannot be reached: [Errno -2] Name or service not known)")
    assert "hf download black-forest-labs/FLUX.1-Kontext-dev" in raised.value.hint

    def without_cause(*args, **kwargs):
        raise OSError(HUB_TEXT * 3)

    monkeypatch.setattr(LayerComposerPipeline, "from_pretrained", without_cause)
    with pytest.raises(ModelError) as raised:
        models._from_pretrained("black-forest-labs/FLUX.1-Kontext-dev", None, None)
    quoted = raised.value.message.split("(", 1)[1]
    assert quoted.endswith("…)") and quoted[:-2].split()[-1].strip("(),.") in {
        word.strip("(),.") for word in HUB_TEXT.split()
    }


def test_a_missing_optional_package_names_its_extra_and_the_install_line():
    error = missing_package(ModuleNotFoundError("No module named 'torch'", name="torch"))
    assert error.message == "torch is not installed; it comes with lc's [render] extra"
    assert "pip install torch==2.13.0 && pip install -e '.[render]'" in error.hint
    video = missing_package(ModuleNotFoundError("No module named 'av'", name="av"))
    assert "[video]" in video.message and "torch" not in video.hint
    other = missing_package(
        ModuleNotFoundError("No module named 'torchvision'", name="torchvision")
    )
    assert other.hint == "pip install torchvision"
    assert missing_package(ModuleNotFoundError("x", name="layercomposer.nope")) is None  # a bug
    assert missing_package(ImportError("cannot import name 'x'", name="torch")) is None
    assert describe(LcError("it failed", hint="do this")) == "it failed (hint: do this)"
    assert describe(KeyError("k")) == "KeyError: 'k'"


def lc_without(modules: list[str], *args: str, cwd=REPO) -> subprocess.CompletedProcess:
    """Run lc in a fresh interpreter in which `modules` cannot be imported (as after a bare
    `pip install -e .`)."""
    blocked = "".join(f"sys.modules[{m!r}] = None; " for m in modules)
    code = (
        f"import sys; {blocked}sys.argv = ['lc', *sys.argv[1:]]; "
        "from layercomposer.cli.main import main; main()"
    )
    return subprocess.run(
        [sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True,
        timeout=120, env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip


def test_render_without_torch_gives_the_install_hint_not_a_failure_table(tmp_path):
    done = lc_without(
        ["torch", "diffusers", "transformers"],
        "render", "canvases/four_people.yaml", "--model", "builtin:tiny", "-o", str(tmp_path),
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "missing package: torch is not installed; it comes with lc's [render] extra" in (
        done.stderr
    )
    assert "hint: from lc's source folder: pip install torch==2.13.0" in done.stderr
    assert "ModuleNotFoundError" not in done.stderr and "failed outputs" not in done.stderr
    # the canvas commands still work without it
    assert lc_without(["torch"], "validate", "canvases/four_people.yaml").returncode == 0


@pytest.mark.parametrize(
    "args", [["schema"], ["inspect", "canvases/four_people.yaml", "--json"], ["render", "--help"]]
)
def test_a_closed_pipe_ends_quietly(args):
    process = subprocess.Popen(
        [sys.executable, "-m", "layercomposer", *args], cwd=REPO, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    process.stdout.close()  # the reader is gone before lc writes a byte (`| head -0`)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 1
    assert stderr == "", stderr  # no "Broken pipe", no "Exception ignored"


def test_each_optional_package_is_in_the_extra_the_message_names():
    from layercomposer.errors import EXTRAS

    text = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    section = text.split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    extras = dict(re.findall(r"(?ms)^([\w-]+)\s*=\s*\[(.*?)\]", section))
    for module, extra in EXTRAS.items():
        assert extra in extras, (module, extra)
        assert re.search(rf'"{module}[\w.-]*[>=<"]', extras[extra]), (module, extra)
