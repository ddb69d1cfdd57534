"""Tables from evaluations: `results.csv` (one row per output), `subjects.csv` (one row per
subject per output), `locked.csv` (one row per locked layer per output) and `results.md`, a
summary per method in the columns of the paper's Table 1, with the published figures beside."""

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
class Published:
    """The paper's Table 1 figures for one setting."""

    setting: str
    arcface: float
    vqascore: float
    hpsv3: float
    source: str = "LayerComposer (paper, Table 1)"


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

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: an infinite PSNR (identical pixels) as the string "inf"."""
        return {k: "inf" if v == math.inf else v for k, v in self.__dict__.items()}


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
    lora = manifest.get("lora") or {}
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
        "lora": lora.get("sha256", "")[:12] if lora else "",
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
    summaries: list[MethodSummary], published: Published | None = None, title: str = ""
) -> str:
    """The summary as a markdown document: the table, then what its numbers mean."""
    backends = {s.identity_backend for s in summaries if s.identity_backend}
    backend = next(iter(backends)) if len(backends) == 1 else None
    identity_header = IDENTITY_HEADERS.get(backend or "", "identity")
    any_locked = any(s.counts["locked"] for s in summaries)
    header = ["method", "outputs", f"{identity_header} ↑", "VQAScore ↑", "HPSv3 ↑"]
    header += ["faces missed"] + (["locked PSNR (dB) ↑", "locked SSIM ↑"] if any_locked else [])
    lines = [f"# {title}", ""] if title else []
    lines += ["| " + " | ".join(header) + " |", "|" + "|".join([" --- "] * len(header)) + "|"]
    if published is not None:
        arcface = f"{published.arcface:.3f}"
        if backend not in ARCFACE_PACKS:  # another scale: shown, but not as if comparable
            arcface = f"(ArcFace {arcface})"
        row = [published.source, "", arcface, f"{published.vqascore:.3f}", f"{published.hpsv3:.1f}"]
        lines.append("| " + " | ".join(row + [""] * (len(header) - len(row))) + " |")
    for s in summaries:
        row = [
            s.method,
            str(s.outputs),
            _cell(s.identity, s.counts["identity"], s.outputs, 3),
            _cell(s.vqascore, s.counts["vqascore"], s.outputs, 3),
            _cell(s.hpsv3, s.counts["hpsv3"], s.outputs, 2),
            f"{s.misses} / {s.subjects}" if s.counts["identity"] else "—",
        ]
        if any_locked:
            row += [
                _cell(s.locked_psnr, s.counts["locked"], s.counts["locked"], 2),
                _cell(s.locked_ssim, s.counts["locked"], s.counts["locked"], 3),
            ]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", *_notes(summaries, published, backend)]
    return "\n".join(lines) + "\n"


def _notes(summaries, published, backend) -> list[str]:
    notes = ["Means over each method's outputs; `(n=...)` where fewer outputs have the score.", ""]
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
    if published is not None:
        notes.append(
            f"- {published.source}: the published {published.setting} figures, on the authors' "
            "identities, prompts and weights; ours are on the identities and prompts given here."
        )
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
    evaluations: list[Evaluation], folder: Path, published: Published | None = None, title: str = ""
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
    table = markdown_table(summarize(evaluations), published, title)
    write_bytes_atomic(paths["table"], table.encode())
    return paths
