"""What the prompt-following and image-quality adapters share: lazy imports that fail with a
message saying what to install, and a device choice that needs no torch until it is used."""

from __future__ import annotations

import importlib
from typing import Any

from ..errors import ModelError


def import_optional(module: str, what: str, hint: str) -> Any:
    """Import `module` on first use, or raise a `ModelError` with `hint`."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ModelError(f"{what} needs the {module} package ({exc})", hint=hint) from None
    except Exception as exc:  # noqa: BLE001 - t2v_metrics raises RuntimeError without ffmpeg
        raise ModelError(f"{module} cannot be imported: {exc}", hint=hint) from None


def resolve_device(device: str) -> str:
    """`auto` -> "cuda" when a GPU is there, else "cpu"; anything else as given."""
    if device != "auto":
        return device
    try:
        import torch
    except ImportError:
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


def batches(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), max(1, size))]
