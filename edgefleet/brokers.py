"""A private Mosquitto on a free loopback port: the demo's embedded broker and the tests' real broker."""

from __future__ import annotations

import random
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A free loopback port below the kernel's ephemeral range (32768+).

    A port the kernel hands out for `bind(0)` is an ephemeral one: on a busy host an outgoing
    connection can take it between this check and the server's own bind. Outgoing connections never
    use ports below the ephemeral range, so servers started here pick from 20000-32000. A port is
    handed out once per process: two servers asking before either has bound never get the same one.
    """
    rng = random.Random()
    for _ in range(200):
        port = rng.randint(20000, 32000)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            _HANDED_OUT.add(port)
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(host: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")


@dataclass
class Broker:
    """A running mosquitto process; `restart()` keeps the port and config (and retained messages if persistent)."""

    workdir: Path
    port: int
    extra_conf: list[str] = field(default_factory=list)
    persistence: bool = True
    host: str = "127.0.0.1"
    proc: subprocess.Popen[bytes] | None = None

    @property
    def conf_path(self) -> Path:
        return self.workdir / "mosquitto.conf"

    @property
    def log_path(self) -> Path:
        return self.workdir / "mosquitto.log"

    def write_conf(self) -> None:
        lines = [
            f"listener {self.port} {self.host}",
            "allow_anonymous true" if not any("password_file" in x for x in self.extra_conf) else "",
            f"persistence {'true' if self.persistence else 'false'}",
            f"persistence_location {self.workdir}/",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "max_queued_messages 100000",
            # As root, keep root so the broker can read private (0700) work dirs.
            "user root" if _is_root() else "",
            *self.extra_conf,
        ]
        self.conf_path.write_text("\n".join(x for x in lines if x) + "\n")

    def start(self) -> Broker:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.write_conf()
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf_path)], stdout=log, stderr=log)
        try:
            wait_port(self.host, self.port)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"mosquitto did not start: {self.log_path.read_text()[-2000:]}") from None
        return self

    def stop(self, kill: bool = False) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self, kill: bool = False) -> None:
        self.stop(kill=kill)
        self.start()

    def reload(self) -> None:
        """SIGHUP: re-read password and ACL files."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)


def start_broker(workdir: Path, extra_conf: list[str] | None = None, persistence: bool = True) -> Broker:
    """Start mosquitto on a free port under `workdir`."""
    return Broker(workdir=workdir, port=free_port(), extra_conf=list(extra_conf or []), persistence=persistence).start()


def _is_root() -> bool:
    import os

    return os.geteuid() == 0
