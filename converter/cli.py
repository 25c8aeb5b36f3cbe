"""`edgefleet convert MODEL --profile P ... --calibration DATA --validation DATA --out DIR`."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from converter.errors import ConverterError
from converter.pipeline import ConvertRequest, convert

EXIT_PROFILE_REFUSED = 3


def _shape(value: str | None) -> list[int] | None:
    if not value:
        return None
    try:
        dims = [int(d) for d in value.split(",")]
    except ValueError:
        raise click.BadParameter("use comma-separated integers, e.g. 1,28,28") from None
    if any(d < 1 for d in dims):
        raise click.BadParameter("dimensions must be positive")
    return dims


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--profile", "profiles", multiple=True, required=True, help="Firmware profile (repeatable).")
@click.option("--calibration", type=click.Path(path_type=Path), required=True, help=".npy/.npz for int8 calibration.")
@click.option("--validation", type=click.Path(path_type=Path), required=True, help=".npy/.npz, labels in 'y'.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output directory (written atomically).")
@click.option("--name", help="Model name (default: from the file name).")
@click.option("--version", "model_version", type=click.IntRange(1), default=1, show_default=True)
@click.option("--task", type=click.Choice(["auto", "classification", "regression"]), default="auto", show_default=True)
@click.option("--labels", help="Comma-separated class labels, in output order.")
@click.option("--latency-runs", type=click.IntRange(10), default=200, show_default=True)
@click.option("--input-shape", help="One sample's shape for TorchScript / pickled PyTorch modules, e.g. 1,28,28 or 64.")
@click.option("--trust-pickle", is_flag=True,
              help="Allow formats that run code when loaded (scikit-learn .pkl/.joblib, a pickled nn.Module).")
@click.option("--signature", metavar="NAME", help="Signature of a ready-made .tflite with several.")
@click.option("--requantize", is_flag=True,
              help="Also make the profile's other quantisations from a ready-made float .tflite / .onnx "
                   "(by default it is shipped byte for byte).")
@click.option("--dvc-repo", metavar="REPO", help="Read MODEL (a path in REPO) through DVC (edgefleet[dvc]).")
@click.option("--rev", "dvc_rev", metavar="REV", help="Git revision of --dvc-repo (default: its HEAD).")
@click.option("--profiles-dir", type=click.Path(file_okay=False, path_type=Path), envvar="EDGEFLEET_PROFILES_DIR")
@click.option("--no-cloud", is_flag=True, help="Skip the cloud-serving exports.")
@click.option("--force", is_flag=True, help="Replace a non-empty --out directory.")
def convert_cmd(model: Path, profiles: tuple[str, ...], calibration: Path, validation: Path, out: Path,
                name: str | None, model_version: int, task: str, labels: str | None, latency_runs: int,
                input_shape: str | None, trust_pickle: bool, signature: str | None, requantize: bool,
                dvc_repo: str | None, dvc_rev: str | None, profiles_dir: Path | None, no_cloud: bool,
                force: bool) -> None:
    """Convert MODEL into verified per-device artifacts for each --profile.

    Exit codes: 0 every profile got an artifact; 1 bad input or conversion error (nothing written);
    3 at least one profile got no artifact (the others are written; report.md says why).
    """
    req = ConvertRequest(
        model=model, profiles=list(profiles), calibration=calibration, validation=validation, out=out,
        name=name, version=model_version, task=task, labels=labels.split(",") if labels else None,  # type: ignore[arg-type]
        latency_runs=latency_runs, profiles_dir=profiles_dir, input_shape=_shape(input_shape), force=force,
        cloud=not no_cloud, trust_pickle=trust_pickle, signature=signature, requantize=requantize,
        dvc_repo=dvc_repo, dvc_rev=dvc_rev,
    )
    console = Console(stderr=True, soft_wrap=True)  # long lines (paths, reasons) wrap in the terminal, unbroken
    try:
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                      console=console, transient=True) as progress:
            bar = progress.add_task("converting", total=None)
            result = convert(req, step=lambda msg: progress.update(bar, description=msg))
    except ConverterError as e:
        raise click.ClickException(str(e)) from e
    for r in result.results:
        if r.manifest is not None:
            m = r.manifest.report.chosen
            console.print(f"[green]{r.profile.name}[/]: {m.kind}, {m.size_bytes / 1024:.1f} KiB, "
                          f"p50 {m.latency_ms_p50:.3f} ms host", markup=True, highlight=False)
        else:
            console.print(f"[red]{r.profile.name}: no artifact fits[/]: " +
                          escape(" | ".join(f"{k}: {v}" for k, v in r.refused.items())), highlight=False)
        for note in r.notes:
            console.print(f"{r.profile.name}: {escape(note)}", highlight=False)
    for key, why in result.cloud_skipped.items():
        console.print(f"cloud: no {key} export: {escape(why)}", highlight=False)
    if result.reference_accuracy is None and any(
        r.manifest is not None and r.manifest.task.value == "classification" for r in result.results
    ):
        from converter.report import NO_LABELS

        console.print(escape(NO_LABELS.replace("`", "'")), highlight=False)
    console.print(f"wrote {out}")
    if result.refused_profiles:
        sys.exit(EXIT_PROFILE_REFUSED)

