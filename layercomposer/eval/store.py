"""Scores already computed, kept as JSON lines beside the tables (`scores.jsonl`).

Each score is keyed by everything it depends on (the metric, the model that computed it, the
image's hash, and the prompt or the reference images), so a rerun computes only what is new,
and scores made in different environments add up: VQAScore and HPSv3 pin incompatible
libraries, so each runs in its own virtual environment (started by lc, see external.py, or by
hand) against the same output folder.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from ..limits import read_json_lines_bounded

STORE_NAME = "scores.jsonl"


def score_key(metric: str, variant: str, image_sha256: str, depends_on: Any) -> str:
    """A stable key for one score."""
    payload = json.dumps([metric, variant, image_sha256, depends_on], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


class ScoreStore:
    """A dict of key -> record, appended to a JSON-lines file as scores arrive."""

    def __init__(self, path: Path | None):
        self.path = path
        self._records: dict[str, dict[str, Any]] = {}
        if path is not None and path.is_file():
            # A line cut short by a killed run is skipped: that score is computed again.
            for record in read_json_lines_bounded(path):
                if isinstance(record, dict) and "key" in record:
                    self._records[record["key"]] = record

    def get(self, key: str) -> Any | None:
        record = self._records.get(key)
        return None if record is None else record["value"]

    def put(self, key: str, value: Any, **about: Any) -> None:
        record = {"key": key, **about, "value": value}
        self._records[key] = record
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # One short line per score, flushed at once: a killed run loses at most that line.
            with open(self.path, "a") as handle:
                handle.write(json.dumps(record) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
