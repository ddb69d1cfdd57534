"""Model files the face and person backends need: where each comes from, and its SHA-256.

A file is looked for, in order, in the cache folder (`LC_MODELS_DIR`, else
`$XDG_CACHE_HOME/lc/models`, else `~/.cache/lc/models`), then in its offline fallbacks (a copy
shipped inside lc, a file another installed package ships, a model pack folder), and only when
the caller allows it is it downloaded from its official address into the cache. Every
candidate is checked against the pinned SHA-256 before use, so a truncated download or another
release of a model is never loaded silently.
"""

from __future__ import annotations

import bz2
import hashlib
import importlib.util
import os
import shutil
import tempfile
import urllib.request
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from ..errors import ModelError
from ..files import TEMP_SUFFIX, sha256_file

BUNDLED_DIR = Path(__file__).parent / "models"

_MEDIAPIPE_WHEEL = (
    "https://files.pythonhosted.org/packages/ad/83/"
    "56f760fecdc60de84c529d6c05c9dfc7d972617c6632bd254d5e021e5b16/"
    "mediapipe-0.10.21-cp311-cp311-manylinux_2_28_x86_64.whl"
)
_INSIGHTFACE_PACK = (
    "https://github.com/deepinsight/insightface/releases/download/v0.7/buffalo_l.zip"
)


@dataclass(frozen=True)
class ModelFile:
    """One model file: its pinned hash, its official address and where it may already be."""

    key: str  # "<backend>/<file name>": also its path under the cache folder
    sha256: str | None  # None: not pinned (the hash used is still recorded)
    url: str  # the official download address
    member: str | None = None  # the file's path inside the archive at `url`
    compression: Literal["none", "bz2"] = "none"
    # Offline fallbacks: "bundled:NAME" (shipped with lc), "package:PKG/REL/PATH" (a file an
    # installed package ships; found without importing it), or a path ("~" expands).
    offline: tuple[str, ...] = ()
    licence: str = ""

    @property
    def filename(self) -> str:
        return self.key.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class ResolvedFile:
    """A model file found on disk and checked: what a manifest records."""

    key: str
    path: str
    sha256: str
    source: Literal["cache", "offline", "download"]
    verified: bool  # False only for files whose hash is not pinned

    def to_dict(self) -> dict:
        return asdict(self)


MODEL_FILES: dict[str, ModelFile] = {
    entry.key: entry
    for entry in [
        ModelFile(
            "mediapipe/face_detection_short_range.tflite",
            "bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8",
            _MEDIAPIPE_WHEEL,
            member="mediapipe/modules/face_detection/face_detection_short_range.tflite",
            offline=("bundled:face_detection_short_range.tflite",),
            licence="Apache-2.0 (MediaPipe BlazeFace short range)",
        ),
        ModelFile(
            "mediapipe/selfie_segmentation.tflite",
            "9ee168ec7c8f2a16c56fe8e1cfbc514974cbbb7e434051b455635f1bd1462f5c",
            _MEDIAPIPE_WHEEL,
            member="mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite",
            offline=("bundled:selfie_segmentation.tflite",),
            licence="Apache-2.0 (MediaPipe Selfie Segmentation)",
        ),
        ModelFile(
            "dlib/shape_predictor_5_face_landmarks.dat",
            "c4b1e9804792707d3a405c2c16a80a20269e6675021f64a41d30fffafbc41888",
            "http://dlib.net/files/shape_predictor_5_face_landmarks.dat.bz2",
            compression="bz2",
            offline=(
                "package:face_recognition_models/models/shape_predictor_5_face_landmarks.dat",
            ),
            licence="CC0-1.0 (dlib 5-point landmarks)",
        ),
        ModelFile(
            "dlib/dlib_face_recognition_resnet_model_v1.dat",
            "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30",
            "http://dlib.net/files/dlib_face_recognition_resnet_model_v1.dat.bz2",
            compression="bz2",
            offline=(
                "package:face_recognition_models/models/dlib_face_recognition_resnet_model_v1.dat",
            ),
            licence="CC0-1.0 (dlib face recognition ResNet)",
        ),
        # The InsightFace pack is not redistributable here and could not be fetched to pin its
        # hashes: they are recorded as found (verified: false in the manifest).
        ModelFile(
            "insightface/buffalo_l/det_10g.onnx",
            None,
            _INSIGHTFACE_PACK,
            member="det_10g.onnx",
            offline=("~/.insightface/models/buffalo_l/det_10g.onnx",),
            licence="InsightFace buffalo_l: non-commercial research use only",
        ),
        ModelFile(
            "insightface/buffalo_l/w600k_r50.onnx",
            None,
            _INSIGHTFACE_PACK,
            member="w600k_r50.onnx",
            offline=("~/.insightface/models/buffalo_l/w600k_r50.onnx",),
            licence="InsightFace buffalo_l: non-commercial research use only",
        ),
    ]
}


