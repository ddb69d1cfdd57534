"""docs/python-api.md runs as written, and its renders are `lc render`'s, pixel for pixel.

Its python blocks run in order as one script, in a scratch folder holding a copy of canvases/
and two LoRA files of builtin:tiny's shapes (one with lc's training metadata, one without),
with the hub id replaced by a local folder of builtin:tiny (saved with `save_pretrained`, so
the docs' `from_pretrained` line is what loads it).
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image
from test_lora_stack import write_lora
from typer.testing import CliRunner

from conftest import REPO
from layercomposer.cli.main import app

DOC = REPO / "docs" / "python-api.md"
HUB_ID = '"black-forest-labs/FLUX.1-Kontext-dev"'


def python_blocks(text: str) -> list[str]:
    """The bodies of the ```python blocks of a markdown text, in order."""
    blocks, language, lines = [], None, []
    for line in text.splitlines():
        if not line.startswith("```"):
            lines.append(line)
        elif language is None:  # an opening fence
            language, lines = (line[3:].split() or [""])[0], []
        else:
            if language == "python":
                blocks.append("\n".join(lines))
            language = None
    return blocks


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    from layercomposer.models import load_pipeline

    root = tmp_path_factory.mktemp("python-api")
    shutil.copytree(REPO / "canvases", root / "canvases")
    pipe, _ = load_pipeline("builtin:tiny")
    pipe.save_pretrained(root / "tiny-kontext")
    write_lora(root / "layercomposer.safetensors", 2, trained_by_lc=True)
    write_lora(root / "style.safetensors", 1, trained_by_lc=False)
    return root


def lc_render(folder, *args) -> np.ndarray:
    """The pixels `lc render` writes for two_people_overlap with the docs' settings and `args`."""
    result = CliRunner().invoke(
        app,
        [
            "render", "canvases/two_people_overlap.yaml", "--model", "tiny-kontext",
            "--set", "steps=4", "--seed", "0", "-o", str(folder), *map(str, args),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return np.asarray(Image.open(folder / "two_people_overlap" / "0.png"))


def test_the_python_api_examples_run_and_equal_lc_render(scratch, monkeypatch):
    blocks = python_blocks(DOC.read_text(encoding="utf-8"))
    assert len(blocks) >= 4
    script = "\n\n".join(blocks)
    assert script.count(HUB_ID) == 1  # the one line the test changes
    script = script.replace(HUB_ID, repr(str(scratch / "tiny-kontext")))
    monkeypatch.chdir(scratch)
    namespace: dict = {"__name__": "__docs__"}
    exec(compile(script, str(DOC), "exec"), namespace)  # noqa: S102 - the docs' own examples

    assert type(namespace["pipe"]).__name__ == "LayerComposerPipeline"
    assert namespace["result"].mode == "collage"
    ours = np.asarray(Image.open(scratch / "two_people.png"))
    np.testing.assert_array_equal(ours, lc_render(scratch / "out"))

    layered = namespace["layered"]
    assert layered.mode == "layered" and "layercomposer.safetensors" in layered.mode_reason
    with_loras = lc_render(
        scratch / "out-loras", "--lora", "layercomposer.safetensors", "--lora",
        "style.safetensors:0.6",
    )  # fmt: skip
    np.testing.assert_array_equal(np.asarray(layered.images[0]), with_loras)
    assert np.abs(with_loras.astype(int) - ours).max() > 0  # the LoRAs and the mode did something
    assert namespace["edited"].images[0].size == (512, 512)  # Kontext's size for max_area
    # The Modular Diffusers blocks on the same components give the pipeline's image.
    np.testing.assert_array_equal(np.asarray(namespace["images"][0]), with_loras)
