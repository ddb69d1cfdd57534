"""Every option's help text reaches the user whole: Rich reads `[word]` as markup and drops it
unless it is escaped (`\\[dev]`), which once turned "FLUX.1 [dev]" into "FLUX.1 "."""

from __future__ import annotations

import re

import pytest
import typer
from typer.testing import CliRunner

from layercomposer.cli.main import app

runner = CliRunner()


def _commands(group, prefix: tuple[str, ...] = ()):
    for name, command in group.commands.items():
        if hasattr(command, "commands"):  # a group: lc lora, lc dataset
            yield from _commands(command, (*prefix, name))
        else:
            yield (*prefix, name), command


COMMANDS = list(_commands(typer.main.get_command(app)))


def _words(text: str) -> list[str]:
    """The words of a help text as a reader sees them (escapes removed, spacing ignored)."""
    return re.findall(r"[\w<>.\-']+", text.replace("\\[", "["))


@pytest.mark.parametrize("path,command", COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_every_option_help_is_shown_whole(path, command):
    done = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "400", "NO_COLOR": "1"})
    assert done.exit_code == 0, done.output
    shown = _words(done.output)
    for param in command.params:
        help_text = getattr(param, "help", None)
        if not help_text:
            continue
        words = _words(help_text)
        found = any(shown[i : i + len(words)] == words for i in range(len(shown) - len(words) + 1))
        assert found, f"lc {' '.join(path)} {param.opts}: help shown without part of {help_text!r}"
