"""`lc studio`'s JSON endpoints through Starlette's test client, and its refusals.

Renders use builtin:tiny on tiny canvases (a few hundredths of a second each once loaded); the
model is loaded once for the module. A real uvicorn server on 127.0.0.1 is started only where a
real connection matters (a client that disconnects, the CLI's printed address).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from conftest import disc_rgba

pytest.importorskip("starlette")
pytest.importorskip("httpx")

from starlette.testclient import TestClient  # noqa: E402

from layercomposer.canvas import load_canvas  # noqa: E402
from layercomposer.cli.main import app as lc_app  # noqa: E402
from layercomposer.render import Renderer, RenderSettings  # noqa: E402
from layercomposer.studio.server import create_app  # noqa: E402
from layercomposer.studio.workspace import Workspace  # noqa: E402

TOKEN = "test-token-0123456789"
SCENE = """\
# A small scene for the studio tests: two discs side by side.
prompt: "two discs on a table"   # what to draw
size: [128, 128]
seed: 3
steps: 2
layers:
  # the left disc
  - name: red
    image: images/red.png
    position: [40, 64]
    lock: true    # keep it
  # the right disc
  - name: blue
    image: images/blue.png
    position: [88, 64]
"""


# --- helpers shared with test_studio_e2e.py -------------------------------------------------


def make_folder(root: Path, scene: str = SCENE, size: int = 48) -> Path:
    """A canvas folder: scene.yaml and the two disc images it names. Returns the canvas path."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    Image.fromarray(disc_rgba(size, (220, 30, 30))).save(root / "images" / "red.png")
    Image.fromarray(disc_rgba(size, (30, 30, 220))).save(root / "images" / "blue.png")
    canvas = root / "scene.yaml"
    canvas.write_text(scene)
    return canvas


def studio_client(target: Path, renderer, **workspace_options) -> TestClient:
    app = create_app(Workspace(target, **workspace_options), renderer, TOKEN)
    return TestClient(app, base_url="http://127.0.0.1", headers={"X-LC-Token": TOKEN})


def free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    return sock


@contextlib.contextmanager
def running_server(app, timeout: float = 15.0):
    """Serve `app` with uvicorn on 127.0.0.1 (a free port) in a thread; yield its base URL."""
    import uvicorn

    sock = free_socket()
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "the studio server did not start"
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()


def sse_events(text: str) -> list[dict]:
    return [
        json.loads(line[len("data: ") :]) for line in text.splitlines() if line.startswith("data: ")
    ]


def lc(*args) -> object:
    return CliRunner().invoke(lc_app, [str(a) for a in args])


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    """One builtin:tiny renderer for the module (its first load is the slow part)."""
    pytest.importorskip("diffusers")
    renderer = Renderer(RenderSettings(model="builtin:tiny", mode="layered", encode="box"))
    renderer.load()
    return renderer


@pytest.fixture
def canvas(tmp_path) -> Path:
    return make_folder(tmp_path)


@pytest.fixture
def client(canvas, tiny):
    with studio_client(canvas, tiny) as client:
        yield client
    client.app.state.studio.queue.close()


def scene_data(client) -> dict:
    return client.get("/api/canvas", params={"path": "scene.yaml"}).json()


def render(client, data: dict, **options) -> list[dict]:
    response = client.post("/api/render", json={"path": "scene.yaml", "data": data, **options})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    return sse_events(response.text)


# --- who may ask ------------------------------------------------------------------------------


def test_the_page_needs_the_token_and_then_gets_a_cookie(canvas, tiny):
    with studio_client(canvas, tiny) as client:
        client.headers.pop("X-LC-Token")
        assert client.get("/").status_code == 403
        assert client.get("/", params={"token": "wrong"}).status_code == 403
        page = client.get("/", params={"token": TOKEN})
        assert page.status_code == 200 and "<title>lc studio</title>" in page.text
        assert "default-src 'self'" in page.headers["content-security-policy"]
        assert "samesite=strict" in page.headers["set-cookie"].lower()
        # The cookie now carries the token for GETs (modules, images)...
        script = client.get("/static/app.js")
        assert script.status_code == 200 and "import" in script.text
        assert client.get("/api/config").status_code == 200
        # ...but never for a request that changes something.
        refused = client.post("/api/save", json={"path": "scene.yaml", "data": {}})
        assert refused.status_code == 403
    client.app.state.studio.queue.close()


