"""`edgefleet --help`: every command listed with a one-line description, without importing any of them."""

from __future__ import annotations

import subprocess
import sys

from edgefleet.cli import LAZY_COMMANDS, SUMMARIES


def test_every_command_has_a_one_line_summary() -> None:
    assert set(SUMMARIES) == set(LAZY_COMMANDS)
    assert all(s.endswith(".") and "\n" not in s and len(s) <= 100 for s in SUMMARIES.values())


def test_help_lists_each_command_with_its_summary_and_imports_none_of_them() -> None:
    code = (
        "import sys; from click.testing import CliRunner; from edgefleet.cli import cli;"
        "out = CliRunner().invoke(cli, ['--help'], terminal_width=200).output; print(out);"
        "heavy = ('hub.cli', 'agent.cli', 'converter.cli', 'hub.ops_cli');"
        "print('IMPORTED', sorted(m for m in heavy if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    for name, summary in SUMMARIES.items():
        assert any(line.split() == [name, *summary.split()] for line in out.splitlines()), (name, out)
    assert "IMPORTED []" in out
