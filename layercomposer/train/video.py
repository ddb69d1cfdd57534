"""Videos as a source of scenes: bounded probing and decoding, shot cuts, frame sampling, filters.

A video becomes scenes in two bounded passes over the file (PyAV, FFmpeg's decoders):

1. every frame, shrunk to a 64x64 thumbnail, gives its colour-histogram distance to the frame
   before it; a distance over `cut_threshold` is a cut (a hard cut between shots);
2. `frames_per_shot` frames spread evenly across each shot are decoded at full size and handed
   over shot by shot, so memory holds one shot's frames, never the video.

Both passes count frames against `limits.MAX_VIDEO_FRAMES` and check each frame's size and time,
so a container whose header lies cannot make lc decode more than the caps allow.

The decisions are pure functions of small arrays (histograms, hashes, face crops), tested alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .. import limits
from ..errors import InputError, LcError
from ..faces.types import Face

VIDEO_SUFFIXES = {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts"}
INSTALL_HINT = 'pip install av (or lc\'s "video" extra)'

THUMBNAIL_SIDE = 64  # the shot detector's view of a frame: 4096 pixels, ~32 per histogram bin
HISTOGRAM_BINS = (8, 4, 4)  # hue, saturation, value: 128 bins; hue carries most of a scene's look
HASH_SIDE = 16  # difference hash: 16x16 = 256 bits (8x8 misses a person moving a few pixels)
FACE_CROP_SIDE = 64  # the sharpness measure sees every face at this size


@dataclass(frozen=True)
class VideoOptions:
    """How a video is cut into shots and which sampled frames are kept.

    The defaults are documented in docs/training.md ("Datasets from videos"), with why.
    """

    frames_per_shot: int = 8  # sampled evenly across each shot, before the filters
    cut_threshold: float = 0.35  # colour-histogram distance (0..1) between frames at a cut
    min_shot_seconds: float = 0.5  # a second cut closer than this is ignored (flashes, glitches)
    duplicate_bits: int = 12  # difference hashes this close (of 256 bits): near-duplicate frames
    min_face_fraction: float = 0.08  # a face narrower than this share of the image is too small
    min_face_sharpness: float = 100.0  # variance of the Laplacian on the face, resized to 64x64


@dataclass(frozen=True)
class VideoInfo:
    """What a video's container says about its first video stream (checked against the caps)."""

    path: Path
    bytes: int
    width: int
    height: int
    fps: float  # the stream's average rate; 25 when the container does not say
    seconds: float | None  # None: the container does not say
    frames: int | None  # None: the container does not say


@dataclass(frozen=True)
class Shot:
    """Frames [start, end) of a video, by decoding order."""

    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class SampledFrame:
    index: int  # in decoding order
    seconds: float  # presentation time
    pixels: np.ndarray  # (H, W, 3) uint8, full size