def test_other_hosts_and_other_origins_are_refused(client):
    assert client.get("/api/config").status_code == 200
    assert client.get("/api/config", headers={"Host": "localhost:9"}).status_code == 200
    rebound = client.get("/api/config", headers={"Host": "evil.example:8000"})
    assert rebound.status_code == 403 and "host" in rebound.json()["error"]
    foreign = client.post(
        "/api/inspect", json={}, headers={"Origin": "http://evil.example"}
    ).status_code
    assert foreign == 403
    same = client.get("/api/config", headers={"Origin": "http://127.0.0.1"})
    assert same.status_code == 200


@pytest.mark.parametrize(
    ("endpoint", "params"),
    [
        ("/api/canvas", {"path": "../scene.yaml"}),
        ("/api/canvas", {"path": "/etc/passwd"}),
        ("/api/file", {"path": "../outside.png"}),
        ("/api/file", {"path": "/etc/passwd"}),
        ("/api/file", {"path": "link/outside.png"}),  # a symlink that leaves the folder
        ("/api/file", {"path": "scene.yaml"}),  # not an image
        ("/api/history", {"path": "../scene.yaml"}),
    ],
)
def test_paths_that_leave_the_folder_are_refused(tmp_path, tiny, endpoint, params):
    folder = tmp_path / "folder"
    make_folder(folder)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    Image.fromarray(disc_rgba(16)).save(outside / "outside.png")
    Image.fromarray(disc_rgba(16)).save(tmp_path / "outside.png")
    (folder / "link").symlink_to(outside, target_is_directory=True)
    with studio_client(folder / "scene.yaml", tiny) as client:
        response = client.get(endpoint, params=params)
        assert response.status_code in (403, 404), response.text
        assert "outside" not in response.headers.get("content-type", "")
        assert response.headers["content-type"] == "application/json"
    client.app.state.studio.queue.close()


def test_a_canvas_may_not_name_images_outside_its_folder(client, tmp_path):
    data = scene_data(client)["data"]
    data["layers"][0]["image"] = str(tmp_path.parent / "red.png")
    response = client.post("/api/inspect", json={"path": "scene.yaml", "data": data})
    assert response.status_code == 422
    assert "outside the canvas folder" in response.json()["problems"][0]["message"]


# --- reading ------------------------------------------------------------------------------------


def test_config_lists_the_canvases_and_the_model(tmp_path, tiny):
    make_folder(tmp_path)
    (tmp_path / "second.yaml").write_text(SCENE)
    (tmp_path / "notes.txt").write_text("not a canvas")
    with studio_client(tmp_path, tiny) as client:
        config = client.get("/api/config").json()
        assert config["canvases"] == ["scene.yaml", "second.yaml"]
        assert config["model"] == "builtin:tiny" and config["encode"] == "box"
        assert config["output"] == "studio-renders"
    client.app.state.studio.queue.close()
    with studio_client(tmp_path / "second.yaml", tiny) as client:
        assert client.get("/api/config").json()["canvases"] == ["second.yaml"]
        assert client.get("/api/canvas", params={"path": "scene.yaml"}).status_code == 404
    client.app.state.studio.queue.close()


def test_canvas_returns_the_file_as_data_with_its_hash(client, canvas):
    loaded = scene_data(client)
    assert loaded["data"] == yaml.safe_load(SCENE)
    assert loaded["sha256"] == hashlib.sha256(canvas.read_bytes()).hexdigest()


def test_inspect_is_what_lc_inspect_prints(client, canvas):
    data = scene_data(client)["data"]
    result = client.post(
        "/api/inspect", json={"path": "scene.yaml", "data": data, "masks": True}
    ).json()
    cli = lc("inspect", canvas, "--json")
    assert cli.exit_code == 0, cli.output
    expected = json.loads(cli.output)
    expected["canvas"] = "scene.yaml"
    assert result["report"] == expected

    for view, layer in zip(result["layers"], expected["layers"], strict=True):
        assert view["name"] == layer["name"] and view["box"] == layer["box"]
        assert sum(row.count("1") for row in view["token_mask"]) == layer["tokens"]
        cutout = client.get(view["cutout"])
        assert cutout.status_code == 200 and cutout.headers["content-type"] == "image/png"


