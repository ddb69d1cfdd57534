"""The metric worker lc starts in another Python environment (see external.py).

Reads one JSON job from stdin: `{"metric": "vqascore" | "hpsv3", "model", "checkpoint",
"device", "batch_size", "items": [[image path, prompt], ...]}`; writes one JSON line per score,
`{"index": i, "value": v}`, as soon as it is computed, and `{"error": ..., "hint": ...}` with
exit status 1 when the metric cannot run. Whatever the libraries print goes to stderr, so
stdout carries only those lines.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, TextIO

MAX_JOB = 64 << 20  # bytes of JSON: about 200,000 items


def _scorer(job: dict[str, Any]):
    if job["metric"] == "vqascore":
        from .vqascore import VQAScorer

        return VQAScorer(job["model"], job["device"])
    if job["metric"] == "hpsv3":
        from .hpsv3 import HPSv3Scorer

        return HPSv3Scorer(job.get("checkpoint"), job["device"])
    raise ValueError(f"unknown metric {job['metric']!r}")


def run(job: dict[str, Any], out: TextIO) -> None:
    """Score every item of `job`, writing each score to `out` as it comes."""
    items = job["items"]
    step = max(1, int(job.get("batch_size", 8)))
    scorer = _scorer(job)
    try:
        for start in range(0, len(items), step):
            part = items[start : start + step]
            values = scorer.score([image for image, _ in part], [p for _, p in part], step)
            for offset, value in enumerate(values):
                out.write(json.dumps({"index": start + offset, "value": float(value)}) + "\n")
            out.flush()
    finally:
        scorer.close()


def main() -> int:
    # Keep the real stdout for the replies; send fd 1 (Python's and C libraries' prints) to
    # stderr, where lc keeps it for an error message.
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    try:
        text = sys.stdin.read(MAX_JOB + 1)
        if len(text) > MAX_JOB:
            raise ValueError(f"the job is larger than {MAX_JOB >> 20} MB")
        job = json.loads(text)
        run(job, out)
    except Exception as exc:  # noqa: BLE001 - every failure goes back to lc as one message
        from ..errors import LcError

        if isinstance(exc, LcError):
            reply = {"error": exc.message, "hint": exc.hint}
        else:
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        out.write(json.dumps(reply) + "\n")
        out.flush()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
