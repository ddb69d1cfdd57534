"""One render at a time: a queue in front of one `Renderer` (one pipeline, one latent cache).

A single worker thread owns the renderer, so the model is loaded once and re-renders reuse
cached layer latents. Cancelling a job that waits drops it; cancelling the running one stops it
at the next denoising step: the step callback raises, unwinding the pipeline call.
"""

from __future__ import annotations

import contextlib
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from ..canvas import Canvas
from ..errors import LcError, describe

Status = Literal["queued", "running", "done", "failed", "cancelled"]
FINAL: tuple[Status, ...] = ("done", "failed", "cancelled")
Notify = Callable[[dict[str, Any]], None]


class RenderCancelled(Exception):
    """Raised from the step callback to stop a render between denoising steps."""


@dataclass
class RenderJob:
    """One render request: what to render, and how it is going."""

    canvas: Canvas
    seed: int
    out_dir: Path
    encode: str
    mode: str
    notify: Notify
    id: str = field(default_factory=lambda: secrets.token_hex(6))
    status: Status = "queued"
    step: int = 0
    total: int = 0
    result: Any = None
    error: str | None = None
    created: float = field(default_factory=time.time)
    started: float | None = None
    ended: float | None = None
    cancel_requested: threading.Event = field(default_factory=threading.Event)

    @property
    def finished(self) -> bool:
        return self.status in FINAL

    def summary(self) -> dict[str, Any]:
        return {
            "job": self.id,
            "canvas": self.canvas.path.name,
            "seed": self.seed,
            "status": self.status,
            "step": self.step,
            "total": self.total,
            "created": self.created,
            "started": self.started,
            "ended": self.ended,
        }


class RenderQueue:
    """Runs jobs one after another on a worker thread; tells each job's listener how it goes."""

    def __init__(
        self,
        renderer: Any,
        preload: bool = False,
        keep_finished: int = 20,
        on_model_status: Callable[[str], None] | None = None,
    ):
        self.renderer = renderer  # a render.Renderer, or anything with .settings/.on_step/.render
        # "idle" until something loads the model; the page shows it beside the Render button,
        # and `on_model_status` (the terminal) hears how the preload ended.
        self.model_status = "loading" if preload else "idle"
        self._preload = preload
        self._on_model_status = on_model_status
        self._waiting: deque[RenderJob] = deque()
        self._running: RenderJob | None = None
        self._finished: deque[RenderJob] = deque(maxlen=keep_finished)
        self._lock = threading.Condition()
        self._closed = False
        self._worker = threading.Thread(target=self._work, name="lc-studio-render", daemon=True)
        self._worker.start()

    # --- what the API calls --------------------------------------------------------------------

    def submit(self, job: RenderJob) -> RenderJob:
        with self._lock:
            if self._closed:
                raise LcError("the studio is shutting down")
            self._waiting.append(job)
            ahead = len(self._waiting) - 1 + (self._running is not None)
            self._lock.notify_all()
        self._tell(job, {"event": "queued", "position": ahead})
        return job

    def cancel(self, job_id: str) -> bool:
        """Stop a job: a waiting one at once, the running one at its next step."""
        with self._lock:
            job = self._find(job_id)
            if job is None or job.finished:
                return False
            job.cancel_requested.set()
            if job in self._waiting:
                self._waiting.remove(job)
                self._finish(job, "cancelled")
        return True

    def jobs(self) -> list[dict[str, Any]]:
        with self._lock:
            every = [*self._finished, *([self._running] if self._running else []), *self._waiting]
            return [job.summary() for job in every]

    def close(self, timeout: float = 10.0) -> None:
        """Cancel everything and stop the worker (it ends after the current step)."""
        with self._lock:
            self._closed = True
            for job in list(self._waiting):
                job.cancel_requested.set()
                self._waiting.remove(job)
                self._finish(job, "cancelled")
            if self._running is not None:
                self._running.cancel_requested.set()
            self._lock.notify_all()
        self._worker.join(timeout)

    # --- the worker ----------------------------------------------------------------------------

    def _work(self) -> None:
        if self._preload:  # load while the user arranges layers, not on the first Render
            started = time.perf_counter()
            try:
                self.renderer.load()
                self.model_status = "ready"
                told = f"ready ({time.perf_counter() - started:.1f} s)"
            except Exception as exc:  # noqa: BLE001 - reported to the page; a render retries
                self.model_status = told = f"failed: {describe(exc)}"
            if self._on_model_status is not None:
                with contextlib.suppress(Exception):  # a closed terminal must not stop the worker
                    self._on_model_status(told)
        while True:
            with self._lock:
                while not self._waiting and not self._closed:
                    self._lock.wait()
                if self._closed:
                    return
                job = self._running = self._waiting.popleft()
                job.status = "running"
                job.started = time.time()
                waiting = list(self._waiting)
            self._tell(job, {"event": "started"})
            for position, other in enumerate(waiting, start=1):
                self._tell(other, {"event": "queued", "position": position})
            status, error, result = self._run(job)
            with self._lock:
                job.result = result
                self._running = None
                self._finish(job, status, error)

    def _run(self, job: RenderJob) -> tuple[Status, str | None, Any]:
        def on_step(done: int, total: int) -> None:
            if job.cancel_requested.is_set():
                raise RenderCancelled
            job.step, job.total = done, total
            self._tell(job, {"event": "step", "step": done, "total": total})
            if job.cancel_requested.is_set():  # don't decode a render nobody wants
                raise RenderCancelled

        renderer = self.renderer
        renderer.settings = replace(renderer.settings, encode=job.encode, mode=job.mode)
        renderer.on_step = on_step
        try:
            if job.cancel_requested.is_set():
                return "cancelled", None, None
            result = renderer.render(job.canvas, job.seed, job.out_dir)
            self.model_status = "ready"
            return "done", None, result
        except RenderCancelled:
            return "cancelled", None, None
        except Exception as exc:  # noqa: BLE001 - one failed render must not stop the studio
            return "failed", describe(exc), None
        finally:
            renderer.on_step = None

    # --- helpers (called with the lock held where they touch the lists) ------------------------

    def _find(self, job_id: str) -> RenderJob | None:
        every = [*self._finished, *([self._running] if self._running else []), *self._waiting]
        return next((job for job in every if job.id == job_id), None)

    def _finish(self, job: RenderJob, status: Status, error: str | None = None) -> None:
        job.status, job.error, job.ended = status, error, time.time()
        self._finished.append(job)
        event: dict[str, Any] = {"event": status}
        if error:
            event["error"] = error
        self._tell(job, event)

    @staticmethod
    def _tell(job: RenderJob, event: dict[str, Any]) -> None:
        # A listener that went away must not stop the worker.
        with contextlib.suppress(Exception):
            job.notify({"job": job.id, **event})
