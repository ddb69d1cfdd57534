"""`lc dataset build` on scenes made from real photographs: identities, layers, drops, resume."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from train_data import cutout
from typer.testing import CliRunner

from layercomposer.cli.main import app
from layercomposer.train.dataset import BACKGROUND, load_index

pytest.importorskip("mediapipe")
pytest.importorskip("dlib")
runner = CliRunner()
SIZE = 256


def paste(canvas: np.ndarray, person: np.ndarray, x: int) -> None:
    h, w = person.shape[:2]
    x, y = min(x, SIZE - w), SIZE - h
    alpha = person[..., 3:].astype(np.float32) / 255
    region = canvas[y : y + h, x : x + w]
    region[:] = person[..., :3] * alpha + region * (1 - alpha)


def make_scene(
    folder: Path, layouts: list[list[tuple[str, int, int]]], colour=(90, 140, 200)
) -> None:
    """One image per layout: (person, height, x) triples pasted on a plain background."""
    folder.mkdir(parents=True)
    for i, layout in enumerate(layouts):
        canvas = np.empty((SIZE, SIZE, 3), np.float32)
        canvas[:] = colour
        for name, height, x in layout:
            paste(canvas, cutout(name, height), x)
        Image.fromarray(canvas.astype(np.uint8)).save(folder / f"img{i}.png")


def build(scenes: Path, out: Path, *extra: str):
    """`lc dataset build` at the test size with the dlib detector (offline, landmark boxes)."""
    command = ["dataset", "build", str(scenes), "-o", str(out), "--resolution", str(SIZE)]
    return runner.invoke(app, [*command, "--detector", "dlib", *extra])


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    scenes = tmp_path_factory.mktemp("scenes")
    # collins on the left in the first image, on the right in the others
    make_scene(
        scenes / "duo",
        [[("collins", 130, 5), ("hopper", 140, 130)], [("hopper", 130, 0), ("collins", 120, 130)], [("hopper", 150, 10), ("collins", 140, 120)]],
    )  # fmt: skip
    make_scene(scenes / "single", [[("collins", 140, 60)]])  # one image: dropped
    empty = scenes / "duo" / "empty.png"
    Image.fromarray(np.full((SIZE, SIZE, 3), 128, np.uint8)).save(empty)  # no face: dropped
    out = tmp_path_factory.mktemp("dataset")
    result = build(scenes, out)
    assert result.exit_code == 0, result.output
    return scenes, out, result.output


def test_identities_are_matched_across_images(built):
    _, out, _ = built
    index = load_index(out)
    assert [scene.name for scene in index.scenes] == ["duo"]
    (scene,) = index.scenes
    assert len(scene.images) == 3
    people = {layer.identity for image in scene.images for layer in image.layers} - {BACKGROUND}
    assert len(people) == 2

    # collins is left in img0 and right in img1/img2: her identity must follow her
    def centre_x(image, identity):
        x0, _, x1, _ = image.layer(identity).box
        return (x0 + x1) / 2

    first = scene.images[0]
    left = min(people, key=lambda identity: centre_x(first, identity))
    for image in scene.images[1:]:
        assert centre_x(image, left) > SIZE / 2, "the left person of img0 is on the right later"


def test_layers_tile_the_image(built):
    _, out, _ = built
    index = load_index(out)
    for image in index.scenes[0].images:
        target = index.rgba(image.file)
        assert target.shape == (SIZE, SIZE, 4)
        for layer in image.layers:
            rgba = index.rgba(layer.file)
            x0, y0, x1, y1 = layer.box
            opaque = rgba[..., 3] > 0
            assert np.array_equal(rgba[..., :3][opaque], target[y0:y1, x0:x1, :3][opaque])
        people = [layer for layer in image.layers if layer.identity != BACKGROUND]
        assert all(layer.face is not None for layer in people)


def test_drops_are_reported(built):
    scenes, out, output = built
    index = load_index(out)
    assert str(scenes / "duo" / "empty.png") in index.dropped["no face"]
    assert str(scenes / "single") in index.dropped["fewer than two usable images"]
    assert "dropped: no face" in output


def test_a_log_gets_a_line_per_source_with_the_time_left(built):
    _, _, output = built  # CliRunner's stderr is no terminal, as a CI log's
    lines = [line for line in output.splitlines() if line.startswith("sources ")]
    assert len(lines) == 2, output
    assert re.fullmatch(r"sources 1/2: [\d.]+ (s|min) each, about [\d.]+ (s|min) left", lines[0])
    assert re.fullmatch(r"sources 2/2: [\d.]+ (s|min) each, [\d.]+ (s|min) in all", lines[1])


def test_resume_keeps_finished_scenes(built, tmp_path):
    scenes, out, _ = built
    marker = out / "duo" / "scene.json"
    before = marker.stat().st_mtime_ns
    result = build(scenes, out, "--resume")
    assert result.exit_code == 0, result.output
    assert marker.stat().st_mtime_ns == before
    assert len(load_index(out).scenes) == 1


def test_a_missing_or_wrong_source_is_a_clear_input_error(tmp_path):
    result = runner.invoke(
        app, ["dataset", "build", str(tmp_path / "none"), "-o", str(tmp_path / "out")]
    )
    assert result.exit_code == 2 and f"{tmp_path / 'none'} does not exist" in result.output
    (tmp_path / "notes.txt").write_text("not a scene")
    result = runner.invoke(
        app, ["dataset", "build", str(tmp_path / "notes.txt"), "-o", str(tmp_path / "out")]
    )
    assert result.exit_code == 2 and "not a folder of scenes or a video file" in result.output


def test_a_resumed_build_keeps_the_model_captions_of_the_scenes_it_keeps(built, tmp_path):
    import shutil

    scenes, out, _ = built
    copy = tmp_path / "dataset"
    shutil.copytree(out, copy)
    captioned = runner.invoke(
        app, ["dataset", "caption", str(copy), "--model", "builtin:tiny", "--device", "cpu"]
    )
    assert captioned.exit_code == 0, captioned.output
    before = {i.file: i for s in load_index(copy).scenes for i in s.images}
    assert {i.caption_source for i in before.values()} == {"model:builtin:tiny"}

    assert build(scenes, copy, "--resume").exit_code == 0
    kept = load_index(copy)
    assert {i.file: i for s in kept.scenes for i in s.images} == before  # captions and all
    assert [c["caption_source"] for c in kept.captioners] == ["model:builtin:tiny"]

    # A scene built again has new images: their old captions no longer describe them.
    (copy / "duo" / "scene.json").unlink()
    assert build(scenes, copy, "--resume").exit_code == 0
    rebuilt = load_index(copy)
    assert {i.caption_source for s in rebuilt.scenes for i in s.images} == {"default"}
    assert rebuilt.captioners is None
