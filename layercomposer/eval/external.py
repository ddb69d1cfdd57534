"""Metrics run in another Python environment, as a subprocess of lc.

VQAScore (t2v_metrics) and HPSv3 (hpsv3) pin library versions that cannot share lc's
environment. Given that environment's interpreter (`--vqascore-python PATH`), lc starts
`PATH -m layercomposer.eval.worker` there, sends it the images and prompts to score as one JSON
job on stdin, and reads one score per line back as they are computed, so the model loads once
and a killed run keeps every score already read. The worker is lc's own code from this
installation (put on that interpreter's path through a folder holding only a link to the
`layercomposer` package), so the other environment needs only the metric's package.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ModelError

PROBE_SECONDS = 60  # starting a python and looking up one package
MAX_LINE = 1 << 20  # a worker's reply line is a few dozen bytes; anything longer is not one
STDERR_TAIL = 2000  # characters of the worker's stderr quoted in an error

_PROBE = (
    "import importlib.util, json, sys; "
    "print(json.dumps({'executable': sys.executable, 'version': sys.version.split()[0], "
    "'found': importlib.util.find_spec(sys.argv[1]) is not None}))"
)


@dataclass(frozen=True)
class Probe:
    """What an interpreter said about itself: whether `package` is importable there."""

    python: str
    executable: str | None
    version: str | None
    found: bool
    problem: str | None  # why the interpreter could not be asked at all


def probe(python: str, package: str) -> Probe:
    """Ask `python` whether it can import `package` (without importing it: that takes long)."""
    try:
        done = subprocess.run(
            [python, "-c", _PROBE, package],
            capture_output=True, text=True, timeout=PROBE_SECONDS, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    except (FileNotFoundError, PermissionError, NotADirectoryError):
        return Probe(python, None, None, False, f"{python}: no such executable")
    except OSError as exc:
        return Probe(python, None, None, False, f"{python} cannot be run: {exc}")
    except subprocess.TimeoutExpired:
        return Probe(python, None, None, False, f"{python} did not answer in {PROBE_SECONDS} s")
    try:
        answer = json.loads(done.stdout.strip().splitlines()[-1])
        return Probe(python, answer["executable"], answer["version"], bool(answer["found"]), None)
    except (IndexError, KeyError, TypeError, json.JSONDecodeError):
        tail = (done.stderr or done.stdout).strip()[-300:]
        return Probe(python, None, None, False, f"{python} is not a working python: {tail}")


def score_remote(
    python: str, job: dict[str, Any], items: list[tuple[str, str]]
) -> Iterator[tuple[int, float]]:
    """Yield (index into `items`, score) from a worker in `python`'s environment as each
    arrives; a worker that fails raises `ModelError` with its message (after the scores it
    did send were yielded)."""
    with tempfile.TemporaryDirectory(prefix="lc-worker-") as folder:
        # Only lc itself goes onto the other interpreter's path: a link to this package.
        package = Path(__file__).resolve().parents[1]
        os.symlink(package, Path(folder) / package.name)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [folder, env.get("PYTHONPATH")]))
        env["PYTHONUNBUFFERED"] = "1"
        with tempfile.TemporaryFile(mode="w+", prefix="lc-worker-stderr-") as stderr:
            try:
                process = subprocess.Popen(
                    [python, "-m", "layercomposer.eval.worker"],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, env=env,
                    text=True,
                )  # fmt: skip
            except OSError as exc:
                raise ModelError(f"{python} cannot be run: {exc}") from None
            failure: dict[str, Any] | None = None
            try:
                request = {**job, "items": [list(item) for item in items]}
                try:
                    process.stdin.write(json.dumps(request))
                    process.stdin.close()
                except BrokenPipeError:
                    pass  # the worker died at start; its exit status says why, below
                while line := process.stdout.readline(MAX_LINE):
                    try:
                        message = json.loads(line)
                    except json.JSONDecodeError:
                        message = {"error": f"an unreadable reply: {line[:200]!r}"}
                    if "error" in message:
                        failure = message
                    else:
                        yield int(message["index"]), float(message["value"])
                code = process.wait()
            finally:
                if process.poll() is None:  # interrupted, or the consumer stopped early
                    process.kill()
                    process.wait()
            if failure is not None or code != 0:
                stderr.seek(0)
                tail = stderr.read()[-STDERR_TAIL:].strip()
                what = job["metric"]
                if failure is not None:
                    raise ModelError(
                        f"{what} in {python}: {failure['error']}", hint=failure.get("hint")
                    )
                raise ModelError(
                    f"{what} in {python} stopped with exit status {code}"
                    + (f":\n{tail}" if tail else ""),
                )