def test_inspect_follows_unsaved_edits_and_lists_problems(client):
    data = scene_data(client)["data"]
    data["layers"][1]["position"] = [88 + 32, 64]
    moved = client.post("/api/inspect", json={"path": "scene.yaml", "data": data}).json()
    assert moved["layers"][1]["box"] == [96, 40, 144, 88]

    data["layers"][1]["scale"] = 0
    data["layers"][0]["position"] = [900, 900]  # off the 128x128 canvas
    response = client.post("/api/inspect", json={"path": "scene.yaml", "data": data})
    assert response.status_code == 422
    problems = response.json()["problems"]
    assert problems[0]["loc"] == ["layers", 1, "scale"]
    assert "greater than 0" in problems[0]["message"]

    del data["layers"][1]["scale"]
    problems = client.post("/api/inspect", json={"path": "scene.yaml", "data": data}).json()
    assert "lies entirely outside" in problems["problems"][0]["message"]


# --- writing ------------------------------------------------------------------------------------


def test_save_writes_the_edit_and_keeps_the_comments(client, canvas):
    loaded = scene_data(client)
    data = loaded["data"]
    data["layers"][1]["position"] = [104, 64]
    data["layers"][1]["lock"] = True
    data["layers"].reverse()
    saved = client.post(
        "/api/save", json={"path": "scene.yaml", "data": data, "base_sha256": loaded["sha256"]}
    )
    assert saved.status_code == 200, saved.text
    text = canvas.read_text()
    assert saved.json()["sha256"] == hashlib.sha256(text.encode()).hexdigest()
    assert yaml.safe_load(text) == data
    for comment in ("# A small scene", "# what to draw", "# the left disc", "# the right disc"):
        assert comment in text
    assert text.index("# the right disc") < text.index("name: blue") < text.index("name: red")
    assert load_canvas(canvas).spec.layers[0].position == (104, 64)

    # The page's base hash is stale now: saving over the newer file is refused unless forced.
    stale = client.post(
        "/api/save", json={"path": "scene.yaml", "data": data, "base_sha256": loaded["sha256"]}
    )
    assert stale.status_code == 409
    forced = client.post(
        "/api/save",
        json={"path": "scene.yaml", "data": data, "base_sha256": loaded["sha256"], "force": True},
    )
    assert forced.status_code == 200


def test_save_refuses_a_canvas_that_would_not_render(client, canvas):
    before = canvas.read_bytes()
    data = scene_data(client)["data"]
    data["layers"][0]["image"] = "images/missing.png"
    response = client.post("/api/save", json={"path": "scene.yaml", "data": data})
    assert response.status_code == 422
    assert "image not found" in response.json()["problems"][0]["message"]
    assert canvas.read_bytes() == before


def png_bytes(pixels: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_upload_stores_images_under_images_with_a_safe_name(client, canvas):
    green = png_bytes(disc_rgba(32, (20, 200, 20)))
    first = client.post("/api/upload", params={"name": "../../Green Disc.png"}, content=green)
    assert first.status_code == 200, first.text
    assert first.json() == {"path": "images/Green_Disc.png", "size": [32, 32], "has_alpha": True}
    assert (canvas.parent / "images" / "Green_Disc.png").read_bytes() == green
    again = client.post("/api/upload", params={"name": "Green Disc.png"}, content=green)
    assert again.json()["path"] == "images/Green_Disc.png"  # the same bytes are kept once
    other = png_bytes(disc_rgba(32, (200, 200, 20)))
    renamed = client.post("/api/upload", params={"name": "Green Disc.png"}, content=other)
    assert renamed.json()["path"] == "images/Green_Disc-1.png"  # never overwrites

    jpeg = client.post("/api/upload", params={"name": "photo.png"}, content=_jpeg_bytes())
    assert jpeg.json()["path"] == "images/photo.jpg" and not jpeg.json()["has_alpha"]
    not_image = client.post("/api/upload", params={"name": "x.png"}, content=b"<script>")
    assert not_image.status_code == 415


def _jpeg_bytes() -> bytes:
    import io

    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (90, 90, 90)).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_upload_limits_bytes_and_pixels(canvas, tiny):
    with studio_client(canvas, tiny, max_upload_bytes=4000, max_upload_pixels=64 * 64) as client:
        big = png_bytes(np.random.default_rng(0).integers(0, 255, (40, 40, 4), np.uint8))
        assert len(big) > 4000
        response = client.post("/api/upload", params={"name": "big.png"}, content=big)
        assert response.status_code == 413
        # Many pixels in few bytes (a flat image compresses well): refused before decoding.
        wide = png_bytes(np.zeros((65, 65, 4), np.uint8))
        assert len(wide) < 4000
        response = client.post("/api/upload", params={"name": "wide.png"}, content=wide)
        assert response.status_code == 413 and "pixels" in response.json()["error"]
        assert not (canvas.parent / "images" / "wide.png").exists()
    client.app.state.studio.queue.close()


