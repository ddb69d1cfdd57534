"""Which metrics can run, where, and how to enable the others.

A metric runs in this Python (its package importable here, or for identity its backend's model
files present), or, for VQAScore and HPSv3, in the interpreter given by `--vqascore-python` /
`LC_VQASCORE_PYTHON` and `--hpsv3-python` / `LC_HPSV3_PYTHON` (see external.py). With no
`--metrics`, lc runs every available metric and names the skipped ones in one line; a metric
asked for by name that cannot run is an error before any work.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass

from ..errors import LcError, ModelError
from . import hpsv3 as hpsv3_adapter
from . import vqascore as vqascore_adapter
from .external import probe
from .identity import check_backend

METRICS: tuple[str, ...] = ("identity", "vqascore", "hpsv3", "fidelity")
PACKAGES = {"vqascore": "t2v_metrics", "hpsv3": "hpsv3"}
PYTHON_OPTIONS = {
    "vqascore": ("--vqascore-python", "LC_VQASCORE_PYTHON"),
    "hpsv3": ("--hpsv3-python", "LC_HPSV3_PYTHON"),
}
MIN_PYTHON = (3, 10)  # lc's own floor, for the worker it runs there
INSTALL = {
    "vqascore": vqascore_adapter.INSTALL_HINT,
    "hpsv3": hpsv3_adapter.INSTALL_HINT,
}


@dataclass(frozen=True)
class MetricStatus:
    """Whether one metric can run, in which interpreter, and if not, why and how to enable it."""

    metric: str
    available: bool
    where: str  # "this python (/usr/bin/python3)", "/venvs/vqa/bin/python (--vqascore-python)"
    problem: str = ""  # why it cannot run
    enable: str = ""  # how to make it run
    short: str = ""  # the gist of `enable`, for the one-line list of skipped metrics

    def to_dict(self) -> dict[str, object]:
        return dict(self.__dict__)

    def summary(self) -> str:
        """`vqascore (t2v_metrics is not installed; to enable: ...)`, on one line."""
        text = f"{self.metric} ({self.problem}; to enable: {self.enable})"
        return " ".join(text.split())

    def brief(self) -> str:
        """`vqascore (t2v_metrics is not installed: --vqascore-python PATH)`."""
        problem = self.problem.split(";")[0]  # the first clause says what is missing
        return " ".join(f"{self.metric} ({problem}: {self.short or self.enable})".split())


def _here() -> str:
    return f"this python ({sys.executable})"


def metric_status(
    metric: str, identity_backend: str, python: str | None, download: bool = False
) -> MetricStatus:
    """The status of one metric; `python` is the interpreter given for it, if any."""
    if metric == "fidelity":
        return MetricStatus(metric, True, _here())
    if metric == "identity":
        try:
            check_backend(identity_backend, download)
        except LcError as exc:
            enable = (exc.hint or "") + (
                "; or --identity-backend dlib (offline, not on ArcFace's scale)"
                if identity_backend != "dlib"
                else ""
            )
            short = "lc eval --check says where its files go" + (
                ", or --identity-backend dlib" if identity_backend != "dlib" else ""
            )
            where = f"{_here()}, {identity_backend} backend"
            return MetricStatus(metric, False, where, exc.message, enable, short)
        return MetricStatus(metric, True, f"{_here()}, {identity_backend} backend")
    package = PACKAGES[metric]
    option, variable = PYTHON_OPTIONS[metric]
    if python is not None:
        where = f"{python} ({option} / {variable})"
        answer = probe(python, package)
        if answer.problem:
            return MetricStatus(metric, False, where, answer.problem, f"fix {option}")
        if answer.version and tuple(map(int, answer.version.split(".")[:2])) < MIN_PYTHON:
            floor = ".".join(map(str, MIN_PYTHON))
            problem = f"it is Python {answer.version}; lc's worker needs {floor} or newer"
            return MetricStatus(metric, False, where, problem, f"a python {floor}+ environment")
        if not answer.found:
            return MetricStatus(
                metric, False, where, f"{package} is not installed there",
                f"in that environment: {INSTALL[metric]}",
            )  # fmt: skip
        return MetricStatus(metric, True, f"{answer.executable} ({option} / {variable})")
    if importlib.util.find_spec(package) is not None:
        return MetricStatus(metric, True, _here())
    return MetricStatus(
        metric, False, _here(), f"{package} is not installed",
        f"{option} PATH (or {variable}) naming the python of an environment with it "
        f"({INSTALL[metric]})", f"{option} PATH or {variable}",
    )  # fmt: skip


def plan_metrics(
    asked: tuple[str, ...] | None,
    identity_backend: str,
    pythons: dict[str, str | None],
    download: bool = False,
) -> tuple[tuple[str, ...], list[MetricStatus]]:
    """The metrics to run and the ones skipped. `asked` None: every available one; a metric
    asked for by name that cannot run raises `ModelError`, before any work."""
    statuses = [
        metric_status(m, identity_backend, pythons.get(m), download)
        for m in METRICS
        if asked is None or m in asked
    ]
    if asked is not None:
        for status in statuses:
            if not status.available:
                raise ModelError(
                    f"--metrics {status.metric}: {status.problem}",
                    hint=f"{status.enable}; or leave {status.metric} out of --metrics",
                )
    run = tuple(s.metric for s in statuses if s.available)
    return run, [s for s in statuses if not s.available]


def skipped_line(skipped: list[MetricStatus]) -> str:
    """One line naming the metrics skipped and how to enable each."""
    return (
        "skipped metrics: "
        + "; ".join(s.brief() for s in skipped)
        + " (`lc eval --check` for how to install each)"
    )
