"""Every command the README and docs/*.md show runs as written, or the docs say why it cannot.

The convention, read from each fenced block's info string (the words after the backticks):

- `bash`: run, as one `bash -e -o pipefail` script per block, in the order of its document, in a
  scratch folder that holds a copy of the repository's canvases/, configs/ and benchmarks/ (one
  folder per document: a block may use what an earlier block of the same document made), with
  this environment's `lc` first on PATH, HF_HUB_OFFLINE=1 and HOME in the scratch folder.
  `pip install ...` commands are not run (lc is installed here) but every extra they name must
  exist in pyproject.toml. Keep these blocks cheap: builtin:tiny, a few steps, small sizes.
- `bash weights` (needs downloaded model weights), `bash gpu` (a GPU), `bash data` (your own
  photos, videos, renders or LoRA), `bash slow` (over ~20 s on a CPU, too long for every CI run;
  run too when LC_DOCS_SLOW=1), `bash interactive` (a server that runs until stopped), `bash ci`
  (the CI command itself: it must be `.ci/run`'s line): not run, but every `lc` command in them (also after `accelerate launch`,
  `torchrun` or `python -m layercomposer`) is parsed by lc's own command line: the command, each
  option and each choice must exist. An accelerate `--config_file` must exist; a
  `python benchmarks/X.py` line must name a script that exists and options its argument parser
  defines.
- `yaml` blocks with `layers:` are canvases: each must pass `lc validate` (images resolved
  from canvases/).
- A block with no info string is output or text; it must not hold an `lc` command. Blocks in
  other languages (python, json, yaml that is not a canvas) are not run; a marker on them only
  tells the reader.
- Numbers quoted about the shipped example canvases carry a comment right after them,
  `<!-- inspect four_people: tokens.conditioning=2,118 token_grid=64×64 -->`: each KEY=VALUE must
  equal `lc inspect canvases/four_people.yaml --json` at KEY (`layers.NAME.key` picks a layer),
  and VALUE, as written, must appear in the text before the comment.

The examples in every command's `--help` are parsed the same way as the marked blocks.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer

from conftest import REPO
from layercomposer.cli.main import app
from layercomposer.cli.validate import validate_canvases

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
NOT_RUN = {"weights", "gpu", "data", "slow", "interactive", "ci"}
COPIED = ("canvases", "configs", "benchmarks")
RUN_SLOW = os.environ.get("LC_DOCS_SLOW") == "1"
BLOCK_TIMEOUT_S = 600  # a `slow` block (LC_DOCS_SLOW=1) gets six times this
# Warnings of other libraries a user can do nothing about; lc keeps them off the terminal.
LIBRARY_NOISE = (
    "requires torchvision",  # transformers' image processors
    "Failed to load",  # torchao's GPU kernels
    "is an Enum subclass",  # torch's pytree, for torchao's enums
    "were not passed to `accelerate launch`",
    "Couldn't connect to the Hub",  # diffusers offline
)


@dataclass(frozen=True)
class Block:
    doc: Path
    line: int  # of the opening fence
    language: str
    markers: frozenset[str]
    text: str

    @property
    def where(self) -> str:
        return f"{self.doc.relative_to(REPO)}:{self.line}"

    @property
    def runs(self) -> bool:
        return self.language == "bash" and (
            not self.markers or (RUN_SLOW and self.markers == {"slow"})
        )


def blocks(doc: Path) -> list[Block]:
    """The fenced blocks of a markdown file, in order."""
    found, lines = [], doc.read_text(encoding="utf-8").splitlines()
    start = info = None
    for number, line in enumerate(lines, 1):
        if line.startswith("```"):
            if start is None:
                start, info = number, line[3:].split()
            else:
                language, *markers = info or [""]
                text = "\n".join(lines[start : number - 1])
                found.append(Block(doc, start, language, frozenset(markers), text))
                start = None
    return found


ALL_BLOCKS = [block for doc in DOCS for block in blocks(doc)]


def commands(text: str) -> list[list[str]]:
    """The simple commands of a shell text: continuation lines joined, comments dropped, split
    at `&&`, `||`, `;` and `|`; leading VAR=value assignments removed."""
    joined = re.sub(r"\\\n", " ", text)
    found = []
    for line in joined.splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|<>")
        lexer.whitespace_split = True
        lexer.commenters = "#"
        current: list[str] = []
        redirect = False
        for token in [*lexer, ";"]:
            if token in (";", "&&", "||", "|", "&"):
                while current and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", current[0]):
                    current.pop(0)
                if current:
                    found.append(current)
                current = []
            elif token in (">", ">>", "<", "2>", "&>"):
                redirect = True  # the next token is a file, not an argument
            elif redirect:
                redirect = False
            else:
                current.append(token)
    return found


def lc_arguments(command: list[str]) -> list[str] | None:
    """The arguments an `lc` command line passes to lc (None when it does not run lc)."""
    if command[0] == "lc":
        return command[1:]
    if "-m" in command:
        at = command.index("-m")
        if command[at + 1 : at + 2] == ["layercomposer"]:
            return command[at + 2 :]
    return None


ROOT = typer.main.get_command(app)


def parse_lc(arguments: list[str]) -> str:
    """Parse an lc command line without running it; '' if it parses, else what is wrong."""
    command, path, rest = ROOT, ["lc"], list(arguments)
    while hasattr(command, "commands"):  # a group: its options, then a command name
        while rest and rest[0].startswith("-"):
            option = rest.pop(0)
            names = {name for param in command.params for name in param.opts}
            if option not in names | {"--help", "-h"}:
                return f"{' '.join(path)} has no option {option}"
            if option in ("--install-completion", "--show-completion") and rest:
                rest.pop(0)  # the shell's name
        if not rest:
            return ""
        name = rest.pop(0)
        if name not in command.commands:
            return f"{' '.join(path)} has no command {name!r}"
        command, path = command.commands[name], [*path, name]
    if "--help" in rest or "-h" in rest:
        return ""
    try:
        command.make_context(" ".join(path), rest)
    except Exception as exc:  # noqa: BLE001 - the message is the finding
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        return f"{' '.join(path)}: {message}"
    return ""


def script_options(script: Path) -> set[str]:
    """The --options an argparse script defines (read from its source, not run)."""
    return set(re.findall(r"add_argument\(\s*\"(--[\w-]+)\"", script.read_text(encoding="utf-8")))


def extras() -> set[str]:
    """The extras pyproject.toml defines (read as text: tomllib is 3.11+)."""
    text = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    section = text.split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    return set(re.findall(r"(?m)^([\w-]+)\s*=", section))


def check_command(command: list[str]) -> str:
    """What is wrong with one command line of the docs ('' if nothing lc can tell)."""
    if "--config_file" in command:  # accelerate launch: its config ships with lc
        config = command[command.index("--config_file") + 1]
        if not (REPO / config).is_file():
            return f"--config_file {config} does not exist"
    arguments = lc_arguments(command)
    if arguments is not None:
        return parse_lc(arguments)
    if command[:2] == ["pip", "install"] or command[0].endswith("/pip") and "install" in command:
        for token in command:
            for named in re.findall(r"(?:^\.|^layercomposer)\[([\w,-]+)\]", token):
                unknown = set(named.split(",")) - extras()
                if unknown:
                    return f"pip install names extras pyproject.toml lacks: {sorted(unknown)}"
    scripts = [t for t in command if t.startswith("benchmarks/") and t.endswith(".py")]
    if scripts and command[0].startswith("python"):
        script = REPO / scripts[0]
        if not script.is_file():
            return f"{scripts[0]} does not exist"
        given = {t.split("=")[0] for t in command if t.startswith("--")}
        unknown = given - script_options(script) - {"--help"}
        if unknown:
            return f"{scripts[0]} has no options {sorted(unknown)}"
    return ""


# --- the tests ----------------------------------------------------------------------------------


def test_every_block_is_marked_with_a_known_reason_or_runs():
    for block in ALL_BLOCKS:
        unknown = block.markers - NOT_RUN
        assert not unknown, f"{block.where}: unknown markers {sorted(unknown)}; use {NOT_RUN}"
        if not block.language:
            lc_lines = re.findall(r"(?m)^\s*lc \S+", block.text)
            assert not lc_lines, f"{block.where}: a plain block holds lc commands: {lc_lines}"
    runnable = [b for b in ALL_BLOCKS if b.runs]
    assert len(runnable) >= 5, "the docs should show runnable examples"


@pytest.mark.parametrize(
    "block",
    [b for b in ALL_BLOCKS if b.language in ("bash", "sh")],
    ids=lambda b: b.where,
)
def test_every_command_in_the_docs_parses(block):
    problems = [f"{' '.join(c)}: {why}" for c in commands(block.text) if (why := check_command(c))]
    assert not problems, f"{block.where}:\n" + "\n".join(problems)


def _help_examples():
    def walk(group, prefix):
        for name, command in group.commands.items():
            if hasattr(command, "commands"):
                yield from walk(command, (*prefix, name))
            else:
                yield (*prefix, name), command

    for path, command in walk(ROOT, ()):
        help_text = command.help or ""
        if "Examples:" not in help_text:
            continue
        example_text = help_text.split("Examples:", 1)[1]
        for example in commands(example_text):
            yield " ".join(path), example


@pytest.mark.parametrize("name,example", list(_help_examples()), ids=lambda v: str(v)[:60])
def test_every_help_example_parses(name, example):
    assert not check_command(example), (
        f"lc {name} --help example {' '.join(example)}: {check_command(example)}"
    )


def test_the_root_help_has_examples_that_parse():
    examples = list(commands((ROOT.help or "").split("Examples:", 1)[1]))
    assert len(examples) >= 4
    for example in examples:
        assert not check_command(example), (example, check_command(example))


def test_the_ci_block_is_what_ci_runs():
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    marked = [b for b in ALL_BLOCKS if "ci" in b.markers]
    assert marked, "the README shows the CI command"
    for block in marked:
        assert block.text.strip() in ci, f"{block.where} differs from .ci/run"


def test_every_example_canvas_in_the_docs_validates(tmp_path):
    canvases = shutil.copytree(REPO / "canvases", tmp_path / "canvases")
    found = [b for b in ALL_BLOCKS if b.language == "yaml" and re.search(r"^layers:", b.text, re.M)]
    assert len(found) >= 2  # the README's and docs/canvas-format.md's
    for number, block in enumerate(found):
        path = canvases / f"doc_example_{number}.yaml"
        path.write_text(block.text + "\n", encoding="utf-8")
        problems = validate_canvases([path])[str(path)]
        assert not problems, f"{block.where}: " + "; ".join(str(p) for p in problems)


MARKER = re.compile(r"<!--\s*inspect\s+(\w+):\s*(.*?)\s*-->", re.S)


def _inspect(name: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "layercomposer", "inspect", f"canvases/{name}.yaml", "--json"],
        cwd=REPO, capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    return json.loads(done.stdout)


def _at(report: dict, key: str):
    value = report
    for part in key.split("."):
        if isinstance(value, list):  # layers by name
            value = next(item for item in value if item.get("name") == part)
        else:
            value = value[part]
    return value


def _number(text: str):
    grid = re.fullmatch(r"(\d+)[×x](\d+)", text)
    if grid:
        return [int(grid[1]), int(grid[2])]
    return float(text.replace(",", "")) if "." in text else int(text.replace(",", ""))


def test_numbers_quoted_about_the_example_canvases_are_what_lc_inspect_says():
    checked = 0
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for match in MARKER.finditer(text):
            report = _inspect(match[1])
            before = text[: match.start()].rsplit("\n\n", 1)[-1]
            for pair in match[2].split():
                key, value = pair.split("=", 1)
                assert value in before, f"{doc.name}: {value} is not in the text it annotates"
                assert _number(value) == _at(report, key), (
                    f"{doc.name}: says {key} is {value}; lc inspect says {_at(report, key)}"
                )
                checked += 1
    assert checked >= 5
    # An unmarked token count next to an example canvas's name would escape this test.
    for doc in DOCS:
        for paragraph in doc.read_text(encoding="utf-8").split("\n\n"):
            mentions = re.search(r"four_people|4-person example|example canvas", paragraph)
            counts = re.search(r"\d,\d{3}\b[^|]*tokens", paragraph)
            if mentions and counts and not MARKER.search(paragraph):
                pytest.fail(
                    f"{doc.name}: numbers about an example canvas without a marker:\n{paragraph}"
                )


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """One scratch folder per document, with the repository's inputs copied in."""
    made: dict[Path, Path] = {}

    def folder(doc: Path) -> Path:
        if doc not in made:
            root = tmp_path_factory.mktemp(doc.stem.lower())
            for name in COPIED:
                shutil.copytree(
                    REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__")
                )
            made[doc] = root
        return made[doc]

    return folder


