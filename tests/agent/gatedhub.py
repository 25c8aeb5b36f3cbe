"""A second real HTTP server for a HubStub's TUF files that can be taken down: it answers 503 while `down`.

Every request is recorded with its arrival time (time.monotonic), so a test can measure when and how
often the agent retried — from the wire, not from the agent's internals.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import uvicorn
from starlette.types import Receive, Scope, Send

from tests.agent.hubstub import HubStub
from tests.agent.ports import listen_port
from tests.support.broker import wait_port


@dataclass(frozen=True)
class Arrival:
    """One request as the gate saw it."""

    at: float  # time.monotonic() when it arrived
    path: str
    refused: bool  # answered 503 (the gate was down)


class GatedHub:
    """Serves `hub`'s app (the same TUF repository and device token) on its own port, or 503 while `down`.

    Point devices at it with `hub.public_url = gate.url` before they enroll.
    """

    def __init__(self, hub: HubStub, *, down: bool = True) -> None:
        self.down = down
        self.arrivals: list[Arrival] = []
        self.port = listen_port()
        self._inner = hub.app()
        self._server: uvicorn.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._inner(scope, receive, send)
            return
        refused = self.down
        self.arrivals.append(Arrival(time.monotonic(), scope["path"], refused))
        if not refused:
            await self._inner(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": 503, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})

    def refused(self) -> list[Arrival]:
        return [a for a in self.arrivals if a.refused]

    def start(self) -> GatedHub:
        config = uvicorn.Config(self, host="127.0.0.1", port=self.port, log_level="error", lifespan="off")
        self._server = uvicorn.Server(config)
        threading.Thread(target=self._server.run, daemon=True).start()
        wait_port("127.0.0.1", self.port)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
