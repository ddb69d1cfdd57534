"""The outputs to evaluate, read from `lc render`'s run manifests: each image with its prompt,
its canvas (as it was rendered, `--set` overrides applied) and the method that made it."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from ..canvas import Canvas, CanvasSpec
from ..errors import InputError, LcError, UsageError
from ..files import sha256_file
from ..layers import image_file_hashes
from ..limits import open_image_bounded, read_json_bounded
from ..manifest import read_manifest


@dataclass(frozen=True)
class RunOutput:
    """One rendered image and the manifest written beside it."""

    method: str  # the label it is grouped under: LABEL=PATH, else the manifest's method or mode
    manifest_path: Path
    manifest: dict[str, Any] = field(repr=False)

    @property
    def image_path(self) -> Path:
        return self.manifest_path.parent / self.manifest["output"]["image"]

    @property
    def image_sha256(self) -> str:
        return self.manifest["output"]["sha256"]

    @property
    def prompt(self) -> str:
        return self.spec.prompt

    @property
    def seed(self) -> int:
        return int(self.manifest["inputs"]["seed"])

    @property
    def canvas_name(self) -> str:
        return Path(self.manifest["inputs"]["canvas"]["path"]).stem

    @cached_property
    def spec(self) -> CanvasSpec:
        return CanvasSpec.model_validate(self.manifest["inputs"]["canvas"]["resolved"])

    @property
    def subject_names(self) -> list[str]:
        return [layer.name for layer in self.spec.layers]

    @property
    def input_hashes(self) -> dict[str, str]:
        """SHA-256 of each input image, as recorded when it was rendered."""
        return self.manifest["inputs"]["images"]

    def canvas(self) -> Canvas:
        """The canvas as rendered; raises if its input images changed since."""
        recorded = self.manifest["inputs"]["canvas"]
        canvas = Canvas(
            self.spec,
            Path(recorded["path"]),
            recorded["sha256"],
            tuple(recorded["overrides"]),
            allow_outside=True,  # already checked when it was rendered
        )
        try:
            current = image_file_hashes(canvas)
        except OSError as exc:
            raise LcError(f"{self.manifest_path}: an input image cannot be read ({exc})") from None
        changed = [
            name for name, digest in self.input_hashes.items() if current.get(name) != digest
        ]
        if changed:
            raise LcError(
                f"{self.manifest_path}: input images changed since it was rendered: "
                + ", ".join(changed),
                hint="evaluate outputs against the inputs they were made from",
            )
        return canvas

    def read_image(self) -> np.ndarray:
        """(H, W, 3) uint8; raises if the image is missing or not the one the manifest names."""
        path = self.image_path
        if not path.is_file():
            raise LcError(f"{self.manifest_path}: its image {path} is missing")
        if sha256_file(path) != self.image_sha256:
            raise LcError(f"{path} is not the image its manifest describes (SHA-256 differs)")
        return np.asarray(open_image_bounded(path).convert("RGB"))


def is_run_manifest(data: Any) -> bool:
    return isinstance(data, dict) and "output" in data and "inputs" in data


def find_outputs(specs: list[str], damaged: list[InputError] | None = None) -> list[RunOutput]:
    """Outputs from `[LABEL=]PATH` items: a manifest, an image with its manifest beside it, or a
    folder searched for run manifests (other JSON files in it are skipped).

    A damaged manifest (named, or in a folder and marked as lc's by `manifest_version`) is
    raised, or with `damaged` added to it and left out, so that the others are evaluated."""
    outputs: list[RunOutput] = []
    seen: set[Path] = set()
    for item in specs:
        label, path = _split_label(item)
        if path.is_dir():
            candidates = sorted(path.rglob("*.json"))
            found = [p for p in candidates if _looks_like_manifest(p)]
            if not found:
                raise UsageError(f"no lc run manifest found under {path}")
        elif path.suffix.lower() == ".json":
            found = [path]
        elif path.is_file():
            found = [path.with_suffix(".json")]  # an image: its manifest is beside it
        else:
            raise UsageError(f"{path}: no such file or folder")
        for manifest_path in found:
            key = manifest_path.resolve()
            if key in seen:
                continue
            seen.add(key)
            try:
                manifest = read_manifest(manifest_path)
            except InputError as exc:
                if damaged is None:
                    raise
                damaged.append(exc)
                continue
            if not is_run_manifest(manifest):
                raise UsageError(f"{manifest_path} is not the manifest of a rendered image")
            outputs.append(
                RunOutput(
                    label or manifest.get("method") or manifest.get("mode_used") or "?",
                    manifest_path,
                    manifest,
                )
            )
    return outputs


def _split_label(item: str) -> tuple[str | None, Path]:
    label, sep, rest = item.partition("=")
    if sep and label and not Path(item).exists():
        return label, Path(rest)
    return None, Path(item)


def _looks_like_manifest(path: Path) -> bool:
    """Whether a JSON file in a folder is meant as an lc run manifest (damaged or not): it has
    lc's `manifest_version`, or a run manifest's `inputs` and `output`."""
    try:
        data = read_json_bounded(path)
    except (LcError, OSError, ValueError):
        return False
    return isinstance(data, dict) and ("manifest_version" in data or is_run_manifest(data))
