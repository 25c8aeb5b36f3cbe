"""`edgefleet demo --once` runs the stages that exist and reports them honestly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgefleet.cli import cli
from protocol import layout
from protocol.manifest import Manifest

pytestmark = [pytest.mark.slow]


def test_demo_once(tmp_path: Path) -> None:
    res = CliRunner().invoke(cli, ["demo", "--once", "--workdir", str(tmp_path)], terminal_width=200)
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "out" / layout.REPORT_JSON).read_text())
    for entry in report["profiles"]:
        m = Manifest.from_json((tmp_path / "out" / entry["profile"] / layout.MANIFEST_FILE).read_text())
        assert entry["chosen"] == m.kind
        # The table shows the converter's accuracy and the agent runtime's; both come from real runs.
        acc = f"{(m.report.chosen.accuracy or 0) * 100:.2f}%"
        row = next(line for line in res.output.splitlines() if entry["profile"] in line)
        assert row.count(acc) == 2, row
    assert "not yet:" in res.output
