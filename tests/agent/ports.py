"""Ports for test servers, below the kernel's ephemeral range.

A server started on a port from `free_port()` (an ephemeral port, 32768+) binds it a moment after
the port was picked; on a host with heavy connection churn (tens of thousands of sockets in
TIME_WAIT from other suites) an outgoing connection can take it in between, and the server dies
with "address already in use". Outgoing connections never use ports below the ephemeral range.
"""

from __future__ import annotations

import random
import socket

from tests.support.broker import free_port


def listen_port() -> int:
    """A currently free loopback port in 20000-32000 (ephemeral fallback after 200 tries)."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randint(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    return free_port()