def is_video(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES


def _import_av():
    try:
        import av
    except ImportError as exc:
        # a missing package is the installation's failure (exit 1), not the input's
        raise LcError(f"reading videos needs PyAV ({exc})", hint=INSTALL_HINT) from None
    return av


# --- bounded reading ------------------------------------------------------------------------------


def probe_video(path: str | Path) -> VideoInfo:
    """The video's stream metadata, or InputError/TooLargeError before any frame is decoded."""
    av = _import_av()
    path = Path(path)
    size = limits.check_file_size(path, limits.MAX_VIDEO_BYTES, "video")
    if size == 0:
        raise InputError(f"{path} is empty (0 bytes)")
    try:
        # Opening reads the header and probes at most FFmpeg's probesize (5 MB) of packets.
        with av.open(str(path), metadata_errors="ignore") as container:
            if not container.streams.video:
                raise InputError(f"{path} has no video stream")
            stream = container.streams.video[0]
            width, height = stream.codec_context.width, stream.codec_context.height
            rate = stream.average_rate or stream.guessed_rate
            fps = float(rate) if rate else 25.0
            seconds = None
            if stream.duration is not None and stream.time_base is not None:
                seconds = float(stream.duration * stream.time_base)
            elif container.duration is not None:
                seconds = container.duration / av.time_base
            frames = stream.frames or None
    except av.error.FFmpegError as exc:
        raise InputError(f"{path} is not a video lc can read ({_ffmpeg_text(exc)})") from None
    info = VideoInfo(path, size, width, height, fps, seconds, frames)
    check_video_info(info)
    return info


def check_video_info(info: VideoInfo) -> None:
    """TooLargeError if the declared frame size, duration or frame count is over lc's caps."""
    if info.width <= 0 or info.height <= 0:
        raise InputError(
            f"{info.path}: the video claims a frame size of {info.width}x{info.height} pixels"
        )
    if info.width * info.height > limits.MAX_VIDEO_PIXELS:
        raise limits.TooLargeError(
            f"{info.path}: frames are {info.width}x{info.height} pixels, over lc's limit of "
            f"{limits.MAX_VIDEO_PIXELS / 1e6:g} MP a frame",
            hint="scale it down first, e.g. ffmpeg -i in.mp4 -vf scale=1920:-2 out.mp4",
        )
    if info.seconds is not None and info.seconds > limits.MAX_VIDEO_SECONDS:
        raise limits.TooLargeError(
            f"{info.path}: the video lasts {info.seconds:.0f} s, over lc's limit of "
            f"{limits.MAX_VIDEO_SECONDS} s",
            hint="cut it into parts, e.g. ffmpeg -i in.mp4 -c copy -f segment -segment_time 3600 part%d.mp4",
        )
    if info.frames is not None and info.frames > limits.MAX_VIDEO_FRAMES:
        raise limits.TooLargeError(
            f"{info.path}: the video has {info.frames} frames, over lc's limit of "
            f"{limits.MAX_VIDEO_FRAMES}"
        )


def decode_frames(
    info: VideoInfo, keep: set[int] | None = None, thumbnail: int | None = None
) -> Iterator[tuple[int, float, np.ndarray | None]]:
    """(index, seconds, RGB pixels) for each decoded frame; pixels only for indices in `keep`.

    With `thumbnail`, every frame's pixels come as a `thumbnail`-sided square instead (scaled
    by FFmpeg, not decoded to full size in Python). Whatever the header said, decoding stops
    with TooLargeError past MAX_VIDEO_FRAMES frames, MAX_VIDEO_SECONDS or a frame over
    MAX_VIDEO_PIXELS, and a decoding failure is an InputError naming the file and frame.
    """
    av = _import_av()
    index, start = -1, None
    try:
        with av.open(str(info.path), metadata_errors="ignore") as container:
            stream = container.streams.video[0]
            for index, frame in enumerate(container.decode(stream)):  # noqa: B007 - used below
                if index >= limits.MAX_VIDEO_FRAMES:
                    raise limits.TooLargeError(
                        f"{info.path}: the video has more than {limits.MAX_VIDEO_FRAMES} frames "
                        f"(lc's limit; the header said {info.frames or 'nothing'})"
                    )
                if frame.width * frame.height > limits.MAX_VIDEO_PIXELS:
                    raise limits.TooLargeError(
                        f"{info.path}: frame {index} is {frame.width}x{frame.height} pixels, "
                        f"over lc's limit of {limits.MAX_VIDEO_PIXELS / 1e6:g} MP"
                    )
                # from the first frame: MPEG-TS and cut files start at any timestamp
                stamp = float(frame.time) if frame.time is not None else index / info.fps
                start = stamp if start is None else start
                seconds = stamp - start
                if seconds > limits.MAX_VIDEO_SECONDS:
                    raise limits.TooLargeError(
                        f"{info.path}: the video runs past {limits.MAX_VIDEO_SECONDS} s "
                        "(lc's limit)"
                    )
                if thumbnail:
                    pixels = frame.to_ndarray(width=thumbnail, height=thumbnail, format="rgb24")
                elif keep is not None and index in keep:
                    pixels = upright(frame.to_ndarray(format="rgb24"), frame.rotation)
                else:
                    pixels = None
                yield index, seconds, pixels
    except av.error.FFmpegError as exc:
        raise InputError(
            f"{info.path} cannot be decoded (at frame {index + 1}: {_ffmpeg_text(exc)})",
            hint="re-encode it, e.g. ffmpeg -i in.mp4 -c:v libx264 out.mp4",
        ) from None


def upright(pixels: np.ndarray, rotation: float) -> np.ndarray:
    """A decoded frame turned as players show it: `rotation` is the container's display matrix
    angle, counter-clockwise (phones record portrait video as landscape frames with -90)."""
    turns = round(rotation / 90) % 4
    return np.ascontiguousarray(np.rot90(pixels, turns)) if turns else pixels


def _ffmpeg_text(exc: Exception) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


# --- shots ---------------------------------------------------------------------------------------


def colour_histogram(rgb: np.ndarray) -> np.ndarray:
    """(128,) float: the share of pixels in each hue x saturation x value bin of an RGB image."""
    hsv = np.asarray(Image.fromarray(rgb).convert("HSV")).reshape(-1, 3)
    bins = np.array(HISTOGRAM_BINS)
    cells = (hsv.astype(np.int64) * bins // 256).T  # (3, N): each pixel's bin per channel
    flat = np.ravel_multi_index(tuple(cells), HISTOGRAM_BINS)
    counts = np.bincount(flat, minlength=int(np.prod(bins))).astype(np.float64)
    return counts / max(counts.sum(), 1.0)


def histogram_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Total variation between two normalised histograms: 0 the same colours, 1 none shared."""
    return float(0.5 * np.abs(a - b).sum())


def find_shots(distances: np.ndarray, threshold: float, min_shot_frames: int) -> list[Shot]:
    """The shots of a video from each frame's histogram distance to the frame before it.

    `distances[i]` compares frame i with frame i-1 (`distances[0]` is ignored). A cut falls
    before frame i when the distance is over `threshold` and the shot so far has at least
    `min_shot_frames` frames, so a flash or a one-frame glitch does not split a shot.
    """
    shots, start = [], 0
    for i in range(1, len(distances)):
        if distances[i] > threshold and i - start >= min_shot_frames:
            shots.append(Shot(start, i))
            start = i
    if len(distances):
        shots.append(Shot(start, len(distances)))
    return shots


def sample_indices(shot: Shot, count: int) -> list[int]:
    """Up to `count` frame indices spread evenly across a shot: the middles of equal parts."""
    count = min(count, shot.length)
    return sorted({shot.start + int((k + 0.5) * shot.length / count) for k in range(count)})


def cut_distances(info: VideoInfo, on_frames: Callable[[int], None] | None = None) -> np.ndarray:
    """(frames,) float: each frame's histogram distance to the previous one (first pass).

    `on_frames(decoded)` is called every 50 frames, for a progress bar.
    """
    distances, previous = [], None
    for index, _, thumb in decode_frames(info, thumbnail=THUMBNAIL_SIDE):
        histogram = colour_histogram(thumb)
        distances.append(0.0 if previous is None else histogram_distance(previous, histogram))
        previous = histogram
        if on_frames and index % 50 == 49:
            on_frames(index + 1)
    return np.asarray(distances, np.float64)


def shot_frames(
    info: VideoInfo, shots: list[Shot], count: int
) -> Iterator[tuple[Shot, list[SampledFrame]]]:
    """Each shot with its sampled full-size frames, shot by shot (second pass)."""
    wanted = {index: shot for shot in shots for index in sample_indices(shot, count)}
    current: Shot | None = None
    frames: list[SampledFrame] = []
    for index, seconds, pixels in decode_frames(info, keep=set(wanted)):
        if pixels is None:
            continue
        shot = wanted[index]
        if current is not None and shot != current:
            yield current, frames
            frames = []
        current = shot
        frames.append(SampledFrame(index, seconds, pixels))
    if current is not None:
        yield current, frames


# --- frame filters -------------------------------------------------------------------------------


def difference_hash(rgb: np.ndarray) -> int:
    """256-bit difference hash: is each pixel of a 17x16 grey thumbnail brighter than its right
    neighbour. Frames that look alike hash alike; a few bits differ for small changes."""
    grey = Image.fromarray(rgb).convert("L").resize((HASH_SIDE + 1, HASH_SIDE), Image.BILINEAR)
    values = np.asarray(grey, np.int16)
    bits = (values[:, 1:] > values[:, :-1]).ravel()
    return int(sum(1 << i for i, bit in enumerate(bits) if bit))


def hash_distance(a: int, b: int) -> int:
    """The number of bits in which two difference hashes differ."""
    return (a ^ b).bit_count()


def laplacian_variance(grey: np.ndarray) -> float:
    """The variance of the 4-neighbour Laplacian of a 2-D image: low when it is blurred."""
    g = grey.astype(np.float64)
    lap = 4 * g[1:-1, 1:-1] - g[:-2, 1:-1] - g[2:, 1:-1] - g[1:-1, :-2] - g[1:-1, 2:]
    return float(lap.var())


def face_sharpness(rgb: np.ndarray, face: Face) -> float:
    """The Laplacian variance of the face's box, resized to 64x64 grey (so any size compares)."""
    height, width = rgb.shape[:2]
    x0, y0, x1, y1 = face.box
    box = (max(0, int(x0)), max(0, int(y0)), min(width, math.ceil(x1)), min(height, math.ceil(y1)))
    if box[2] - box[0] < 2 or box[3] - box[1] < 2:
        return 0.0
    crop = Image.fromarray(rgb).crop(box).convert("L")
    crop = crop.resize((FACE_CROP_SIDE, FACE_CROP_SIDE), Image.BILINEAR)
    return laplacian_variance(np.asarray(crop))


def face_problem(rgb: np.ndarray, faces: list[Face], options: VideoOptions) -> str | None:
    """Why a frame's faces make it unusable ("face too small", "face blurred"), or None."""
    side = min(rgb.shape[:2])
    if any(face.width < options.min_face_fraction * side for face in faces):
        return "face too small"
    if any(face_sharpness(rgb, face) < options.min_face_sharpness for face in faces):
        return "face blurred"
    return None


def frame_name(path: Path, frame: SampledFrame) -> str:
    """How a dropped frame is reported: `clip.mp4@12.40s`."""
    return f"{path}@{frame.seconds:.2f}s"
