"""Run manifests: everything needed to know what produced an image, and to produce it again."""

from __future__ import annotations

import hashlib
import json
import platform
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from . import __version__
from .errors import InputError, exception_text
from .limits import read_json_bounded

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
    return manifest
