"""`lc eval` end to end: find the outputs, measure them, write the tables and the figures."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

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

    @property
    def failed(self) -> list[Evaluation]:
        return [e for e in self.evaluations if e.errors]


def check_eval(options: EvalOptions, figures: bool) -> None:
    """Everything that can be checked before any work: metrics' packages and models, matplotlib."""
    check_metrics(options)
    if figures:
        check_matplotlib()


def run_eval(
    outputs: list[RunOutput],
    options: EvalOptions,
    folder: Path,
    published: Published | None = None,
    title: str = "",
    figures: bool = True,
    progress: Progress | None = None,
) -> EvalReport:
    """Measure `outputs` and write results.csv, subjects.csv, locked.csv, results.md and the
    figures into `folder`; scores are kept in `folder/scores.jsonl` for the next run."""
    folder.mkdir(parents=True, exist_ok=True)
    evaluations = evaluate(outputs, options, ScoreStore(folder / STORE_NAME), progress)
    summaries = summarize(evaluations)
    files = write_tables(evaluations, folder, published, title)
    files["scores"] = folder / STORE_NAME
    if figures:
        files.update(write_figures(evaluations, summaries, folder, published))
    return EvalReport(evaluations, summaries, files)
