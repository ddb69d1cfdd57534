"""The figures: bars per metric per method (with the published figures), and a grid of
input canvases and output thumbnails. Drawn with matplotlib's object API on the Agg canvas, so
no global backend is switched and no window opens."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import LcError, ModelError
from ..files import write_bytes_atomic
from ..layers import build_layers, flatten
from ..limits import open_image_bounded
from .metrics import Evaluation
from .report import ARCFACE_PACKS, IDENTITY_HEADERS, MethodSummary, Published

INSTALL_HINT = 'pip install "layercomposer[eval]" (matplotlib), or pass --no-figure'
THUMB_PX = 192


def check_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ModelError(
            "the figures need matplotlib, which is not installed", hint=INSTALL_HINT
        ) from None


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path: Path) -> Path:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    return write_bytes_atomic(path, buffer.getvalue())


def metric_bars(
    summaries: list[MethodSummary], path: Path, published: Published | None = None
) -> Path:
    """One panel per metric, one bar per method (and a hatched one for the published value)."""
    backend = next((s.identity_backend for s in summaries if s.identity_backend), None)
    panels = [
        ("identity", IDENTITY_HEADERS.get(backend or "", "identity"), "arcface"),
        ("vqascore", "VQAScore", "vqascore"),
        ("hpsv3", "HPSv3", "hpsv3"),
    ]
    if any(s.locked_ssim is not None for s in summaries):
        panels.append(("locked_ssim", "locked SSIM", None))
    figure = _figure(3.2 * len(panels), 3.4)
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    colours = [f"C{i}" for i in range(len(summaries))]
    for ax, (field, label, reference) in zip(axes, panels, strict=True):
        names = [s.method for s in summaries]
        values = [getattr(s, field) for s in summaries]
        bars_colours = list(colours)
        hatches = [""] * len(names)
        # The published ArcFace is not on dlib's scale: only draw it beside ArcFace.
        comparable = reference != "arcface" or backend in ARCFACE_PACKS
        if published is not None and reference and comparable:
            names.append("published")
            values.append(getattr(published, reference))
            bars_colours.append("lightgrey")
            hatches.append("//")
        heights = [0.0 if v is None else v for v in values]
        bars = ax.bar(range(len(names)), heights, color=bars_colours, hatch=None)
        for bar, hatch, value in zip(bars, hatches, values, strict=True):
            bar.set_hatch(hatch)
            text = "n/a" if value is None else f"{value:.3g}"
            ax.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=8)  # fmt: skip
        ax.set_xticks(range(len(names)), names, rotation=20, fontsize=8)
        ax.set_title(label, fontsize=10)
        if field == "hpsv3":  # a reward, unbounded: zero marked, room for the labels
            ax.axhline(0, color="black", linewidth=0.6)
            ax.margins(y=0.15)
        else:  # similarities and probabilities: the whole 0..1 range, so bars compare at a glance
            ax.set_ylim(min(0.0, *heights), 1.08)
    figure.tight_layout()
    return _save(figure, path)


def _thumbnail(rgb: np.ndarray, side: int = THUMB_PX) -> np.ndarray:
    image = Image.fromarray(rgb)
    image.thumbnail((side, side), Image.Resampling.LANCZOS)
    return np.asarray(image)


def sample_grid(evaluations: list[Evaluation], path: Path, max_rows: int = 8) -> Path:
    """Rows: one canvas and seed each; columns: the canvas as given (its collage), then each
    method's output with its scores underneath."""
    methods = list(dict.fromkeys(e.output.method for e in evaluations))
    cases: dict[tuple[str, int], dict[str, Evaluation]] = {}
    for e in evaluations:
        cases.setdefault((e.output.canvas_name, e.output.seed), {})[e.output.method] = e
    rows = list(cases.items())[:max_rows]
    columns = 1 + len(methods)
    width, height = evaluations[0].output.spec.size if evaluations else (1, 1)
    row_inches = 2.2 * height / width + 0.7  # the thumbnail, then two lines of label
    figure = _figure(2.2 * columns, row_inches * max(1, len(rows)))
    axes = figure.subplots(max(1, len(rows)), columns, squeeze=False)
    for r, ((canvas_name, seed), by_method) in enumerate(rows):
        first = next(iter(by_method.values())).output
        prompt = first.prompt if len(first.prompt) <= 40 else first.prompt[:39] + "…"
        _show(axes[r][0], _collage(first), f"{canvas_name} (seed {seed})\n{prompt}")
        for c, method in enumerate(methods, 1):
            evaluation = by_method.get(method)
            image = None
            if evaluation is not None and evaluation.output.image_path.is_file():
                opened = open_image_bounded(evaluation.output.image_path)
                image = _thumbnail(np.asarray(opened.convert("RGB")))
            _show(axes[r][c], image, method + ("\n" + _scores(evaluation) if evaluation else ""))
    figure.tight_layout()
    return _save(figure, path)


def _collage(output) -> np.ndarray | None:
    try:
        return _thumbnail(flatten(build_layers(output.canvas())))
    except (LcError, OSError):  # a missing or changed input only blanks its thumbnail
        return None


def _scores(evaluation: Evaluation) -> str:
    parts = []
    if evaluation.identity is not None and evaluation.identity.mean is not None:
        parts.append(f"id {evaluation.identity.mean:.2f}")
    if evaluation.vqascore is not None:
        parts.append(f"vqa {evaluation.vqascore:.2f}")
    if evaluation.hpsv3 is not None:
        parts.append(f"hps {evaluation.hpsv3:.1f}")
    return " · ".join(parts)


def _show(ax, image: np.ndarray | None, label: str) -> None:
    if image is not None:
        ax.imshow(image)
    else:
        ax.text(0.5, 0.5, "missing", ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel(label, fontsize=7)


def write_figures(
    evaluations: list[Evaluation],
    summaries: list[MethodSummary],
    folder: Path,
    published: Published | None = None,
) -> dict[str, Path]:
    """figure_metrics.png and figure_samples.png in `folder`."""
    return {
        "figure_metrics": metric_bars(summaries, folder / "figure_metrics.png", published),
        "figure_samples": sample_grid(evaluations, folder / "figure_samples.png"),
    }
