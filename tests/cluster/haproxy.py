"""HAProxy in front of hub replicas, as a test process: deploy/haproxy.cfg itself with the test's addresses, ports
and files put in (as tests/ops does for mosquitto.conf), run in the foreground (`haproxy -db`), its per-server
state and counters read from its stats page (CSV)."""

from __future__ import annotations

import csv
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.support.broker import free_port, wait_port

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
DEPLOY_CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "haproxy.cfg"
EXAMPLE_CERT = "/etc/haproxy/certs/hub.pem"
EXAMPLE_SERVERS = "".join(f"    server hub{i} 10.0.0.1{i}:8080\n" for i in (1, 2, 3))
BACKEND = "hub"
# One `option httplog` line: client [date] frontend backend/server Tq/Tw/Tc/Tr/Tt status bytes cookies termination
# act/fe/be/srv/retries queues "request" (retries "+N": the request was redispatched to another server).
HTTPLOG = re.compile(
    r"\S+ \[[^]]+\] \S+ (?P<backend>[^/ ]+)/(?P<server>\S+) \S+ (?P<status>-?\d+) \S+ \S+ \S+ "
    r'(?P<termination>\S+) \d+/\d+/\d+/\d+/(?P<retries>\+?\d+) \S+ "(?P<method>\S+) (?P<path>\S+)'
)


@dataclass(frozen=True)
class Logged:
    """One request as HAProxy logged it."""

    server: str
    status: int
    termination: str  # "----" when nothing went wrong
    retries: int
    redispatched: bool
    method: str
    path: str


def with_cert(text: str, pem: Path) -> str:
    """The config with `pem` (certificate then key, as HAProxy reads them) for the example's certificate."""
    assert EXAMPLE_CERT in text, f"deploy/haproxy.cfg no longer has {EXAMPLE_CERT!r}: update tests/cluster/haproxy.py"
    return text.replace(EXAMPLE_CERT, str(pem))


def write_pem(cert: Path, key: Path, out: Path) -> Path:
    """One PEM file holding the certificate and its key (HAProxy's `crt`)."""
    out.write_bytes(cert.read_bytes() + key.read_bytes())
    return out


@dataclass
class HAProxy:
    """One `haproxy -db` process: HTTPS and plain HTTP (a redirect) on loopback, stats on a port of their own."""

    workdir: Path
    https_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    stats_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.https_port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "haproxy.log"

    def config(self, servers: dict[str, int], pem: Path) -> str:
        """deploy/haproxy.cfg for `servers` (name -> loopback port): logs to stdout, no chroot or user switch
        (a test runs as whoever runs it), every socket on loopback in `workdir` or on this object's ports."""
        text = with_cert(DEPLOY_CONFIG.read_text(), pem)
        lines = "".join(f"    server {name} 127.0.0.1:{port}\n" for name, port in servers.items())
        for old, new in (("    log /dev/log local0\n", "    log stdout format raw local0\n"),
                         ("    chroot /var/lib/haproxy\n", ""), ("    user haproxy\n", ""),
                         ("    group haproxy\n", ""),
                         ("/run/haproxy/admin.sock", str(self.workdir / "admin.sock")),
                         ("    bind :443 ", f"    bind 127.0.0.1:{self.https_port} "),
                         ("    bind :80\n", f"    bind 127.0.0.1:{self.http_port}\n"),
                         ("    bind 127.0.0.1:8404\n", f"    bind 127.0.0.1:{self.stats_port}\n"),
                         (EXAMPLE_SERVERS, lines)):  # fmt: skip
            assert old in text, f"deploy/haproxy.cfg no longer has {old!r}: update tests/cluster/haproxy.py"
            text = text.replace(old, new)
        return text

    def start(self, servers: dict[str, int], pem: Path) -> HAProxy:
        """Write the config, start HAProxy and wait until it listens and has checked every server."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        path = self.workdir / "haproxy.cfg"
        path.write_text(self.config(servers, pem))
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen([HAPROXY, "-db", "-f", str(path)], stdout=log, stderr=log)
        for port in (self.https_port, self.http_port, self.stats_port):
            try:
                wait_port("127.0.0.1", port)
            except TimeoutError as e:
                raise AssertionError(f"haproxy did not listen on {port}:\n{self.log_text()}") from e
        for name in servers:
            self.wait_status(name, "UP")
        return self

    def stats(self) -> dict[str, dict[str, str]]:
        """The `hub` backend's rows of the stats CSV: server name (and "BACKEND", the totals) -> column -> value."""
        r = httpx.get(f"http://127.0.0.1:{self.stats_port}/stats;csv", timeout=5)
        r.raise_for_status()
        rows = csv.DictReader(r.text.removeprefix("# ").splitlines())
        return {row["svname"]: row for row in rows if row["pxname"] == BACKEND and row["type"] in ("1", "2")}

    def wait_status(self, server: str, status: str, timeout: float = 15) -> float:
        """Wait until the stats say `server` is `status` (UP, DOWN); seconds it took."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            assert self.proc is not None and self.proc.poll() is None, self.log_text()
            if self.stats()[server]["status"].split(" ")[0] == status:
                return time.monotonic() - started
            time.sleep(0.02)
        raise AssertionError(f"{server} not {status} after {timeout}s: {self.stats()[server]}")

    def logged(self) -> list[Logged]:
        """Every request HAProxy has logged so far (it logs each one when it ends)."""
        found = [HTTPLOG.search(line) for line in self.log_path.read_text(errors="replace").splitlines()]
        return [Logged(m["server"], int(m["status"]), m["termination"], int(m["retries"].lstrip("+")),
                       m["retries"].startswith("+"), m["method"], m["path"]) for m in found if m]  # fmt: skip

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else ""

    def stop(self) -> None:
        """SIGTERM (HAProxy's hard stop: it exits at once), SIGKILL if it does not."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
