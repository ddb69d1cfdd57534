"""The facts `lc inspect` reports about a canvas: per-layer tokens and sequence lengths."""

from __future__ import annotations

from typing import Any

from .canvas import Canvas
from .layers import CanvasLayer
from .tokens import TEXT_TOKENS, plan_tokens

REPORT_VERSION = 1  # bump when a key of `lc inspect --json` changes meaning or disappears


def canvas_report(canvas: Canvas, layers: list[CanvasLayer]) -> dict[str, Any]:
    """Return the stable `lc inspect --json` document for a canvas (see docs/inspect-json.md)."""
    plan = plan_tokens(layers)
    width, height = canvas.spec.size
    return {
        "report_version": REPORT_VERSION,
        "canvas": str(canvas.path),
        "sha256": canvas.sha256,
        "prompt": canvas.spec.prompt,
        "size": [width, height],
        "token_grid": [plan.grid[1], plan.grid[0]],
        "layers": [
            {
                "name": layer.name,
                "kind": layer.kind,
                "lock": layer.lock,
                "index": planned.index,
                "size": [int(layer.cutout.shape[1]), int(layer.cutout.shape[0])],
                "box": list(layer.placed),
                "visible_pixels": layer.visible_pixels,
                "tokens": planned.count,
            }
            for layer, planned in zip(layers, plan.layers, strict=True)
        ],
        "tokens": {
            "text": TEXT_TOKENS,
            "noisy": plan.noisy_tokens,
            "conditioning": plan.conditioning_tokens,
            "unpruned": plan.unpruned_tokens,
            "collage": plan.collage_tokens,
            "sequence": plan.sequence_length,
            "pruned_ratio": round(plan.conditioning_tokens / plan.unpruned_tokens, 4),
        },
    }
