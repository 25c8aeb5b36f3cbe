"""Mosquitto password_file + acl_file: render, validate with a throwaway broker, replace, SIGHUP.

An invalid ACL on reload leaves Mosquitto running with NO ACL (FACTS.md), so a candidate is only
swapped in after a private `mosquitto -c` on a spare port has accepted it.
"""

from __future__ import annotations

import grp
import logging
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from hub.errors import BrokerConfigError

log = logging.getLogger(__name__)

HUB_USERNAME = "edgefleet-hub"


def render_acl(topic_root: str) -> str:
    """The hub may use the whole tree; every device only `{root}/devices/<its username>/#`."""
    return f"user {HUB_USERNAME}\ntopic readwrite {topic_root}/#\n\npattern readwrite {topic_root}/devices/%u/#\n"


def render_passwords(hashes: dict[str, str]) -> str:
    """`user:$7$...` lines, sorted for stable files."""
    for user in hashes:
        if ":" in user or "\n" in user:
            raise BrokerConfigError(f"invalid broker username {user!r}")
    return "".join(f"{u}:{h}\n" for u, h in sorted(hashes.items()))


class MosquittoAuth:
    """Owns the broker's password and ACL files; one writer at a time."""

    def __init__(
        self,
        *,
        password_file: Path,
        acl_file: Path,
        pid_file: Path | None,
        topic_root: str,
        binary: str = "/usr/sbin/mosquitto",
    ) -> None:
        self.password_file = password_file
        self.acl_file = acl_file
        self.pid_file = pid_file
        self.topic_root = topic_root
        self.binary = binary
        self._lock = threading.Lock()
        self._stale: str | None = None  # the stale pid_file content last warned about

    def apply(self, hashes: dict[str, str]) -> None:
        """Write candidates, validate them, swap them in and ask the broker to reload."""
        with self._lock:
            self.password_file.parent.mkdir(parents=True, exist_ok=True)
            cand_pw = _write_candidate(self.password_file, render_passwords(hashes))
            cand_acl = _write_candidate(self.acl_file, render_acl(self.topic_root))
            try:
                self._validate(cand_pw, cand_acl)
                os.replace(cand_pw, self.password_file)
                os.replace(cand_acl, self.acl_file)
            finally:
                cand_pw.unlink(missing_ok=True)
                cand_acl.unlink(missing_ok=True)
            for path in (self.password_file, self.acl_file):
                _broker_readable(path)
            self._reload()

    def _validate(self, password_file: Path, acl_file: Path) -> None:
        with tempfile.TemporaryDirectory(prefix="edgefleet-mosq-check-") as tmp:
            port = _free_port()
            conf = Path(tmp) / "check.conf"
            lines = [
                f"listener {port} 127.0.0.1",
                f"password_file {password_file}",
                f"acl_file {acl_file}",
                "persistence false",
                "log_dest stderr",
            ]
            if os.geteuid() == 0:
                lines.append("user root")
            conf.write_text("\n".join(lines) + "\n")
            proc = subprocess.Popen([self.binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            try:
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    if proc.poll() is not None:
                        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                        raise BrokerConfigError(
                            f"mosquitto refused the candidate auth files (exit {proc.returncode}): {err.strip()}"
                        )
                    try:
                        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                            return
                    except OSError:
                        time.sleep(0.02)
                raise BrokerConfigError("mosquitto did not start with the candidate auth files")
            finally:
                if proc.poll() is None:
                    proc.kill()  # a throwaway with no state worth a graceful shutdown
                    proc.wait()
                if proc.stderr:
                    proc.stderr.close()

    def _reload(self) -> None:
        """SIGHUP the broker named by `pid_file`. A pid file a stopped broker left behind (or one that holds no
        pid) is not an error of the accounts: the files are written, and a broker started later reads them; it
        is logged (once per pid) and the hub goes on."""
        if self.pid_file is None or not self.pid_file.exists():
            return
        text = self.pid_file.read_text().strip()
        try:
            os.kill(int(text), signal.SIGHUP)
        except (ValueError, ProcessLookupError) as e:
            what = "no process has that pid" if isinstance(e, ProcessLookupError) else "it holds no pid"
            if self._stale != text:
                self._stale = text
                log.warning(
                    "pid_file %s says %r but %s: the broker is not running (or writes another pid file); "
                    "the accounts are written and a broker started now reads them",
                    self.pid_file, text, what,
                )  # fmt: skip
            return
        except PermissionError as e:
            raise BrokerConfigError(f"cannot signal the broker (pid {text} from {self.pid_file}): {e}") from e
        self._stale = None


def _write_candidate(live: Path, content: str) -> Path:
    fd, tmp = tempfile.mkstemp(dir=live.parent, prefix=f".{live.name}.candidate.")
    with os.fdopen(fd, "w") as f:
        f.write(content)
        f.flush()
        os.fsync(f.fileno())
    _broker_readable(Path(tmp))
    return Path(tmp)


def _broker_readable(path: Path) -> None:
    """Group `mosquitto`, mode 0640 (mosquitto started as root reads its files as that user)."""
    os.chmod(path, 0o640)
    try:
        gid = grp.getgrnam("mosquitto").gr_gid
        os.chown(path, -1, gid)
    except (KeyError, PermissionError):
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
