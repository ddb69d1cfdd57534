"""Who may talk to the studio: the holder of the session token, through an expected host name.

- The token is random per server start and printed in the address. Requests carry it as the
  `X-LC-Token` header (the page's fetches) or `?token=` (the printed address); GET requests may
  also carry it in a cookie the first page load sets (so <img> and module loads need no token
  in their URL). The cookie is SameSite=Strict, so another site's page can't send it, and
  anything that changes state needs the header or query token anyway.
- The Host header must name the address the server bound (127.0.0.1, localhost, ...): a page on
  evil.example whose DNS is rebound to 127.0.0.1 still sends `Host: evil.example`.
- A browser's Origin, when sent, must be this server.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from http.cookies import SimpleCookie
from urllib.parse import parse_qs, urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

TOKEN_HEADER = "x-lc-token"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
SAFE_METHODS = frozenset({"GET", "HEAD"})


def new_token() -> str:
    return secrets.token_urlsafe(24)


def cookie_name(token: str) -> str:
    """A cookie name per server, so two studios on one machine don't share a cookie."""
    return "lc_studio_" + hashlib.sha256(token.encode()).hexdigest()[:12]


def host_name(value: str) -> str:
    """`127.0.0.1:8000` -> `127.0.0.1`, `[::1]:8000` -> `::1`, lower-cased."""
    try:
        return (urlsplit(f"//{value}").hostname or "").lower()
    except ValueError:
        return ""


class StudioGuard:
    """ASGI middleware: refuse requests without the token, from other hosts or other origins."""

    def __init__(
        self,
        app: ASGIApp,
        token: str,
        allowed_hosts: frozenset[str] | set[str],
        headers: dict[str, str] | None = None,
    ):
        self.app = app
        self.token = token
        self.headers = [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
        self.cookie = cookie_name(token)
        self.allowed_hosts = frozenset(host.lower() for host in allowed_hosts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan; the studio serves no websockets
            await self.app(scope, receive, send)
            return
        headers = {
            key.decode("latin-1"): value.decode("latin-1") for key, value in scope["headers"]
        }
        refusal = self._refusal(scope, headers)
        if refusal is not None:
            await _deny(send, *refusal)
            return

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *self.headers]}
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def _refusal(self, scope: Scope, headers: dict[str, str]) -> tuple[int, str] | None:
        host = host_name(headers.get("host", ""))
        if host not in self.allowed_hosts:
            return 403, f"host '{host}' is not this studio (DNS rebinding?)"
        origin = headers.get("origin")
        if origin is not None and (
            host_name(urlsplit(origin).netloc) not in self.allowed_hosts
            or urlsplit(origin).netloc.lower() != headers.get("host", "").lower()
        ):
            return 403, "requests from other sites are refused"
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        offered = [headers.get(TOKEN_HEADER, ""), *query.get("token", [])]
        if scope["method"] in SAFE_METHODS:
            cookies = SimpleCookie()
            try:
                cookies.load(headers.get("cookie", ""))
            except Exception:  # noqa: BLE001 - a malformed cookie header is just no cookie
                cookies = SimpleCookie()
            if self.cookie in cookies:
                offered.append(cookies[self.cookie].value)
        expected = self.token.encode()
        if not any(secrets.compare_digest(value.encode(), expected) for value in offered if value):
            return 403, "missing or wrong session token: open the address `lc studio` printed"
        return None


async def _deny(send: Send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
