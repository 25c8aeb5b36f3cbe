"""`edgefleet demo`: play the chain on this machine with embedded defaults.

Runs the stages that exist today — train on the bundled digits data, convert for two firmware
profiles with verification, run the chosen artifacts with the agent's in-process runtime — and
says plainly which stages are not built yet.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import click
import numpy as np
from rich.console import Console
from rich.table import Table

DEMO_PROFILES = ("raspberry_pi_4", "x86_gateway")
NOT_YET = (
    "hub + TUF-signed distribution, MQTT rollouts in waves, a simulated fleet of agents, drift and "
    "cloud fallback: not wired into the demo yet (see the open issues)"
)


def _local_inference(out: Path, profile: str, x: np.ndarray, y: np.ndarray) -> tuple[str, float]:
    """Load the chosen artifact with the agent's runtime (no TensorFlow) and score it."""
    from agent.model import LoadedModel
    from protocol import layout
    from protocol.manifest import Manifest

    manifest = Manifest.from_json((out / profile / layout.MANIFEST_FILE).read_text())
    model = LoadedModel.from_file(out / profile / manifest.artifact.file, threads=1, manifest=manifest)
    probs = model.predict({manifest.inputs[0].name: x})[manifest.outputs[0].name]
    return manifest.kind, float(np.mean(probs.argmax(axis=1) == y))


@click.command()
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), help="Keep outputs here.")
@click.option("--devices", type=click.IntRange(1), default=20, show_default=True, help="Simulated devices (later).")
@click.option("--once", is_flag=True, help="Exit when the story ends (for scripts and tests).")
def demo(workdir: Path | None, devices: int, once: bool) -> None:  # noqa: ARG001 - fleet stages not built yet
    """Train, convert and run a digits model; report what each stage did."""
    from converter.errors import ConverterError
    from converter.pipeline import ConvertRequest, convert
    from edgefleet.samples import digits, train_keras_cnn

    console = Console()
    root = workdir or Path(tempfile.mkdtemp(prefix="edgefleet-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    with console.status("training a CNN on scikit-learn's digits"):
        data = digits()
        model = train_keras_cnn(root / "digits.keras", data)
        calib, val = data.write(root)
    console.print(f"[bold]1. trained[/] {model}")
    try:
        with console.status("converting, measuring and checking budgets"):
            result = convert(ConvertRequest(model=model, profiles=list(DEMO_PROFILES), calibration=calib,
                                            validation=val, out=root / "out", name="digits", force=True))
    except ConverterError as e:
        raise click.ClickException(str(e)) from e
    console.print(f"[bold]2. converted[/] -> {result.out} (report.md, report.png, manifests)")
    table = Table(title="chosen artifact per profile")
    for col in ("profile", "kind", "size KiB", "accuracy (converter)", "accuracy (agent runtime)"):
        table.add_column(col)
    for r in result.results:
        if r.manifest is None:
            table.add_row(r.profile.name, "refused", "-", "-", "; ".join(r.refused.values()))
            continue
        kind, acc = _local_inference(result.out, r.profile.name, data.x_val, data.y_val)
        chosen = r.manifest.report.chosen
        table.add_row(r.profile.name, kind, f"{chosen.size_bytes / 1024:.1f}", f"{(chosen.accuracy or 0) * 100:.2f}%",
                      f"{acc * 100:.2f}%")
    console.print("[bold]3. ran each artifact in-process with the agent's runtime[/]")
    console.print(table)
    console.print(f"[yellow]not yet:[/] {NOT_YET}")
