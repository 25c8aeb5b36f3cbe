"""Downloader against a real HTTP server: resume through a connection-cutting proxy, cap, retry, lengths."""

from __future__ import annotations

import hashlib
import random
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

from agent.download import Downloader, RetryPolicy
from agent.errors import DigestMismatch, DownloadError
from tests.agent.ports import listen_port
from tests.agent.proxy import CuttingProxy
from tests.support.broker import free_port, wait_port

pytestmark = pytest.mark.integration
SIZE = 300_000


@pytest.fixture
def file_server(tmp_path: Path) -> Iterator[tuple[int, bytes]]:
    """A real uvicorn + StaticFiles server (answers Range with 206) serving one random file."""
    payload = random.Random(7).randbytes(SIZE)
    (tmp_path / "srv").mkdir()
    (tmp_path / "srv" / "blob.bin").write_bytes(payload)
    port = listen_port()
    app = Starlette(routes=[Mount("/", StaticFiles(directory=tmp_path / "srv"))])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", lifespan="off"))
    threading.Thread(target=server.run, daemon=True).start()
    wait_port("127.0.0.1", port)
    yield port, payload
    server.should_exit = True


class FakeTime:
    """An injectable clock whose sleep advances it (no real waiting)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s


def test_resumes_through_cut_connections(tmp_path: Path, file_server: tuple[int, bytes]) -> None:
    port, payload = file_server
    proxy = CuttingProxy(port, cut_after=70_000)
    ranges: list[str] = []

    def log_request(request: httpx.Request) -> None:
        ranges.append(request.headers.get("range", ""))

    fake = FakeTime()
    with httpx.Client(timeout=5, event_hooks={"request": [log_request]}) as client:
        downloader = Downloader(client, retry=RetryPolicy(attempts=3, rng=random.Random(1)), sleep=fake.sleep)
        part = downloader.fetch(f"http://127.0.0.1:{proxy.port}/blob.bin", tmp_path / "blob.part", SIZE)
    proxy.close()
    assert hashlib.sha256(part.read_bytes()).digest() == hashlib.sha256(payload).digest()
    assert proxy.cuts >= 4 and len(ranges) >= 5
    assert ranges[0] == "" and all(r.startswith("bytes=") for r in ranges[1:])
    starts = [int(r.removeprefix("bytes=").rstrip("-")) for r in ranges[1:]]
    assert starts == sorted(starts) and starts[0] > 0


def test_resume_after_restart_uses_range(tmp_path: Path, file_server: tuple[int, bytes]) -> None:
    port, payload = file_server
    part = tmp_path / "blob.part"
    part.write_bytes(payload[:123_456])
    seen: list[str] = []
    with httpx.Client(event_hooks={"request": [lambda r: seen.append(r.headers.get("range", ""))]}) as client:
        Downloader(client).fetch(f"http://127.0.0.1:{port}/blob.bin", part, SIZE)
    assert seen == ["bytes=123456-"]
    assert part.read_bytes() == payload


def test_bandwidth_cap_paces_the_download(tmp_path: Path, file_server: tuple[int, bytes]) -> None:
    port, _ = file_server
    fake = FakeTime()
    with httpx.Client() as client:
        Downloader(client, bandwidth_bps=100_000, sleep=fake.sleep, clock=fake.clock).fetch(
            f"http://127.0.0.1:{port}/blob.bin", tmp_path / "b.part", SIZE
        )
    assert SIZE / 100_000 * 0.9 <= fake.now <= SIZE / 100_000 * 1.1  # simulated seconds, not wall time


def test_wrong_lengths_are_digest_mismatch(tmp_path: Path, file_server: tuple[int, bytes]) -> None:
    port, _ = file_server
    with httpx.Client() as client, pytest.raises(DigestMismatch, match="more than the signed length"):
        Downloader(client).fetch(f"http://127.0.0.1:{port}/blob.bin", tmp_path / "a.part", SIZE - 1)
    with httpx.Client() as client, pytest.raises(DigestMismatch, match=f"the signed length is {SIZE + 5}"):
        Downloader(client).fetch(f"http://127.0.0.1:{port}/blob.bin", tmp_path / "b.part", SIZE + 5)


def test_unreachable_server_retries_with_jittered_backoff_then_gives_up(tmp_path: Path) -> None:
    fake = FakeTime()
    policy = RetryPolicy(attempts=5, base_s=0.5, cap_s=4.0, rng=random.Random(3))
    with (
        httpx.Client(timeout=httpx.Timeout(1.0, connect=0.5)) as client,
        pytest.raises(DownloadError, match="5 failed"),
    ):
        Downloader(client, retry=policy, sleep=fake.sleep).fetch(
            f"http://127.0.0.1:{free_port()}/x", tmp_path / "x.part", 10
        )
    assert len(fake.sleeps) == 4
    assert all(0 <= s <= min(4.0, 0.5 * 2**i) for i, s in enumerate(fake.sleeps))
    assert len(set(fake.sleeps)) == 4  # jittered, not a fixed schedule


def test_a_failure_streak_is_given_up_only_after_the_retry_window_too(tmp_path: Path) -> None:
    # 3 attempts would be spent in well under a second; the 120 s window keeps retrying (capped at 30 s pauses)
    # so a link that is away for minutes delays the update instead of failing it.
    fake = FakeTime()
    policy = RetryPolicy(attempts=3, base_s=0.5, cap_s=30.0, window_s=120.0, rng=random.Random(5))
    with httpx.Client(timeout=httpx.Timeout(1.0, connect=0.5)) as client, pytest.raises(DownloadError) as caught:
        Downloader(client, retry=policy, sleep=fake.sleep, clock=fake.clock).fetch(
            f"http://127.0.0.1:{free_port()}/x", tmp_path / "x.part", 10
        )
    failures = len(fake.sleeps) + 1
    assert f"after {failures} failed attempts" in str(caught.value)
    assert failures > 3 and sum(fake.sleeps) >= 120.0
    assert sum(fake.sleeps[:-1]) < 120.0  # gave up at the first failure past the window, not later
    assert max(fake.sleeps) <= 30.0


def test_a_link_that_comes_back_within_the_window_completes_the_download(
    tmp_path: Path, file_server: tuple[int, bytes]
) -> None:
    port, blob = file_server
    down = {"left": 12}  # twelve refused requests (more than `attempts`), then the server answers

    class Flaky(httpx.HTTPTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            if down["left"] > 0:
                down["left"] -= 1
                raise httpx.ConnectError("connection refused (simulated link down)", request=request)
            return super().handle_request(request)

    fake = FakeTime()
    policy = RetryPolicy(attempts=4, base_s=0.5, cap_s=10.0, window_s=300.0, rng=random.Random(2))
    told: list[tuple[int, float]] = []
    with httpx.Client(transport=Flaky()) as client:
        part = Downloader(
            client, retry=policy, sleep=fake.sleep, clock=fake.clock, on_retry=lambda n, d, _e: told.append((n, d))
        ).fetch(f"http://127.0.0.1:{port}/blob.bin", tmp_path / "y.part", SIZE)
    assert part.read_bytes() == blob and len(fake.sleeps) == 12 and down["left"] == 0
    assert told == list(zip(range(1, 13), fake.sleeps, strict=True))  # each pause announced before it is taken


def test_backoff_delay_does_not_overflow_after_days_of_failures() -> None:
    policy = RetryPolicy(base_s=0.5, cap_s=60.0, rng=random.Random(1))
    assert 0 <= policy.delay(5000) <= 60.0


def test_a_stop_ends_the_download_at_once_and_keeps_what_arrived(
    tmp_path: Path, file_server: tuple[int, bytes]
) -> None:
    from agent.errors import Interrupted

    port, payload = file_server
    part = tmp_path / "b.part"
    stop = threading.Event()
    seen: list[int] = []

    def progress(written: int, _length: int, _resumed: bool) -> None:
        seen.append(written)
        if written >= 100_000:
            stop.set()  # e.g. SIGTERM while the download runs

    with httpx.Client() as client:
        downloader = Downloader(client, stopping=stop.is_set)
        with pytest.raises(Interrupted, match="mid-download at byte"):
            downloader.fetch(f"http://127.0.0.1:{port}/blob.bin", part, SIZE, on_progress=progress)
    kept = part.read_bytes()
    assert 100_000 <= len(kept) < SIZE and kept == payload[: len(kept)] and len(kept) == seen[-1]
    with httpx.Client() as client:  # the next start resumes from there
        Downloader(client).fetch(f"http://127.0.0.1:{port}/blob.bin", part, SIZE)
    assert part.read_bytes() == payload


def test_a_stop_ends_a_capped_download_s_pause(tmp_path: Path, file_server: tuple[int, bytes]) -> None:
    """The bandwidth cap's pauses go through `sleep`: a stop during one interrupts it (the agent's wait)."""
    from agent.errors import Interrupted

    port, _ = file_server
    pauses: list[float] = []

    def sleep(seconds: float) -> None:
        pauses.append(seconds)
        raise Interrupted("agent stopping mid-download")  # what DeviceSteps' sleep does once stop is set

    with httpx.Client() as client, pytest.raises(Interrupted):
        Downloader(client, bandwidth_bps=10_000, sleep=sleep).fetch(
            f"http://127.0.0.1:{port}/blob.bin", tmp_path / "c.part", SIZE
        )
    assert len(pauses) == 1 and (tmp_path / "c.part").stat().st_size < SIZE
