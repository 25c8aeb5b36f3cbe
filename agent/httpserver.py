"""The local API's HTTP/1.1 server: the standard library's `http.server` with one thread per connection.

Why not uvicorn + Starlette (which the agent used before): the API is a handful of routes on 127.0.0.1 or a
unix socket, and the daemon's memory is budgeted (<= 80 MB with a model loaded, docs/agent.md). Without
uvicorn, Starlette and httptools the daemon's RSS is 2.3-2.6 MB lower and a request 0.1 ms quicker
(bench/agent_overhead.py); `http.server` is already imported by prometheus-client. What the standard server
leaves to its user is done here: keep-alive with an idle timeout, a body size limit read from Content-Length
before the body (413), JSON errors for malformed requests, no Nagle delay, and a stop that lets requests in
flight finish and closes the rest.

Limits against clients that hold connections (agent/httplimits.py says why): at most `max_connections` open
(64) and `max_per_peer` (16) from one TCP address; past either, a connection takes one of `health_reserve` (4)
reserve slots, where GET/HEAD /healthz is answered and anything else gets 503 with Retry-After, and with no
reserve slot free it gets that 503 at once. A request (line, headers, body) must arrive within
`request_deadline_s` (15 s) of its first byte, the first one on a connection within that of the accept, a
reserve connection's within 2 s; past it, or after `idle_timeout_s` (30 s) without a byte mid-request, the
connection gets 408 and is closed. Each refusal is counted in `edgefleet_agent_api_refusals{reason}`."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

from agent.api import MAX_BODY_BYTES, LocalApi, Reply, error_reply, json_reply
from agent.errors import ConfigError
from agent.httplimits import (
    HEALTH_RESERVE,
    MAX_PER_PEER,
    REQUEST_DEADLINE_S,
    RESERVE_DEADLINE_S,
    Admission,
    ConnectionSlots,
    DeadlineReader,
    Refusals,
    RequestTimer,
)

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 64
IDLE_TIMEOUT_S = 30.0  # a keep-alive connection with no request for this long is closed; so is a stalled request
STOP_GRACE_S = 5.0  # on stop, how long requests being answered may take to finish


def _head(reply: Reply, close: bool) -> bytes:
    phrase = BaseHTTPRequestHandler.responses.get(reply.status, ("",))[0]
    lines = [
        f"HTTP/1.1 {reply.status} {phrase}",
        f"Content-Type: {reply.content_type}",
        f"Content-Length: {len(reply.body)}",
    ]
    lines += [f"{k}: {v}" for k, v in reply.headers]
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive unless the client says otherwise
    server: _Server

    def setup(self) -> None:
        server = self.server
        self.admission = server.admission_of(self.request)
        reserve = self.admission.slot == "reserve"
        deadline = min(server.request_deadline_s, RESERVE_DEADLINE_S) if reserve else server.request_deadline_s
        self.timer = RequestTimer(server.idle_timeout_s, deadline)
        self.requests = 0
        self.request.settimeout(server.idle_timeout_s)
        if self.request.family != socket.AF_UNIX:
            # Headers and body leave in one write; no Nagle, so a reply never waits for the client's delayed ACK.
            self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().setup()
        self.rfile.close()  # read through the request's deadline instead
        self.rfile = io.BufferedReader(DeadlineReader(self.request, self.timer))

    def handle_one_request(self) -> None:
        if self.requests:
            self.timer.next_request()
        self.requests += 1
        self.command = None  # type: ignore[assignment]  # not the last request's, should this one not parse
        super().handle_one_request()  # a read past a limit: TimeoutError, caught there, connection closed
        timer = self.timer
        if timer.expired == "deadline" or (timer.expired == "idle" and timer.received):
            self._timed_out()

    def _timed_out(self) -> None:
        """A request that did not arrive in time: 408 if any of it came (a silent client is just closed)."""
        timer = self.timer
        if timer.expired == "deadline":
            reason, message = "deadline", f"request not received in full within {timer.deadline_s:g} s"
        else:
            reason, message = "stalled", f"request stalled: nothing received for {timer.idle_timeout_s:g} s"
        self.server.refusals.add(reason, f"{message} from {self.admission.peer or 'the unix socket'}; closed")
        self.close_connection = True
        if timer.received:
            with contextlib.suppress(OSError):
                self._write(error_reply(408, f"{message}; closing the connection"))

    def _write(self, reply: Reply) -> None:
        self.request.settimeout(self.server.idle_timeout_s)  # not the read deadline's remainder
        body = b"" if self.command == "HEAD" else reply.body
        self.wfile.write(_head(reply, self.close_connection) + body)

    def _body_length(self) -> int | None:
        """The declared body length; None once refused (chunked, a bad or too large Content-Length), which
        happens before the body is sent."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.send_error(411, "send the body with a Content-Length (chunked bodies are not accepted)")
            return None
        declared = self.headers.get("Content-Length", "0").strip() or "0"
        if not declared.isdigit():
            self.send_error(400, f"Content-Length {declared!r} is not a number")
            return None
        if int(declared) > MAX_BODY_BYTES:
            self.send_error(413, f"request body over {MAX_BODY_BYTES} bytes")
            return None
        return int(declared)

    def handle_expect_100(self) -> bool:
        # `Expect: 100-continue` (curl sends it for bodies over 1 MB): a body that will be refused is never sent.
        self.request.settimeout(self.server.idle_timeout_s)
        return self._body_length() is not None and super().handle_expect_100()

    def _dispatch(self) -> None:
        length = self._body_length()
        if length is None:
            return
        server = self.server
        if self.admission.slot == "reserve":  # past a cap: one request, and only a health check is answered
            self.close_connection = True
            if self.command not in ("GET", "HEAD") or self.path.split("?", 1)[0] != "/healthz":
                self._write(server.refuse(self.admission))
                return
        with server.busy(self.request):
            body = self.rfile.read(length) if length else b""
            if len(body) < length:  # the client went away mid-body
                self.close_connection = True
                return
            reply = server.api.handle(self.command, self.path, body)
            if server.stopping:  # answer this one, then let the connection go
                self.close_connection = True
            self._write(reply)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _dispatch

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:  # noqa: ARG002
        """http.server's own refusals (malformed request line, header too long, unknown method) as JSON; the
        connection is closed after them, as the request may not have been read to its end."""
        self.close_connection = True
        text = message or self.responses.get(code, ("error",))[0]
        log.debug("local API: %d %s", code, text)
        with contextlib.suppress(OSError):
            self._write(error_reply(code, text))

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("local API: " + format, *args)


