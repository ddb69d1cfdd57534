"""`lc dataset build` on videos: shots, sampled frames, filters, bounded decoding, scenes across
shots, donors from other shots, sharded builds, training on it.

The test video is written here with PyAV from the two real photographs (the cut-outs of
Eileen Collins and Grace Hopper): two shots with a hard cut, people walking and growing, and a
still end to the second shot (near-duplicate frames).
"""

from __future__ import annotations

import dataclasses
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter
from safetensors.torch import load_file
from train_data import REPO, cutout
from typer.testing import CliRunner

from layercomposer import limits
from layercomposer.cli.main import app
from layercomposer.faces.types import Face
from layercomposer.train import video
from layercomposer.train.build import BuildOptions, build_dataset
from layercomposer.train.dataset import BACKGROUND, load_index
from layercomposer.train.sampler import SamplingConfig, sample_example
from layercomposer.train.video import Shot, VideoOptions

av = pytest.importorskip("av")
runner = CliRunner()
WIDTH, HEIGHT, FPS, SHOT_FRAMES = 320, 256, 8, 16  # 4 s; the build centre-crops to 256x256
SIZE = 256


# --- the test video -------------------------------------------------------------------------------


def paste(canvas: np.ndarray, person: np.ndarray, x: int) -> None:
    h, w = person.shape[:2]
    x, y = min(max(x, 0), WIDTH - w), HEIGHT - h
    alpha = person[..., 3:].astype(np.float32) / 255
    region = canvas[y : y + h, x : x + w]
    region[:] = person[..., :3] * alpha + region * (1 - alpha)


def frame(colour, layout) -> np.ndarray:
    """A frame: (person, height, x) cut-outs on a coloured background with a gentle gradient."""
    canvas = np.empty((HEIGHT, WIDTH, 3), np.float32)
    canvas[:] = colour
    canvas += np.linspace(-20, 20, WIDTH)[None, :, None]
    for name, height, x in layout:
        paste(canvas, cutout(name, height), x)
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)


def clip_frames(still: int = 6, blurred: int = 14) -> list[np.ndarray]:
    """Shot 1: Collins walks right and grows, Hopper walks left; frame `blurred` out of focus.
    Hard cut. Shot 2: the other way round on another background, the last `still` frames not
    moving."""
    frames = []
    for i in range(SHOT_FRAMES):
        t = i / (SHOT_FRAMES - 1)
        frames.append(frame((80, 120, 200), [("collins", int(120 + 30 * t), int(30 + 30 * t)), ("hopper", int(140 - 20 * t), int(180 - 25 * t))]))  # fmt: skip
    for i in range(SHOT_FRAMES):
        t = min(i, SHOT_FRAMES - still) / (SHOT_FRAMES - 1)
        frames.append(frame((200, 150, 90), [("hopper", int(125 + 25 * t), int(40 + 20 * t)), ("collins", int(150 - 20 * t), int(170 - 20 * t))]))  # fmt: skip
    soft = Image.fromarray(frames[blurred]).filter(ImageFilter.GaussianBlur(1))
    frames[blurred] = np.asarray(soft)
    return frames


def write_video(path: Path, frames: list[np.ndarray], codec: str = "libx264") -> Path:
    with av.open(str(path), "w") as container:
        options = {"crf": "18", "preset": "ultrafast"} if codec == "libx264" else {}
        stream = container.add_stream(codec, rate=FPS, options=options)
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"  # fmt: skip
        for pixels in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return write_video(tmp_path_factory.mktemp("clip") / "walk.mp4", clip_frames())


# --- pure functions -------------------------------------------------------------------------------


def test_shots_split_at_cuts_but_not_at_flashes():
    distances = np.full(40, 0.02)
    distances[[10, 12, 30]] = 0.8  # a cut at 10, a flash back at 12 (too soon), a cut at 30
    assert video.find_shots(distances, 0.35, min_shot_frames=4) == [
        Shot(0, 10),
        Shot(10, 30),
        Shot(30, 40),
    ]
    assert video.find_shots(distances, 0.9, 4) == [Shot(0, 40)]
    assert video.find_shots(np.zeros(0), 0.35, 4) == []


