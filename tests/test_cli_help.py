"""Every option's help text reaches the user whole: Rich reads `[word]` as markup and drops it
unless it is escaped (`\\[dev]`), which once turned "FLUX.1 [dev]" into "FLUX.1 "."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from types import UnionType
from typing import Annotated, Literal, Union, get_args, get_origin, get_type_hints

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


def _callbacks(typer_app, prefix: tuple[str, ...] = ()):
    """(command path, function) for every command of a Typer app, groups included."""
    for info in typer_app.registered_commands:
        yield (*prefix, info.name or info.callback.__name__), info.callback
    for group in typer_app.registered_groups:
        yield from _callbacks(group.typer_instance, (*prefix, group.name))


def _literal(hint) -> tuple[str, ...]:
    """The choices of a `Literal[...]` option type (inside Annotated and Optional), else ()."""
    if get_origin(hint) is Annotated:
        hint = get_args(hint)[0]
    if get_origin(hint) in (Union, UnionType):
        hint = next(arg for arg in get_args(hint) if arg is not type(None))
    return get_args(hint) if get_origin(hint) is Literal else ()


PARAMS = {path: {p.name: p for p in command.params} for path, command in COMMANDS}
CHOICE_PARAMS = [
    (path, PARAMS[path][name], choices)
    for path, function in _callbacks(app)
    for name, hint in get_type_hints(function, include_extras=True).items()
    if (choices := _literal(hint)) and name in PARAMS[path]
]


def test_choice_options_are_typed_once_and_list_their_choices():
    # The options that take a mode, a fill, a device type... are choices, and the same option
    # name offers the same choices in every command that takes it.
    assert len(CHOICE_PARAMS) >= 20
    by_name: dict[str, set[tuple[str, ...]]] = {}
    for _, param, choices in CHOICE_PARAMS:
        by_name.setdefault(param.opts[0], set()).add(choices)
    assert {"--mode", "--encode", "--fill", "--offload", "--dtype", "--detector"} <= set(by_name)
    assert {name: len(sets) for name, sets in by_name.items() if len(sets) > 1} == {}


@pytest.mark.parametrize(
    "path,param,choices",
    CHOICE_PARAMS,
    ids=[f"{' '.join(p)} {q.opts[0]}" for p, q, _ in CHOICE_PARAMS],
)
def test_every_choice_option_shows_its_choices_and_refuses_others(path, param, choices):
    shown = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "400", "NO_COLOR": "1"})
    assert "|".join(choices) in shown.output, (path, param.opts)
    refused = runner.invoke(app, [*path, param.opts[0], "no-such-choice"])
    assert refused.exit_code == 2
    assert all(choice in refused.output for choice in choices), refused.output


def test_train_set_describes_config_keys():
    shown = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "400", "NO_COLOR": "1"})
    words = " ".join(shown.output.split())
    assert "Override a config key" in words and "train.steps" in words
    assert "layers.alice.lock" not in words


def test_the_root_help_has_examples():
    shown = runner.invoke(app, ["--help"], env={"COLUMNS": "100", "NO_COLOR": "1"})
    assert shown.exit_code == 0 and "Examples:" in shown.output
    assert "lc render canvases/four_people.yaml --model builtin:tiny" in shown.output


def test_help_paragraphs_wrap_at_the_terminal_not_at_the_source_lines():
    from layercomposer.cli.main import reflow

    doc = """First line.

    A paragraph written
    over three lines
    of source.

    Examples:
        lc a
        lc b --c
    """
    assert reflow(doc) == (
        "First line.\n\nA paragraph written over three lines of source.\n\n"
        "Examples:\n    lc a\n    lc b --c"
    )
    for path, _ in COMMANDS:
        shown = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "80", "NO_COLOR": "1"})
        text = shown.output.split("Usage:", 1)[1].split("Examples:", 1)[0].split("╭", 1)[0]
        for paragraph in text.split("\n \n")[1:]:  # after the usage line
            lines = [line.strip() for line in paragraph.strip("\n").splitlines()]
            # a line that is not a paragraph's last fills the width: none ends where the
            # docstring's source line ended ("... doesn't stop the" / "others" / "(unless")
            assert all(len(line) > 50 for line in lines[:-1]), (path, lines)


def _lc(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", "import sys; sys.argv[0] = 'lc'; "
         "from layercomposer.cli.main import main; main()", *args],
        capture_output=True, text=True, timeout=120, env={**os.environ, **env},
    )  # fmt: skip


def test_shell_completion_installs_and_completes_commands_options_and_choices(tmp_path):
    installed = _lc(
        "--install-completion", "bash", env={"HOME": str(tmp_path), "SHELL": "/bin/bash"}
    )
    assert installed.returncode == 0, installed.stderr + installed.stdout
    script = tmp_path / ".bash_completions" / "lc.sh"
    assert "complete -o default -F _lc_completion lc" in script.read_text()
    assert str(script) in (tmp_path / ".bashrc").read_text()
    # click's way to ask for the script works too
    assert "_lc_completion" in _lc(env={"_LC_COMPLETE": "bash_source"}).stdout

    def complete(line: str) -> list[str]:
        words = line.split(" ")
        done = _lc(env={"_LC_COMPLETE": "complete_bash", "COMP_WORDS": line,
                        "COMP_CWORD": str(len(words) - 1)})  # fmt: skip
        return done.stdout.split()

    assert "render" in complete("lc ren")
    assert complete("lc render --mode ") == ["auto", "layered", "collage"]
    assert complete("lc bench --suite ") == ["1p", "2p", "4p"]
    assert "cuda:0" in complete("lc render --device cu")
