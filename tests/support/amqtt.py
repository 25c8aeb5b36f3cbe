"""amqtt, a real MQTT broker that speaks only 3.1.1 (`make setup` installs it into .venv-amqtt)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.broker import free_port, wait_port

AMQTT = Path(os.environ.get("EDGEFLEET_TEST_AMQTT", Path(__file__).resolve().parents[2] / ".venv-amqtt/bin/amqtt"))


@contextmanager
def amqtt_broker(workdir: Path) -> Iterator[int]:
    """Run amqtt on a free loopback port (anonymous access) for the block; yields the port."""
    assert AMQTT.exists(), f"{AMQTT} missing: run `make setup` (it installs amqtt into .venv-amqtt)"
    port = free_port()
    conf = workdir / "amqtt.yaml"
    conf.write_text(
        f"listeners:\n  default:\n    type: tcp\n    bind: 127.0.0.1:{port}\nplugins:\n"
        "  amqtt.plugins.authentication.AnonymousAuthPlugin:\n    allow_anonymous: true\n"
    )
    with (workdir / "amqtt.log").open("wb") as log:
        proc = subprocess.Popen([str(AMQTT), "-c", str(conf)], stdout=log, stderr=log)
    try:
        wait_port("127.0.0.1", port)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)
