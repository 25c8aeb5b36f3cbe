"""An attacker's probes against a real hub process (`edgefleet hub serve`, real Mosquitto, SQLite): each is
refused with its status before it costs the hub memory, disk or time, and /healthz answers throughout.

The hub runs with a 32 MiB upload cap and 2 s head/body deadlines so the probes are quick; every figure a
probe measures (time to refuse, RSS growth, bytes written) is printed (`pytest -s`) for the issue's note."""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import socket
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.hub.e2e import ADMIN_TOKEN, Fleet

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MB = 1024 * 1024
UPLOAD_CAP = 32 * MB
DEADLINE_S = 2.0
RSS_BUDGET = 30 * MB


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    workdir = tmp_path_factory.mktemp("probes")
    f = Fleet(workdir=workdir, root=f"probe{os.getpid()}", db_url=f"sqlite:///{workdir / 'hub' / 'hub.db'}")
    f.start_broker(max_upload_bytes=UPLOAD_CAP, header_timeout_s=DEADLINE_S, body_timeout_s=DEADLINE_S)
    (workdir / "tmp").mkdir()
    f.env["TMPDIR"] = str(workdir / "tmp")  # anything the hub spools to a temp file would land here
    f.start_hub()
    yield f
    f.stop()


class Watch:
    """Polls /healthz from its own connections while a probe runs; measures the hub's RSS and disk."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet, self.statuses = fleet, list[object]()
        self.proc = psutil.Process(fleet.proc.pid)  # type: ignore[union-attr]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                self.statuses.append(httpx.get(f"{self.fleet.url}/healthz", timeout=3).status_code)
            except httpx.HTTPError as e:
                self.statuses.append(repr(e))
            self._stop.wait(0.2)

    def __enter__(self) -> Watch:
        self.rss0, self.disk0, self.t0 = self.proc.memory_info().rss, self.disk(), time.monotonic()
        self.cpu0 = sum(self.proc.cpu_times()[:2])
        self._thread.start()
        while not self.statuses:  # the first answer is in before the probe starts
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def disk(self) -> int:
        """Bytes under the hub's data dir and its TMPDIR."""
        roots = [self.fleet.workdir / "hub", self.fleet.workdir / "tmp"]
        return sum(p.stat().st_size for r in roots for p in r.rglob("*") if p.is_file())

    def check(self, what: str) -> None:
        """/healthz said 200 every time; RSS grew < 30 MB; print the probe's figures."""
        self.statuses.append(httpx.get(f"{self.fleet.url}/healthz", timeout=3).status_code)  # and one after it
        rss = self.proc.memory_info().rss
        cpu = sum(self.proc.cpu_times()[:2]) - self.cpu0
        report({"probe": what, "rss_growth_mb": round((rss - self.rss0) / MB, 1),
                "disk_growth_bytes": self.disk() - self.disk0, "hub_cpu_s": round(cpu, 2),
                "healthz": sorted({str(s) for s in self.statuses}), "healthz_checks": len(self.statuses),
                "elapsed_s": round(time.monotonic() - self.t0, 2)})  # fmt: skip
        assert self.statuses and all(s == 200 for s in self.statuses), self.statuses
        assert rss - self.rss0 < RSS_BUDGET, f"{what}: RSS grew {(rss - self.rss0) / MB:.1f} MB"


def report(figures: dict[str, object]) -> None:
    """A probe's figures as one JSON line, for the issue's note (`pytest -s`)."""
    print(json.dumps(figures))  # noqa: T201


def connect(fleet: Fleet) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", fleet.port), timeout=15)
    return sock


def read_reply(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 reply (status, headers, body) read off the socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a reply head: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), headers, body[:length]


def closed_by_peer(sock: socket.socket, timeout_s: float = 10) -> bool:
    """The hub closed the connection (after whatever it still had to say) within `timeout_s`."""
    sock.settimeout(timeout_s)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        return False
    return True


