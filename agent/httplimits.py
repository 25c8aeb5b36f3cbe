"""What keeps one client from taking the local API from the others: a deadline for each request, a cap on
connections per peer address, and a few reserve connections that answer only `/healthz`.

Why a deadline and not only the idle timeout: a socket timeout restarts with every byte received, so a client
trickling one byte every few seconds never trips it, and 64 such connections held every slot (a probe kept
`/healthz` at 503 for as long as it trickled). The time left before the request's deadline is computed before
each read instead, so trickling cannot extend it.

Why per address: the global cap alone lets one client take every slot. On a unix socket every peer has the
same (empty) address and the socket's file mode already decides who may connect, so only the global cap
applies there. The cap is per address, not per host: a local process can bind other loopback addresses
(127.0.0.2, ...), so on loopback it stops a runaway client, not a determined local attacker."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

REQUEST_DEADLINE_S = 15.0  # request line, headers and body must all arrive within this, from its first byte
MAX_PER_PEER = 16  # open connections one peer address may hold (TCP only)
HEALTH_RESERVE = 4  # connections past the caps that are read once and answer only GET/HEAD /healthz
RESERVE_DEADLINE_S = 2.0  # a reserve connection's request must arrive within this from the accept
WARN_EVERY_S = 10.0  # refusals: at most one warning per reason per this many seconds

log = logging.getLogger(__name__)

Limit = Literal["busy", "per_peer"]


@dataclass(frozen=True)
class Admission:
    """Where a new connection stands: a full slot, a reserve slot (one request, /healthz only) or none; `over`
    is the cap that kept it out of a full slot."""

    peer: str | None  # the address counted against MAX_PER_PEER; None on a unix socket
    slot: Literal["full", "reserve", "none"]
    over: Limit | None = None


class ConnectionSlots:
    """Counts open connections in total, per peer address and in the health-check reserve."""

    def __init__(self, max_connections: int, max_per_peer: int, health_reserve: int) -> None:
        self.max_connections = max_connections
        self.max_per_peer = max_per_peer
        self.health_reserve = health_reserve
        self._lock = threading.Lock()
        self._full = 0
        self._reserve = 0
        self._per_peer: dict[str, int] = {}

    def admit(self, peer: str | None) -> Admission:
        """Take a full slot if the caps allow, else a reserve slot if one is free; release it when done."""
        with self._lock:
            over: Limit | None = None
            if self._full >= self.max_connections:
                over = "busy"
            elif peer is not None and self._per_peer.get(peer, 0) >= self.max_per_peer:
                over = "per_peer"
            if over is None:
                self._full += 1
                if peer is not None:
                    self._per_peer[peer] = self._per_peer.get(peer, 0) + 1
                return Admission(peer, "full")
            if self._reserve < self.health_reserve:
                self._reserve += 1
                return Admission(peer, "reserve", over)
            return Admission(peer, "none", over)

    def release(self, admission: Admission) -> None:
        with self._lock:
            if admission.slot == "reserve":
                self._reserve -= 1
            elif admission.slot == "full":
                self._full -= 1
                peer = admission.peer
                if peer is not None:
                    left = self._per_peer[peer] - 1
                    if left:
                        self._per_peer[peer] = left
                    else:
                        del self._per_peer[peer]

    def why_refused(self, admission: Admission) -> str:
        """The 503's message for a connection past a cap."""
        if admission.over == "per_peer":
            cap = self.max_per_peer
            return f"too many open connections from {admission.peer} (at most {cap} per address); close some and retry"
        return f"too many open connections to the local API (at most {self.max_connections}); retry"


class Refusals:
    """Refusals by reason: counted, passed to `on_refusal` (a metric), warned about at most once per reason per
    `warn_every_s`, so a flood of them is one log line per interval."""

    def __init__(
        self,
        on_refusal: Callable[[str], None],
        warn_every_s: float = WARN_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.on_refusal = on_refusal
        self.warn_every_s = warn_every_s
        self.clock = clock
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}
        self._warned_at: dict[str, float] = {}

    def add(self, reason: str, message: str) -> None:
        now = self.clock()
        with self._lock:
            count = self._counts[reason] = self._counts.get(reason, 0) + 1
            warn = now - self._warned_at.get(reason, now - self.warn_every_s) >= self.warn_every_s
            if warn:
                self._warned_at[reason] = now
        self.on_refusal(reason)
        if warn:
            log.warning("local API: %s (%s: %d so far)", message, reason, count)

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


class RequestTimer:
    """The clock of the request being read on one connection.

    The first request's deadline runs from the accept (a client that connects and sends nothing holds its slot
    no longer than one that trickles); later ones' from their first byte, so idle keep-alive time between
    requests stays governed by the idle timeout alone."""

    def __init__(self, idle_timeout_s: float, deadline_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.idle_timeout_s = idle_timeout_s
        self.deadline_s = deadline_s
        self.clock = clock
        self.started: float | None = clock()
        self.received = False  # any byte of the current request
        self.expired: Literal["deadline", "idle"] | None = None  # which limit a read ran into

    def next_request(self) -> None:
        """Between keep-alive requests: wait up to the idle timeout; the deadline starts with the next byte."""
        self.started, self.received, self.expired = None, False, None

    def read_timeout(self) -> tuple[float, Literal["deadline", "idle"]]:
        """The socket timeout for the next read and the limit it stands for; TimeoutError once past the deadline."""
        if self.started is None:
            return self.idle_timeout_s, "idle"
        left = self.started + self.deadline_s - self.clock()
        if left <= 0:
            self.expired = "deadline"
            raise TimeoutError(f"request deadline of {self.deadline_s:g} s passed")
        return (left, "deadline") if left < self.idle_timeout_s else (self.idle_timeout_s, "idle")

    def got_bytes(self) -> None:
        self.received = True
        if self.started is None:
            self.started = self.clock()


class DeadlineReader(socket.SocketIO):
    """A connection's read side that sets the socket timeout to the request's time left before every recv."""

    def __init__(self, sock: socket.socket, timer: RequestTimer) -> None:
        super().__init__(sock, "rb")
        self._conn = sock
        self.timer = timer

    def readinto(self, b: WriteableBuffer) -> int | None:
        timeout, limit = self.timer.read_timeout()
        self._conn.settimeout(timeout)
        try:
            n = super().readinto(b)
        except TimeoutError:
            self.timer.expired = limit
            raise
        if n:
            self.timer.got_bytes()
        return n
