"""Reports: `report.json` (machine), `report.md` (a table per profile) and `report.png` (chart)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from protocol import layout
from protocol.manifest import ArtifactMetrics

if TYPE_CHECKING:
    from converter.pipeline import ConvertResult


def report_data(result: ConvertResult) -> dict[str, Any]:
    profiles = []
    for r in result.results:
        p = r.profile
        profiles.append({
            "profile": p.name,
            "chosen": r.manifest.kind if r.manifest else None,
            "artifact": r.manifest.artifact.model_dump() if r.manifest else None,
            "latency_basis": "device" if p.speed else "host",
            "speed_factor": p.speed.host_factor if p.speed else None,
            "budgets": p.budgets.model_dump(),
            "candidates": [m.model_dump(mode="json") for m in r.candidates],
            "refused": r.refused,
            "notes": r.notes,
        })
    return {
        "model": result.name,
        "version": result.version,
        "source": result.source_kind,
        "reference_accuracy": result.reference_accuracy,
        "source_ref": result.source,
        "cloud_exports": result.cloud_exports,
        "cloud_skipped": result.cloud_skipped,
        "profiles": profiles,
    }


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v * 100:.2f}%"


def _row(m: ArtifactMetrics, chosen: str | None, refused: dict[str, str]) -> str:
    status = "**chosen**" if m.kind == chosen else ("refused: " + refused[m.kind] if m.kind in refused else "fits")
    dev = "-"
    if m.device_latency_ms_p50 is not None and m.device_latency_ms_p95 is not None:
        dev = f"{m.device_latency_ms_p50:.3f} / {m.device_latency_ms_p95:.3f}"
    return (f"| {m.kind} | {m.size_bytes / 1024:.1f} | {_pct(m.accuracy)} | {_pct(m.top1_agreement)} | "
            f"{m.max_abs_error:.4g} | {m.latency_ms_p50:.3f} / {m.latency_ms_p95:.3f} | {dev} | {status} |")


def _provenance(ref: dict[str, Any]) -> str:
    if ref.get("dvc_repo"):
        return (f" from DVC: `{ref['dvc_path']}` in {ref['dvc_repo']} at {ref['dvc_rev']}"
                f"{' (' + ref['dvc_commit'][:12] + ')' if ref.get('dvc_commit') else ''}, md5 {ref['dvc_md5']}")
    return f" (sha256 {ref['sha256'][:16]}...)" if ref.get("sha256") else ""


NO_LABELS = ("No labels in the validation data (no `y`): accuracy is not measured; each artifact is judged by its "
             "agreement with the float model only")


def markdown(result: ConvertResult) -> str:
    lines = [f"# Conversion report: {result.name} v{result.version}", "",
             f"Source: {result.source_kind}{_provenance(result.source)}. "
             + (f"Float reference top-1 accuracy: {_pct(result.reference_accuracy)}."
                if result.reference_accuracy is not None else NO_LABELS + "."), ""]  # fmt: skip
    for r in result.results:
        p = r.profile
        chosen = r.manifest.kind if r.manifest else None
        basis = f"device = host x {p.speed.host_factor:g}" if p.speed else "host latency (no speed factor)"
        lines += [f"## {p.name}", "", f"{p.description}. Latency basis: {basis}. Budgets: size "
                  f"{p.budgets.max_artifact_bytes / 2**20:g} MiB, p95 {p.budgets.latency_ms:g} ms, "
                  f"accuracy loss {p.budgets.max_accuracy_loss_pt:g} pt.", "",
                  "| kind | size KiB | accuracy | top-1 agreement | max abs err | host p50 / p95 ms | "
                  "device p50 / p95 ms | status |", "|---|---|---|---|---|---|---|---|"]
        lines += [_row(m, chosen, r.refused) for m in r.candidates]
        lines += [f"| {k} | - | - | - | - | - | - | not built: {v} |" for k, v in r.refused.items()
                  if k not in {m.kind for m in r.candidates}]
        lines += ["", f"Chosen: **{chosen}**." if chosen else "**No artifact fits this profile.**", ""]
        lines += [f"Note: {n}." for n in r.notes] + ([""] if r.notes else [])
    if result.cloud_exports or result.cloud_skipped:
        lines += ["## Cloud exports", ""] + [f"- {k}: `{v}`" for k, v in result.cloud_exports.items()]
        lines += [f"- {k}: not exported: {v}" for k, v in result.cloud_skipped.items()] + [""]
    lines += [f"![size, accuracy and latency per artifact]({layout.REPORT_PNG})", ""]
    return "\n".join(lines)


def chart(result: ConvertResult, path: Path) -> None:
    """Size, top-1 agreement and host p50 latency per artifact kind (host measurements, one thread set)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seen: dict[str, ArtifactMetrics] = {}
    for r in result.results:
        for m in r.candidates:
            seen.setdefault(m.kind, m)
    kinds = list(seen)
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    panels = [
        ("size (KiB)", [seen[k].size_bytes / 1024 for k in kinds]),
        ("top-1 agreement with float (%)", [(seen[k].top1_agreement or 0) * 100 for k in kinds]),
        ("host p50 latency (ms)", [seen[k].latency_ms_p50 for k in kinds]),
    ]
    for ax, (title, values) in zip(axes, panels, strict=True):
        ax.bar(range(len(kinds)), values, color="#3b7dd8")
        ax.set_xticks(range(len(kinds)), kinds, rotation=45, ha="right", fontsize=8)
        ax.set_title(title, fontsize=10)
    fig.suptitle(f"{result.name} v{result.version}")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_reports(result: ConvertResult, folder: Path) -> None:
    (folder / layout.REPORT_JSON).write_text(json.dumps(report_data(result), indent=2, sort_keys=True) + "\n")
    (folder / layout.REPORT_MD).write_text(markdown(result))
    chart(result, folder / layout.REPORT_PNG)