def test_samples_spread_across_the_shot():
    assert video.sample_indices(Shot(16, 32), 4) == [18, 22, 26, 30]
    assert video.sample_indices(Shot(5, 7), 8) == [5, 6]  # a short shot gives what it has
    picks = video.sample_indices(Shot(0, 1000), 8)
    assert len(picks) == 8 and np.all(np.diff(picks) == 125)


def test_histogram_distance_separates_scenes_not_motion():
    frames = clip_frames()
    within = video.histogram_distance(
        video.colour_histogram(frames[0]), video.colour_histogram(frames[15])
    )
    across = video.histogram_distance(
        video.colour_histogram(frames[15]), video.colour_histogram(frames[16])
    )
    assert within < 0.2 < 0.5 < across <= 1.0
    assert video.histogram_distance(video.colour_histogram(frames[3]), video.colour_histogram(frames[3])) == 0  # fmt: skip


def test_difference_hash_finds_still_frames_only():
    frames = clip_frames()
    hashes = [video.difference_hash(f) for f in frames]
    limit = VideoOptions().duplicate_bits
    assert video.hash_distance(hashes[28], hashes[31]) <= limit  # the still end of shot 2
    brighter = np.clip(frames[28].astype(int) + 12, 0, 255).astype(np.uint8)
    assert video.hash_distance(hashes[28], video.difference_hash(brighter)) <= limit
    for a, b in [(2, 6), (6, 10), (18, 22), (15, 16)]:  # half a second of walking, or the cut
        assert video.hash_distance(hashes[a], hashes[b]) > limit, (a, b)


@pytest.fixture(scope="module")
def astronaut_face():
    pytest.importorskip("dlib")
    skimage_data = pytest.importorskip("skimage.data")
    from layercomposer.faces import open_detector

    photo = skimage_data.astronaut()
    (face,) = open_detector("dlib").detect(photo)
    return photo, face


def test_blurred_and_small_faces_are_named(astronaut_face):
    photo, face = astronaut_face
    options = VideoOptions()
    assert video.face_problem(photo, [face], options) is None
    for radius in (2, 3):
        blurred = np.asarray(Image.fromarray(photo).filter(ImageFilter.GaussianBlur(radius)))
        assert video.face_problem(blurred, [face], options) == "face blurred"
    # the same photo with the face at 70% of its share of the image: under a raised minimum
    small = Face(tuple(v * 0.7 for v in face.box), face.score)
    shrunk = np.asarray(Image.fromarray(photo).resize((358, 358)))
    strict = VideoOptions(min_face_fraction=face.width / 512 * 0.9)
    assert video.face_problem(photo, [face], strict) is None
    assert video.face_problem(shrunk, [small], strict) is None  # same share of the image
    assert video.face_problem(photo, [small], strict) == "face too small"


def test_portrait_phone_video_is_turned_upright(tmp_path):
    """A phone's display matrix (-90 degrees) is applied as players apply it."""
    bar = np.zeros((32, 64, 3), np.uint8)
    bar[:, :8] = 255  # a white bar on the left of the stored frame
    path = write_video(tmp_path / "phone.mp4", [bar] * 3)
    data = bytearray(path.read_bytes())
    tkhd = data.index(b"tkhd")
    assert data[tkhd + 4] == 0  # version 0: 32-bit times, so the matrix sits 40 bytes on
    matrix = tkhd + 4 + 40
    data[matrix : matrix + 36] = struct.pack(">9i", 0, 0x10000, 0, -0x10000, 0, 0, 0, 0, 1 << 30)
    path.write_bytes(bytes(data))
    info = video.probe_video(path)
    (_, _, pixels), *_ = video.decode_frames(info, keep={0})
    assert pixels.shape == (64, 32, 3)  # portrait
    assert pixels[:8].mean() > 200 and pixels[16:].mean() < 30  # the bar is at the top


