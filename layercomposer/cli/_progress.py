"""Progress for a log: off a terminal (CI, a pipe, `nohup`) a long command prints one line per
finished unit, with its count and an estimate of the time left, so the log shows it is alive.
On a terminal the commands draw Rich progress bars instead."""

from __future__ import annotations

import time
from collections.abc import Callable


def duration(seconds: float) -> str:
    """`0.4 s`, `12 s`, `3 min`, `1 h 20 min`: a time for a person to read."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    if minutes < 90:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60} min"


class LineProgress:
    """Calls `say` with one line per finished unit of each stage: `render layered 3/32: 2.1 s
    each, about 1 min left`.

    A stage's clock starts at `start(stage, done)` (units already done, e.g. resumed, do not
    count towards the rate), or else at the previous progress event: the moment the stage
    before it ended, or this object's creation. Calls that finish no new unit print nothing.
    """

    def __init__(self, say: Callable[[str], None], clock: Callable[[], float] = time.monotonic):
        self.say = say
        self.clock = clock
        self._last_event = clock()
        self._stages: dict[
            str, tuple[float, int, int]
        ] = {}  # stage -> (start, done at start, last done)

    def start(self, stage: str, done: int = 0) -> None:
        """Start the stage's clock now, with `done` units already finished."""
        now = self.clock()
        self._stages[stage] = (now, done, done)
        self._last_event = now

    def __call__(self, stage: str, done: int, total: int | None, what: str = "") -> None:
        pace = self.pace(stage, done, total)
        if pace:
            line = f"{stage} {done}/{total}" if total else f"{stage} {done}"
            self.say(f"{line}: {pace}" + (f" ({what})" if what else ""))

    def pace(self, stage: str, done: int, total: int | None) -> str:
        """`2.1 s each, about 1 min left` (`..., 8 s in all` at the end) for a stage that has
        just reached `done`; '' when no new unit finished."""
        now = self.clock()
        if stage not in self._stages:
            self._stages[stage] = (self._last_event, 0, 0)
        started, first, last = self._stages[stage]
        self._last_event = now
        if done <= last:
            return ""
        self._stages[stage] = (started, first, done)
        each = (now - started) / (done - first)
        if total and done < total:
            return f"{duration(each)} each, about {duration(each * (total - done))} left"
        if total:
            return f"{duration(each)} each, {duration(now - started)} in all"
        return f"{duration(each)} each"
