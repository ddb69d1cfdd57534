"""`lc eval` end to end: find the outputs, measure them, write the tables and the figures."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .availability import MetricStatus
from .figures import check_matplotlib, write_figures
from .metrics import EvalOptions, Evaluation, Progress, check_metrics, evaluate
from .outputs import RunOutput
from .report import MethodSummary, Published, summarize, write_tables
from .store import STORE_NAME, ScoreStore


@dataclass
class EvalReport:
    evaluations: list[Evaluation]
    summaries: list[MethodSummary]
    files: dict[str, Path] = field(default_factory=dict)
    skipped: list[MetricStatus] = field(default_factory=list)  # metrics that could not run

    @property
    def failed(self) -> list[Evaluation]:
        return [e for e in self.evaluations if e.errors]


def check_eval(options: EvalOptions, figures: bool) -> tuple[EvalOptions, list[MetricStatus]]:
    """Everything that can be checked before any work: metrics' packages and models, matplotlib.
    Returns `options` with the metrics that will run, and the metrics skipped."""
    resolved = check_metrics(options)
    if figures:
        check_matplotlib()
    return resolved


def run_eval(
    outputs: list[RunOutput],
    options: EvalOptions,
    folder: Path,
    published: tuple[Published, ...] = (),
    title: str = "",
    figures: bool = True,
    progress: Progress | None = None,
    failed: dict[str, int] | None = None,
    skipped: list[MetricStatus] | None = None,
) -> EvalReport:
    """Measure `outputs` and write results.csv, subjects.csv, locked.csv, results.md and the
    figures into `folder`; scores are kept in `folder/scores.jsonl` for the next run.

    `published`: the paper's rows for the setting; `failed`: per method, cases that produced
    no output; `skipped`: metrics that could not run (both are written into results.md)."""
    folder.mkdir(parents=True, exist_ok=True)
    skipped = skipped or []
    evaluations = evaluate(outputs, options, ScoreStore(folder / STORE_NAME), progress)
    summaries = summarize(evaluations)
    notes = [status.summary() for status in skipped]
    files = write_tables(evaluations, folder, published, title, failed, notes)
    files["scores"] = folder / STORE_NAME
    if figures:
        ours = next((row for row in published if row.lc_method == "layered"), None)
        if any(s.method == "layered" and s.caveat() for s in summaries):
            ours = None  # its published bar would stand beside numbers that do not measure it
        files.update(write_figures(evaluations, summaries, folder, ours))
    return EvalReport(evaluations, summaries, files, skipped)
