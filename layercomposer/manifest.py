"""Run manifests: everything needed to know what produced an image, and to produce it again."""

from __future__ import annotations

import hashlib
import json
import platform
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from . import __version__
from .canvas import CanvasSpec
from .errors import InputError, exception_text
from .limits import read_json_bounded
from .records import OpenRecord, invalid_record

MANIFEST_VERSION = 1
PACKAGES = ("torch", "diffusers", "transformers", "peft", "accelerate", "safetensors")
RANDOM_WEIGHTS_WARNING = (
    "builtin:tiny has random weights: this image is noise. It checks canvases and pipelines, "
    "not pictures."
)


def package_versions() -> dict[str, str | None]:
    """The versions of lc, Python and the packages that shape a render."""
    versions: dict[str, str | None] = {"lc": __version__, "python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def inputs_sha256(inputs: dict[str, Any]) -> str:
    """A stable hash of a render's inputs: same hash, same settings and same input files."""
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def build_manifest(inputs: dict[str, Any], **facts: Any) -> dict[str, Any]:
    """Return a manifest: the inputs (with their hash), then the facts of this run."""
    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "inputs": inputs,
        "inputs_sha256": inputs_sha256(inputs),
        "versions": package_versions(),
        **facts,
    }
    if (facts.get("model") or {}).get("random_weights"):
        manifest["warning"] = RANDOM_WEIGHTS_WARNING
    return manifest


def read_manifest(path: str | Path) -> dict[str, Any]:
    """Return a manifest written by `lc render`, or raise an InputError (exit 2) saying what is
    wrong with the file."""
    try:
        manifest = read_json_bounded(path)
    except FileNotFoundError:
        raise InputError(
            f"no manifest at {path}",
            hint="lc render writes OUT/<canvas>/<seed>.json beside each image "
            "(e.g. out/four_people/4.json)",
        ) from None
    except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise InputError(
            f"{path} is not a readable JSON manifest ({exception_text(exc)})"
        ) from None
    if not isinstance(manifest, dict) or manifest.get("manifest_version") != MANIFEST_VERSION:
        raise InputError(f"{path} is not an lc run manifest (version {MANIFEST_VERSION})")
    check_manifest(manifest, path)
    return manifest


def check_manifest(manifest: dict[str, Any], path: str | Path, rendered: bool = False) -> None:
    """InputError (exit 2) naming `path` and each wrong key, unless `manifest` has what every
    reader of a manifest uses (`lc eval`, the studio, `--resume`); with `rendered`, also what
    `lc render --from-manifest` needs to render it again (the settings, known speed keys)."""
    schema = _RenderedManifest if rendered else _Manifest
    try:
        schema.model_validate(manifest)
    except ValidationError as exc:
        raise _invalid(path, exc) from None
    try:
        CanvasSpec.model_validate(manifest["inputs"]["canvas"]["resolved"])
    except ValidationError as exc:
        raise _invalid(path, exc, ("inputs", "canvas", "resolved")) from None


def _invalid(path: str | Path, exc: ValidationError, prefix: tuple = ()) -> InputError:
    return invalid_record(
        path, exc, "lc run manifest",
        "lc render writes these; render the canvas again to get a new one", prefix,
    )  # fmt: skip


# --- the shape of a manifest, as lc reads it back (keys it does not read are kept, not refused)


class _CanvasRecord(OpenRecord):
    path: str
    sha256: str
    overrides: list[str]
    resolved: dict[str, Any]


class _Inputs(OpenRecord):
    canvas: _CanvasRecord
    images: dict[str, str]
    seed: int = Field(ge=0, lt=2**64)


class _Output(OpenRecord):
    image: str
    sha256: str


class _Manifest(OpenRecord):
    manifest_version: int
    created: str
    inputs: _Inputs
    output: _Output


class _LoraRecord(OpenRecord):
    path: str
    scale: float = 1.0


class _Speed(BaseModel):  # RenderSettings' speed options: an unknown one is refused
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    compile: bool = False
    first_block_cache: float | None = None
    quantize: str = "none"
    attention_backend: str | None = None


class _RenderInputs(_Inputs):
    model: str
    revision: str | None
    lora: _LoraRecord | list[_LoraRecord] | None = None
    mode: str
    encode: str
    dtype: str
    device: str
    fill: str | None = None
    prompt_prefix: str = ""
    speed: _Speed | None = None


class _RenderedManifest(_Manifest):
    inputs: _RenderInputs