@pytest.mark.parametrize("block", [b for b in ALL_BLOCKS if b.runs], ids=lambda b: b.where)
def test_runnable_blocks_run_as_written(block, scratch):
    pytest.importorskip("torch", reason="the runnable blocks render: lc's [render] extra")
    folder = scratch(block.doc)
    script = re.sub(r"(?m)(^|&&\s*)pip install [^&;|\n]*", r"\1true ", block.text)
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "HF_HUB_OFFLINE": "1",
        "HOME": str(folder),
        "XDG_CACHE_HOME": os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache")),
        "MPLCONFIGDIR": os.environ.get("MPLCONFIGDIR", str(Path.home() / ".config" / "matplotlib")),
        "COLUMNS": "100",
    }
    done = subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", script], cwd=folder, env=env,
        capture_output=True, text=True, stdin=subprocess.DEVNULL,
        timeout=BLOCK_TIMEOUT_S * (6 if "slow" in block.markers else 1),
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{block.where} failed (exit {done.returncode}):\n{output[-4000:]}"
    assert "Traceback" not in output, f"{block.where} printed a traceback:\n{output[-4000:]}"
    noise = [line for line in output.splitlines() if any(n in line for n in LIBRARY_NOISE)]
    assert not noise, f"{block.where}: other libraries' warnings reach the user:\n" + "\n".join(
        noise
    )


def test_the_readme_quick_bench_line_asks_for_a_small_amount_of_work():
    """The README promises its CPU `lc bench` line in under 2 minutes on two cores: what it
    asks for is bounded here (no clock: `python benchmarks/readme.py --budget 120` times it)."""
    readme = [b for b in ALL_BLOCKS if b.doc.name == "README.md" and b.runs]
    lines = [c for b in readme for c in commands(b.text) if c[:2] == ["lc", "bench"]]
    assert len(lines) == 1, lines
    command = ROOT.commands["bench"]
    params = command.make_context("lc bench", lines[0][2:]).params
    assert params["model"] == "builtin:tiny" and params["identity_backend"] == "dlib"
    width, height = (int(v) for v in params["size"].split("x"))
    renders = params["limit"] * 2  # layered and collage, one per prompt
    assert renders <= 8 and params["steps"] <= 2 and width * height <= 256 * 256, params
