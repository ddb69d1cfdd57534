"""Hostile inputs through the commands a user runs: refused with exit 2 (or HTTP 4xx), a located
message, in under 10 s and 1 GB; and a fuzzer over mutated example canvases."""

from __future__ import annotations

import copy
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest
import yaml
from hostile import alias_bomb, broken_images, odd_images
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from conftest import EXAMPLES, REPO, plain_yaml
from layercomposer.cli.main import app

TIME_BOUND_S = 10.0
MEMORY_BOUND_KB = 1024 * 1024  # 1 GB, as ru_maxrss counts on Linux (KiB)

# Runs lc in a fresh interpreter and reports its wall time and peak resident memory (imports
# included) on stderr as it exits, however it exits. The peak is the process's own VmHWM:
# ru_maxrss would carry over the parent's peak through fork and exec (a pytest process that
# had grown to 1 GB made every child look 1 GB large).
MEASURED_LC = """
import atexit, re, sys, time
start = time.monotonic()
def peak_kb():
    with open("/proc/self/status") as status:
        return re.search(r"VmHWM:\\s+(\\d+) kB", status.read()).group(1)
atexit.register(lambda: sys.stderr.write(
    f"\\nMEASURED {time.monotonic() - start:.3f} {peak_kb()}\\n"))
sys.argv = ["lc", *sys.argv[1:]]
from layercomposer.cli.main import main
main()
"""