# --- bounded reading ------------------------------------------------------------------------------


def build(scenes: Path, out: Path, *extra: str):
    command = ["dataset", "build", str(scenes), "-o", str(out), "--resolution", str(SIZE)]
    return runner.invoke(app, [*command, "--detector", "dlib", *extra])


@pytest.mark.parametrize(
    ("cap", "value", "message"),
    [
        ("MAX_VIDEO_PIXELS", 320 * 255, "frames are 320x256 pixels, over lc's limit"),
        ("MAX_VIDEO_FRAMES", 31, "the video has 32 frames, over lc's limit of 31"),
        ("MAX_VIDEO_SECONDS", 3, "the video lasts 4 s, over lc's limit of 3 s"),
        ("MAX_VIDEO_BYTES", 1000, "video is"),
    ],
)
def test_a_video_over_a_cap_is_refused_before_decoding(
    clip, tmp_path, monkeypatch, cap, value, message
):
    monkeypatch.setattr(limits, cap, value)
    monkeypatch.setattr(video, "decode_frames", lambda *a, **k: pytest.fail("decoded"))
    result = build(clip, tmp_path / "out")
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_decoding_stops_at_the_frame_budget_whatever_the_header_says(tmp_path, monkeypatch):
    # Matroska stores no frame count: only the decoding budget can stop a long stream.
    path = write_video(tmp_path / "long.mkv", clip_frames())
    info = video.probe_video(path)
    assert info.frames is None
    monkeypatch.setattr(limits, "MAX_VIDEO_FRAMES", 10)
    decoded = 0
    with pytest.raises(limits.TooLargeError, match="more than 10 frames"):
        for _ in video.decode_frames(info, thumbnail=16):
            decoded += 1
    assert decoded == 10


