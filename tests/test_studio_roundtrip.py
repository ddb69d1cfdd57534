"""Saving from the studio rewrites only what changed: comments, key order and quoting survive."""

from __future__ import annotations

import copy
import itertools
import re

import pytest
import yaml

from conftest import EXAMPLES

pytest.importorskip("ruamel.yaml")

from layercomposer.studio.roundtrip import merged_yaml  # noqa: E402

COMMENTED = """\
# header comment
prompt: "four colleagues"   # the prompt
size: [1024, 1024]
layers:                      # bottom to top
  # about collins
  - name: collins
    image: images/collins.png   # an RGBA cut-out
    position: [260, 1024]
    anchor: bottom
    scale: 1.1
  # about hopper
  - name: hopper
    image: images/hopper.png
    position: [770, 1024]
    anchor: bottom
    lock: true               # keep her almost exactly as in the photo
  # about glenn
  - name: glenn
    image: images/glenn.png
    position: [500, 1024]
# trailing comment
"""


def comment_above(text: str, name: str) -> str | None:
    """The comment line directly above the layer `name` in `text`."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if re.match(rf"\s*- name: {name}$", line):
            above = lines[i - 1].strip()
            return above if above.startswith("#") else None
    raise AssertionError(f"no layer {name} in\n{text}")


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_an_unchanged_canvas_is_written_back_byte_for_byte(path):
    text = path.read_text()
    assert merged_yaml(text, yaml.safe_load(text)) == text


def test_changed_values_keep_their_comments_and_quoting():
    data = yaml.safe_load(COMMENTED)
    data["prompt"] = "five colleagues: at the pad"
    data["layers"][0]["position"] = [300, 1000]
    data["layers"][1]["lock"] = False
    text = merged_yaml(COMMENTED, data)

    assert yaml.safe_load(text) == data
    assert re.search(r'prompt: "five colleagues: at the pad" +# the prompt\n', text)  # quoted
    assert "position: [300, 1000]" in text  # a short list stays in flow style
    assert (
        "lock: false              # keep her almost exactly as in the photo" in text
    )  # column kept
    assert text.startswith("# header comment\n") and text.endswith("# trailing comment\n")


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
def test_reordered_layers_take_the_comments_above_them_along(order):
    data = yaml.safe_load(COMMENTED)
    data["layers"] = [data["layers"][i] for i in order]
    text = merged_yaml(COMMENTED, data)

    assert yaml.safe_load(text) == data
    for name in ("collins", "hopper", "glenn"):
        assert comment_above(text, name) == f"# about {name}"
    assert "layers:                      # bottom to top" in text
    assert text.endswith("# trailing comment\n")  # the end of the file stays the end


def test_added_removed_and_new_keys_land_in_the_canonical_order():
    data = yaml.safe_load(COMMENTED)
    data["seed"] = 7
    del data["layers"][1]  # hopper and its comments go
    data["layers"][0]["lock"] = True  # a new key after collins's last one
    data["layers"].append(
        {"name": "new", "image": "images/new.png", "position": [10, 20], "scale": 0.5}
    )
    data["background"] = {"image": "images/rocket.jpg", "fit": "cover"}
    text = merged_yaml(COMMENTED, data)

    assert yaml.safe_load(text) == data
    keys = [line.split(":")[0] for line in text.splitlines() if re.match(r"^[a-z]", line)]
    assert keys == ["prompt", "size", "seed", "background", "layers"]
    assert "hopper" not in text and "# about hopper" not in text
    assert comment_above(text, "glenn") == "# about glenn"
    assert "    scale: 1.1\n    lock: true\n  # about glenn\n" in text  # lock before the comment
    assert "position: [10, 20]" in text


def test_keys_removed_from_a_nested_mapping_and_the_mapping_itself():
    text = "prompt: p\nbackground:   # the sky\n  image: a.png\n  fit: contain\n  lock: false\nlayers: []\n"
    data = yaml.safe_load(text)
    del data["background"]["fit"]
    once = merged_yaml(text, data)
    assert yaml.safe_load(once) == data and "# the sky" in once

    cleared = copy.deepcopy(data)
    del cleared["background"]
    assert yaml.safe_load(merged_yaml(once, cleared)) == cleared
