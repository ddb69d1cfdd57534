"""`lc studio` end to end in a real headless Chromium, driven by Playwright.

Playwright cannot download its own browser here, so this uses Debian's `chromium` (`.ci/run`
installs it). Without chromium or the playwright package the test is skipped, saying why,
except under CI (`CI` set), where a missing browser is a failure: the test must run there.

Run as a script to remake the screenshot in the docs (the 4-subject example canvas):
    python tests/test_studio_e2e.py docs/studio.png
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))  # for the script mode: conftest, test_studio_api

from test_studio_api import TOKEN, lc, make_folder, running_server  # noqa: E402

from layercomposer.render import Renderer, RenderSettings  # noqa: E402
from layercomposer.studio.server import create_app  # noqa: E402
from layercomposer.studio.workspace import Workspace  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CHROMIUM_NAMES = ("chromium", "chromium-browser", "/usr/lib/chromium/chromium", "google-chrome")
SCENE = """\
# The end-to-end test's canvas: two discs.
prompt: "two discs on a table"
size: [256, 256]
seed: 5
steps: 2
layers:
  # the left disc
  - name: red
    image: images/red.png
    position: [96, 128]
    lock: true
  # the right disc
  - name: blue
    image: images/blue.png
    position: [160, 128]   # moved by the test
"""
MOVE = (32, 16)  # canvas pixels: two tokens right, one down


def find_chromium() -> str | None:
    """Debian's chromium (or $LC_CHROMIUM), which Playwright drives instead of its own build."""
    for name in (os.environ.get("LC_CHROMIUM"), *CHROMIUM_NAMES):
        found = name and shutil.which(name)
        if found:
            return found
    return None


