"""A training run's folder: refuse to mix two runs in one, and resume only the run it holds.

A folder holds a run once `lc train` has written any of `RUN_ITEMS` into it. Starting again
there without `--resume` is refused (exit 2) unless `--overwrite` asks to start over, which
removes exactly those items. `--resume` takes a checkpoint only when it was written with the same
config, up to the settings that only schedule or report a run (`SCHEDULE_KEYS`): its
fingerprint says what is trained, so more steps or another sample cadence may continue a run,
while another learning rate, dataset or LoRA shape may not. The batch counts as the global
batch (processes x `train.batch_size`), since a checkpoint resumes on any process count.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from ..errors import UsageError

# What `lc train` writes into output_dir; --overwrite removes these and nothing else.
RUN_ITEMS = (
    "checkpoints",
    "samples",
    "tensorboard",
    "metrics.csv",
    "pytorch_lora_weights.safetensors",
)
# Settings a resumed run may change: they decide how long a run goes and what it reports, not
# what one step does.
SCHEDULE_KEYS = (
    "output_dir",
    "device",
    "train.steps",
    "checkpoint_every",
    "keep_checkpoints",
    "sample_every",
    "sample_steps",
    "validation_canvases",
    "tensorboard",
)


def _flatten(value, prefix: str = "") -> dict[str, object]:
    if isinstance(value, dict):
        flat: dict[str, object] = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): value}


def run_settings(config: dict, global_batch: int) -> dict[str, object]:
    """The config's settings that define what the run trains, by dotted key."""
    settings = {
        key: value
        for key, value in _flatten(config).items()
        if not any(key == k or key.startswith(k + ".") for k in SCHEDULE_KEYS)
    }
    settings.pop("train.batch_size", None)
    return {**settings, "global batch": global_batch}


def config_fingerprint(config: dict, global_batch: int) -> str:
    """sha256 of `run_settings`: equal for two configs that train the same run."""
    text = json.dumps(run_settings(config, global_batch), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def settings_changed(saved: dict, saved_batch: int, current: dict, batch: int) -> list[str]:
    """The dotted keys whose values differ between two configs' run settings."""
    old, new = run_settings(saved, saved_batch), run_settings(current, batch)
    return sorted(key for key in old.keys() | new.keys() if old.get(key) != new.get(key))


def existing_run_items(output: Path) -> list[Path]:
    """The items of an earlier run in `output` (empty when it holds none)."""
    return [output / name for name in RUN_ITEMS if (output / name).exists()]


def prepare_run_folder(output: Path, resume: bool, overwrite: bool) -> None:
    """Refuse a folder that holds another run, or clear it for `overwrite`. Changes nothing
    when it refuses."""
    if resume and overwrite:
        raise UsageError("--resume and --overwrite contradict each other", hint="choose one")
    items = existing_run_items(output)
    if not items or resume:
        return
    if not overwrite:
        raise UsageError(
            f"{output} already holds a training run ({', '.join(p.name for p in items)})",
            hint="--resume continues it, --overwrite starts over (it removes that run's "
            "checkpoints, samples, metrics and LoRA), or set another output_dir",
        )
    for item in items:
        if item.is_dir() and not item.is_symlink():
            shutil.rmtree(item)
        else:
            item.unlink()


def check_resumable(checkpoint: Path, state: dict, current: dict, global_batch: int) -> None:
    """Refuse to resume from a checkpoint (its `state.json`) written with other run settings."""
    state = state if isinstance(state, dict) else {}
    saved_config, saved_batch = state.get("config"), state.get("global_batch")
    if not isinstance(saved_config, dict) or not isinstance(saved_batch, int):
        raise UsageError(
            f"{checkpoint} records no config, so it cannot be checked against this one",
            hint="resume it with the lc version that wrote it, or start over with --overwrite",
        )
    changed = settings_changed(saved_config, saved_batch, current, global_batch)
    if changed:
        shown = ", ".join(changed[:8]) + (
            f" and {len(changed) - 8} more" if len(changed) > 8 else ""
        )
        raise UsageError(
            f"{checkpoint} was written by a run with other settings ({shown})",
            hint="resume with the config that run was started with (only "
            + ", ".join(SCHEDULE_KEYS[1:])
            + " may change), or start over with --overwrite or another output_dir",
        )