def cache_dir() -> Path:
    """The folder downloaded model files are kept in (and looked for first)."""
    if os.environ.get("LC_MODELS_DIR"):
        return Path(os.environ["LC_MODELS_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "lc" / "models"


def resolve_model_file(
    key: str, download: bool = False, registry: dict[str, ModelFile] | None = None
) -> ResolvedFile:
    """Return the checked file for `key`, or raise a `ModelError` saying how to get it."""
    entry = (registry or MODEL_FILES).get(key)
    if entry is None:
        raise ModelError(f"no model file {key!r} in lc's registry")
    cached = cache_dir() / entry.key
    tried: list[str] = []
    for source, path in [("cache", cached)] + [("offline", p) for p in _offline_paths(entry)]:
        if not path.is_file():
            tried.append(f"{path} (missing)")
            continue
        digest = _hash(path)
        if entry.sha256 is None or digest == entry.sha256:
            return ResolvedFile(key, str(path), digest, source, entry.sha256 is not None)
        tried.append(f"{path} (SHA-256 {digest[:12]}..., expected {entry.sha256[:12]}...)")
    if download:
        path = _download(entry, cached)
        return ResolvedFile(key, str(path), _hash(path), "download", entry.sha256 is not None)
    raise ModelError(
        f"model file {entry.filename} ({key}) not found; looked in: " + "; ".join(tried),
        hint=_how_to_get(entry, cached),
    )


def _offline_paths(entry: ModelFile) -> list[Path]:
    paths = []
    for location in entry.offline:
        if location.startswith("bundled:"):
            paths.append(BUNDLED_DIR / location.removeprefix("bundled:"))
        elif location.startswith("package:"):
            package, _, relative = location.removeprefix("package:").partition("/")
            # find_spec does not import the package (face_recognition_models imports
            # pkg_resources, gone from setuptools >= 81), it only says where it lives.
            spec = importlib.util.find_spec(package)
            for folder in (spec.submodule_search_locations or []) if spec else []:
                paths.append(Path(folder) / relative)
        else:
            paths.append(Path(location).expanduser())
    return paths


def _how_to_get(entry: ModelFile, cached: Path) -> str:
    package = {
        "dlib": "pip install dlib-bin face_recognition_models (or lc's [autolayout] extra)",
        "mediapipe": "reinstall lc (its wheel ships this file)",
        "insightface": "unpack InsightFace's buffalo_l pack into ~/.insightface/models/buffalo_l",
    }.get(entry.key.split("/", 1)[0], "")
    where = f"{entry.url}" + (f" (member {entry.member})" if entry.member else "")
    return (
        f"{package + '; or ' if package else ''}pass --download-models to fetch it from {where} "
        f"into {cached} (or place it there yourself); licence: {entry.licence}"
    )


_HASHES: dict[tuple[str, int, int], str] = {}


def _hash(path: Path) -> str:
    """SHA-256 of a file, remembered per (path, size, mtime) so big models are read once."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _HASHES:
        _HASHES[key] = sha256_file(path)
    return _HASHES[key]


def _download(entry: ModelFile, target: Path) -> Path:
    """Fetch `entry` from its official address into `target`, checked before it lands."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, suffix=TEMP_SUFFIX) as tmp:
        fetched = Path(tmp) / "download"
        try:
            with (
                urllib.request.urlopen(entry.url, timeout=60) as response,
                open(fetched, "wb") as out,
            ):
                shutil.copyfileobj(response, out)
        except OSError as exc:  # URLError is an OSError
            raise ModelError(
                f"cannot download {entry.filename} from {entry.url}: {exc}",
                hint=f"place the file at {target} yourself",
            ) from None
        unpacked = Path(tmp) / entry.filename
        try:
            if entry.member:
                with zipfile.ZipFile(fetched) as archive, archive.open(entry.member) as src:
                    unpacked.write_bytes(src.read())
            elif entry.compression == "bz2":
                with bz2.open(fetched) as src, open(unpacked, "wb") as out:
                    shutil.copyfileobj(src, out)
            else:
                fetched.replace(unpacked)
        except (zipfile.BadZipFile, KeyError, OSError, EOFError) as exc:
            raise ModelError(f"downloaded {entry.url} but cannot unpack it: {exc}") from None
        digest = hashlib.sha256(unpacked.read_bytes()).hexdigest()
        if entry.sha256 is not None and digest != entry.sha256:
            raise ModelError(
                f"downloaded {entry.filename} has SHA-256 {digest}, expected {entry.sha256}; "
                "not using it"
            )
        os.replace(unpacked, target)
    return target
