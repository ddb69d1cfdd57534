"""The studio's JSON endpoints. The page and the tests use the same ones (docs/studio.md).

Every canvas computation goes through the code the CLI uses: `build_layers` for the layers,
`canvas_report` for the token budget (what `lc inspect --json` prints), `Renderer.render` for
images and manifests. Handlers that touch files or pixels run in a worker thread, so one slow
request never stalls the server's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import json
import os
import secrets
import shlex
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .. import __version__
from ..choices import Encode, Mode, names
from ..errors import CanvasError, LcError
from ..files import png_bytes
from ..limits import MAX_REQUEST_JSON_BYTES, loads_json_bounded, size_text
from ..lora import LoraSpec
from ..manifest import read_manifest
from ..preview import PALETTE
from ..render import RenderSettings, as_list, seeds_for
from ..report import canvas_report
from .jobs import FINAL, RenderJob, RenderQueue
from .workspace import Refused, Workspace

ENCODES = names(Encode)
MODES = names(Mode)
KEEPALIVE_SECONDS = 15.0  # an SSE comment now and then, so proxies and browsers keep the stream
DISCONNECT_POLL_SECONDS = 0.5  # how soon a vanished client's render is cancelled, at most
HISTORY_LIMIT = 40


@dataclass
class StudioApi:
    """The endpoints' shared state: the folder, the render queue, the settings it renders with."""

    workspace: Workspace
    queue: RenderQueue
    settings: RenderSettings
    # Recent layers' cut-outs (pixels, or PNG bytes once served), by content hash: the page
    # loads them as images. Bounded in bytes: a 4096-px background alone is 64 MiB of pixels.
    cutouts: OrderedDict[str, Any] = field(default_factory=OrderedDict)
    cutout_budget: int = 512 * 1024 * 1024
    _cutouts_lock: threading.Lock = field(default_factory=threading.Lock)

    def routes(self) -> list[Route]:
        return [
            Route("/api/config", self.config, methods=["GET"]),
            Route("/api/canvas", self.canvas, methods=["GET"]),
            Route("/api/inspect", self.inspect, methods=["POST"]),
            Route("/api/cutout/{key:str}.png", self.cutout, methods=["GET"]),
            Route("/api/save", self.save, methods=["POST"]),
            Route("/api/upload", self.upload, methods=["POST"]),
            Route("/api/file", self.file, methods=["GET"]),
            Route("/api/render", self.render, methods=["POST"]),
            Route("/api/jobs", self.jobs, methods=["GET"]),
            Route("/api/jobs/{job:str}/cancel", self.cancel, methods=["POST"]),
            Route("/api/history", self.history, methods=["GET"]),
        ]

    # --- reading -------------------------------------------------------------------------------

    async def config(self, request: Request) -> Response:
        s = self.settings
        return _json(
            {
                "version": __version__,
                "canvases": self.workspace.canvases(),
                "model": s.model,
                "lora": ", ".join(Path(spec.path).name for spec in s.loras) or None,
                "mode": s.mode,
                "encode": s.encode,
                "fill": s.fill,
                "modes": MODES,
                "encodes": ENCODES,
                "model_status": self.queue.model_status,
                "palette": ["#{:02x}{:02x}{:02x}".format(*colour) for colour in PALETTE],
                "limits": {
                    "upload_bytes": self.workspace.max_upload_bytes,
                    "upload_pixels": self.workspace.max_upload_pixels,
                },
                "output": self.workspace.relative(self.workspace.output),
            }
        )

    async def canvas(self, request: Request) -> Response:
        path = request.query_params.get("path", "")
        return _json(await run_in_threadpool(self.workspace.read, path))

    async def inspect(self, request: Request) -> Response:
        """The token budget of the page's canvas (`lc inspect --json`), its layers' boxes and
        cut-outs, and with `masks` each layer's kept tokens as rows of 0/1."""
        body = await _body(request)
        return _json(await run_in_threadpool(self._inspect, body))

    def _inspect(self, body: dict[str, Any]) -> dict[str, Any]:
        relative = body.get("path", "")
        canvas = self.workspace.canvas(relative, body.get("data"))
        layers = self.workspace.layers(canvas)
        report = canvas_report(canvas, layers)
        report["canvas"] = relative
        views = []
        for layer in layers:
            key = layer.content_hash[:24]
            self._remember_cutout(key, layer.cutout)
            view = {
                "name": layer.name,
                "kind": layer.kind,
                "box": list(layer.placed),
                "cutout": f"/api/cutout/{key}.png",
            }
            if body.get("masks"):
                view["token_mask"] = [
                    "".join("1" if v else "0" for v in row) for row in layer.token_mask
                ]
            views.append(view)
        return {"report": report, "layers": views}

    async def cutout(self, request: Request) -> Response:
        """A layer's transformed cut-out (content-addressed, so the browser may keep it)."""
        key = request.path_params["key"]
        with self._cutouts_lock:
            entry = self.cutouts.get(key)
        if entry is None:
            raise Refused(404, "unknown cut-out; inspect the canvas first")
        if not isinstance(entry, bytes):
            entry = await run_in_threadpool(png_bytes, entry)
            with self._cutouts_lock:
                if key in self.cutouts:
                    self.cutouts[key] = entry
        return Response(
            entry, media_type="image/png", headers={"Cache-Control": "private, max-age=86400"}
        )

    async def file(self, request: Request) -> Response:
        path, media_type = self.workspace.served_file(request.query_params.get("path", ""))
        return FileResponse(path, media_type=media_type, headers={"Cache-Control": "no-cache"})

    async def history(self, request: Request) -> Response:
        relative = request.query_params.get("path", "")
        self.workspace.canvas_file(relative)
        return _json({"renders": await run_in_threadpool(self._history, relative)})

    def _history(self, relative: str) -> list[dict[str, Any]]:
        stem = glob.escape(Path(relative).stem)
        found = []
        for manifest_path in self.workspace.output.glob(f"*/{stem}/*.json"):
            try:
                found.append(self._describe(manifest_path))
            except (LcError, OSError, KeyError, ValueError):
                continue  # a manifest being written, or not one of ours
        found.sort(key=lambda entry: entry["created"], reverse=True)
        return found[:HISTORY_LIMIT]

    async def jobs(self, request: Request) -> Response:
        return _json({"jobs": self.queue.jobs(), "model_status": self.queue.model_status})

    # --- writing -------------------------------------------------------------------------------

    async def save(self, request: Request) -> Response:
        body = await _body(request)
        base = None if body.get("force") else body.get("base_sha256")
        saved = await run_in_threadpool(
            self.workspace.save, body.get("path", ""), body.get("data"), base
        )
        return _json(saved)

    async def upload(self, request: Request) -> Response:
        """Store the request body (one image) under images/; `?name=` suggests its file name."""
        data = await _bounded_body(request, self.workspace.max_upload_bytes, "upload")
        name = request.query_params.get("name", "upload.png")
        stored = await run_in_threadpool(self.workspace.store_upload, name, data)
        return _json(
            {"path": stored.path, "size": list(stored.size), "has_alpha": stored.has_alpha}
        )

    # --- rendering -----------------------------------------------------------------------------

    async def render(self, request: Request) -> Response:
        """Queue a render of the page's canvas and stream its progress as server-sent events.

        Events: queued (position), started, step (step, total), then one of done (the image,
        its manifest, the equivalent `lc render` line), failed (error) or cancelled. A client
        that goes away cancels its render.
        """
        body = await _body(request)
        encode = body.get("encode") or self.settings.encode
        mode = body.get("mode") or self.settings.mode
        if encode not in ENCODES or mode not in MODES:
            raise Refused(400, f"encode must be one of {ENCODES} and mode one of {MODES}")
        canvas = await run_in_threadpool(
            self.workspace.canvas, body.get("path", ""), body.get("data"), True
        )
        await run_in_threadpool(self.workspace.layers, canvas)  # refuse before queueing
        seed = seeds_for(canvas, None, 1)[0]

        loop = asyncio.get_running_loop()
        events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

        def notify(event: dict[str, Any]) -> None:  # called on the render thread
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody listens any more
                loop.call_soon_threadsafe(events.put_nowait, event)

        out_dir = self.workspace.output / _run_folder()
        job = self.queue.submit(RenderJob(canvas, seed, out_dir, encode, mode, notify))
        return StreamingResponse(
            self._stream(request, job, events),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    async def _stream(self, request: Request, job: RenderJob, events: asyncio.Queue):
        waited = 0.0
        try:
            while True:
                try:
                    event = await asyncio.wait_for(events.get(), DISCONNECT_POLL_SECONDS)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        return
                    waited += DISCONNECT_POLL_SECONDS
                    if waited >= KEEPALIVE_SECONDS:
                        waited = 0.0
                        yield ": keep-alive\n\n"
                    continue
                if event["event"] == "done":
                    event.update(await run_in_threadpool(self._done, job))
                yield f"event: {event['event']}\ndata: {json.dumps(event)}\n\n"
                if event["event"] in FINAL:
                    return
        finally:
            if not job.finished:  # the client left: don't keep the GPU busy for nobody
                self.queue.cancel(job.id)

    def _done(self, job: RenderJob) -> dict[str, Any]:
        return self._describe(Path(job.result.manifest))

    def _describe(self, manifest_path: Path) -> dict[str, Any]:
        """A history entry: the image, its manifest, and the CLI line that renders it again."""
        manifest = read_manifest(manifest_path)
        inputs = manifest["inputs"]
        image = manifest_path.with_name(manifest["output"]["image"])
        return {
            "image": f"/api/file?path={quote(self.workspace.relative(image))}",
            "manifest_path": self.workspace.relative(manifest_path),
            "manifest": manifest,
            "seed": inputs["seed"],
            "created": manifest["created"],
            "command": self._command(inputs),
        }

    def _command(self, inputs: dict[str, Any]) -> str:
        """The `lc render` line that renders the saved canvas file to the same image."""
        canvas = Path(inputs["canvas"]["path"])
        try:
            shown = os.path.relpath(canvas)
        except ValueError:  # another drive (Windows)
            shown = str(canvas)
        parts = ["lc render", shlex.quote(shown), "--model", shlex.quote(inputs["model"])]
        if inputs.get("revision"):
            parts += ["--revision", inputs["revision"]]
        for lora in as_list(inputs.get("lora")):  # one LoRA: a dict; several: a list
            parts += ["--lora", shlex.quote(LoraSpec(lora["path"], lora["scale"]).to_text())]
        parts += ["--seed", str(inputs["seed"]), "--mode", inputs["mode"]]
        parts += ["--encode", inputs["encode"]]
        if inputs.get("fill"):  # the fill used, explicitly: the line renders the same image
            parts += ["--fill", inputs["fill"]]
        for option in ("dtype", "device"):
            if inputs.get(option) not in (None, "auto"):
                parts += [f"--{option}", inputs[option]]
        return " ".join(parts)

    async def cancel(self, request: Request) -> Response:
        return _json({"cancelled": self.queue.cancel(request.path_params["job"])})

    def _remember_cutout(self, key: str, pixels: Any) -> None:
        with self._cutouts_lock:  # inspect runs on worker threads, serving on the event loop
            if key in self.cutouts:
                self.cutouts.move_to_end(key)
                return
            self.cutouts[key] = pixels
            while len(self.cutouts) > 1 and _nbytes(self.cutouts) > self.cutout_budget:
                self.cutouts.popitem(last=False)


# --- errors and helpers ----------------------------------------------------------------------


async def refused(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Refused)
    return _json({"error": exc.message, "hint": exc.hint}, exc.status)


async def invalid_canvas(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, CanvasError)
    problems = [{"loc": list(p.loc), "message": p.message} for p in exc.problems]
    return _json({"error": "invalid canvas", "problems": problems}, 422)


async def failed(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, LcError)
    return _json({"error": exc.message, "hint": exc.hint}, 500)


EXCEPTION_HANDLERS = {Refused: refused, CanvasError: invalid_canvas, LcError: failed}


async def _bounded_body(request: Request, limit: int, what: str) -> bytes:
    """The request body, or 413 as soon as it is over `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise Refused(413, f"{what} is over {size_text(limit)}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:  # stop reading: a client may lie about Content-Length
            raise Refused(413, f"{what} is over {size_text(limit)}")
        chunks.append(chunk)
    return b"".join(chunks)


async def _body(request: Request) -> dict[str, Any]:
    raw = await _bounded_body(request, MAX_REQUEST_JSON_BYTES, "request body")
    try:
        body = loads_json_bounded(raw, MAX_REQUEST_JSON_BYTES)
    except (ValueError, UnicodeDecodeError):  # JSONDecodeError, or nested too deeply
        raise Refused(400, "expected a JSON body") from None
    if not isinstance(body, dict):
        raise Refused(400, "expected a JSON object")
    return body


def _json(payload: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(payload, status, headers={"Cache-Control": "no-store"})


def _nbytes(cutouts: dict[str, Any]) -> int:
    return sum(len(v) if isinstance(v, bytes) else v.nbytes for v in cutouts.values())


def _run_folder() -> str:
    """A fresh folder name per render, so the history keeps every image (sortable by time)."""
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)
