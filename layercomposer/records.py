"""JSON records lc writes and reads back (run manifests, dataset indexes): the pydantic base
their schemas share, and how a record that fails its schema is reported."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from .errors import InputError

SHOWN_PROBLEMS = 5  # a crafted file can have thousands; the first few say what is wrong


class OpenRecord(BaseModel):
    """Keys lc does not know are kept for later versions, not refused; NaN and inf are."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)


def invalid_record(
    path: str | Path, exc: ValidationError, what: str, hint: str, prefix: tuple = ()
) -> InputError:
    """An InputError (exit 2) naming `path` and the first wrong keys of `exc`, located."""
    errors = exc.errors()
    problems = [
        f"[{' -> '.join(str(part) for part in (*prefix, *error['loc']))}] {error['msg']}"
        for error in errors[:SHOWN_PROBLEMS]
    ]
    more = len(errors) - SHOWN_PROBLEMS
    return InputError(
        f"{path} is not a valid {what}: {'; '.join(problems)}"
        + (f"; and {more} more" if more > 0 else ""),
        hint=hint,
    )