def browser_or_why() -> str | None:
    """None when the test can run; else why not."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install -e '.[dev]')"
    if find_chromium() is None:
        return "no chromium found (apt-get install chromium, or set LC_CHROMIUM)"
    return None


@pytest.fixture(scope="module")
def browser():
    why = browser_or_why()
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"the studio's end-to-end test must run in CI, but {why}")
        pytest.skip(why)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=find_chromium(),
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
        )
        yield browser
        browser.close()


def artefact_dir(tmp_path: Path) -> Path:
    """Where screenshots go: $LC_TEST_ARTEFACTS (CI keeps it), else the test's tmp folder."""
    folder = Path(os.environ.get("LC_TEST_ARTEFACTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def open_studio(browser, url: str, errors: list[str], size: tuple[int, int] = (1500, 950)):
    page = browser.new_page(viewport={"width": size[0], "height": size[1]})
    page.set_default_timeout(30_000)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(url)
    page.wait_for_function("() => document.body.dataset.ready === '1'")
    settle(page)
    return page


def settle(page) -> None:
    """Wait until the page has no inspect request in flight and every cut-out is loaded."""
    page.wait_for_function(
        "() => !document.body.dataset.inspecting && "
        "[...document.querySelectorAll('#stage img.layer')].every(i => i.complete && i.naturalWidth)"
    )


def boxes_on_page(page) -> dict[str, list[int]]:
    return page.eval_on_selector_all(
        "#stage img.layer",
        "imgs => Object.fromEntries(imgs.map(i => [i.dataset.name, i.dataset.box.split(',').map(Number)]))",
    )


def tokens_on_page(page) -> dict[str, int]:
    return page.eval_on_selector_all(
        "#budget-rows tr",
        "rows => Object.fromEntries(rows.map(r => [r.dataset.name, Number(r.querySelector('.tokens').dataset.tokens)]))",
    )


def test_move_lock_save_and_render_in_a_browser(browser, tmp_path):
    canvas = make_folder(tmp_path / "scene", SCENE, size=64)
    renderer = Renderer(RenderSettings(model="builtin:tiny", mode="layered", encode="box"))
    app = create_app(Workspace(canvas), renderer, TOKEN, preload=True)
    errors: list[str] = []
    with running_server(app) as url:
        page = open_studio(browser, f"{url}/?token={TOKEN}", errors)
        before = boxes_on_page(page)
        assert before["blue"] == [128, 96, 192, 160]

        # Drag blue by MOVE canvas pixels, grabbing it at its centre.
        scale = float(page.get_attribute("#stage", "data-scale"))
        box = page.locator('#stage img.layer[data-name="blue"]').bounding_box()
        x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        page.mouse.move(x, y)
        page.mouse.down()
        page.mouse.move(x + MOVE[0] * scale, y + MOVE[1] * scale, steps=8)
        page.mouse.up()
        settle(page)
        moved = [v + d for v, d in zip(before["blue"], MOVE * 2, strict=True)]
        assert boxes_on_page(page)["blue"] == moved
        assert page.get_attribute("body", "data-dirty") == "1"

        # Lock it, in the layer list.
        lock = page.locator('#layer-list li[data-name="blue"] button[data-action="lock"]')
        lock.click()
        settle(page)
        assert lock.get_attribute("aria-pressed") == "true"

        # Tokens overlay on demand.
        page.select_option("#show-tokens", "all")
        settle(page)
        assert page.locator("#token-overlay").is_visible()

        page.click("#save")
        page.wait_for_function("() => document.body.dataset.dirty === ''")

        # The file on disk holds what the page shows, with the user's comments.
        text = canvas.read_text()
        saved = yaml.safe_load(text)["layers"][1]
        assert saved["name"] == "blue" and saved["lock"] is True
        assert saved["position"] == [160 + MOVE[0], 128 + MOVE[1]]
        assert "# the right disc" in text and "# moved by the test" in text

        # ...and `lc inspect` agrees with the page's boxes and token counts.
        result = lc("inspect", canvas, "--json")
        assert result.exit_code == 0, result.output
        report = json.loads(result.output)
        assert {layer["name"]: layer["box"] for layer in report["layers"]} == boxes_on_page(page)
        assert {layer["name"]: layer["tokens"] for layer in report["layers"]} == tokens_on_page(
            page
        )
        assert (
            int(page.get_attribute("body", "data-conditioning")) == report["tokens"]["conditioning"]
        )

        # Render with builtin:tiny: progress, then the image beside the canvas and in history.
        page.click("#render")
        page.wait_for_function(
            "() => document.querySelector('#result').complete && "
            "document.querySelector('#result').naturalWidth === 256",
            timeout=90_000,
        )
        assert page.locator("#render-status").inner_text() == "done"
        page.wait_for_function("() => document.querySelectorAll('#history button').length === 1")
        assert "lc render" in page.locator("#command").inner_text()
        manifests = list((canvas.parent / "studio-renders").glob("*/scene/5.json"))
        assert len(manifests) == 1
        resolved = json.loads(manifests[0].read_text())["inputs"]["canvas"]["resolved"]
        assert resolved["layers"][1]["lock"] is True

        shot = artefact_dir(tmp_path) / "studio-e2e.png"
        page.screenshot(path=str(shot))
        print(f"screenshot: {shot}")
        page.close()
    app.state.studio.queue.close()
    assert errors == []


def test_resize_add_reorder_remove_and_background_in_a_browser(browser, tmp_path):
    from PIL import Image

    from conftest import disc_rgba

    canvas = make_folder(tmp_path / "scene", SCENE, size=64)
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    Image.fromarray(disc_rgba(128, (20, 160, 20))).save(uploads / "green disc.png")
    Image.new("RGB", (300, 200), (200, 180, 120)).save(uploads / "table.jpg")
    renderer = Renderer(RenderSettings(model="builtin:tiny"))  # never loaded: nothing renders
    app = create_app(Workspace(canvas), renderer, TOKEN)
    errors: list[str] = []
    with running_server(app) as url:
        page = open_studio(browser, f"{url}/?token={TOKEN}", errors)
        scale = float(page.get_attribute("#stage", "data-scale"))

        # Resize blue from its bottom-right handle, 32 px further along the diagonal.
        page.locator('#stage img.layer[data-name="blue"]').click()
        handle = page.locator("#selection .handle.se").bounding_box()
        x, y = handle["x"] + handle["width"] / 2, handle["y"] + handle["height"] / 2
        page.mouse.move(x, y)
        page.mouse.down()
        page.mouse.move(x + 32 * scale, y + 32 * scale, steps=6)
        page.mouse.up()
        settle(page)
        x0, y0, x1, y1 = boxes_on_page(page)["blue"]
        assert (x0, y0) == (128, 96)  # the opposite corner stayed put
        assert abs((x1 - x0) - 96) <= 2 and x1 - x0 == y1 - y0  # aspect kept

        # Add a layer from a file, set a background, reorder, hide and remove.
        page.set_input_files("#add-layer", str(uploads / "green disc.png"))
        page.wait_for_selector('#stage img.layer[data-name="green_disc"]')
        page.set_input_files("#set-background", str(uploads / "table.jpg"))
        page.wait_for_selector('#stage img.layer[data-name="background"]')
        settle(page)
        page.locator('#layer-list li[data-name="green_disc"] button[data-action="down"]').click()
        page.locator('#layer-list li[data-name="red"] button[data-action="remove"]').click()
        page.locator('#layer-list li[data-name="blue"] button[data-action="visible"]').click()
        settle(page)
        assert page.locator('#stage img.layer[data-name="blue"]').is_hidden()
        order = page.eval_on_selector_all("#layer-list li", "rows => rows.map(r => r.dataset.name)")
        assert order == ["blue", "green_disc", "background"]  # top first

        page.click("#save")
        page.wait_for_function("() => document.body.dataset.dirty === ''")
        data = yaml.safe_load(canvas.read_text())
        assert [layer["name"] for layer in data["layers"]] == ["green_disc", "blue"]
        assert data["layers"][0]["image"] == "images/green_disc.png"
        assert (canvas.parent / "images" / "green_disc.png").is_file()
        assert data["background"] == {"image": "images/table.jpg", "fit": "cover", "lock": True}
        assert abs(data["layers"][1]["scale"] - 1.5) < 0.05
        assert "# the right disc" in canvas.read_text()
        assert lc("validate", canvas).exit_code == 0
        page.close()
    app.state.studio.queue.close()
    assert errors == []


# --- the docs screenshot --------------------------------------------------------------------


def docs_screenshot(target: Path) -> None:
    """Open the 4-subject example canvas, show one layer's tokens, render once, screenshot."""
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        shutil.copy(REPO / "canvases" / "four_people.yaml", root)
        shutil.copytree(REPO / "canvases" / "images", root / "images")
        settings = RenderSettings(model="builtin:tiny", mode="auto", encode="box")
        app = create_app(
            Workspace(root / "four_people.yaml"), Renderer(settings), TOKEN, preload=True
        )
        errors: list[str] = []
        with running_server(app) as url, sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=find_chromium(),
                args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
            )
            page = open_studio(browser, f"{url}/?token={TOKEN}", errors, size=(1600, 1000))
            page.fill("#steps", "4")
            page.locator('#layer-list li[data-name="hopper"] .name').click()
            page.select_option("#show-tokens", "selected")
            settle(page)
            page.click("#render")
            page.wait_for_function(
                "() => document.querySelector('#result').naturalWidth > 0", timeout=300_000
            )
            page.wait_for_function("() => document.querySelectorAll('#history img').length > 0")
            page.wait_for_timeout(500)
            page.screenshot(path=str(target))
            browser.close()
        app.state.studio.queue.close()
        if errors:
            raise SystemExit(f"the page reported errors: {errors}")
    print(f"wrote {target}")


if __name__ == "__main__":
    docs_screenshot(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/studio.png"))