class _Server(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(
        self,
        sock: socket.socket,
        api: LocalApi,
        slots: ConnectionSlots,
        idle_timeout_s: float,
        request_deadline_s: float,
    ) -> None:
        self.api = api
        self.slots = slots
        self.idle_timeout_s = idle_timeout_s
        self.request_deadline_s = request_deadline_s
        self.refusals = Refusals(lambda reason: api.metrics.api_refusals.labels(reason).inc())
        self.stopping = False
        self._open: dict[socket.socket, Admission] = {}
        self._busy: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(sock.getsockname(), _Handler, bind_and_activate=False)
        self.socket.close()  # the one TCPServer made: serve on the socket bound before the daemon started
        self.socket = sock
        self._by_address = sock.family in (socket.AF_INET, socket.AF_INET6)

    def process_request(self, request: Any, client_address: Any) -> None:
        admission = self.slots.admit(client_address[0] if self._by_address else None)
        if admission.slot == "none":  # not even a reserve slot: refused before anything is read
            reply = self.refuse(admission)
            with contextlib.suppress(OSError):
                request.sendall(_head(reply, close=True) + reply.body)
            self.shutdown_request(request)
            return
        with self._open_lock:
            self._open[request] = admission
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._open_lock:
                admission = self._open.pop(request)
            self.slots.release(admission)

    def admission_of(self, conn: socket.socket) -> Admission:
        with self._open_lock:
            return self._open[conn]

    def refuse(self, admission: Admission) -> Reply:
        """Count a connection past a cap; the 503 to send it."""
        message = self.slots.why_refused(admission)
        self.refusals.add(admission.over or "busy", message)
        return json_reply({"error": message}, 503, (("Retry-After", "1"),))

    @contextlib.contextmanager
    def busy(self, conn: socket.socket) -> Iterator[None]:
        """Mark a connection as answering a request (stop() waits for it) while the block runs."""
        with self._open_lock:
            self._busy.add(conn)
        try:
            yield
        finally:
            with self._open_lock:
                self._busy.discard(conn)

    def handle_error(self, request: Any, client_address: Any) -> None:  # noqa: ARG002
        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            log.debug("local API: the client went away mid-answer")
        else:
            log.warning("local API: connection failed", exc_info=True)

    def close_connections(self, grace_s: float) -> None:
        """Close idle connections now; give those answering a request up to `grace_s` to finish it."""
        self.stopping = True
        deadline = time.monotonic() + grace_s
        while True:
            with self._open_lock:
                idle = set(self._open) - self._busy
                busy = len(self._busy)
            for conn in idle:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
            if not busy or time.monotonic() >= deadline:
                break
            time.sleep(0.02)
        with self._open_lock:
            left = list(self._open)
        for conn in left:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class LocalApiServer:
    """Serves a `LocalApi` on a bound, listening socket (TCP or unix): `start()` in a thread, `stop()`."""

    def __init__(
        self,
        api: LocalApi,
        sock: socket.socket,
        *,
        max_connections: int = MAX_CONNECTIONS,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
        request_deadline_s: float = REQUEST_DEADLINE_S,
        max_per_peer: int = MAX_PER_PEER,
        health_reserve: int = HEALTH_RESERVE,
    ) -> None:
        slots = ConnectionSlots(max_connections, max_per_peer, health_reserve)
        self._server = _Server(sock, api, slots, idle_timeout_s, request_deadline_s)
        self._thread: threading.Thread | None = None

    @property
    def busy_refusals(self) -> int:
        """Requests and connections refused with 503 because `max_connections` were open."""
        return self._server.refusals.counts().get("busy", 0)

    @property
    def refusals(self) -> dict[str, int]:
        """Refusals so far by reason: busy, per_peer (503), deadline, stalled (408)."""
        return self._server.refusals.counts()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.5,), name="local-api", daemon=True)
        self._thread.start()

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """Stop accepting; close idle connections at once and the others once their answer is written (or after
        `grace_s`: a prediction waiting on a cloud fallback does not hold up the daemon's stop for long)."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._server.close_connections(grace_s)
        self._server.server_close()


def bind_unix_socket(path: os.PathLike[str], mode: int = 0o660) -> socket.socket:
    """The local API's unix socket, bound before the daemon starts: owner and group may connect (`mode`).

    A socket file left by an agent that was killed is replaced; one another agent still listens on is not,
    and neither is a path that is not a socket."""
    from pathlib import Path

    path = Path(path)
    if path.is_socket():
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except OSError:  # nobody listens: left by a killed agent
            path.unlink(missing_ok=True)
        else:
            raise ConfigError(f"api_uds: another process is serving on {path}")
        finally:
            probe.close()
    elif path.exists() or path.is_symlink():
        raise ConfigError(f"api_uds: {path} exists and is not a socket")
    if not path.parent.is_dir():
        raise ConfigError(f"api_uds: directory {path.parent} does not exist")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        os.chmod(path, mode)
        sock.listen(128)
    except OSError as e:
        sock.close()
        raise ConfigError(f"api_uds: cannot listen on {path}: {e.strerror or e}") from e
    return sock


def bind_tcp_socket(host: str, port: int) -> socket.socket:
    """The local API's TCP socket, bound before the daemon starts (a port in use stops the start with one line)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(128)
        except OSError:
            sock.close()
            raise
        return sock
    except OSError as e:
        raise ConfigError(f"api_host/api_port: cannot listen on {host}:{port}: {e.strerror or e}") from e
