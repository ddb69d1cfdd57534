"""`lc autolayout` end to end on real photos, checked the way a person would check it.

Group priors are built here by pasting the astronaut (scikit-image) and Grace Hopper
(matplotlib) at known places and sizes on a plain image. Where each face *should* land is that
paste applied to the face found in the original photo; where it *did* land is measured by
running the detector on `lc preview --collage-only` of the written canvas, not by trusting the
placement code.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from layercomposer.autolayout import AutolayoutRequest, PriorSettings, autolayout
from layercomposer.cli.main import app
from layercomposer.cli.preview import preview_canvas
from layercomposer.errors import InputError, UsageError
from layercomposer.faces import open_detector

skimage_data = pytest.importorskip("skimage.data", reason="scikit-image is in lc's [dev] extra")
cbook = pytest.importorskip("matplotlib.cbook", reason="matplotlib is in lc's [dev] extra")
pytest.importorskip("mediapipe", reason="mediapipe is in lc's [autolayout] extra")

runner = CliRunner()
BACKDROP = (118, 140, 160)
CENTRE_TOLERANCE_PX = 4
SIZE_TOLERANCE = 0.05


def lc(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    hopper = Image.open(cbook.get_sample_data("grace_hopper.jpg")).convert("RGB")
    return {"astronaut": skimage_data.astronaut(), "hopper": np.asarray(hopper)}


@pytest.fixture(scope="module")
def detector():
    detector = open_detector("mediapipe")
    yield detector
    detector.close()


@pytest.fixture
def subjects(tmp_path, photos) -> dict[str, Path]:
    paths = {"astronaut": tmp_path / "astronaut.png", "hopper": tmp_path / "hopper.jpg"}
    Image.fromarray(photos["astronaut"]).save(paths["astronaut"])
    Image.fromarray(photos["hopper"]).save(paths["hopper"], quality=95)
    return paths


def paste(canvas: np.ndarray, photo: np.ndarray, scale: float, at: tuple[int, int], angle=0.0):
    """Paste `photo`, resized by `scale` (then turned by `angle`), with its top-left at `at`."""
    image = Image.fromarray(photo)
    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.LANCZOS)
    if angle:
        image = image.rotate(angle, Image.Resampling.BICUBIC, expand=True, fillcolor=BACKDROP)
    x, y = at
    h, w = min(image.height, canvas.shape[0] - y), min(image.width, canvas.shape[1] - x)
    canvas[y : y + h, x : x + w] = np.asarray(image)[:h, :w]
    return canvas


def group_prior(tmp_path, photos, detector, placements, size=(640, 480)):
    """Write a prior with each (name, scale, at) pasted; return its path and the true faces."""
    canvas = np.full((size[1], size[0], 3), BACKDROP, np.uint8)
    truth = {}
    for name, scale, at in placements:
        paste(canvas, photos[name], scale, at)
        truth[name] = detector.detect(photos[name])[0].mapped(scale, at)
    path = tmp_path / "group.png"
    Image.fromarray(canvas).save(path)
    return path, truth


def collage_faces(canvas: Path, detector):
    collage = preview_canvas(canvas, canvas.with_suffix(".collage.png"), collage_only=True)
    return detector.detect(np.asarray(Image.open(collage).convert("RGB")))


def nearest(faces, point):
    return min(faces, key=lambda face: math.dist(face.center, point))


def run(tmp_path, subjects, **options) -> tuple:
    request = AutolayoutRequest(
        prompt=options.pop("prompt", "two pioneers of computing and space"),
        subjects=subjects,
        output=options.pop("output", tmp_path / "out" / "scene.yaml"),
        **options,
    )
    warnings: list[str] = []
    return autolayout(request, warnings.append), warnings


# --- placement accuracy -----------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["mediapipe", "dlib"])
def test_each_face_lands_on_its_prior_face(tmp_path, photos, subjects, detector, backend):
    if backend == "dlib":
        pytest.importorskip("dlib", reason="dlib-bin is in lc's [autolayout] extra")
    # Both backends place; MediaPipe measures on the collage either way.
    prior, truth = group_prior(
        tmp_path, photos, detector, [("astronaut", 0.55, (30, 120)), ("hopper", 0.42, (380, 150))]
    )
    result, _ = run(
        tmp_path, [subjects["astronaut"], subjects["hopper"]], prior=prior, detector=backend
    )
    assert [p.face_index for p in result.placements] == [0, 1]  # left to right
    found = collage_faces(result.canvas, detector)
    assert len(found) == 2
    for name in ("astronaut", "hopper"):
        face = nearest(found, truth[name].center)
        assert math.dist(face.center, truth[name].center) <= CENTRE_TOLERANCE_PX, name
        assert abs(face.size / truth[name].size - 1) <= SIZE_TOLERANCE, name


def test_cli_writes_a_canvas_that_renders_with_builtin_tiny(tmp_path, photos, subjects, detector):
    prior, _ = group_prior(
        tmp_path, photos, detector, [("astronaut", 0.5, (20, 100)), ("hopper", 0.4, (300, 120))],
        size=(448, 320),
    )  # fmt: skip
    canvas = tmp_path / "out" / "scene.yaml"
    result = lc(
        "autolayout", "--prior", prior, "--subject", subjects["astronaut"], "--subject",
        subjects["hopper"], "--prompt", "two pioneers", "-o", canvas, "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout.strip().splitlines()[-1])
    assert [p["name"] for p in printed["placements"]] == ["astronaut", "hopper"]
    assert set(printed["placements"][0]) == {
        "name", "face_index", "target_center", "target_size", "scale", "rotate", "position",
        "aligned_by",
    }  # fmt: skip
    folder = tmp_path / "out" / "scene.autolayout"
    assert sorted(p.name for p in folder.iterdir()) == [
        "astronaut.png", "hopper.png", "manifest.json", "preview.png", "prior.png",
    ]  # fmt: skip
    assert Image.open(folder / "astronaut.png").mode == "RGBA"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["prior"]["source"] == "file" and len(manifest["prior"]["sha256"]) == 64
    assert manifest["detector"]["models"][0]["verified"] is True
    assert manifest["segmenter"]["backend"] == "mediapipe"
    assert [s["faces"][0]["score"] > 0.7 for s in manifest["subjects"]] == [True, True]
    assert manifest["assignment"]["pairs"] == [
        {"subject": "astronaut", "face_index": 0},
        {"subject": "hopper", "face_index": 1},
    ]
    rendered = lc(
        "render", canvas, "--model", "builtin:tiny", "--set", "steps=1", "-o", tmp_path / "r"
    )
    assert rendered.exit_code == 0, rendered.output
    assert Image.open(tmp_path / "r" / "scene" / "0.png").size == (448, 320)


def test_one_subject_is_turned_and_scaled_by_its_eye_line(tmp_path, photos, subjects, detector):
    canvas = np.full((512, 512, 3), BACKDROP, np.uint8)
    paste(canvas, photos["astronaut"], 0.7, (60, 40), angle=20)
    prior = tmp_path / "tilted.png"
    Image.fromarray(canvas).save(prior)
    truth = detector.detect(canvas)[0]
    result, _ = run(tmp_path, [subjects["astronaut"]], prior=prior)
    placement = result.placements[0]
    assert placement.aligned_by == "eyes"
    assert abs(placement.rotate - 20) < 3
    face = collage_faces(result.canvas, detector)[0]
    assert abs(face.eye_angle - truth.eye_angle) < 3
    assert math.dist(face.eye_center, truth.eye_center) <= CENTRE_TOLERANCE_PX
    assert abs(face.eye_distance / truth.eye_distance - 1) <= SIZE_TOLERANCE


def test_exif_orientation_is_honoured(tmp_path, photos, detector):
    # Stored sideways with orientation 6 ("rotate 90 clockwise to view"): upright once applied.
    sideways = Image.fromarray(np.ascontiguousarray(np.rot90(photos["astronaut"])))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "sideways.jpg"
    sideways.save(path, exif=exif, quality=95)
    canvas = paste(np.full((480, 480, 3), BACKDROP, np.uint8), photos["astronaut"], 0.6, (100, 80))
    Image.fromarray(canvas).save(tmp_path / "prior.png")
    result, _ = run(tmp_path, [path], prior=tmp_path / "prior.png")
    subject = result.manifest["subjects"][0]
    assert subject["exif_orientation"] == 6 and subject["size"] == [512, 512]
    assert result.placements[0].rotate == pytest.approx(0, abs=3)  # no turn needed: upright
    face = collage_faces(result.canvas, detector)[0]
    assert abs(face.eye_angle) < 5


def test_assign_size_and_manual(tmp_path, photos, subjects, detector):
    prior, _ = group_prior(
        tmp_path, photos, detector, [("astronaut", 0.4, (20, 160)), ("hopper", 0.5, (330, 120))]
    )
    both = [subjects["astronaut"], subjects["hopper"]]
    by_size, _ = run(tmp_path, both, prior=prior, assign="size")
    assert [p.face_index for p in by_size.placements] == [1, 0]  # first subject: largest face
    manual, _ = run(
        tmp_path, both, prior=prior, assign="manual", faces=[1, 0], output=tmp_path / "m.yaml"
    )
    assert [p.face_index for p in manual.placements] == [1, 0]
    with pytest.raises(UsageError, match="no face 5"):
        run(tmp_path, both, prior=prior, assign="manual", faces=[5, 0], output=tmp_path / "x.yaml")


def test_background_keeps_the_prior_as_a_locked_layer(tmp_path, photos, subjects, detector):
    prior, _ = group_prior(tmp_path, photos, detector, [("astronaut", 0.5, (100, 100))])
    result, _ = run(tmp_path, [subjects["astronaut"]], prior=prior, background="prior")
    spec = yaml.safe_load(result.canvas.read_text())
    assert spec["background"] == {
        "image": "scene.autolayout/prior.png", "fit": "cover", "lock": True
    }  # fmt: skip
    assert lc("validate", result.canvas).exit_code == 0


def test_a_generated_prior_with_builtin_tiny(tmp_path, subjects):
    # Random weights draw noise, so no face: --fallback grid places the subject in a row.
    settings = PriorSettings(model="builtin:tiny", size=(128, 128), steps=1, seed=3)
    result, warnings = run(
        tmp_path, [subjects["astronaut"]], prior_settings=settings, fallback="grid"
    )
    record = result.manifest["prior"]
    assert record["source"] == "generated" and record["seed"] == 3
    assert record["model"]["id"] == "builtin:tiny"
    assert record["prompt"].endswith(
        "A photo of one person, face clearly visible, looking at the camera."
    )
    assert result.placements[0].face_index is None
    assert any("--fallback grid" in w for w in warnings)


# --- bad input ------------------------------------------------------------------------------


def test_a_subject_without_a_face_is_an_error_naming_it(tmp_path, photos, subjects, detector):
    prior, _ = group_prior(tmp_path, photos, detector, [("astronaut", 0.5, (100, 100))])
    blob = np.zeros((200, 160, 4), np.uint8)
    blob[40:190, 30:130] = (90, 60, 200, 255)  # a cut-out with no face
    Image.fromarray(blob).save(tmp_path / "blob.png")
    out = tmp_path / "out" / "scene.yaml"
    result = lc(
        "autolayout",
        "--prior",
        prior,
        "--subject",
        tmp_path / "blob.png",
        "--prompt",
        "x",
        "-o",
        out,
    )
    assert result.exit_code == 2
    assert "blob.png: no face found" in result.output and "--no-face-ok" in result.output
    assert not (tmp_path / "out").exists()  # nothing written, not even the folder

    placed, warnings = run(tmp_path, [tmp_path / "blob.png"], prior=prior, no_face_ok=True)
    assert placed.manifest["subjects"][0]["face_source"] == "segmentation"
    assert placed.manifest["subjects"][0]["alpha_source"] == "alpha"
    assert any("--no-face-ok" in w for w in warnings)


def test_several_faces_in_a_subject_take_the_largest_and_warn(tmp_path, photos, detector):
    pair = np.full((520, 760, 3), BACKDROP, np.uint8)
    paste(pair, photos["astronaut"], 1.0, (0, 0))
    paste(pair, photos["hopper"], 0.35, (540, 150))
    Image.fromarray(pair).save(tmp_path / "pair.png")
    prior, _ = group_prior(tmp_path, photos, detector, [("astronaut", 0.5, (200, 100))])
    result, warnings = run(tmp_path, [tmp_path / "pair.png"], prior=prior)
    assert any("2 faces found; using the largest" in w for w in warnings)
    face = result.manifest["subjects"][0]["faces"][0]
    assert face["box"][2] < 512  # the astronaut's, on the left
    cutout = Image.open(result.folder / "pair.png")
    assert cutout.width < 530  # Grace Hopper was cut away


def test_too_few_prior_faces_is_an_error_with_the_count_or_a_row(
    tmp_path, photos, subjects, detector
):
    prior, _ = group_prior(tmp_path, photos, detector, [("astronaut", 0.5, (100, 100))])
    both = [subjects["astronaut"], subjects["hopper"]]
    with pytest.raises(InputError, match="the prior has 1 usable face for 2 subjects"):
        run(tmp_path, both, prior=prior)
    result, warnings = run(tmp_path, both, prior=prior, fallback="grid")
    assert [p.face_index for p in result.placements] == [0, None]
    assert any("placing hopper in a row" in w for w in warnings)


def test_unreadable_images_are_clear_errors(tmp_path, subjects, photos, detector):
    prior, _ = group_prior(tmp_path, photos, detector, [("astronaut", 0.5, (100, 100))])
    data = subjects["astronaut"].read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 3])
    (tmp_path / "photo.heic").write_bytes(b"\x00\x00\x00\x18ftypheic" + bytes(64))
    cases = {
        tmp_path / "cut.png": "corrupt or truncated",
        tmp_path / "photo.heic": "not an image format lc can read",
        tmp_path / "missing.png": "no such file",
    }
    for path, message in cases.items():
        result = lc(
            "autolayout",
            "--prior",
            prior,
            "--subject",
            path,
            "--prompt",
            "x",
            "-o",
            tmp_path / "o" / "s.yaml",
        )
        assert result.exit_code == 2, result.output
        assert f"subject {path}: {message}" in " ".join(result.output.split())


def test_a_face_below_the_detector_range_is_a_clear_error(tmp_path, photos, detector):
    far = paste(np.full((512, 512, 3), BACKDROP, np.uint8), photos["astronaut"], 0.1, (200, 200))
    Image.fromarray(far).save(tmp_path / "far.png")
    prior, _ = group_prior(tmp_path, photos, detector, [("astronaut", 0.5, (100, 100))])
    result = lc(
        "autolayout",
        "--prior",
        prior,
        "--subject",
        tmp_path / "far.png",
        "--prompt",
        "x",
        "-o",
        tmp_path / "o" / "s.yaml",
    )
    assert result.exit_code == 2
    assert "misses faces smaller than about 18 px" in " ".join(result.output.split())


def test_outputs_are_never_overwritten_without_force(tmp_path, photos, subjects, detector):
    prior, _ = group_prior(tmp_path, photos, detector, [("astronaut", 0.5, (100, 100))])
    first, _ = run(tmp_path, [subjects["astronaut"]], prior=prior)
    before = first.canvas.read_text()
    with pytest.raises(UsageError, match="already exist"):
        run(tmp_path, [subjects["astronaut"]], prior=prior)
    again, _ = run(tmp_path, [subjects["hopper"]], prior=prior, force=True)
    assert again.canvas.read_text() != before
    assert sorted(p.name for p in again.folder.iterdir())[0] == "hopper.png"
    leftovers = [p.name for p in again.canvas.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_masks_replace_the_segmenter_and_must_match_their_subject(
    tmp_path, photos, subjects, detector
):
    prior, _ = group_prior(tmp_path, photos, detector, [("astronaut", 0.5, (100, 100))])
    mask = np.zeros((512, 512), np.uint8)
    mask[40:512, 100:400] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    result, _ = run(
        tmp_path, [subjects["astronaut"]], prior=prior, masks={"astronaut": tmp_path / "mask.png"}
    )
    subject = result.manifest["subjects"][0]
    assert subject["alpha_source"] == "mask" and subject["cutout_size"] == [
        304,
        474,
    ]  # the mask's box + 2 px
    Image.fromarray(mask[:300]).save(tmp_path / "short.png")
    with pytest.raises(InputError, match="is 512x300 but its subject is 512x512"):
        run(
            tmp_path,
            [subjects["astronaut"]],
            prior=prior,
            masks={"astronaut.png": tmp_path / "short.png"},
            output=tmp_path / "b.yaml",
        )
    with pytest.raises(UsageError, match="no subject called 'bob'"):
        run(
            tmp_path,
            [subjects["astronaut"]],
            prior=prior,
            masks={"bob": tmp_path / "mask.png"},
            output=tmp_path / "c.yaml",
        )


def test_more_prior_faces_than_subjects_says_which_faces_are_taken(
    tmp_path, photos, subjects, detector
):
    pastes = [
        ("astronaut", 0.4, (20, 100)),
        ("hopper", 0.3, (330, 100)),
        ("astronaut", 0.4, (640, 100)),
    ]
    prior, _ = group_prior(tmp_path, photos, detector, pastes, size=(960, 480))
    result, warnings = run(tmp_path, [subjects["hopper"]], prior=prior)
    (said,) = [w for w in warnings if "the prior has" in w]
    taken = result.placements[0].face_index
    assert f"the prior has 3 faces for 1 subject: hopper on face {taken} (at " in said
    left = sorted({0, 1, 2} - {taken})
    assert f"faces {left[0]} (at " in said and f", {left[1]} (at " in said and "left empty" in said
    two, _ = group_prior(tmp_path, photos, detector, pastes[:2], size=(960, 480))
    _, warnings = run(tmp_path, [subjects["hopper"]], prior=two, output=tmp_path / "two.yaml")
    (said,) = [w for w in warnings if "the prior has" in w]
    assert "the prior has 2 faces for 1 subject: hopper on face" in said
    assert re.search(r"; face \d \(at \d+,\d+\) left empty", said), said


def test_a_missing_prior_model_names_the_option_that_sets_it(tmp_path, subjects, monkeypatch):
    pytest.importorskip("torch", reason="generating a prior needs lc's [render] extra")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    args = ("--prompt", "x", "--subject", subjects["astronaut"], "-o", tmp_path / "o" / "s.yaml")
    result = lc("autolayout", *args)
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())
    assert "black-forest-labs/FLUX.1-dev" in text and "point --prior-model at a local copy" in text
    assert "--model " not in text.replace("--prior-model", "")
    # ... and that option is the one lc autolayout takes
    retry = lc("autolayout", *args, "--prior-model", tmp_path / "nowhere")
    assert retry.exit_code == 1 and "does not exist" in retry.output