def run_measured(*args, cwd: Path) -> tuple[int, str, float, int]:
    """(exit code, stderr, seconds, peak RSS in KiB) of `lc ARGS` in a subprocess."""
    done = subprocess.run(
        [sys.executable, "-c", MEASURED_LC, *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,  # far past the bound: the unfixed bomb ran for minutes
    )
    seconds, peak_kb = re.search(r"MEASURED (\S+) (\d+)", done.stderr).groups()
    return done.returncode, done.stderr, float(seconds), int(peak_kb)


@pytest.fixture
def bomb(tmp_path) -> Path:
    path = tmp_path / "bomb.yaml"
    path.write_text(alias_bomb())
    return path


@pytest.mark.parametrize(
    "command",
    [
        ["validate"],
        ["inspect", "--json"],
        ["render", "--model", "builtin:tiny", "-o", "out", "--set", "steps=1"],
        ["train"],
    ],
    ids=["validate", "inspect", "render", "train"],
)
def test_alias_bomb_is_refused_quickly_and_small_by_every_command(command, bomb):
    code, stderr, seconds, peak_kb = run_measured(*command[:1], bomb, *command[1:], cwd=bomb.parent)
    print(f"lc {command[0]}: exit {code}, {seconds:.2f} s, peak RSS {peak_kb / 1024:.0f} MiB")
    assert code == 2, stderr
    assert f"{bomb}:3: anchor '&a'" in stderr
    assert "Traceback" not in stderr
    assert seconds < TIME_BOUND_S
    assert peak_kb < MEMORY_BOUND_KB


@pytest.mark.parametrize("name", ["png_50000", "tiff_huge", "jpeg_huge"])
def test_a_crafted_image_header_is_refused_quickly_and_small(name, tmp_path):
    (tmp_path / "a.png").write_bytes(broken_images()[name])
    spec = {"prompt": "p", "size": [128, 128], "layers": [{"name": "a", "image": "a.png"}]}
    spec["layers"][0]["position"] = [64, 64]
    (tmp_path / "scene.yaml").write_text(plain_yaml(spec))
    code, stderr, seconds, peak_kb = run_measured("inspect", "scene.yaml", "--json", cwd=tmp_path)
    print(f"{name}: exit {code}, {seconds:.2f} s, peak RSS {peak_kb / 1024:.0f} MiB")
    assert code == 2, stderr
    assert "scene.yaml:" in stderr and "[layers -> 0 -> image]" in stderr
    assert "over lc's limit" in stderr
    assert seconds < TIME_BOUND_S and peak_kb < MEMORY_BOUND_KB


def test_an_endless_canvas_file_is_refused_at_the_cap(tmp_path):
    code, stderr, seconds, peak_kb = run_measured("validate", "/dev/zero", cwd=tmp_path)
    assert code == 2, stderr
    assert "/dev/zero: is over lc's limit of 1 MiB for a YAML file" in stderr
    assert seconds < TIME_BOUND_S and peak_kb < MEMORY_BOUND_KB


def test_alias_bomb_is_refused_by_the_studio_load_and_save(tmp_path):
    pytest.importorskip("starlette")
    from starlette.testclient import TestClient

    from layercomposer.studio.server import create_app
    from layercomposer.studio.workspace import Workspace

    (tmp_path / "bomb.yaml").write_text(alias_bomb())
    shutil.copytree(REPO / "canvases" / "images", tmp_path / "images")
    renderer = type("NoRenderer", (), {"settings": None})()  # load and save never render
    app_ = create_app(Workspace(tmp_path), renderer, "t0ken-0123456789abcdef")
    client = TestClient(
        app_, base_url="http://127.0.0.1", headers={"X-LC-Token": "t0ken-0123456789abcdef"}
    )
    data = yaml.safe_load((REPO / "canvases" / "one_person.yaml").read_text())  # a valid canvas
    # Python's allocations while the studio answers (the bomb's expansion would be Python
    # objects); the process's ru_maxrss could hide it under an earlier test's peak.
    tracemalloc.start()
    start = time.perf_counter()
    loaded = client.get("/api/canvas", params={"path": "bomb.yaml"})
    saved = client.post("/api/save", json={"path": "bomb.yaml", "data": data, "force": True})
    seconds = time.perf_counter() - start
    grown_kb = tracemalloc.get_traced_memory()[1] // 1024
    tracemalloc.stop()
    for response in (loaded, saved):
        assert response.status_code == 422, response.text
        assert "bomb.yaml:3: anchor '&a'" in response.json()["error"]
    assert seconds < TIME_BOUND_S
    assert grown_kb < MEMORY_BOUND_KB
    assert (tmp_path / "bomb.yaml").read_text() == alias_bomb()  # nothing written


def test_studio_refuses_an_oversized_json_body_with_413(tmp_path):
    pytest.importorskip("starlette")
    from starlette.testclient import TestClient

    from layercomposer.limits import MAX_REQUEST_JSON_BYTES
    from layercomposer.studio.server import create_app
    from layercomposer.studio.workspace import Workspace

    shutil.copy(EXAMPLES[0], tmp_path / "scene.yaml")
    renderer = type("NoRenderer", (), {"settings": None})()
    token = "t0ken-0123456789abcdef"
    client = TestClient(
        create_app(Workspace(tmp_path), renderer, token),
        base_url="http://127.0.0.1",
        headers={"X-LC-Token": token},
    )
    body = b'{"path": "scene.yaml", "data": "' + b"x" * MAX_REQUEST_JSON_BYTES + b'"}'
    response = client.post("/api/save", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 413
    nested = b"[" * 200_000 + b"]" * 200_000  # under the size cap, too deep for the parser
    response = client.post(
        "/api/save", content=nested, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400


def test_studio_prints_its_address_only_once_it_accepts_connections(tmp_path):
    pytest.importorskip("uvicorn")
    shutil.copy(EXAMPLES[0], tmp_path / "scene.yaml")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "layercomposer",
            "studio",
            str(tmp_path),
            "--no-browser",
            "--model",
            "builtin:tiny",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        line = process.stdout.readline()
        match = re.search(r"http://([\d.]+):(\d+)/\?token=", line)
        assert match, line
        # At once, with no retry: the printed address must already accept a connection.
        with socket.create_connection((match[1], int(match[2])), timeout=5):
            pass
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --- the fuzzer ---------------------------------------------------------------------------------

runner = CliRunner()
FUZZ_EXAMPLES = 500  # ~35 s on a 2-core machine, two commands each
ODD = {**odd_images(), **broken_images()}
EXAMPLE_DATA = [(path.name, yaml.safe_load(path.read_text())) for path in EXAMPLES]

HOSTILE_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.sampled_from(
        [
            0,
            -1,
            16,
            45,
            1e308,
            -1e-308,
            "",
            "x" * 100_000,
            "名前 🙂 \u202e\u0000 ñ",
            "../../../../etc/passwd",
            "/dev/zero",
            [],
            {},
            [0, 0],
            [1e9, 1e9],
            [-5000, 5000],
            [4096, 4096],
            [64, 64],
            [0, 0, 10**9, 10**9],
            [[[[[[[[1]]]]]]]],
            list(range(5000)),
        ]
    ),
    st.lists(st.integers(min_value=-(10**6), max_value=10**6), max_size=5),
    st.dictionaries(st.text(max_size=8), st.integers(), max_size=3),
)


def _locations(node, loc=()):
    """Every location in a plain YAML tree: (loc, value)."""
    yield loc, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _locations(value, (*loc, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _locations(value, (*loc, index))


def _mutate(data, draw) -> None:
    """Apply one random mutation to a canvas's plain data, in place."""
    locations = [loc for loc, _ in _locations(data) if loc]
    kind = draw(st.sampled_from(["remove", "replace", "replace", "add", "image", "image", "name"]))
    if kind in ("remove", "replace") and locations:
        loc = draw(st.sampled_from(locations))
        parent = data
        for part in loc[:-1]:
            parent = parent[part]
        if kind == "remove":
            del parent[loc[-1]]
        else:
            parent[loc[-1]] = copy.deepcopy(draw(HOSTILE_VALUES))
    elif kind == "add":
        mappings = [value for _, value in _locations(data) if isinstance(value, dict)]
        target = draw(st.sampled_from(mappings))
        target[draw(st.text(min_size=1, max_size=12))] = copy.deepcopy(draw(HOSTILE_VALUES))
    elif kind == "image":
        layers = _layer_dicts(data)
        targets = layers + (
            [data["background"]] if isinstance(data.get("background"), dict) else []
        )
        if targets:
            target = draw(st.sampled_from(targets))
            key = draw(st.sampled_from(["image", "mask"]))
            target[key] = "odd/" + draw(st.sampled_from(sorted(ODD)))
    elif kind == "name":
        layers = _layer_dicts(data)
        if len(layers) >= 2:
            layers[1]["name"] = layers[0].get("name")


def _layer_dicts(data) -> list[dict]:
    layers = data.get("layers")
    return (
        [layer for layer in layers if isinstance(layer, dict)] if isinstance(layers, list) else []
    )


def _text_mutation(text: str, draw) -> str | bytes:
    kind = draw(st.sampled_from(["none", "none", "duplicate", "alias", "deep", "cut", "byte"]))
    if kind == "duplicate":
        first = text.splitlines()[0] if text.strip() else "prompt: x"
        return text + first + "\n"
    if kind == "alias":
        return text + "extra: &x [1, 2]\nmore: *x\n"
    if kind == "deep":
        depth = draw(st.integers(min_value=1, max_value=300))
        return text + "deep: " + "[" * depth + "]" * depth + "\n"
    if kind == "cut":
        return text[: draw(st.integers(min_value=0, max_value=len(text)))]
    if kind == "byte":
        at = draw(st.integers(min_value=0, max_value=len(text)))
        return text[:at].encode() + b"\xff" + text[at:].encode()
    return text


@pytest.fixture(scope="module")
def fuzz_folder(tmp_path_factory) -> Path:
    """The example canvases' images, and every odd image under odd/."""
    folder = tmp_path_factory.mktemp("fuzz")
    shutil.copytree(REPO / "canvases" / "images", folder / "images")
    (folder / "odd").mkdir()
    for name, data in ODD.items():
        (folder / "odd" / name).write_bytes(data)
    return folder


def check_command(*args) -> None:
    """Exit 0 or 2, never a traceback or an 'internal error', within the time bound."""
    start = time.perf_counter()
    result = runner.invoke(app, [str(a) for a in args])
    seconds = time.perf_counter() - start
    crashed = result.exception is not None and not isinstance(result.exception, SystemExit)
    assert not crashed, f"{args}: {result.exception!r}\n{result.output}"
    assert result.exit_code in (0, 2), f"{args}: exit {result.exit_code}\n{result.output}"
    assert "Traceback" not in result.output and "internal error" not in result.output
    assert seconds < TIME_BOUND_S, f"{args}: {seconds:.1f} s"
    if result.exit_code == 2 and "validate" in args:
        assert re.search(r"\.yaml(:\d+)?:|--set ", result.output), result.output


@settings(
    # LC_FUZZ_EXAMPLES=2000 explores further, with fresh random examples each run.
    max_examples=int(os.environ.get("LC_FUZZ_EXAMPLES", FUZZ_EXAMPLES)),
    deadline=None,  # the bound is asserted per command; first calls warm caches
    derandomize="LC_FUZZ_EXAMPLES" not in os.environ,  # the same examples in every CI run
    database=None,
    phases=[Phase.explicit, Phase.generate],  # no shrinking: a failure prints its draws
    report_multiple_bugs=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_fuzzed_canvases_exit_0_or_2_within_the_bound(fuzz_folder, data):
    name, original = data.draw(st.sampled_from(EXAMPLE_DATA), label="example")
    canvas = yaml.safe_load(plain_yaml(original))  # a deep copy
    for _ in range(data.draw(st.integers(min_value=1, max_value=3), label="mutations")):
        _mutate(canvas, data.draw)
    text = _text_mutation(plain_yaml(canvas), data.draw)
    path = fuzz_folder / "scene.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    check_command("validate", path)
    check_command("inspect", path, "--json")


@pytest.mark.parametrize("name", sorted(ODD))
def test_every_odd_image_as_a_layer_exits_0_or_2(fuzz_folder, name):
    for key in ("image", "mask"):
        spec = {
            "prompt": "p",
            "size": [128, 128],
            "layers": [
                {"name": "a", "image": "images/collins.png", "position": [64, 64], "scale": 0.3}
            ],
        }
        spec["layers"][0][key] = f"odd/{name}"
        path = fuzz_folder / f"odd_{key}.yaml"
        path.write_text(plain_yaml(spec))
        check_command("validate", path)
        check_command("inspect", path, "--json")


@pytest.mark.parametrize(
    "values",
    [
        {"layers.collins.scale": 16, "layers.collins.rotate": 45},
        {"layers.collins.position": [1e30, -1e30]},
        {"size": [4096, 4096], "layers.collins.scale": 16},
        {
            "layers.collins.image": "images/rocket.jpg",
            "layers.collins.mask": "images/rocket.jpg",
            "layers.collins.scale": 16,
        },
        {"layers.collins.position": [math.inf, 0]},
    ],
    ids=["scale-rotate", "huge-position", "largest", "largest-photo", "inf-position"],
)
def test_extreme_overrides_exit_0_or_2(values):
    sets = [f"--set={key}={value}" for key, value in values.items()]
    path = REPO / "canvases" / "four_people.yaml"
    check_command("validate", path, *sets)
    check_command("inspect", path, "--json", *sets)
