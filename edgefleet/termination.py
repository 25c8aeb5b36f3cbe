"""SIGTERM and SIGHUP end a command that started processes the way Ctrl-C does: through its `finally`.

Python's default action for either signal ends the process on the spot, `finally` blocks unrun, so whatever
it started (the demo's hub, broker and agents, `simulate`'s shard processes) would be left running, orphaned.
`kill`, `timeout`, systemd stopping a unit and a closed terminal all send one of them.

The exception a signal raises lands wherever the main thread happens to be; library code that unwinds it
can replace it with an error of its own (TensorFlow, signalled while it traces a graph, raises
`AssertionError: Nesting violated for default stack ...` from its context managers). `signalled()` says which
signal came, so a command can tell such an error for what it is: the signal.
"""

from __future__ import annotations

import signal
from types import FrameType

SIGNALS = (signal.SIGTERM, signal.SIGHUP)

_received: list[int] = []


def _exit(signum: int, _frame: FrameType | None) -> None:
    _received.append(signum)
    raise SystemExit(128 + signum)  # the shell's convention: 143 for SIGTERM, 129 for SIGHUP


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    _received.append(signum)
    raise KeyboardInterrupt  # as Python's own SIGINT handler, remembered


def exit_on_termination() -> None:
    """From now on SIGTERM / SIGHUP raise SystemExit(128 + signal) in the main thread, SIGINT KeyboardInterrupt
    as before; each is remembered for `signalled()`."""
    _received.clear()
    for signum in SIGNALS:
        signal.signal(signum, _exit)
    signal.signal(signal.SIGINT, _interrupt)


def signalled() -> int | None:
    """The first SIGTERM / SIGHUP / SIGINT since `exit_on_termination()`, or None."""
    return _received[0] if _received else None


def ignore_termination() -> None:
    """While cleaning up: a second SIGTERM / SIGHUP must not cut the clean-up short (SIGKILL still does)."""
    for signum in SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