# --- rendering ----------------------------------------------------------------------------------


def test_render_streams_progress_and_the_cli_renders_the_saved_file_to_the_same_image(
    client, canvas, tmp_path
):
    data = scene_data(client)["data"]
    data["layers"][1]["position"] = [80, 72]  # an unsaved edit
    events = render(client, data)
    kinds = [event["event"] for event in events]
    assert kinds == ["queued", "started", "step", "step", "done"], kinds
    assert [e["step"] for e in events if e["event"] == "step"] == [1, 2]
    done = events[-1]
    assert done["seed"] == 3 and done["manifest"]["inputs"]["encode"] == "box"
    image = client.get(done["image"])
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert hashlib.sha256(image.content).hexdigest() == done["manifest"]["output"]["sha256"]
    history = client.get("/api/history", params={"path": "scene.yaml"}).json()["renders"]
    assert [entry["image"] for entry in history] == [done["image"]]

    # Save, then render the file with the command line the studio shows: the same image.
    assert client.post("/api/save", json={"path": "scene.yaml", "data": data}).status_code == 200
    assert (
        done["manifest"]["inputs"]["canvas"]["sha256"]
        == hashlib.sha256(canvas.read_bytes()).hexdigest()
    )  # the manifest names the file Save wrote
    command = done["command"].split()
    assert command[:2] == ["lc", "render"] and "--encode" in command and "--seed" in command
    out = tmp_path / "cli-out"
    result = lc(*command[1:], "-o", out)
    assert result.exit_code == 0, result.output
    cli_image = out / "scene" / "3.png"
    assert (
        hashlib.sha256(cli_image.read_bytes()).hexdigest()
        == hashlib.sha256(image.content).hexdigest()
    )


def test_a_render_after_a_move_reuses_the_cached_layer_latents(client):
    data = scene_data(client)["data"]
    # Room around the layers: an encode box clipped by the canvas edge would differ.
    data["size"] = [256, 256]
    data["layers"][0]["position"] = [96, 128]
    data["layers"][1]["position"] = [160, 128]
    first = render(client, data)[-1]["manifest"]["latent_cache"]
    data["layers"][1]["position"] = [160 - 16, 128 + 32]  # whole tokens: the same encoded box
    second = render(client, data)[-1]["manifest"]["latent_cache"]
    assert first["hits"] + first["misses"] == 2  # earlier tests may have encoded these already
    assert second == {"hits": 2, "misses": 0}


def test_an_invalid_canvas_is_refused_before_it_is_queued(client):
    data = scene_data(client)["data"]
    data["steps"] = 0
    response = client.post("/api/render", json={"path": "scene.yaml", "data": data})
    assert response.status_code == 422
    assert client.get("/api/jobs").json()["jobs"] == []
    bad = client.post("/api/render", json={"path": "scene.yaml", "data": data, "encode": "x"})
    assert bad.status_code == 400


def test_concurrent_renders_run_one_at_a_time_in_order(client):
    data = scene_data(client)["data"]
    data["steps"] = 30
    results: dict[int, list[dict]] = {}

    def ask(n: int) -> None:
        seeded = {**data, "seed": n}
        results[n] = render(client, seeded)

    threads = [threading.Thread(target=ask, args=(n,)) for n in range(3)]
    for thread in threads:
        thread.start()
        time.sleep(0.05)  # submitted in this order
    for thread in threads:
        thread.join(60)
    assert all(events[-1]["event"] == "done" for events in results.values()), results

    jobs = [job for job in client.get("/api/jobs").json()["jobs"] if job["status"] == "done"]
    assert len(jobs) == 3
    spans = sorted((job["started"], job["ended"]) for job in jobs)
    for (_, ended), (started, _) in zip(spans, spans[1:], strict=False):
        assert started >= ended  # never two at once
    assert sum(1 for n in results if results[n][0]["position"] > 0) >= 1  # someone waited


def test_cancel_stops_a_render_between_steps(client, canvas):
    data = scene_data(client)["data"]
    data["steps"] = 500  # long enough to be cancelled mid-way
    events: list[dict] = []
    thread = threading.Thread(target=lambda: events.extend(render(client, data)))
    thread.start()
    job = _wait_for_running(client)
    assert client.post(f"/api/jobs/{job['job']}/cancel").json() == {"cancelled": True}
    thread.join(60)
    assert events[-1]["event"] == "cancelled"
    steps = [event["step"] for event in events if event["event"] == "step"]
    assert 1 <= len(steps) < 500
    assert not list((canvas.parent / "studio-renders").glob("*/scene/*.png"))
    assert client.post(f"/api/jobs/{job['job']}/cancel").json() == {"cancelled": False}
    # The renderer is free again.
    data["steps"] = 2
    assert render(client, data)[-1]["event"] == "done"


