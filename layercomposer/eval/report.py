"""Tables from evaluations: `results.csv` (one row per output), `subjects.csv` (one row per
subject per output), `locked.csv` (one row per locked layer per output) and `results.md`, a
summary per method in the columns of the paper's Table 1, every published row of the setting
beside ours (published.py)."""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..files import write_bytes_atomic
from .fidelity import pooled
from .metrics import Evaluation
from .published import Published

__all__ = ["MethodSummary", "Published", "markdown_table", "summarize", "write_tables"]

RESULT_COLUMNS = [
    "method", "canvas", "seed", "image", "prompt", "subjects", "identity", "identity_backend",
    "faces_found", "identity_misses", "vqascore", "hpsv3", "locked_layers", "locked_psnr",
    "locked_ssim", "model", "lora", "mode_used", "steps", "error",
]  # fmt: skip
SUBJECT_COLUMNS = [
    "method", "canvas", "seed", "subject", "status", "similarity", "face_box", "identity_backend"
]  # fmt: skip
LOCKED_COLUMNS = ["method", "canvas", "seed", "layer", "pixels", "psnr", "ssim"]
IDENTITY_HEADERS = {"insightface": "ArcFace", "antelopev2": "ArcFace", "dlib": "identity (dlib)"}
ARCFACE_PACKS = {"insightface": "buffalo_l (w600k_r50)", "antelopev2": "antelopev2 (glintr100)"}


@dataclass(frozen=True)
class MethodSummary:
    """Means over one method's outputs; `counts` says how many outputs each mean covers."""

    method: str
    outputs: int
    identity: float | None
    identity_backend: str | None
    vqascore: float | None
    hpsv3: float | None
    subjects: int  # subjects with a reference face, over all outputs
    misses: int
    locked_psnr: float | None
    locked_ssim: float | None
    counts: dict[str, int]
    errors: int
    random_weights: bool = False  # some output came from random weights (builtin:tiny)
    lora: bool | None = None  # every output had a LoRA loaded (None: not known)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: an infinite PSNR (identical pixels) as the string "inf"."""
        values = {k: "inf" if v == math.inf else v for k, v in self.__dict__.items()}
        return {**values, "caveat": self.caveat()}

    def caveat(self, short: bool = False) -> str | None:
        """Why these numbers do not measure the method (`short`: just what it ran with), or
        None when they may."""
        if self.random_weights:
            what, why = "random weights (builtin:tiny)", "the images are noise"
        elif self.method == "layered" and self.lora is False:
            what, why = (
                "no LayerComposer LoRA",
                "stock Kontext fed layer indices it was not trained on",
            )
        else:
            return None
        return what if short else f"{what}: {why}"