@pytest.mark.parametrize("damage", ["noise", "truncated", "empty"])
def test_a_corrupt_video_is_refused_cleanly(clip, tmp_path, damage):
    data = clip.read_bytes()
    broken = tmp_path / "broken.mp4"
    if damage == "noise":
        broken.write_bytes(np.random.default_rng(0).bytes(len(data)))
    elif damage == "truncated":
        broken.write_bytes(data[: len(data) // 2])  # the index (moov) is at the end: lost
    else:
        broken.write_bytes(b"")
    result = build(broken, tmp_path / "out")
    assert result.exit_code == 2, result.output
    assert str(broken) in result.output and "Traceback" not in result.output


def test_two_videos_with_one_name_are_refused_and_dot_files_ignored(clip, tmp_path):
    sources = tmp_path / "sources"
    sources.mkdir()
    (sources / "._walk.mp4").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")
    result = build(sources, tmp_path / "out")
    assert result.exit_code == 1 and "has no scene folders and no videos" in result.output
    shutil.copy(clip, sources / "walk.mp4")
    shutil.copy(clip, sources / "walk.mov")
    result = build(sources, tmp_path / "out")
    assert result.exit_code == 2 and "would both make scenes walk-scene*" in result.output


# --- the whole build, and training on it ----------------------------------------------------------


def reference_embeddings():
    """Each person's identity vector from their own cut-out (the independent reference)."""
    from layercomposer.faces import open_detector, open_embedder

    detector, embedder = open_detector("dlib"), open_embedder("dlib")
    references = {}
    for name in ("collins", "hopper"):
        rgba = cutout(name, 300)
        canvas = np.full((320, 320, 3), 128, np.uint8)
        alpha = rgba[..., 3:] / 255
        h, w = rgba.shape[:2]
        canvas[:h, :w] = rgba[..., :3] * alpha + canvas[:h, :w] * (1 - alpha)
        (face,) = detector.detect(canvas)
        references[name] = embedder.embed(canvas, face)
    return embedder, references


@pytest.fixture(scope="module")
def built(clip, tmp_path_factory):
    pytest.importorskip("mediapipe")
    pytest.importorskip("dlib")
    scenes = tmp_path_factory.mktemp("sources")
    shutil.copy(clip, scenes / clip.name)  # videos beside a folder of photos
    (scenes / "walk.txt").write_text("two colleagues walking past each other\n")
    photos = scenes / "photos"
    photos.mkdir()
    for i in (0, 5):
        Image.fromarray(clip_frames()[i]).save(photos / f"still{i}.png")
    out = tmp_path_factory.mktemp("dataset")
    result = build(scenes, out, "--frames-per-shot", "4", "--workers", "2")
    assert result.exit_code == 0, result.output
    return scenes, out, result.output


def who_is_who(index, scene) -> dict[str, set[str]]:
    """Identity -> the people (by the reference embeddings) its faces are closest to."""
    embedder, references = reference_embeddings()
    who: dict[str, set[str]] = {}
    for image in scene.images:
        pixels = index.rgba(image.file)[..., :3]
        people = [layer for layer in image.layers if layer.identity != BACKGROUND]
        assert len(people) == 2
        for layer in people:
            vector = embedder.embed(np.ascontiguousarray(pixels), Face(layer.face, 1.0))
            distances = {n: float(np.linalg.norm(vector - r)) for n, r in references.items()}
            nearest = min(distances, key=distances.get)
            assert distances[nearest] < embedder.same_person_distance
            who.setdefault(layer.identity, set()).add(nearest)
    return who


def test_two_shots_of_the_same_people_make_one_scene_with_the_right_people(built):
    scenes, out, output = built
    index = load_index(out)
    assert [s.name for s in index.scenes] == ["photos", "walk-scene001"]
    scene = index.scenes[1]
    assert {i.shot for i in scene.images} == {"walk.mp4#1", "walk.mp4#2"}
    assert all(
        len([i for i in scene.images if i.shot == s]) >= 2 for s in ("walk.mp4#1", "walk.mp4#2")
    )
    assert {i.caption for i in scene.images} == {"two colleagues walking past each other"}
    assert {i.caption_source for i in scene.images} == {"sidecar"}
    # frame times as sampled: shot 1 at 0.25, 0.75, 1.25 s; shot 2 at 2.25, 2.75, 3.25 s
    assert [i.seconds for i in scene.images] == [0.25, 0.75, 1.25, 2.25, 2.75, 3.25]
    # two identities, each one person in every frame of both shots (the people swap sides
    # at the cut), and not the same person
    who = who_is_who(index, scene)
    assert sorted(who) == ["walk-scene001/p0", "walk-scene001/p1"]
    assert all(len(people) == 1 for people in who.values())
    assert who["walk-scene001/p0"] != who["walk-scene001/p1"]
    photos = index.scenes[0]
    assert {i.shot for i in photos.images} == {"photos/still0.png", "photos/still5.png"}
    assert {i.caption_source for i in photos.images} == {"default"}
    assert "scene walk-scene001: 6 images, 2 shots" in output


def test_dropped_frames_are_reported_with_their_time(built):
    scenes, out, output = built
    index = load_index(out)
    video_path = scenes / "walk.mp4"
    # shot 2 is sampled at 2.25, 2.75, 3.25 and 3.75 s; it stands still from 3.25 s
    assert index.dropped["near-duplicate frame"] == [f"{video_path}@3.75s"]
    # shot 1 at 0.25, 0.75, 1.25 and 1.75 s; the frame at 1.75 s is out of focus
    assert index.dropped["face blurred"] == [f"{video_path}@1.75s"]
    assert "dropped: near-duplicate frame" in output and "dropped: face blurred" in output
    kept = {image.file for scene in index.scenes for image in scene.images}
    assert "walk-scene001/walk-f000030.png" not in kept
    assert "walk-scene001/walk-f000014.png" not in kept
    assert {"walk-scene001/walk-f000026.png", "walk-scene001/walk-f000010.png"} <= kept


def test_unlocked_donors_come_from_the_other_shot(built):
    _, out, _ = built
    index = load_index(out)
    walk = dataclasses.replace(index, scenes=(index.scenes[1],))
    config = SamplingConfig(lock_probability=0.3, color_jitter=0.0)  # jitter: 2/3 of the time
    rng = np.random.default_rng(0)
    files = {image.file: image for image in walk.scenes[0].images}
    other = same = close = 0
    for _ in range(1000):
        sample = sample_example(walk, rng, config)
        target = files[sample.target_file]
        for source in sample.sources:
            if source.locked:
                continue
            donor = files[source.image]
            if donor.shot != target.shot:
                other += 1
            else:
                same += 1
                close += abs(donor.seconds - target.seconds) < config.min_donor_seconds
    assert other + same > 1500  # ~2100 unlocked layers of 3000
    assert other / (other + same) >= 0.95
    assert close == 0


def test_the_index_says_what_the_data_can_teach(built):
    _, out, output = built
    stats = load_index(out).stats
    assert stats["scenes"] == 2 and stats["images"] == 8
    assert stats["shots"] == 4  # two photos (each its own shot) and the two shots of the video
    assert stats["shots_per_scene"]["min"] == 2 and stats["images_per_scene"]["max"] == 6
    assert stats["people"] == 16  # two people in each of the 8 images
    assert stats["other_shot_donor_share"] == 1.0 and stats["no_donor_share"] == 0.0
    # not near-copies: the same person walking, in another shot, is clearly apart
    assert 0.03 < stats["appearance_distance"]["min"] < stats["appearance_distance"]["max"] < 0.18
    assert "with a donor from another shot" in output and "100% (16 of 16)" in output


def test_the_videos_of_a_folder_make_one_scene_across_them(tmp_path):
    pytest.importorskip("mediapipe")
    pytest.importorskip("dlib")
    frames = clip_frames()
    folder = tmp_path / "sources" / "pair"
    folder.mkdir(parents=True)
    write_video(folder / "first.mp4", frames[:SHOT_FRAMES])  # each video is one shot
    write_video(folder / "second.mp4", frames[SHOT_FRAMES:])
    Image.fromarray(frames[4]).save(folder / "photo.png")  # a photo beside them: its own shot
    options = BuildOptions(SIZE, "dlib", video=VideoOptions(frames_per_shot=4))
    index = build_dataset(tmp_path / "sources", tmp_path / "out", options)
    assert [s.name for s in index.scenes] == ["pair-scene001"]
    (scene,) = index.scenes
    shots = {"pair/first.mp4#1", "pair/photo.png", "pair/second.mp4#1"}
    assert {i.shot for i in scene.images} == shots
    assert scene.images[0].file == "pair-scene001/first-f000002.png"
    assert "pair-scene001/photo.png" in {i.file for i in scene.images}
    who = who_is_who(index, scene)
    assert sorted(who) == ["pair-scene001/p0", "pair-scene001/p1"]
    assert all(len(people) == 1 for people in who.values())
    assert not (tmp_path / "out" / ".staging").exists()
    assert (tmp_path / "out" / "pair.video.json").exists()


def scene_content(out: Path, scene) -> list:
    """A scene's records and the pixels of every file they name."""
    content = []
    for image in scene.images:
        files = [image.file, *(layer.file for layer in image.layers)]
        content.append((image, [np.asarray(Image.open(out / f)).tobytes() for f in files]))
    return content


def test_shards_together_are_the_unsharded_build(built, tmp_path):
    scenes, out, _ = built
    whole = load_index(out)
    parts = []
    for k in (0, 1):
        part = tmp_path / f"part{k}"
        result = build(scenes, part, "--frames-per-shot", "4", "--shard", f"{k}/2")
        assert result.exit_code == 0, result.output
        assert f"(shard {k}/2)" in result.output
        parts.append(load_index(part))
    assert [s.name for s in parts[0].scenes] == ["photos"]  # units in name order, i mod 2
    assert [s.name for s in parts[1].scenes] == ["walk-scene001"]
    assert not (tmp_path / "part0" / "walk-scene001").exists()
    assert not (tmp_path / "part1" / "photos").exists()
    assert [p.shard for p in parts] == ["0/2", "1/2"] and whole.shard is None
    union = sorted((s for p in parts for s in p.scenes), key=lambda s: s.name)
    assert [s.name for s in union] == [s.name for s in whole.scenes]
    for scene, (k, part) in zip(union, [(0, parts[0]), (1, parts[1])], strict=True):
        assert scene == whole.scenes[k]  # names, images, layers, shots, times, captions
        assert scene_content(part.root, scene) == scene_content(out, whole.scenes[k])
    # Trained on together (`data.path` as a list), the parts train as the unsharded dataset.
    both = train_on(f"[{tmp_path / 'part0'},{tmp_path / 'part1'}]", tmp_path / "run-parts")
    one = train_on(str(out), tmp_path / "run-whole")
    assert (both / "metrics.csv").exists()
    assert losses(both) == losses(one) and len(losses(one)) == 3
    a, b = (load_file(run / "pytorch_lora_weights.safetensors") for run in (both, one))
    assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


def train_on(data_path: str, run: Path) -> Path:
    sets = [f"data.path={data_path}", f"output_dir={run}", "validation_canvases=[]",
            "train.steps=3", "train.batch_size=2", "checkpoint_every=100"]  # fmt: skip
    result = runner.invoke(
        app,
        ["train", str(REPO / "configs" / "tiny.yaml"), *(a for s in sets for a in ("--set", s))],
    )
    assert result.exit_code == 0, result.output
    return run


def losses(run: Path) -> list[str]:
    """The loss column of a run's metrics.csv, as written (6 significant digits)."""
    rows = (run / "metrics.csv").read_text().splitlines()[1:]
    return [row.split(",")[1] for row in rows]


def test_resume_keeps_finished_videos(built, monkeypatch):
    scenes, out, _ = built
    record = out / "walk.video.json"
    before = record.stat().st_mtime_ns
    monkeypatch.setattr(video, "cut_distances", lambda *a: pytest.fail("decoded again"))
    result = build(scenes, out, "--frames-per-shot", "4", "--resume")
    assert result.exit_code == 0, result.output
    assert record.stat().st_mtime_ns == before
    assert len(load_index(out).scenes) == 2
    assert "near-duplicate frame" in load_index(out).dropped


def test_resume_builds_a_video_again_when_its_record_is_damaged(built):
    scenes, out, _ = built
    record = out / "walk.video.json"
    record.write_text('{"scenes": [')  # as if the disk filled up while it was written
    steps = []
    options = BuildOptions(SIZE, "dlib", video=VideoOptions(frames_per_shot=4))
    index = build_dataset(scenes, out, options, resume=True, on_step=lambda *a: steps.append(a))
    assert steps == [("walk.mp4: shots", 1, 2), ("walk.mp4: shots", 2, 2)]  # built again
    assert [s.name for s in index.scenes] == ["photos", "walk-scene001"]
    assert load_index(out).dropped["near-duplicate frame"] == [f"{scenes / 'walk.mp4'}@3.75s"]


def test_lc_train_trains_on_the_video_dataset(built, tmp_path):
    _, out, _ = built
    run = tmp_path / "run"
    sets = [f"data.path={out}", f"output_dir={run}", "validation_canvases=[]", "train.steps=2",
            "train.batch_size=1", "checkpoint_every=2", "sample_every=100"]  # fmt: skip
    result = runner.invoke(
        app,
        ["train", str(REPO / "configs" / "tiny.yaml"), *(a for s in sets for a in ("--set", s))],
    )
    assert result.exit_code == 0, result.output
    assert (run / "pytorch_lora_weights.safetensors").exists()
    assert len((run / "metrics.csv").read_text().splitlines()) == 3  # header and two steps
