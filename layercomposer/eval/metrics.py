"""`lc eval` as a plain function: outputs -> identity, prompt following, quality, fidelity.

Metrics run one after another over all outputs, so only one large model is in memory at a
time: first the per-image ones (identity and locked-layer fidelity), then VQAScore, then HPSv3.
Model scores are kept in a `ScoreStore`; a score already there is not computed again, and a
metric not asked for this time still shows when the store has it (for the same model).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from ..errors import LcError, UsageError
from ..layers import build_layers
from . import hpsv3 as hpsv3_adapter
from . import vqascore as vqascore_adapter
from .availability import METRICS, MetricStatus, plan_metrics
from .external import score_remote
from .fidelity import LayerFidelity, locked_fidelity
from .identity import (
    IDENTITY_BACKENDS,
    IdentityScore,
    IdentityScorer,
    reference_image,
)
from .outputs import RunOutput
from .store import ScoreStore, score_key

__all__ = ["METRICS", "EvalOptions", "Evaluation", "check_metrics", "evaluate", "parse_metrics"]
Progress = Callable[[str, int, int], None]  # (stage, done, total)


@dataclass(frozen=True)
class EvalOptions:
    """Which metrics, and with which models."""

    metrics: tuple[str, ...] | None = None  # None: every metric that can run (check_metrics)
    identity_backend: str = "insightface"
    vqascore_model: str = vqascore_adapter.DEFAULT_MODEL
    hpsv3_checkpoint: str | None = None
    device: str = "auto"
    batch_size: int = 8
    download_models: bool = False  # identity model files only (the face registry's downloads)
    vqascore_python: str | None = None  # run VQAScore in this interpreter's environment
    hpsv3_python: str | None = None  # run HPSv3 in this interpreter's environment

    @property
    def pythons(self) -> dict[str, str | None]:
        """The interpreter each prompt metric runs in; None: this one."""
        return {"vqascore": self.vqascore_python, "hpsv3": self.hpsv3_python}

    def variant(self, metric: str) -> str:
        """The model a score of `metric` comes from, as stored."""
        if metric == "identity":
            return self.identity_backend
        if metric == "vqascore":
            return vqascore_adapter.variant(self.vqascore_model)
        if metric == "hpsv3":
            return hpsv3_adapter.variant(self.hpsv3_checkpoint)
        return "lc"


@dataclass
class Evaluation:
    """Everything measured on one output; None: not measured."""

    output: RunOutput
    identity: IdentityScore | None = None
    vqascore: float | None = None
    hpsv3: float | None = None
    fidelity: list[LayerFidelity] | None = None  # [] when the canvas has no locked layer
    errors: list[str] = field(default_factory=list)


def parse_metrics(text: str) -> tuple[str, ...]:
    """`identity,vqascore` -> ("identity", "vqascore"), checked, in the canonical order."""
    asked = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [name for name in asked if name not in METRICS]
    if unknown or not asked:
        raise UsageError(
            f"--metrics {text!r}: choose from {', '.join(METRICS)} (comma-separated)",
        )
    return tuple(name for name in METRICS if name in asked)


def check_metrics(options: EvalOptions) -> tuple[EvalOptions, list[MetricStatus]]:
    """`options` with the metrics that will run, and the ones skipped (only when none were
    named). Raises before any rendering or scoring when a metric named cannot run."""
    if options.identity_backend not in IDENTITY_BACKENDS:
        raise UsageError(
            f"--identity-backend {options.identity_backend!r}: choose one of "
            f"{', '.join(IDENTITY_BACKENDS)}"
        )
    run, skipped = plan_metrics(
        options.metrics, options.identity_backend, options.pythons, options.download_models
    )
    return replace(options, metrics=run), skipped


def identity_depends_on(output: RunOutput) -> list[Any]:
    """What an identity score depends on besides the image: each subject's reference."""
    hashes = output.input_hashes
    return [
        [layer.name, hashes.get(layer.image), hashes.get(layer.mask) if layer.mask else None,
         layer.crop, layer.flip]
        for layer in output.spec.layers
    ]  # fmt: skip


def evaluate(
    outputs: list[RunOutput],
    options: EvalOptions,
    store: ScoreStore | None = None,
    progress: Progress | None = None,
) -> list[Evaluation]:
    """Measure every output; an output that cannot be read is reported, not fatal."""
    store = store or ScoreStore(None)
    if options.metrics is None:
        options, _ = check_metrics(options)
    evaluations = [Evaluation(output) for output in outputs]
    _per_image_metrics(evaluations, options, store, progress)
    for metric in ("vqascore", "hpsv3"):
        _prompt_metric(metric, evaluations, options, store, progress)
    return evaluations


