"""`RequestGuard`: the limits every HTTP request meets before the hub spends memory, disk or CPU on its body.

FastAPI reads and parses a body before it resolves a route's dependencies, so without this layer an
anonymous client could make the hub spool a 1.5 GB upload before learning it needed a token, or hold a
500 MiB JSON document in memory before a 422. In front of every route, from the request head alone:
- a request with both `Content-Length` and `Transfer-Encoding` is refused (400): the two framings are how
  requests are smuggled past a proxy that reads the other one;
- a declared body over the route's cap is refused (413) before a byte of it is read: the admin's model push
  may send `max_upload_bytes`, every other route `max_json_bytes`;
- a body on an API route needs a bearer token the hub knows (the admin's or a device's) before it is read
  (401); enrollment is the one anonymous API write (its body is capped like any JSON). The route's own
  dependencies still decide who may do what;
- a body must keep arriving: a small one whole within `body_timeout_s`, an upload with no pause longer than
  that; otherwise 408 and the connection is closed. Bodies without a length (chunked) are counted as they
  arrive and cut at the cap (413).
Every refusal closes the connection (`Connection: close`) and is counted by reason. The request head itself
is bounded by the server (hub/server.py: 16 KiB, `header_timeout_s`)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from prometheus_client import Counter
from starlette.concurrency import run_in_threadpool

from hub.errors import HubError
from hub.security import same_secret, sha256_hex
from hub.store import devices as device_store
from protocol.http import API_PREFIX, ENROLL_PATH

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

UPLOAD_ROUTE = ("POST", f"{API_PREFIX}/models")


class LogThrottle:
    """`due(key)`: true at most once per `every_s` per key, so an attack logs a line per interval, not per try."""

    def __init__(self, every_s: float = 10.0) -> None:
        self.every_s = every_s
        self._last: dict[str, float] = {}

    def due(self, key: str) -> bool:
        now = time.monotonic()
        if now - self._last.get(key, -self.every_s) < self.every_s:
            return False
        self._last[key] = now
        return True


throttle = LogThrottle()  # the process's refusal log lines (hub/server.py's head refusals too)


class Refused(HubError):
    """A request the guard will not serve: its status and the message the client reads. Raised while the app
    reads a streamed body, it reaches the app's HubError handler, which closes the connection after it."""

    def __init__(self, status: int, detail: str, reason: str) -> None:
        super().__init__(detail)
        self.status_code, self.detail, self.reason = status, detail, reason


class RequestGuard:
    """ASGI middleware: caps, deadlines and early authentication for request bodies (see the module doc)."""

    def __init__(self, app: ASGIApp, *, hub: Any) -> None:
        self.app = app
        self.hub = hub
        self.refused = Counter(
            "edgefleet_hub_http_refused", "Requests refused before their body was served", ["reason"],
            registry=hub.metrics.registry,
        )  # fmt: skip
        self._seen: dict[str, int] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            guarded = await self._admit(scope, receive)
            await self.app(scope, guarded, tracking_send)
        except Refused as e:
            self.count(e, scope)
            if not started:
                await _reply(send, e.status_code, e.detail)

    def count(self, refusal: Refused, scope: Scope) -> None:
        """Count one refusal; log it unless this reason was logged in the last LOG_EVERY_S (a flood is a line
        per reason per interval, with the running total)."""
        self.refused.labels(refusal.reason).inc()
        seen = self._seen.get(refusal.reason, 0) + 1
        self._seen[refusal.reason] = seen
        if throttle.due(refusal.reason):
            log.info("refused %s %s from %s: %d %s (%d refused for %s so far)", scope["method"], scope["path"],
                     _peer(scope), refusal.status_code, refusal.detail, seen, refusal.reason)  # fmt: skip

    async def _admit(self, scope: Scope, receive: Receive) -> Receive:
        """Check the head; return the `receive` the app reads the body through."""
        settings = self.hub.settings
        headers = _headers(scope)
        length, chunked = headers.get(b"content-length"), b"transfer-encoding" in headers
        if length is not None and chunked:
            raise Refused(400, "Content-Length and Transfer-Encoding together are refused", "framing")
        if length is not None and not length.strip().isdigit():
            raise Refused(400, "Content-Length is not a number", "framing")
        declared = int(length) if length is not None else None
        if not chunked and not declared:
            return receive  # no body
        upload = (scope["method"], scope["path"].rstrip("/")) == UPLOAD_ROUTE
        cap = settings.max_upload_bytes if upload else settings.max_json_bytes
        if scope["path"].startswith(API_PREFIX + "/") and scope["path"].rstrip("/") != ENROLL_PATH:
            await self._authenticate(headers.get(b"authorization"), admin_only=upload)
        if declared is not None and declared > cap:
            raise Refused(413, f"request body of {declared} bytes is over this route's limit of {cap} bytes", "size")
        if upload:
            return _streamed(receive, cap, settings.body_timeout_s, lambda e: self.count(e, scope))
        body = await _read_whole(receive, cap, settings.body_timeout_s)
        return _replay(body, receive)

    async def _authenticate(self, authorization: bytes | None, *, admin_only: bool) -> None:
        scheme, _, token = (authorization or b"").decode("latin-1").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Refused(401, "bearer token required before a request body is read", "auth")
        if same_secret(token, self.hub.admin_token):
            return
        if admin_only:
            raise Refused(401, "admin bearer token required", "auth")
        if not await run_in_threadpool(self._known_device, token):
            raise Refused(401, "unknown token", "auth")

    def _known_device(self, token: str) -> bool:
        with self.hub.engine.connect() as conn:
            return device_store.by_token(conn=conn, token_sha256=sha256_hex(token)) is not None


def _headers(scope: Scope) -> dict[bytes, bytes]:
    return {k.lower(): v for k, v in scope["headers"]}


def _peer(scope: Scope) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "?"


async def _next_chunk(receive: Receive, timeout_s: float) -> Message:
    try:
        return await asyncio.wait_for(receive(), timeout_s)
    except TimeoutError as e:
        raise Refused(408, f"request body stalled for {timeout_s:.0f} s", "timeout") from e


async def _read_whole(receive: Receive, cap: int, timeout_s: float) -> bytes:
    """The whole (small) body, within `timeout_s` and `cap` bytes."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    parts: list[bytes] = []
    size = 0
    while True:
        message = await _next_chunk(receive, max(deadline - loop.time(), 0.001))
        if message["type"] == "http.disconnect":
            raise Refused(400, "client went away mid-body", "disconnect")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > cap:
            raise Refused(413, f"request body over this route's limit of {cap} bytes", "size")
        parts.append(chunk)
        if not message.get("more_body", False):
            return b"".join(parts)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # after the body: the disconnect the app may wait for

    return replay


def _streamed(receive: Receive, cap: int, idle_s: float, on_refusal: Callable[[Refused], None]) -> Receive:
    size = 0

    async def counted() -> Message:
        nonlocal size
        try:
            message = await _next_chunk(receive, idle_s)
            size += len(message.get("body", b""))
            if size > cap:
                raise Refused(413, f"upload over max_upload_bytes ({cap} bytes)", "size")
        except Refused as e:
            on_refusal(e)
            raise
        return message

    return counted


async def _reply(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close")]  # fmt: skip
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
