"""A replica killed mid-push leaves no half version (issue 19): the push streams into replica A, A is killed
with SIGKILL, and through replica B the registry has no trace of that version; pushing it again through B
stores it whole, and its artifact downloads with the signed hash."""

from __future__ import annotations

import hashlib
import socket
import time
from pathlib import Path

import pytest

from tests.cluster.replicas import ADMIN_TOKEN, Cluster
from tests.hub.support import tar_gz, write_folder

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.postgres]
MB = 1024 * 1024


def test_a_replica_killed_mid_push_leaves_no_half_version(tmp_path: Path, pg_url: str, unique_root: str) -> None:
    cluster = Cluster(workdir=tmp_path, root=unique_root, db_url=pg_url)
    cluster.start_broker()
    try:
        cluster.start(2)
        a, b = cluster.replicas
        folder = write_folder(tmp_path / "out", "digits", 1, ["raspberry_pi_4"], payload=bytes(8 * MB))
        archive = tar_gz(folder)
        boundary = b"edgefleet-boundary"
        part = (b"--" + boundary + b'\r\nContent-Disposition: form-data; name="archive"; filename="o.tar.gz"\r\n'
                b"Content-Type: application/gzip\r\n\r\n")  # fmt: skip
        body = part + archive + b"\r\n--" + boundary + b"--\r\n"
        sock = socket.create_connection(("127.0.0.1", a.port), timeout=10)
        sock.sendall(b"POST /api/v1/models HTTP/1.1\r\nHost: hub\r\nAuthorization: Bearer " + ADMIN_TOKEN.encode()
                     + b"\r\nContent-Type: multipart/form-data; boundary=" + boundary
                     + b"\r\nContent-Length: %d\r\n\r\n" % len(body))  # fmt: skip
        sock.sendall(body[: len(body) // 2])  # half the upload is in A's data dir when it dies
        deadline = time.monotonic() + 20
        while not list(cluster.data_dir.glob("edgefleet-push-*")) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert list(cluster.data_dir.glob("edgefleet-push-*")), "the push never reached the data dir"
        cluster.kill(a)
        sock.close()

        assert cluster.api("GET", "/api/v1/models", b).json() == []  # no row, no half version
        r = cluster.push("digits", 1, ["raspberry_pi_4"], replica=b)
        assert r.status_code == 201, r.text
        stored = r.json()["stored"]
        assert [(m["name"], m["version"], m["profile"]) for m in stored] == [("digits", 1, "raspberry_pi_4")]
        artifact = (tmp_path / "out-digits-1" / "raspberry_pi_4" / "model.tflite").read_bytes()  # what push sent
        assert stored[0]["artifact_sha256"] == hashlib.sha256(artifact).hexdigest()
        assert "Traceback" not in b.log_path.read_text()
    finally:
        cluster.stop()
