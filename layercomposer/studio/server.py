"""The studio server: builds the Starlette app and serves it with uvicorn on a local address."""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
import threading
import webbrowser
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..errors import UsageError, printable
from ..render import Renderer, RenderSettings
from .api import EXCEPTION_HANDLERS, StudioApi
from .jobs import RenderQueue
from .security import LOOPBACK_HOSTS, StudioGuard, cookie_name, new_token
from .workspace import MAX_UPLOAD_BYTES, Workspace

STATIC = Path(__file__).parent / "static"
# The page loads nothing from elsewhere (no CDN): the browser is told to refuse it, too.
CSP = (
    "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)


def create_app(
    workspace: Workspace,
    renderer: Any,
    token: str,
    allowed_hosts: frozenset[str] | set[str] = LOOPBACK_HOSTS,
    preload: bool = False,
    on_model_status: Callable[[str], None] | None = None,
) -> Starlette:
    """The studio as an ASGI app; `app.state.studio` is its `StudioApi` (queue, settings).
    `on_model_status` hears how the preload ended ("ready (3.1 s)", "failed: ...")."""
    queue = RenderQueue(renderer, preload=preload, on_model_status=on_model_status)
    api = StudioApi(workspace, queue, renderer.settings)

    async def index(request: Request) -> Response:
        response = FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})
        # Later GETs (modules, images) carry the cookie instead of the token in every URL.
        response.set_cookie(cookie_name(token), token, httponly=True, samesite="strict")
        return response

    @asynccontextmanager
    async def lifespan(app: Starlette):
        yield
        # Cancel queued renders; the running one stops at its next denoising step.
        await asyncio.to_thread(queue.close, 5.0)

    app = Starlette(
        routes=[
            Route("/", index, methods=["GET"]),
            *api.routes(),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ],
        middleware=[
            Middleware(StudioGuard, token=token, allowed_hosts=allowed_hosts, headers=_headers())
        ],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
    app.state.studio = api
    return app


def _headers() -> dict[str, str]:
    return {
        "content-security-policy": CSP,
        "x-content-type-options": "nosniff",
        "referrer-policy": "no-referrer",  # the token is in the address
        "x-frame-options": "DENY",
    }


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(
    target: Path,
    settings: RenderSettings,
    host: str = "127.0.0.1",
    port: int = 0,
    open_browser: bool = True,
    allow_remote: bool = False,
    allowed_hosts: tuple[str, ...] = (),
    output: Path | None = None,
    max_upload_bytes: int = MAX_UPLOAD_BYTES,
    say: Callable[[str], None] | None = None,
) -> None:
    """Serve the studio for a canvas file or folder until interrupted; `say` shows a line of
    the log (default: stdout, flushed so that a pipe sees it at once)."""
    if say is None:
        say = functools.partial(print, flush=True)
    say = functools.partial(_say_printable, say)  # canvas names and folders are the user's
    import uvicorn

    if not is_loopback(host) and not allow_remote:
        raise UsageError(
            f"--host {host} would let other machines reach the studio (and write files in the "
            "canvas folder)",
            hint="keep the default 127.0.0.1, or add --allow-remote if you really mean it",
        )
    workspace = Workspace(target, output, max_upload_bytes)
    sock = _bind(host, port)
    port = sock.getsockname()[1]
    hosts = set(LOOPBACK_HOSTS) | {host.lower(), *(h.lower() for h in allowed_hosts)}
    if not is_loopback(host):
        say(
            f"warning: listening on {host}: anyone who can reach this machine and learns the "
            "token can read images in the canvas folder and write canvas files there"
        )
        hosts |= {socket.gethostname().lower(), socket.getfqdn().lower()}
    token = new_token()
    # The model's line comes after the address, never before it: one held back meanwhile.
    lock = threading.Lock()
    held: list[str] = []
    announced = False

    def model_status(status: str) -> None:
        with lock:
            if not announced:
                held.append(status)
                return
        say(f"  model: {status}")

    app = create_app(workspace, Renderer(settings), token, hosts, True, model_status)
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    url = f"http://{_url_host(shown)}:{port}/?token={token}"

    def listening() -> None:
        say(f"lc studio: {url}")
        say(f"  canvases: {', '.join(workspace.canvases()) or '(none yet)'} in {workspace.root}")
        say(f"  model: {settings.model} (loading in the background), encode {settings.encode}")
        say(f"  renders go to {workspace.output}; press Ctrl+C to stop")
        nonlocal announced
        with lock:
            announced = True
            for status in held:
                say(f"  model: {status}")
        if open_browser:
            threading.Thread(target=_open_browser, args=(url, say), daemon=True).start()

    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
    _announcing_server(config, listening).run(sockets=[sock])


def _say_printable(say: Callable[[str], None], line: str) -> None:
    say(printable(line))


def _open_browser(url: str, say: Callable[[str], None]) -> None:
    """Open `url` in a browser, or say that none could be (no display, no browser installed)."""
    try:
        opened = webbrowser.open(url)
    except Exception:  # noqa: BLE001 - a broken browser setup is only a missed convenience
        opened = False
    if not opened:
        say("  no browser could be opened here: open the address above in one yourself")


def _announcing_server(config: Any, on_listening: Callable[[], None]) -> Any:
    """A uvicorn server that calls `on_listening` once its socket accepts connections.

    The address is printed only then: printed earlier (before startup, which also runs the
    app's lifespan), a script or a browser that uses it at once can be refused.
    """
    import uvicorn

    class AnnouncingServer(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            if self.started and not self.should_exit:  # uvicorn sets `started` once listening
                on_listening()

    return AnnouncingServer(config)


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket: port 0 picks a free one (no race between choosing and binding)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port} ({exc.strerror})") from None
    sock.set_inheritable(True)
    return sock


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
