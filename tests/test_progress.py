"""Progress lines for logs: one per finished unit, with the count and the time left, timed
from where the stage started (units a resume kept do not count towards the rate)."""

from __future__ import annotations

import re

import pytest

from layercomposer.cli._progress import LineProgress, duration


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_line_per_finished_unit_with_the_time_left():
    clock, lines = Clock(), []
    progress = LineProgress(lines.append, clock)
    for done in (1, 2, 3, 4):
        clock.now += 2.0
        progress("render layered", done, 4)
    assert lines == [
        "render layered 1/4: 2.0 s each, about 6.0 s left",
        "render layered 2/4: 2.0 s each, about 4.0 s left",
        "render layered 3/4: 2.0 s each, about 2.0 s left",
        "render layered 4/4: 2.0 s each, 8.0 s in all",
    ]


def test_a_stage_starts_where_the_last_one_ended_or_at_start():
    clock, lines = Clock(), []
    progress = LineProgress(lines.append, clock)
    clock.now += 60  # the first stage's unit took a minute
    progress("priors", 1, 1)
    clock.now += 30  # the next stage is timed from the end of the last
    progress("canvases", 1, 3, what="2p-00")
    assert lines[-1] == "canvases 1/3: 30 s each, about 60 s left (2p-00)"
    # a resumed build: 8 of 10 sources were kept; the rate counts only this run's
    progress.start("sources", 8)
    progress("sources", 8, 10)  # no unit finished: no line
    clock.now += 600
    progress("sources", 9, 10)
    assert lines[-1] == "sources 9/10: 10 min each, about 10 min left"
    assert len(lines) == 3


def test_durations_read_like_a_person_would_say_them():
    assert [duration(s) for s in (0.44, 12.4, 89, 125, 5400, 9000)] == [
        "0.4 s", "12 s", "89 s", "2 min", "1 h 30 min", "2 h 30 min",
    ]  # fmt: skip


def test_lc_train_logs_a_line_per_logged_step_with_the_time_left(tmp_path, monkeypatch):
    pytest.importorskip("torch", reason="lc train needs lc's [render] extra")
    from types import SimpleNamespace

    from typer.testing import CliRunner

    from conftest import REPO
    from layercomposer.cli.main import app
    from layercomposer.train import trainer as trainer_module

    class FakeTrainer:  # the steps a resumed run of 20 makes from step 5, as the trainer reports
        def __init__(self, config, resume, on_step, overwrite):
            self.on_step = on_step
            self.accelerator = SimpleNamespace(is_main_process=True)

        def run(self):
            for step in range(6, 21):
                self.on_step(trainer_module.StepReport(step, 20, 1.5, 2.0))
            return tmp_path / "pytorch_lora_weights.safetensors"

    monkeypatch.setattr(trainer_module, "Trainer", FakeTrainer)
    result = CliRunner().invoke(app, ["train", str(REPO / "configs" / "tiny.yaml")])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("step ")]
    assert len(lines) == 2, result.output  # steps 10 and 20: the logged ones
    numbers = r"[\d.]+ (s|min)"
    what = r" \(loss 1\.5000, 2\.00 samples/s\)"
    assert re.fullmatch(rf"step 10/20: {numbers} each, about {numbers} left{what}", lines[0])
    assert re.fullmatch(rf"step 20/20: {numbers} each, {numbers} in all{what}", lines[1])
    quiet = CliRunner().invoke(app, ["train", str(REPO / "configs" / "tiny.yaml"), "--quiet"])
    assert quiet.exit_code == 0 and "step " not in quiet.output