def _wait_for_running(client, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for job in client.get("/api/jobs").json()["jobs"]:
            if job["status"] == "running" and job["step"] >= 1:
                return job
        time.sleep(0.02)
    raise AssertionError("no render started")


def test_a_client_that_disconnects_cancels_its_render(canvas, tiny):
    import httpx

    app = create_app(Workspace(canvas), tiny, TOKEN)
    data = yaml.safe_load(SCENE) | {"steps": 500}
    with running_server(app) as url:
        headers = {"X-LC-Token": TOKEN}
        with (
            httpx.Client(base_url=url, headers=headers, timeout=30) as http,
            http.stream("POST", "/api/render", json={"path": "scene.yaml", "data": data}) as stream,
        ):
            for line in stream.iter_lines():
                if line.startswith("event: step"):
                    break  # hang up mid-render
        deadline = time.monotonic() + 15
        status = None
        while time.monotonic() < deadline:
            jobs = httpx.get(f"{url}/api/jobs", headers=headers).json()["jobs"]
            status = jobs[-1]["status"]
            if status != "running":
                break
            time.sleep(0.05)
        assert status == "cancelled"
        assert jobs[-1]["step"] < 500
    app.state.studio.queue.close()


# --- the command --------------------------------------------------------------------------------


def test_lc_studio_refuses_a_remote_address_without_the_flag(canvas):
    result = lc("studio", canvas, "--host", "0.0.0.0", "--no-browser")
    assert result.exit_code == 2
    assert "--allow-remote" in result.output


def test_lc_studio_refuses_an_output_folder_outside_the_canvas_folder(canvas, tmp_path):
    result = lc("studio", canvas, "--no-browser", "-o", tmp_path.parent / "elsewhere")
    assert result.exit_code == 1
    assert "outside the canvas folder" in result.output


def test_lc_studio_prints_an_address_that_opens_the_page(canvas):
    import httpx

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "layercomposer", "studio", str(canvas), "--no-browser",
         "--model", "builtin:tiny"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip
    try:
        line = _read_line(process, timeout=60)
        assert line.startswith("lc studio: http://127.0.0.1:"), line
        url = line.split(": ", 1)[1].strip()
        assert "token=" in url
        page = _get_when_up(url)
        assert page.status_code == 200 and "lc studio" in page.text
        without = httpx.get(url.split("?")[0], timeout=10)
        assert without.status_code == 403
    finally:
        process.kill()  # a graceful stop would wait for the model load in the background
        process.wait(15)


def _read_line(process, timeout: float) -> str:
    found: list[str] = []
    reader = threading.Thread(target=lambda: found.append(process.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    assert found, "lc studio printed nothing"
    return found[0]


def _get_when_up(url: str, timeout: float = 30.0):
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        try:
            return httpx.get(url, timeout=5)
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_lc_studio_tells_the_terminal_when_the_model_fails_to_load(canvas, tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "layercomposer", "studio", str(canvas), "--no-browser",
         "--model", str(tmp_path / "nowhere")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip
    try:
        lines = [_read_line(process, timeout=60) for _ in range(5)]
    finally:
        process.kill()
        process.wait(15)
    assert lines[0].startswith("lc studio: http://127.0.0.1:"), lines
    assert "(loading in the background)" in lines[2]
    failed = lines[4]
    assert failed.startswith(f"  model: failed: model folder {tmp_path / 'nowhere'} does not exist")
    assert "(hint: pass a diffusers folder of a FLUX.1 model" in failed


def test_a_browser_that_cannot_be_opened_is_said_so(monkeypatch):
    from layercomposer.studio import server

    said: list[str] = []
    for outcome in (False, RuntimeError("no display"), True):

        def fake_open(url, outcome=outcome):
            if isinstance(outcome, Exception):
                raise outcome
            return outcome

        monkeypatch.setattr(server.webbrowser, "open", fake_open)
        server._open_browser("http://127.0.0.1:1/?token=x", said.append)
    assert said == ["  no browser could be opened here: open the address above in one yourself"] * 2