def head(method: str, path: str, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: hub", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def send_chunked(sock: socket.socket, total: int, stop: threading.Event) -> int:
    """Send `total` bytes of chunked body until the peer stops reading; returns what went out."""
    chunk = b"x" * MB
    sent = 0
    try:
        while sent < total and not stop.is_set():
            sock.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
            sent += len(chunk)
        sock.sendall(b"0\r\n\r\n")
    except OSError:
        pass
    return sent


def refused_mid_stream(fleet: Fleet, method: str, path: str, headers: dict[str, str], total: int) -> tuple[int, bytes]:
    """Stream a chunked body of `total` bytes from a thread; the reply is read as it comes."""
    sock = connect(fleet)
    sock.sendall(head(method, path, {**headers, "Transfer-Encoding": "chunked"}))
    stop = threading.Event()
    sender = threading.Thread(target=send_chunked, args=(sock, total, stop), daemon=True)
    sender.start()
    try:
        status, _, body = read_reply(sock)
    finally:
        stop.set()
        sender.join(30)
        sock.close()
    return status, body


def test_anonymous_upload_is_refused_before_its_body(fleet: Fleet) -> None:
    """Probe 1: 1.5 GB multipart to /api/v1/models without a token: 401 from the head alone; 200 MB streamed
    anyway (chunked) is never read or written."""
    with Watch(fleet) as watch:
        sock = connect(fleet)
        sock.sendall(head("POST", "/api/v1/models", {
            "Content-Type": "multipart/form-data; boundary=x", "Content-Length": "1537211378"}))  # fmt: skip
        status, headers, body = read_reply(sock)
        assert status == 401 and headers["connection"] == "close", body
        assert b"bearer token required" in body
        sock.close()
        status, body = refused_mid_stream(
            fleet, "POST", "/api/v1/models", {"Content-Type": "multipart/form-data; boundary=x"}, 200 * MB
        )
        assert status == 401, body
        wrong = refused_mid_stream(
            fleet,
            "POST",
            "/api/v1/models",
            {"Content-Type": "multipart/form-data; boundary=x", "Authorization": "Bearer not-the-admin"},
            200 * MB,
        )
        assert wrong[0] == 401
        watch.check("anonymous 1.5 GB upload + 200 MB chunked")
        assert watch.disk() == watch.disk0


def test_admin_upload_over_the_cap_is_cut_while_streaming(fleet: Fleet) -> None:
    """The admin's own push: a declared size over max_upload_bytes is 413 before the body; a chunked one is
    cut at the cap and its partial folder removed."""
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "multipart/form-data; boundary=b"}
    with Watch(fleet) as watch:
        sock = connect(fleet)
        sock.sendall(head("POST", "/api/v1/models", {**auth, "Content-Length": str(UPLOAD_CAP + 1)}))
        status, _, body = read_reply(sock)
        sock.close()
        assert status == 413 and b"over this route's limit" in body, body
        part = b'--b\r\nContent-Disposition: form-data; name="archive"; filename="a.tar.gz"\r\n\r\n'
        sock = connect(fleet)
        sock.sendall(head("POST", "/api/v1/models", {**auth, "Transfer-Encoding": "chunked"}))
        sock.sendall(b"%x\r\n" % len(part) + part + b"\r\n")
        stop = threading.Event()
        sender = threading.Thread(target=send_chunked, args=(sock, 200 * MB, stop), daemon=True)
        sender.start()
        status, _, body = read_reply(sock)
        stop.set()
        sender.join(30)
        sock.close()
        assert status == 413, body
        watch.check("admin 200 MB chunked upload over a 32 MiB cap")
    assert not list((fleet.workdir / "hub").glob("edgefleet-push-*"))
    assert not list((fleet.workdir / "tmp").iterdir())


def test_huge_json_bodies_are_refused_without_reading_them(fleet: Fleet) -> None:
    """Probe 2: 500 MiB JSON to /api/v1/enroll (anonymous by design): 413 from Content-Length; 200 MB
    chunked: 413 once 1 MiB has arrived."""
    with Watch(fleet) as watch:
        sock = connect(fleet)
        sock.sendall(head("POST", "/api/v1/enroll", {"Content-Type": "application/json",
                                                     "Content-Length": str(500 * MB)}))  # fmt: skip
        status, _, body = read_reply(sock)
        sock.close()
        assert status == 413, body
        status, body = refused_mid_stream(fleet, "POST", "/api/v1/enroll", {"Content-Type": "application/json"},
                                          200 * MB)  # fmt: skip
        assert status == 413 and b"1048576" in body, body
        watch.check("500 MiB JSON enroll + 200 MB chunked")
        assert watch.disk() == watch.disk0


