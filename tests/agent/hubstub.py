"""A minimal real hub for agent tests: enrollment + TUF files over HTTP (uvicorn, Range via StaticFiles).

It is a stand-in for the hub issue's API: the same paths and payloads (protocol.http), a real
`hub.tuf_repo.TufRepository` underneath, served by a real HTTP server on a free loopback port.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from hub.tuf_repo import TufRepository
from protocol.http import ENROLL_PATH, EnrollRequest, EnrollResponse, MqttCredentials, artifact_target, manifest_target
from protocol.manifest import Manifest
from tests.agent.ports import listen_port
from tests.support.broker import wait_port

TOKEN = "device-token-123"
ENROLL_TOKEN = "enroll-me-please"


@dataclass
class HubStub:
    """TUF repository + enrollment served over real HTTP."""

    repo: TufRepository
    mqtt_port: int
    port: int = field(default_factory=listen_port)
    requests: list[str] = field(default_factory=list)
    server: uvicorn.Server | None = None
    mqtt_username: str = ""
    mqtt_password: str = ""
    public_url: str | None = None  # what enrollment tells devices (e.g. a proxy in front of this server)
    mqtt_tls: bool = False  # what enrollment tells devices: the broker's listener is TLS
    tls_files: tuple[Path, Path] | None = None  # (certificate, key): serve HTTPS
    revoked: bool = False  # answer every /tuf/ request with 401, as for a device whose token was revoked

    @property
    def url(self) -> str:
        return f"{'https' if self.tls_files else 'http'}://127.0.0.1:{self.port}"

    def app(self) -> Starlette:
        async def enroll(request: Request) -> Response:
            body = EnrollRequest.from_json(await request.body())
            if body.enrollment_token != ENROLL_TOKEN:
                return JSONResponse({"error": "bad enrollment token"}, status_code=401)
            resp = EnrollResponse(
                device_id=body.device_id or "dev-1",
                device_token=TOKEN,
                mqtt=MqttCredentials(
                    host="127.0.0.1",
                    port=self.mqtt_port,
                    username=self.mqtt_username,
                    password=self.mqtt_password,
                    tls=self.mqtt_tls,
                ),
                hub_url=self.public_url or self.url,
                tuf_root=self.repo.root_bytes().decode(),
            )
            return Response(resp.to_bytes(), media_type="application/json")

        class Auth(BaseHTTPMiddleware):
            async def dispatch(inner, request: Request, call_next: RequestResponseEndpoint) -> Response:
                self.requests.append(f"{request.method} {request.url.path} {request.headers.get('range', '')}")
                authorized = request.headers.get("authorization") == f"Bearer {TOKEN}" and not self.revoked
                if request.url.path.startswith("/tuf/") and not authorized:
                    return JSONResponse({"error": "unauthorized"}, status_code=401)
                return await call_next(request)

        app = Starlette(
            routes=[
                Route(ENROLL_PATH, enroll, methods=["POST"]),
                Mount("/tuf/metadata", StaticFiles(directory=self.repo.metadata_dir)),
                Mount("/tuf/targets", StaticFiles(directory=self.repo.targets_dir)),
            ]
        )
        app.add_middleware(Auth)
        return app

    def start(self) -> HubStub:
        cert, key = self.tls_files or (None, None)
        config = uvicorn.Config(self.app(), host="127.0.0.1", port=self.port, log_level="error", lifespan="off",
                                ssl_certfile=cert, ssl_keyfile=key)  # fmt: skip
        self.server = uvicorn.Server(config)
        threading.Thread(target=self.server.run, daemon=True).start()
        wait_port("127.0.0.1", self.port)
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
            time.sleep(0.05)

    def publish(self, manifest: Manifest, artifact: Path, *, target_profile: str | None = None) -> str:
        """Sign manifest + artifact as TUF targets; returns the manifest target path."""
        profile = target_profile or manifest.profile
        mt = manifest_target(manifest.name, manifest.version, profile)
        at = artifact_target(manifest.name, manifest.version, profile, manifest.artifact.file)
        self.repo.add_targets({mt: manifest.to_bytes(), at: artifact})
        return mt