def _number(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if math.isinf(value):
        return "inf"
    return f"{value:.{digits}f}"


def result_row(evaluation: Evaluation) -> dict[str, Any]:
    """One line of results.csv."""
    output, identity = evaluation.output, evaluation.identity
    fidelity = evaluation.fidelity or []
    psnr, ssim = pooled(fidelity)
    manifest = output.manifest
    model = manifest.get("model") or {}
    lora = manifest.get("lora") or []
    loras = [lora] if isinstance(lora, dict) else lora  # several stacked LoRAs: a list
    return {
        "method": output.method,
        "canvas": output.canvas_name,
        "seed": output.seed,
        "image": str(output.image_path),
        "prompt": output.prompt,
        "subjects": len(output.spec.layers),
        "identity": _number(identity.mean if identity else None),
        "identity_backend": identity.backend if identity else "",
        "faces_found": identity.faces_found if identity else "",
        "identity_misses": identity.misses if identity else "",
        "vqascore": _number(evaluation.vqascore),
        "hpsv3": _number(evaluation.hpsv3),
        "locked_layers": len(fidelity) if evaluation.fidelity is not None else "",
        "locked_psnr": _number(psnr, 2),
        "locked_ssim": _number(ssim),
        "model": model.get("id", manifest["inputs"].get("model", "")),
        "lora": " ".join((entry.get("sha256") or "")[:12] for entry in loras),
        "mode_used": manifest.get("mode_used", ""),
        "steps": output.spec.steps,
        "error": "; ".join(evaluation.errors),
    }


def summarize(evaluations: list[Evaluation]) -> list[MethodSummary]:
    """One summary per method, in the order methods first appear."""
    methods = list(dict.fromkeys(e.output.method for e in evaluations))
    summaries = []
    for method in methods:
        group = [e for e in evaluations if e.output.method == method]
        identities = [e.identity for e in group if e.identity and e.identity.mean is not None]
        vqa = [e.vqascore for e in group if e.vqascore is not None]
        hps = [e.hpsv3 for e in group if e.hpsv3 is not None]
        locked = [f for e in group for f in (e.fidelity or [])]
        psnr, ssim = pooled(locked)
        backends = sorted({i.backend for i in identities})
        manifests = [e.output.manifest for e in group]
        summaries.append(
            MethodSummary(
                method=method,
                outputs=len(group),
                identity=_mean([i.mean for i in identities]),
                identity_backend=", ".join(backends) or None,
                vqascore=_mean(vqa),
                hpsv3=_mean(hps),
                subjects=sum(len(i.scored) for i in identities),
                misses=sum(i.misses for i in identities),
                locked_psnr=psnr,
                locked_ssim=ssim,
                counts={
                    "identity": len(identities),
                    "vqascore": len(vqa),
                    "hpsv3": len(hps),
                    "locked": sum(1 for e in group if e.fidelity),
                },
                errors=sum(1 for e in group if e.errors),
                random_weights=any((m.get("model") or {}).get("random_weights") for m in manifests),
                lora=all(m.get("lora") for m in manifests),
            )
        )
    return summaries


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _cell(value: float | None, count: int, outputs: int, digits: int) -> str:
    if value is None:
        return "—"
    text = "inf" if math.isinf(value) else f"{value:.{digits}f}"
    return text if count == outputs else f"{text} (n={count})"


def markdown_table(
    summaries: list[MethodSummary],
    published: tuple[Published, ...] = (),
    title: str = "",
    failed: dict[str, int] | None = None,
    skipped: list[str] | None = None,
) -> str:
    """The summary as a markdown document: every published row of the setting, each of ours
    right after the row it reproduces, then what the numbers mean.

    `failed`: per method, cases that produced no output (no canvas, or the render failed);
    they are not in the means but counted in the `failed` column. `skipped`: one line per
    metric that could not run.
    """
    failed = failed or {}
    backends = {s.identity_backend for s in summaries if s.identity_backend}
    backend = next(iter(backends)) if len(backends) == 1 else None
    identity_header = IDENTITY_HEADERS.get(backend or "", "identity")
    any_locked = any(s.counts["locked"] for s in summaries)
    header = ["method", "source", "outputs", "failed", f"{identity_header} ↑", "VQAScore ↑"]
    header += ["HPSv3 ↑", "faces missed"]
    header += ["locked PSNR (dB) ↑", "locked SSIM ↑"] if any_locked else []
    ours = {s.method: s for s in summaries}
    for method in failed:  # a method none of whose cases produced an output still gets a row
        ours.setdefault(method, _empty_summary(method))
    lines = [f"# {title}", ""] if title else []
    caveats = {m: s.caveat() for m, s in ours.items() if s.caveat()}
    if caveats:  # before the table, where nobody can miss it
        lines += [
            "**Not a measurement of the method:** "
            + "; ".join(f"`{m}` ran with {why}" for m, why in caveats.items())
            + ". Those rows check the pipeline and the tables; they are listed apart from the "
            "paper's rows.",
            "",
        ]
    lines += ["| " + " | ".join(header) + " |", "|" + "|".join([" --- "] * len(header)) + "|"]

    def add(cells: list[str]) -> None:
        lines.append("| " + " | ".join(cells + [""] * (len(header) - len(cells))) + " |")

    shown: set[str] = set()
    for row in published:
        add([row.method, _published_source(row, ours), "", "", *_published_cells(row, backend)])
        if row.lc_method in ours and row.lc_method not in shown | set(caveats):
            shown.add(row.lc_method)
            add(_our_cells(ours[row.lc_method], f"reproduced here: `{row.lc_method}`", failed,
                           any_locked, row.method))  # fmt: skip
    for method, summary in ours.items():
        if method in caveats:
            source = f"run here, not comparable: {summary.caveat(short=True)}"
            add(_our_cells(summary, source, failed, any_locked))
        elif method not in shown:
            add(_our_cells(summary, "measured here", failed, any_locked))
    lines += ["", *_notes(summaries, published, backend, failed, skipped or [])]
    return "\n".join(lines) + "\n"


def _published_source(row: Published, ours: dict[str, MethodSummary]) -> str:
    if row.lc_method is None:
        return f"paper, copied ({row.why_not})"
    if row.lc_method in ours and ours[row.lc_method].caveat():
        return f"paper, copied (`{row.lc_method}` ran here, not comparable: see below)"
    if row.lc_method in ours:
        return "paper, copied"
    return f"paper, copied (not run here: add `{row.lc_method}` to --methods)"


def _published_cells(row: Published, backend: str | None) -> list[str]:
    arcface = f"{row.arcface:.3f}"
    if backend not in ARCFACE_PACKS:  # another scale: shown, but not as if comparable
        arcface = f"(ArcFace {arcface})"
    return [arcface, f"{row.vqascore:.3f}", f"{row.hpsv3:.3g}", ""]


def _our_cells(
    s: MethodSummary, source: str, failed: dict[str, int], locked: bool, name: str | None = None
) -> list[str]:
    cells = [
        name or s.method,
        source,
        str(s.outputs),
        str(failed.get(s.method, 0) + s.errors),
        _cell(s.identity, s.counts["identity"], s.outputs, 3),
        _cell(s.vqascore, s.counts["vqascore"], s.outputs, 3),
        _cell(s.hpsv3, s.counts["hpsv3"], s.outputs, 2),
        f"{s.misses} / {s.subjects}" if s.counts["identity"] else "—",
    ]
    if locked:
        cells += [
            _cell(s.locked_psnr, s.counts["locked"], s.counts["locked"], 2),
            _cell(s.locked_ssim, s.counts["locked"], s.counts["locked"], 3),
        ]
    return cells


def _empty_summary(method: str) -> MethodSummary:
    return MethodSummary(
        method=method, outputs=0, identity=None, identity_backend=None, vqascore=None,
        hpsv3=None, subjects=0, misses=0, locked_psnr=None, locked_ssim=None,
        counts={"identity": 0, "vqascore": 0, "hpsv3": 0, "locked": 0}, errors=0,
    )  # fmt: skip


def _notes(summaries, published, backend, failed, skipped) -> list[str]:
    notes = [
        "Means over each method's outputs; `(n=...)` where fewer outputs have the score. "
        "`failed`: cases with no output (no canvas could be laid out, or the render failed) "
        "and outputs that could not be evaluated; they are left out of the means.",
        "",
    ]
    if backend in ARCFACE_PACKS:
        notes.append(
            f"- ArcFace: cosine similarity of InsightFace {ARCFACE_PACKS[backend]} embeddings "
            "between each subject's reference face and the output face matched to it (one to "
            "one, largest total similarity); a subject with no face left in the output counts as 0."
        )
    elif backend == "dlib":
        notes.append(
            "- identity (dlib): 1 - d/1.2 (clipped to [0, 1]) for dlib's 128-d face descriptors at "
            "euclidean distance d; 0.5 is dlib's same-person threshold. Not on ArcFace's scale: "
            "do not compare it with the published ArcFace column."
        )
    notes += [
        '- VQAScore: P("Yes") of CLIP-FlanT5 (t2v_metrics) asked whether the image shows the '
        "prompt. HPSv3: mu of the HPSv3 preference reward.",
        "- faces missed: subjects with no face left for them in the output, over all subjects.",
    ]
    if any(s.counts["locked"] for s in summaries):
        notes.append(
            "- locked PSNR / SSIM: each locked layer's pixels against the output inside its mask "
            "(alpha > 0.5); PSNR over all locked pixels together, SSIM weighted by pixels."
        )
    if published:
        notes.append(
            f"- `paper, copied`: the {published[0].setting} rows of the LayerComposer paper's "
            "Table 1, on the authors' identities, prompts and weights, copied as published. "
            "`reproduced here`: the same method run by lc bench on the identities and prompts "
            "given here (FLUX Kontext = `collage`, Overlay Kontext = `overlay-kontext`, "
            "Qwen-Image-Edit = `qwen-image-edit`, LayerComposer = `layered`)."
        )
    for line in skipped:
        notes.append(f"- Not measured: {line}")
    errors = sum(s.errors for s in summaries)
    if errors:
        notes.append(
            f"- {errors} output(s) could not be fully evaluated: see `error` in results.csv."
        )
    return notes


def _csv_text(columns: list[str], rows: list[dict[str, Any]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue().encode()


def subject_rows(evaluations: list[Evaluation]) -> list[dict[str, Any]]:
    rows = []
    for e in evaluations:
        for s in e.identity.subjects if e.identity else []:
            box = s.to_dict()["face_box"]
            rows.append({
                "method": e.output.method, "canvas": e.output.canvas_name, "seed": e.output.seed,
                "subject": s.name, "status": s.status, "similarity": _number(s.similarity),
                "face_box": " ".join(f"{v:.0f}" for v in box) if box else "",
                "identity_backend": e.identity.backend,
            })  # fmt: skip
    return rows


def locked_rows(evaluations: list[Evaluation]) -> list[dict[str, Any]]:
    return [
        {"method": e.output.method, "canvas": e.output.canvas_name, "seed": e.output.seed,
         "layer": f.name, "pixels": f.pixels, "psnr": _number(f.psnr, 2), "ssim": _number(f.ssim)}
        for e in evaluations
        for f in e.fidelity or []
    ]  # fmt: skip


def write_tables(
    evaluations: list[Evaluation],
    folder: Path,
    published: tuple[Published, ...] = (),
    title: str = "",
    failed: dict[str, int] | None = None,
    skipped: list[str] | None = None,
) -> dict[str, Path]:
    """Write the CSV files and results.md into `folder`; return their paths by name."""
    paths = {
        "results": folder / "results.csv",
        "subjects": folder / "subjects.csv",
        "locked": folder / "locked.csv",
        "table": folder / "results.md",
    }
    write_bytes_atomic(
        paths["results"], _csv_text(RESULT_COLUMNS, [result_row(e) for e in evaluations])
    )
    write_bytes_atomic(paths["subjects"], _csv_text(SUBJECT_COLUMNS, subject_rows(evaluations)))
    write_bytes_atomic(paths["locked"], _csv_text(LOCKED_COLUMNS, locked_rows(evaluations)))
    table = markdown_table(summarize(evaluations), published, title, failed, skipped)
    write_bytes_atomic(paths["table"], table.encode())
    return paths