def _identity_key(output: RunOutput, options: EvalOptions) -> str:
    return score_key(
        "identity", options.variant("identity"), output.image_sha256, identity_depends_on(output)
    )


def _per_image_metrics(evaluations, options, store, progress) -> None:
    wants_identity = "identity" in options.metrics
    wants_fidelity = "fidelity" in options.metrics
    pending = [
        e
        for e in evaluations
        if wants_identity and store.get(_identity_key(e.output, options)) is None
    ]
    scorer = IdentityScorer(options.identity_backend, options.download_models) if pending else None
    try:
        for done, evaluation in enumerate(evaluations, 1):
            output = evaluation.output
            key = _identity_key(output, options)
            stored = store.get(key)
            if stored is not None:
                evaluation.identity = IdentityScore.from_dict(stored)
            if wants_fidelity or (scorer is not None and stored is None):
                try:
                    canvas = output.canvas()
                    image = output.read_image()
                    if wants_fidelity:
                        evaluation.fidelity = locked_fidelity(build_layers(canvas), image)
                    if scorer is not None and stored is None:
                        references = [
                            scorer.reference(
                                reference_image(canvas, layer), _reference_key(output, layer)
                            )
                            for layer in output.spec.layers
                        ]
                        evaluation.identity = scorer.score(image, output.subject_names, references)
                        store.put(
                            key,
                            evaluation.identity.to_dict(),
                            metric="identity",
                            variant=options.variant("identity"),
                            image=str(output.image_path),
                        )
                except (LcError, ValueError, OSError) as exc:
                    evaluation.errors.append(getattr(exc, "message", None) or str(exc))
            if progress:
                progress("identity and fidelity", done, len(evaluations))
    finally:
        if scorer is not None:
            scorer.close()


def _reference_key(output: RunOutput, layer) -> str:
    hashes = output.input_hashes
    return score_key(
        "reference",
        "",
        hashes.get(layer.image, ""),
        [layer.mask and hashes.get(layer.mask), layer.crop, layer.flip],
    )


def _prompt_metric(metric, evaluations, options, store, progress) -> None:
    variant = options.variant(metric)
    keys = [score_key(metric, variant, e.output.image_sha256, e.output.prompt) for e in evaluations]
    for evaluation, key in zip(evaluations, keys, strict=True):
        setattr(evaluation, metric, store.get(key))
    if metric not in options.metrics:
        return  # shown when stored, never computed
    pending = [(e, k) for e, k in zip(evaluations, keys, strict=True) if getattr(e, metric) is None]
    pending = [(e, k) for e, k in pending if _readable(e)]
    if not pending:
        return
    python = options.pythons[metric]
    if python is not None:
        _remote_metric(metric, python, pending, options, store, progress)
        return
    if metric == "vqascore":
        scorer = vqascore_adapter.VQAScorer(options.vqascore_model, options.device)
    else:
        scorer = hpsv3_adapter.HPSv3Scorer(options.hpsv3_checkpoint, options.device)
    try:
        step = max(1, options.batch_size)
        for start in range(0, len(pending), step):
            part = pending[start : start + step]
            values = scorer.score(
                [e.output.image_path for e, _ in part], [e.output.prompt for e, _ in part], step
            )
            for (evaluation, key), value in zip(part, values, strict=True):
                setattr(evaluation, metric, value)
                store.put(
                    key,
                    value,
                    metric=metric,
                    variant=variant,
                    image=str(evaluation.output.image_path),
                )
            if progress:
                progress(metric, start + len(part), len(pending))
    finally:
        scorer.close()


def _remote_metric(metric, python, pending, options, store, progress) -> None:
    """Score `pending` in another environment's interpreter (external.py), storing each score
    as it arrives."""
    job = {
        "metric": metric, "model": options.vqascore_model,
        "checkpoint": options.hpsv3_checkpoint, "device": options.device,
        "batch_size": options.batch_size,
    }  # fmt: skip
    items = [(str(e.output.image_path), e.output.prompt) for e, _ in pending]
    for done, (index, value) in enumerate(score_remote(python, job, items), 1):
        evaluation, key = pending[index]
        setattr(evaluation, metric, value)
        store.put(
            key, value, metric=metric, variant=options.variant(metric),
            image=str(evaluation.output.image_path), python=python,
        )  # fmt: skip
        if progress:
            progress(metric, done, len(pending))


def _readable(evaluation: Evaluation) -> bool:
    """Whether the output's image is the one its manifest names (else the error is recorded)."""
    try:
        evaluation.output.read_image()
    except LcError as exc:
        if exc.message not in evaluation.errors:
            evaluation.errors.append(exc.message)
        return False
    return True
