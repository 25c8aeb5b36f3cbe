"""edgefleet.termination: SIGTERM / SIGHUP run a command's clean-up (as Ctrl-C does), and cannot cut it short."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.procs import alive

ROOT = Path(__file__).resolve().parents[1]

# A command that started a process: it must stop it however it is told to end.
COMMAND = """
import subprocess, sys, time
from edgefleet.termination import exit_on_termination, ignore_termination
exit_on_termination()
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
try:
    print(child.pid, flush=True)  # inside the try: the signal may come as soon as the pid is out
    time.sleep(120)
finally:
    ignore_termination()
    print("cleaning up", flush=True)
    time.sleep(1.0)  # a slow clean-up, during which a second signal arrives
    child.terminate()
    child.wait()
    print("cleaned up", flush=True)
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_termination_signal_runs_the_clean_up_and_a_second_one_does_not_cut_it_short(signum: int) -> None:
    proc = subprocess.Popen([sys.executable, "-c", COMMAND], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout is not None
    try:
        child = int(proc.stdout.readline())
        assert alive(child)
        proc.send_signal(signum)
        assert proc.stdout.readline().strip() == "cleaning up"
        proc.send_signal(signum)  # ignored while cleaning up
        out = proc.communicate(timeout=30)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signum
    assert "cleaned up" in out
    deadline = time.monotonic() + 5
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    if alive(child):
        os.kill(child, signal.SIGKILL)
        pytest.fail("the command's child outlived it")
