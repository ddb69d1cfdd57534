"""The bounded readers: YAML (size, depth, aliases, duplicate keys), JSON, images (sizes checked
from the header, odd modes scaled correctly)."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import yaml
from hostile import alias_bomb, broken_images, gradient, odd_images, png_bytes
from PIL import Image
from typer.testing import CliRunner

from conftest import EXAMPLES, REPO, disc_rgba
from layercomposer import limits
from layercomposer.canvas import load_canvas
from layercomposer.cli.main import app
from layercomposer.layers import build_layers
from layercomposer.limits import (
    TooLargeError,
    UnreadableImageError,
    loads_json_bounded,
    open_image_bounded,
    read_json_bounded,
    read_json_lines_bounded,
)
from layercomposer.yamlfile import BadYaml, YamlRefused, parse_yaml

# --- YAML ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_canvases_parse_as_pyyaml_reads_them(path):
    data, node = parse_yaml(path.read_bytes())
    assert data == yaml.safe_load(path.read_text())
    assert node is not None


def test_alias_bomb_is_refused_at_its_first_anchor_at_once():
    start = time.perf_counter()
    with pytest.raises(YamlRefused) as refused:
        parse_yaml(alias_bomb())
    assert time.perf_counter() - start < 1.0
    assert refused.value.line == 3
    assert "anchor '&a'" in refused.value.reason


def test_an_alias_alone_is_refused_with_its_line():
    # The anchor is written in the flow mapping on line 1; the alias on line 2.
    with pytest.raises(YamlRefused, match="anchor") as refused:
        parse_yaml("base: &b {x: 1}\nother: *b\n")
    assert refused.value.line == 1


@pytest.mark.parametrize("depth, refused", [(limits.MAX_YAML_DEPTH, False), (1000, True)])
def test_nesting_depth(depth, refused):
    text = "key: " + "[" * (depth - 1) + "]" * (depth - 1) + "\n"
    if refused:
        with pytest.raises(YamlRefused, match=f"nested more than {limits.MAX_YAML_DEPTH}"):
            parse_yaml(text)
    else:
        parse_yaml(text)


def test_deep_block_nesting_names_the_line_where_the_bound_is_crossed():
    text = "".join("  " * level + f"k{level}:\n" for level in range(100)) + "  " * 100 + "v\n"
    with pytest.raises(YamlRefused) as refused:
        parse_yaml(text)
    assert refused.value.line == limits.MAX_YAML_DEPTH + 1


def test_too_many_values_and_too_many_bytes():
    with pytest.raises(YamlRefused, match="more than 1,000 values"):
        parse_yaml("[" + ", ".join(["1"] * 2000) + "]", max_nodes=1000)
    with pytest.raises(YamlRefused, match="over lc's limit of 1 KiB"):
        parse_yaml("prompt: " + "x" * 2000, max_bytes=1024)


@pytest.mark.parametrize(
    "text, line",
    [
        ("prompt: a\nsize: [64, 64]\nprompt: b\n", 3),
        ("layers:\n  - name: a\n    scale: 1\n    scale: 2\n", 4),
        ("{a: 1, b: 2, a: 3}\n", 1),
    ],
)
def test_duplicate_keys_are_refused_at_the_second(text, line):
    with pytest.raises(YamlRefused, match="duplicate key") as refused:
        parse_yaml(text)
    assert refused.value.line == line


@pytest.mark.parametrize(
    "text, fragment",
    [
        (b"prompt: \xff\xfe\n", "not UTF-8"),
        ("a: 1\n---\nb: 2\n", "more than one YAML document"),
        ("n: " + "9" * 5000 + "\n", "not valid YAML"),  # past Python's int digit limit
        ("when: 2024-13-45\n", "not valid YAML"),  # looks like a date, is not one
        ("x: !!python/object:os.system {}\n", "not valid YAML"),
        ("a: [1, 2\n", "not valid YAML"),
    ],
)
def test_other_bad_yaml_is_a_bad_yaml_error(text, fragment):
    with pytest.raises(BadYaml, match=fragment):
        parse_yaml(text)


def test_set_value_with_an_alias_is_a_usage_error(tmp_path):
    path = EXAMPLES[0]
    result = CliRunner().invoke(app, ["validate", str(path), "--set", "prompt=&a [*a, *a]"])
    assert result.exit_code == 2
    assert "--set prompt=&a [*a, *a]" in result.output and "anchor" in result.output


def test_bomb_through_lc_validate_is_located(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(alias_bomb())
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 2
    assert f"{path}:3: anchor '&a'" in result.output


# --- JSON ---------------------------------------------------------------------------------------


def test_json_size_cap_and_nesting(tmp_path):
    path = tmp_path / "big.json"
    path.write_text(json.dumps({"x": "y" * 5000}))
    assert read_json_bounded(path)["x"] == "y" * 5000
    with pytest.raises(TooLargeError, match="over lc's limit of 1 KiB"):
        read_json_bounded(path, max_bytes=1024)
    with pytest.raises(ValueError, match="nested too deeply"):
        loads_json_bounded("[" * 100_000 + "]" * 100_000, max_bytes=10**6)
    with pytest.raises(ValueError):
        loads_json_bounded(b"{not json")


def test_json_lines_skip_broken_lines_and_cap_the_file(tmp_path):
    path = tmp_path / "scores.jsonl"
    path.write_text('{"key": 1}\n{"key": 2, "cut sh\n' + '{"key": "' + "z" * 3000 + '"}\n')
    assert read_json_lines_bounded(path, max_line_bytes=1000) == [{"key": 1}]
    with pytest.raises(TooLargeError):
        read_json_lines_bounded(path, max_bytes=100)


def test_a_manifest_over_the_cap_is_refused_before_it_is_read(tmp_path):
    path = tmp_path / "100.json"
    with open(path, "wb") as handle:  # sparse: 17 MiB on paper, nothing on disk
        handle.truncate(limits.MAX_JSON_BYTES + 1)
    start = time.perf_counter()
    result = CliRunner().invoke(app, ["render", "--from-manifest", str(path), "-o", str(tmp_path)])
    assert time.perf_counter() - start < 10
    assert result.exit_code == 2, result.output
    assert "100.json" in result.output and "over lc's limit of 16 MiB" in result.output


# --- images -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(broken_images()))
def test_broken_and_crafted_images_are_refused_quickly(name, monkeypatch):
    data = broken_images()[name]
    start = time.perf_counter()
    with pytest.raises((TooLargeError, UnreadableImageError)) as refused:
        open_image_bounded(data)
    assert time.perf_counter() - start < 1.0
    if "huge" in name or "50000" in name or "too_long" in name:
        assert isinstance(refused.value, TooLargeError), refused.value.message


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "GIF", "JPEG", "TIFF"])
def test_size_is_checked_whatever_pillows_global_limit_says(fmt, monkeypatch):
    from hostile import CLAIMING

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # someone switched Pillow's check off
    start = time.perf_counter()
    with pytest.raises(TooLargeError, match="over lc's limit"):
        open_image_bounded(CLAIMING[fmt](30_000, 30_000))
    assert time.perf_counter() - start < 1.0


def test_an_image_file_over_the_byte_cap_is_refused_before_reading(tmp_path):
    path = tmp_path / "a.png"
    path.write_bytes(png_bytes(disc_rgba(64)))
    with pytest.raises(TooLargeError, match="a.png"):
        open_image_bounded(path, max_bytes=100)


@pytest.mark.parametrize("name", sorted(odd_images()))
def test_odd_modes_open_as_eight_bit_images_that_convert(name):
    image = open_image_bounded(odd_images()[name])
    assert image.mode in ("1", "L", "LA", "P", "RGB", "RGBA", "CMYK")
    rgba = np.asarray(image.convert("RGBA"))
    assert rgba.shape == (48, 48, 4)
    assert rgba[..., :3].std() > 0  # not clipped to one flat colour


@pytest.mark.parametrize("name", ["gray16", "int32_tiff", "float_tiff"])
def test_wide_grayscale_is_scaled_not_clipped(name):
    expected = np.round(gradient() * 255)
    grey = np.asarray(open_image_bounded(odd_images()[name]).convert("L"), float)
    assert np.abs(grey - expected).max() <= 1


def test_a_16_bit_mask_makes_the_same_layer_as_its_8_bit_copy(make_canvas, tmp_path):
    ramp = gradient(64, 64)
    rgb = np.full((64, 64, 3), 150, np.uint8)
    spec = {
        "prompt": "p",
        "size": [128, 128],
        "layers": [{"name": "a", "image": "a.png", "mask": "m.png", "position": [64, 64]}],
    }
    images = {"a.png": rgb, "m.png": (ramp * 255).round().astype(np.uint8)}
    eight = build_layers(load_canvas(make_canvas(spec, images)))[0].cutout
    Image.fromarray((ramp * 65535).round().astype(np.uint16)).save(tmp_path / "m.png")
    sixteen = build_layers(load_canvas(make_canvas(spec)))[0].cutout
    assert np.abs(eight.astype(int) - sixteen.astype(int)).max() <= 1


def test_a_layer_too_large_after_scale_and_rotation_is_refused_before_it_is_made():
    path = REPO / "canvases" / "four_people.yaml"
    sets = ["layers.collins.image=images/rocket.jpg", "layers.collins.mask=images/rocket.jpg"]
    sets.append("layers.collins.scale=16")
    args = [a for s in [*sets, "layers.collins.rotate=45"] for a in ("--set", s)]
    start = time.perf_counter()
    result = CliRunner().invoke(app, ["inspect", str(path), "--json", *args])
    assert time.perf_counter() - start < 5
    assert result.exit_code == 2
    assert "[layers -> " in result.output and "-> scale]" in result.output
    assert "12072x12072 pixels after scale and rotation" in result.output


def test_too_many_layers_is_a_located_error(make_canvas):
    layer = {"image": "a.png", "position": [64, 64]}
    layers = [{"name": f"l{i}", **layer} for i in range(limits.MAX_LAYERS + 1)]
    path = make_canvas(
        {"prompt": "p", "size": [128, 128], "layers": layers}, {"a.png": disc_rgba(64)}
    )
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 2
    assert (
        "scene.yaml:5: [layers]" in result.output
        and f"at most {limits.MAX_LAYERS}" in result.output
    )


def test_layers_adding_up_past_the_bound_stop_being_built(make_canvas, monkeypatch):
    monkeypatch.setattr("layercomposer.layers.MAX_LAYERS_PIXELS", 3 * 64 * 64)
    layers = [{"name": f"l{i}", "image": "a.png", "position": [64, 64]} for i in range(5)]
    path = make_canvas(
        {"prompt": "p", "size": [128, 128], "layers": layers}, {"a.png": disc_rgba(64)}
    )
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 2
    assert "[layers -> 3]" in result.output and "the layers up to 'l3' add up" in result.output


def test_images_adding_up_past_the_decode_budget_are_refused_on_their_headers(
    make_canvas, monkeypatch
):
    monkeypatch.setattr("layercomposer.layers.MAX_CANVAS_DECODE_PIXELS", 2 * 64 * 64)
    decoded = []

    def counted(*args, **kwargs):
        image = open_image_bounded(*args, **kwargs)
        decoded.append(image.size)
        return image

    monkeypatch.setattr("layercomposer.layers.open_image_bounded", counted)
    layers = [{"name": f"l{i}", "image": "a.png", "position": [64, 64]} for i in range(5)]
    path = make_canvas(
        {"prompt": "p", "size": [128, 128], "layers": layers}, {"a.png": disc_rgba(64)}
    )
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 2
    assert "[layers -> 2 -> image]" in result.output and "more than 0 MP to decode" in result.output
    assert "[layers -> 3" not in result.output  # one message, then no more decoding
    assert decoded == [(64, 64), (64, 64)]


def test_a_crafted_layer_image_is_refused_through_validate(make_canvas, tmp_path):
    spec = {
        "prompt": "p",
        "size": [128, 128],
        "layers": [{"name": "a", "image": "a.png", "position": [64, 64]}],
    }
    path = make_canvas(spec)
    (tmp_path / "a.png").write_bytes(broken_images()["png_50000"])
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 2
    assert "[layers -> 0 -> image]" in result.output and "over lc's limit" in result.output
