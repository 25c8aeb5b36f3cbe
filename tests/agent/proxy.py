"""Small TCP proxies for a flaky network, for real: one cuts every connection after N bytes, one flaps."""

from __future__ import annotations

import contextlib
import random
import socket
import threading

from tests.agent.ports import listen_port


class CuttingProxy:
    """Forwards 127.0.0.1:port -> 127.0.0.1:target; closes each connection after `cut_after` bytes downstream."""

    def __init__(self, target_port: int, cut_after: int | None) -> None:
        self.target_port = target_port
        self.cut_after = cut_after
        self.port = listen_port()
        self.connections = 0
        self.cuts = 0
        self._server = socket.create_server(("127.0.0.1", self.port))
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._stop.set()
        self._server.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            self.connections += 1
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            threading.Thread(target=self._pipe, args=(client, upstream, None), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, self.cut_after), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, limit: int | None) -> None:
        sent = 0
        try:
            while True:
                data = src.recv(16384)
                if not data:
                    break
                if limit is not None and sent + len(data) >= limit:
                    dst.sendall(data[: limit - sent])
                    self.cuts += 1
                    break
                dst.sendall(data)
                sent += len(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()


class FlappingProxy:
    """Forwards 127.0.0.1:port -> 127.0.0.1:target over a link that keeps going down.

    While `flapping`, the link is up for `up_s` seconds, then down for `down_s` (each drawn at random):
    going down cuts every open connection and closes the listening socket, so new connections are
    refused until it comes back. While up, a connection is cut after a random number of bytes with
    probability `cut_share`. `steady()` stops the flapping and forwards everything (the calm phases).
    """

    def __init__(
        self,
        target_port: int,
        *,
        up_s: tuple[float, float] = (1.0, 2.0),
        down_s: tuple[float, float] = (0.5, 1.5),
        cut_share: float = 0.3,
        cut_bytes: tuple[int, int] = (512, 64 * 1024),
        seed: int = 0,
    ) -> None:
        self.target_port = target_port
        self.up_s, self.down_s = up_s, down_s
        self.cut_share, self.cut_bytes = cut_share, cut_bytes
        self.port = listen_port()
        self.connections = 0  # accepted
        self.cuts = 0  # connections cut mid-way (by a byte budget or by the link going down)
        self.downs = 0  # times the link went down
        self.bytes = 0  # forwarded, both directions
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._live: set[socket.socket] = set()
        self._up = threading.Event()
        self._up.set()
        self._flapping = threading.Event()
        self._stop = threading.Event()
        self._server: socket.socket | None = self._listen()
        self._threads = [
            threading.Thread(target=self._accept, name="proxy-accept", daemon=True),
            threading.Thread(target=self._flap, name="proxy-flap", daemon=True),
        ]
        for t in self._threads:
            t.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start_flapping(self) -> None:
        self._flapping.set()

    def steady(self) -> None:
        """Stop flapping and bring the link up (it stays up)."""
        self._flapping.clear()
        self._up.set()

    def close(self) -> None:
        self._stop.set()
        self._flapping.set()  # wake the flapper so it can see the stop
        self._cut_all()
        for t in self._threads:
            t.join(5)
        if self._server is not None:
            self._server.close()

    # ---- threads -----------------------------------------------------------------------------
    def _listen(self) -> socket.socket | None:
        try:
            server = socket.create_server(("127.0.0.1", self.port))
        except OSError:
            return None  # the port is still busy: the accept loop tries again
        server.settimeout(0.1)
        return server

    def _flap(self) -> None:
        while not self._stop.is_set():
            self._flapping.wait()
            if self._stop.wait(self._rng.uniform(*self.up_s)) or not self._flapping.is_set():
                continue
            self._up.clear()
            self.downs += 1
            self._cut_all()
            self._stop.wait(self._rng.uniform(*self.down_s))
            self._up.set()

    def _accept(self) -> None:
        while not self._stop.is_set():
            if not self._up.is_set():
                if self._server is not None:
                    self._server.close()  # connection refused until the link is back
                    self._server = None
                self._stop.wait(0.05)
                continue
            if self._server is None:
                self._server = self._listen()
                if self._server is None:
                    self._stop.wait(0.05)
                    continue
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                self._stop.wait(0.05)
                continue
            client.settimeout(None)
            self.connections += 1
            if not self._up.is_set():  # went down while this one waited in the backlog
                self._close_pair(client)
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            budget = self._rng.randint(*self.cut_bytes) if self._flapping.is_set() and (
                self._rng.random() < self.cut_share) else None  # fmt: skip
            shared = [budget]
            with self._lock:
                self._live.update((client, upstream))
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(src, dst, shared), name="proxy-pipe", daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, budget: list[int | None]) -> None:
        """Copy src -> dst; `budget` (shared by both directions) is the bytes left before the cut."""
        try:
            while not self._stop.is_set():
                data = src.recv(16384)
                if not data:
                    break
                with self._lock:
                    left = budget[0]
                    if left is not None:
                        data = data[:left]
                        budget[0] = left - len(data)
                    self.bytes += len(data)
                    cut = budget[0] is not None and budget[0] <= 0
                    if cut:
                        self.cuts += 1
                if data:
                    dst.sendall(data)
                if cut:
                    break
        except OSError:
            pass
        finally:
            self._close_pair(src, dst)

    def _cut_all(self) -> None:
        with self._lock:
            live, self._live = list(self._live), set()
            self.cuts += len(live) // 2
        for s in live:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def _close_pair(self, *sockets: socket.socket) -> None:
        with self._lock:
            self._live.difference_update(sockets)
        for s in sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
