"""`serve(app, settings)`: uvicorn with the hub's limits on the wire, and TLS when configured.

uvicorn arms no timer until a first response is complete, so a client that opens a connection and sends
nothing, or a request head one byte at a time, holds a connection (and its memory) for ever. The hub serves
HTTP/1.1 through h11 (pure Python) with two limits added here: a request head (request line and headers)
over 16 KiB is answered 431 and the connection closed, and the head must arrive within `header_timeout_s`
of the connection opening or of the previous response, or it is answered 408 (a connection that sent
nothing is simply closed). Bodies are guarded one
layer up, in hub/guard.py, where the route is known."""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

from hub.guard import throttle
from hub.settings import HubSettings

log = logging.getLogger(__name__)
MAX_HEAD_BYTES = 16 * 1024  # h11's own default, stated: a head past it is answered 400 and the connection closed


def _refusal(status: int, phrase: str, detail: str) -> bytes:
    body = json.dumps({"detail": detail}).encode()
    head = (
        f"HTTP/1.1 {status} {phrase}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class HeadDeadlineProtocol(H11Protocol):
    """h11 with a deadline on each request head (`header_timeout_s`, set by `protocol_class`) and a size cap
    on it however it arrives (h11's own cap only sees a head that is still incomplete after a read)."""

    header_timeout_s = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_timer: asyncio.TimerHandle | None = None
        self._arm_head_deadline()

    def _arm_head_deadline(self) -> None:
        self._disarm_head_deadline()
        self._head_for: object = self.scope  # the deadline holds until a new request (a new scope) has begun
        self._head_len, self._head_tail = 0, b""
        self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_expired)

    def _disarm_head_deadline(self) -> None:
        if getattr(self, "_head_timer", None) is not None:
            self._head_timer.cancel()  # type: ignore[union-attr]
            self._head_timer = None

    def data_received(self, data: bytes) -> None:
        if self.scope is self._head_for and self._head_timer is not None:  # still reading a head
            window = self._head_tail + data
            end = window.find(b"\r\n\r\n")
            self._head_len += len(data) if end < 0 else end + 4 - len(self._head_tail)
            self._head_tail = window[-3:]
            if self._head_len > MAX_HEAD_BYTES:
                self._refuse(431, "Request Header Fields Too Large", f"request head over {MAX_HEAD_BYTES} bytes")
                return
        super().data_received(data)
        if self.scope is not self._head_for:
            self._disarm_head_deadline()

    def on_response_complete(self) -> None:
        before = self.scope
        super().on_response_complete()
        if not self.transport.is_closing() and self.scope is before:  # no pipelined request already under way
            self._arm_head_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_deadline()
        super().connection_lost(exc)

    def _head_expired(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or self.scope is not self._head_for:
            return
        if self._head_len == 0:  # nothing sent since the connection opened or the last answer: just close
            self.transport.close()
            return
        self._refuse(408, "Request Timeout", f"request head not received within {self.header_timeout_s:g} s")

    def _refuse(self, status: int, phrase: str, detail: str) -> None:
        self._disarm_head_deadline()
        if throttle.due(f"head-{status}"):
            log.info("refused a request head from %s: %d %s (logged once per 10 s)", self.client, status, detail)
        self.transport.write(_refusal(status, phrase, detail))
        self.transport.close()


def protocol_class(settings: HubSettings) -> type[HeadDeadlineProtocol]:
    """The h11 protocol with this hub's head deadline."""
    return type("HubHttpProtocol", (HeadDeadlineProtocol,), {"header_timeout_s": settings.header_timeout_s})


def tls_options(settings: HubSettings) -> dict[str, Any]:
    """uvicorn's TLS arguments from the settings (none: plain HTTP)."""
    if settings.tls_cert_file is None and settings.tls_key_file is None:
        if settings.tls_client_ca_file is not None or settings.tls_require_client_cert:
            raise ValueError("tls_client_ca_file / tls_require_client_cert need tls_cert_file and tls_key_file")
        return {}
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        raise ValueError("TLS needs both tls_cert_file (--tls-cert) and tls_key_file (--tls-key)")
    if settings.tls_require_client_cert and settings.tls_client_ca_file is None:
        raise ValueError("tls_require_client_cert needs tls_client_ca_file: the CA that signs device certificates")
    for name in ("tls_cert_file", "tls_key_file", "tls_client_ca_file"):
        path = getattr(settings, name)
        if path is not None and not path.is_file():
            raise ValueError(f"{name}: no such file: {path}")
    options: dict[str, Any] = {"ssl_certfile": str(settings.tls_cert_file), "ssl_keyfile": str(settings.tls_key_file)}
    if settings.tls_client_ca_file is not None:
        options["ssl_ca_certs"] = str(settings.tls_client_ca_file)
        options["ssl_cert_reqs"] = ssl.CERT_REQUIRED if settings.tls_require_client_cert else ssl.CERT_OPTIONAL
    return options


def serve(app: Any, settings: HubSettings, *, host: str, port: int) -> None:
    """Run the app until interrupted; certificate or key problems stop the start with one line (ValueError)."""
    import uvicorn

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        http=protocol_class(settings),
        h11_max_incomplete_event_size=MAX_HEAD_BYTES,
        **tls_options(settings),
    )
    try:
        config.load()
    except (ssl.SSLError, OSError) as e:
        raise ValueError(f"TLS: cannot load {settings.tls_cert_file} / {settings.tls_key_file}: {e}") from e
    uvicorn.Server(config).run()