def test_absent_or_stalled_bodies_do_not_hold_connections(fleet: Fleet) -> None:
    """Probe 3: `Content-Length: 10000000000` and no body: 401 at once without a token, 413 at once with one
    (and on the anonymous enrollment route). A small declared body that never comes: 408 after
    body_timeout_s. Each time the connection is closed."""
    with Watch(fleet) as watch:
        for path, token, expected in (
            ("/api/v1/enrollment-tokens", None, 401),
            ("/api/v1/enrollment-tokens", ADMIN_TOKEN, 413),
            ("/api/v1/enroll", None, 413),
        ):
            sock = connect(fleet)
            auth = {"Authorization": f"Bearer {token}"} if token else {}
            sock.sendall(head("POST", path, {**auth, "Content-Length": "10000000000"}))
            status, headers, _ = read_reply(sock)
            assert status == expected and headers["connection"] == "close"
            assert closed_by_peer(sock)
            sock.close()
        sock = connect(fleet)
        sock.sendall(head("POST", "/api/v1/enroll", {"Content-Type": "application/json", "Content-Length": "1000"}))
        started = time.monotonic()
        status, _, body = read_reply(sock)
        waited = time.monotonic() - started
        assert status == 408 and b"stalled" in body, body
        assert closed_by_peer(sock)
        sock.close()
        report({"probe": "stalled body", "closed_after_s": round(waited, 2)})
        watch.check("absent and stalled bodies")


def test_slow_heads_and_idle_connections_are_cut(fleet: Fleet) -> None:
    """A head sent one byte per 0.5 s, and 100 connections that send nothing: all closed once
    header_timeout_s has passed (408 for the started head); /healthz answers meanwhile."""
    with Watch(fleet) as watch:
        idle = [connect(fleet) for _ in range(100)]
        slow = connect(fleet)
        started = time.monotonic()
        reply = b""
        for byte in b"GET /healthz HTTP/1.1\r\nHost: hub\r\nX-Slow: " + b"a" * 40:
            try:
                slow.sendall(bytes([byte]))
            except OSError:
                break
            slow.settimeout(0.5)
            try:
                reply = slow.recv(4096)
            except TimeoutError:
                continue
            break
        cut_after = time.monotonic() - started
        assert reply.startswith(b"HTTP/1.1 408"), reply
        assert all(closed_by_peer(s) for s in idle)
        for s in [*idle, slow]:
            s.close()
        report({"probe": "slow head", "cut_after_s": round(cut_after, 2)})
        watch.check("slow head + 100 idle connections")
    assert cut_after < 6 * DEADLINE_S  # the 40-byte head would need 30 s at this pace


def test_header_floods_are_refused(fleet: Fleet) -> None:
    """One 64 KiB header, and 2,000 small ones: 431 and closed (the head is capped at 16 KiB)."""
    with Watch(fleet) as watch:
        for headers in ({"X-Big": "a" * 64 * 1024}, {f"X-H{i}": "v" * 20 for i in range(2000)}):
            sock = connect(fleet)
            with contextlib.suppress(OSError):  # the hub may close before the whole flood is written
                sock.sendall(head("GET", "/healthz", headers))
            status, _, _ = read_reply(sock)
            assert status == 431
            assert closed_by_peer(sock)
            sock.close()
        watch.check("header floods")


def test_request_smuggling_with_both_framings_is_refused(fleet: Fleet) -> None:
    """Content-Length and Transfer-Encoding together: 400, the connection closed, and the request hidden in
    the body (an admin call a proxy reading Content-Length would pass on) never runs."""
    smuggled = head("POST", "/api/v1/enrollment-tokens", {"Authorization": f"Bearer {ADMIN_TOKEN}",
                                                          "Content-Length": "2"}) + b"{}"  # fmt: skip
    body = b"0\r\n\r\n" + smuggled
    tokens_before = fleet.api("GET", "/api/v1/audit").text.count("token.create")
    sock = connect(fleet)
    sock.sendall(head("POST", "/api/v1/enroll", {"Content-Length": str(len(body)), "Transfer-Encoding": "chunked",
                                                 "Content-Type": "application/json"}) + body)  # fmt: skip
    status, _, reply = read_reply(sock)
    assert status == 400 and b"Transfer-Encoding" in reply
    assert closed_by_peer(sock)
    sock.close()
    assert fleet.api("GET", "/api/v1/audit").text.count("token.create") == tokens_before


