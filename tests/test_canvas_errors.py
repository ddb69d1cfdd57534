"""Every kind of bad canvas gets a located message and exit code 2, never a traceback."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import disc_rgba
from layercomposer.cli.main import app

runner = CliRunner()

GOOD_LAYER = {"name": "a", "image": "a.png", "position": [64, 64]}
DISC = {"a.png": disc_rgba(64)}


def lc(*args):
    return runner.invoke(app, [str(a) for a in args])


def spec(**changes):
    base = {"prompt": "p", "size": [128, 128], "layers": [dict(GOOD_LAYER)]}
    base.update(changes)
    return base


def assert_invalid(result, *fragments):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.output, result.output


def test_valid_canvas_passes(make_canvas):
    result = lc("validate", make_canvas(spec(), DISC))
    assert result.exit_code == 0, result.output
    assert "ok" in result.output


def test_missing_canvas_file(tmp_path):
    assert_invalid(lc("validate", tmp_path / "nope.yaml"), "nope.yaml", "no such canvas file")


def test_yaml_that_is_not_a_mapping(make_canvas):
    assert_invalid(
        lc("validate", make_canvas("- just\n- a list\n")), "scene.yaml:1", "must be a YAML mapping"
    )
    assert_invalid(lc("validate", make_canvas("")), "must be a YAML mapping", "not empty")


def test_broken_yaml_names_its_line(make_canvas):
    assert_invalid(
        lc("validate", make_canvas("prompt: p\nlayers: [\n  {name: a\n")),
        "scene.yaml:",
        "not valid YAML",
    )


def test_unknown_key_suggests_the_nearest(make_canvas):
    path = make_canvas(spec(layers=[{**GOOD_LAYER, "scael": 2}]), DISC)
    line = path.read_text().splitlines().index("  scael: 2") + 1
    assert_invalid(
        lc("validate", path), f"scene.yaml:{line}: [layers -> 0 -> scael]", "did you mean 'scale'"
    )
    assert_invalid(lc("validate", make_canvas(spec(promt="x"), DISC)), "did you mean 'prompt'")


def test_size_not_a_multiple_of_16(make_canvas):
    assert_invalid(
        lc("validate", make_canvas(spec(size=[1000, 128]), DISC)),
        "[size]",
        "multiple of 16",
        "992 or 1008",
    )


def test_absurd_size_is_capped_with_a_reason(make_canvas):
    assert_invalid(
        lc("validate", make_canvas(spec(size=[100000, 128]), DISC)), "between 64 and 4096", "100000"
    )


def test_duplicate_names(make_canvas):
    bad = spec(layers=[GOOD_LAYER, GOOD_LAYER])
    assert_invalid(lc("validate", make_canvas(bad, DISC)), "[layers]", "unique", ": a")


def test_every_problem_is_listed_with_its_line(make_canvas):
    text = "prompt: p\nsize: [100, 128]\nlayers:\n  - name: a\n    image: a.png\n    position: [1, 2]\n    scale: -1\n"
    result = lc("validate", make_canvas(text, DISC))
    assert_invalid(result, "scene.yaml:2: [size]", "scene.yaml:7: [layers -> 0 -> scale]")


def test_missing_image(make_canvas):
    assert_invalid(lc("validate", make_canvas(spec())), "[layers -> 0 -> image]", "image not found")


def test_unreadable_and_truncated_images(make_canvas, tmp_path):
    (tmp_path / "a.png").write_bytes(b"this is not a png")
    assert_invalid(lc("validate", make_canvas(spec())), "not an image format lc can read")
    path = make_canvas(spec(), DISC)
    data = (tmp_path / "a.png").read_bytes()
    (tmp_path / "a.png").write_bytes(data[: len(data) // 2])
    assert_invalid(lc("validate", path), "[layers -> 0 -> image]", "cannot be read")


def test_layer_without_alpha_or_mask_says_how_to_fix(make_canvas):
    rgb = {"a.png": np.full((64, 64, 3), 128, np.uint8)}
    assert_invalid(lc("validate", make_canvas(spec(), rgb)), "no alpha channel", "mask:")


def test_rgb_image_with_mask_is_fine_and_sizes_must_match(make_canvas):
    images = {
        "a.png": np.full((64, 64, 3), 128, np.uint8),
        "m.png": np.full((64, 64), 255, np.uint8),
    }
    ok = spec(layers=[{**GOOD_LAYER, "mask": "m.png"}])
    assert lc("validate", make_canvas(ok, images)).exit_code == 0
    images["m.png"] = np.full((32, 64), 255, np.uint8)
    assert_invalid(lc("validate", make_canvas(ok, images)), "[layers -> 0 -> mask]", "must match")


def test_layer_outside_the_canvas_is_named(make_canvas):
    bad = spec(layers=[GOOD_LAYER, {"name": "lost", "image": "a.png", "position": [900, 900]}])
    assert_invalid(
        lc("validate", make_canvas(bad, DISC)), "[layers -> 1]", "layer 'lost'", "outside"
    )


def test_layer_too_small_for_any_token(make_canvas):
    bad = spec(layers=[{**GOOD_LAYER, "scale": 0.1}])
    assert_invalid(lc("validate", make_canvas(bad, DISC)), "layer 'a'", "no token")


@pytest.mark.parametrize("where", ["../a.png", "ABSOLUTE"])
def test_paths_that_escape_the_canvas_folder_need_allow_outside(make_canvas, tmp_path, where):
    folder = tmp_path / "inner"
    folder.mkdir()
    image = str(tmp_path / "a.png") if where == "ABSOLUTE" else where
    path = make_canvas(spec(layers=[{**GOOD_LAYER, "image": image}]), DISC, name="inner/scene.yaml")
    assert_invalid(lc("validate", path), "outside the canvas folder", "--allow-outside")
    assert lc("validate", path, "--allow-outside").exit_code == 0


def test_crop_past_the_image(make_canvas):
    bad = spec(layers=[{**GOOD_LAYER, "crop": [0, 0, 65, 10]}])
    assert_invalid(lc("validate", make_canvas(bad, DISC)), "[layers -> 0 -> crop]", "reaches past")
    bad = spec(layers=[{**GOOD_LAYER, "crop": [10, 0, 5, 10]}])
    assert_invalid(lc("validate", make_canvas(bad, DISC)), "x0 < x1")


def test_set_overrides_apply_and_errors_point_at_them(make_canvas):
    path = make_canvas(spec(), DISC)
    assert_invalid(
        lc("validate", path, "--set", "layers.a.scale=0"),
        "--set layers.a.scale=0",
        "greater than 0",
    )
    assert_invalid(lc("validate", path, "--set", "layers.b.lock=true"), "no layer named 'b'")
    assert_invalid(lc("validate", path, "--set", "seed"), "key.path=value")
    assert lc("validate", path, "--set", "layers.0.lock=true", "--set", "seed=7").exit_code == 0


def test_nothing_to_compose(make_canvas):
    assert_invalid(
        lc("validate", make_canvas({"prompt": "p", "size": [128, 128]})), "nothing to compose"
    )


def test_several_files_exit_2_if_any_is_invalid(make_canvas):
    good = make_canvas(spec(), DISC, name="good.yaml")
    bad = make_canvas(spec(size=[100, 100]), name="bad.yaml")
    result = lc("validate", good, bad)
    assert_invalid(result, "ok", "good.yaml", "bad.yaml:", "1 of 2")
