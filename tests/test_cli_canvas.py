"""The canvas commands on the shipped example canvases, through Typer's runner."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from conftest import EXAMPLES
from layercomposer import __version__
from layercomposer.canvas import CanvasSpec
from layercomposer.cli.main import app

runner = CliRunner()


def test_there_are_examples_for_one_two_and_four_subjects():
    counts = {len(yaml.safe_load(p.read_text())["layers"]) for p in EXAMPLES}
    assert {1, 2, 4} <= counts


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output


def test_every_example_validates():
    result = runner.invoke(app, ["validate", *map(str, EXAMPLES)])
    assert result.exit_code == 0, result.output
    assert result.output.count("ok ") == len(EXAMPLES)


@pytest.mark.parametrize("canvas", EXAMPLES, ids=lambda p: p.stem)
def test_inspect_json_is_consistent(canvas):
    result = runner.invoke(app, ["inspect", str(canvas), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    tokens = report["tokens"]
    grid = report["token_grid"][0] * report["token_grid"][1]
    assert tokens["noisy"] == grid == tokens["collage"]
    assert tokens["conditioning"] == sum(layer["tokens"] for layer in report["layers"])
    assert tokens["unpruned"] == len(report["layers"]) * grid
    assert tokens["sequence"] == 512 + grid + tokens["conditioning"]
    free = [layer["index"] for layer in report["layers"] if not layer["lock"]]
    assert free == list(range(1, len(free) + 1))
    assert all(layer["index"] == 0 for layer in report["layers"] if layer["lock"])


def test_four_subjects_prune_well_under_four_grids():
    four = next(p for p in EXAMPLES if len(yaml.safe_load(p.read_text())["layers"]) == 4)
    report = json.loads(runner.invoke(app, ["inspect", str(four), "--json"]).output)
    assert report["tokens"]["conditioning"] < 0.5 * report["tokens"]["unpruned"]


def test_inspect_table_and_overrides():
    canvas = str(EXAMPLES[0])
    result = runner.invoke(app, ["inspect", canvas, "--set", "layers.0.lock=true"])
    assert result.exit_code == 0, result.output
    assert "conditioning tokens" in result.output and "sequence" in result.output


def test_preview_and_collage(tmp_path):
    canvas = next(p for p in EXAMPLES if p.stem == "two_people_overlap")
    preview, collage = tmp_path / "p.png", tmp_path / "c.png"
    assert (
        runner.invoke(app, ["preview", str(canvas), "-o", str(preview), "--tokens"]).exit_code == 0
    )
    assert (
        runner.invoke(app, ["preview", str(canvas), "-o", str(collage), "--collage-only"]).exit_code
        == 0
    )
    size = tuple(yaml.safe_load(canvas.read_text())["size"])
    p, c = np.asarray(Image.open(preview)), np.asarray(Image.open(collage))
    assert Image.open(preview).size == Image.open(collage).size == size
    assert (p != c).any(), "the preview draws outlines and labels over the collage"
    assert tuple(c[0, 0]) == (255, 255, 255)  # the collage itself is unmarked where no layer is
    assert not list(tmp_path.glob("*.lc-tmp"))


def test_schema_is_json_schema_and_matches_the_model():
    result = runner.invoke(app, ["schema"])
    assert result.exit_code == 0
    schema = json.loads(result.output)
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert set(schema["properties"]) == set(CanvasSpec.model_fields)
    assert schema["additionalProperties"] is False