def _bomb(declared: int) -> bytes:
    """A 4 GiB-expanding tar.gz a few MB long: one header declaring `declared` bytes, then zeros, as
    concatenated gzip members (decoders read them all)."""
    info = tarfile.TarInfo("rpi/model.tflite")
    info.size = declared
    header = info.tobuf(format=tarfile.GNU_FORMAT)
    zeros = gzip.compress(b"\0" * (64 * MB), compresslevel=9)
    return gzip.compress(header) + zeros * (declared // (64 * MB))


def test_decompression_bomb_is_refused_at_its_first_header(fleet: Fleet) -> None:
    """Probe 8: a tar.gz of a few MB expanding to 4 GiB: 422 naming the cap, without inflating it."""
    bomb = _bomb(4 * 1024 * MB)
    assert len(bomb) < UPLOAD_CAP
    with Watch(fleet) as watch:
        r = fleet.api("POST", "/api/v1/models", files={"archive": ("bomb.tar.gz", bomb)})
        assert r.status_code == 422 and "expands beyond" in r.json()["detail"], r.text
        report({"probe": "gzip bomb", "compressed_bytes": len(bomb)})
        watch.check("4 GiB gzip bomb")
    assert not list((fleet.workdir / "hub").glob("edgefleet-push-*"))


def test_many_small_members_stop_at_the_cap(fleet: Fleet) -> None:
    """Members whose sizes only add up past the cap are refused at the member that crosses it."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for i in range(40):
            data = bytes(MB)
            info = tarfile.TarInfo(f"rpi/part{i}.bin")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    r = fleet.api("POST", "/api/v1/models", files={"archive": ("parts.tar.gz", buf.getvalue())})
    assert r.status_code == 422 and "part32.bin" in r.json()["detail"], r.text


def test_reserved_device_ids_are_refused(fleet: Fleet) -> None:
    """Probe 7: `edgefleet-hub` is the hub's own broker account: 422 naming the rule, token not used up."""
    token = fleet.api("POST", "/api/v1/enrollment-tokens", json={}).json()["token"]
    for device_id in ("edgefleet-hub", "EdgeFleet-replica-2"):
        r = httpx.post(
            f"{fleet.url}/api/v1/enroll",
            json={"enrollment_token": token, "profile": "raspberry_pi_4", "device_id": device_id},
        )
        assert r.status_code == 422 and "reserved" in r.json()["detail"], r.text
    r = httpx.post(
        f"{fleet.url}/api/v1/enroll",
        json={"enrollment_token": token, "profile": "raspberry_pi_4", "device_id": "cam-1"},
    )
    assert r.status_code == 201, r.text


def test_secrets_and_database_are_owner_only(fleet: Fleet) -> None:
    """Probe 9: data dir 0700; hub.db (and its WAL), admin token, broker password and TUF keys 0600."""
    data = fleet.workdir / "hub"
    assert data.stat().st_mode & 0o777 == 0o700
    for name in ("hub.db", "hub.db-wal", "admin_token", "mqtt_hub_password"):
        path = data / name
        if path.exists() or name != "hub.db-wal":
            assert path.stat().st_mode & 0o777 == 0o600, name
    for key in (data / "tuf" / "keys").glob("*.pem"):
        assert key.stat().st_mode & 0o777 == 0o600, key


def test_a_push_killed_mid_upload_is_cleaned_at_start(tmp_path: Path) -> None:
    """Probe 6: kill -9 while a push streams in leaves `edgefleet-push-*`; the next start removes it and says
    how much."""
    f = Fleet(workdir=tmp_path, root=f"kill{os.getpid()}", db_url=f"sqlite:///{tmp_path / 'hub' / 'hub.db'}")
    f.start_broker()
    f.start_hub()
    try:
        sock = connect(f)
        sock.sendall(head("POST", "/api/v1/models", {"Authorization": f"Bearer {ADMIN_TOKEN}",
                     "Content-Type": "multipart/form-data; boundary=b", "Transfer-Encoding": "chunked"}))  # fmt: skip
        part = b'--b\r\nContent-Disposition: form-data; name="archive"; filename="a.tar.gz"\r\n\r\n' + bytes(MB)
        for _ in range(20):
            sock.sendall(b"%x\r\n" % len(part) + part + b"\r\n")
            part = bytes(MB)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            left = list((tmp_path / "hub").glob("edgefleet-push-*"))
            if left and sum(p.stat().st_size for p in left[0].rglob("*") if p.is_file()) >= 20 * MB:
                break
            time.sleep(0.1)
        assert left, "the push never reached the data dir"
        f.kill_hub()
        sock.close()
        assert list((tmp_path / "hub").glob("edgefleet-push-*"))
        f.start_hub()
        assert not list((tmp_path / "hub").glob("edgefleet-push-*"))
        log = (tmp_path / "hub.log").read_text()
        assert "start-up: removed 1 leftovers of an interrupted run" in log and "(21.0 MB)" in log, log[-2000:]
    finally:
        f.stop()
