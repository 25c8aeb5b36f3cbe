"""SIGTERM and SIGHUP end a command that started processes the way Ctrl-C does: through its `finally`.

Python's default action for either signal ends the process on the spot, `finally` blocks unrun, so whatever
it started (the demo's hub, broker and agents, `simulate`'s shard processes) would be left running, orphaned.
`kill`, `timeout`, systemd stopping a unit and a closed terminal all send one of them.
"""

from __future__ import annotations

import signal
from types import FrameType

SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def _exit(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # the shell's convention: 143 for SIGTERM, 129 for SIGHUP


def exit_on_termination() -> None:
    """From now on SIGTERM / SIGHUP raise SystemExit(128 + signal) in the main thread."""
    for signum in SIGNALS:
        signal.signal(signum, _exit)


def ignore_termination() -> None:
    """While cleaning up: a second SIGTERM / SIGHUP must not cut the clean-up short (SIGKILL still does)."""
    for signum in SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
