"""`edgefleet agent ...`: run the daemon, predict with any model file, batch over a file, roll back."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
import numpy as np

from agent.errors import AgentError, InputError

if TYPE_CHECKING:
    import socket

    from agent.settings import AgentSettings

F = TypeVar("F", bound=Callable[..., Any])


def readable_errors(fn: F) -> F:
    """Turn agent, file and value errors into one readable line and exit status 1."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (AgentError, OSError, ValueError) as e:
            raise click.ClickException(str(e).splitlines()[0] if str(e) else type(e).__name__) from e

    return wrapper  # type: ignore[return-value]


def _must_exist(*paths: Path) -> None:
    """One readable line for a missing file (click's own check prints a usage block)."""
    for path in paths:
        if not path.is_file():
            raise click.ClickException(f"{path}: no such file")


@click.group()
def agent() -> None:
    """The device agent: daemon, local inference tools, rollback."""


@contextlib.contextmanager
def _progress() -> Iterator[Callable[[int, int], None]]:
    """A rich progress bar; a plain line every 10 % where rich is not installed (`edgefleet[agent]` leaves it out)."""
    try:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    except ImportError:
        shown = [-1]

        def plain(done: int, total: int) -> None:
            tenth = done * 10 // max(total, 1)
            if tenth != shown[0]:
                shown[0] = tenth
                click.echo(f"predict {done}/{total} ({done * 100 // max(total, 1)}%)", err=True)

        yield plain
        return
    columns = (TextColumn("predict"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, transient=False) as progress:
        task = progress.add_task("predict", total=None)
        yield lambda done, total: progress.update(task, completed=done, total=total)


_PIPELINE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")


def _pipeline_options(fn: F) -> F:
    """--pipeline SPEC_OR_NAME and --stage NAME=PATH (repeatable)."""
    fn = click.option(
        "--stage",
        "stages",
        multiple=True,
        metavar="NAME=PATH",
        help="with --pipeline SPEC: a stage's artifact file or converter output folder (repeat for each stage)",
    )(fn)
    return click.option(
        "--pipeline",
        "pipeline_spec",
        metavar="SPEC|NAME",
        help="a pipeline spec file (.toml, or .json as the hub serves it), or the name of a pipeline the "
        "running daemon serves, instead of MODEL_FILE",
    )(fn)


_signature_option = click.option(
    "--signature",
    metavar="NAME",
    help="TFLite signature to run (default: the only one, else serving_default).",
)


@agent.command()
@click.argument("files", nargs=-1, metavar="[MODEL_FILE] INPUTS", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="save outputs (.npz or .csv)")
@click.option("--threads", default=1, show_default=True, type=click.IntRange(1, 64))
@_signature_option
@_pipeline_options
@click.option("--config", type=click.Path(dir_okay=False, path_type=Path), help="agent.toml (--pipeline NAME)")
@readable_errors
def predict(
    files: tuple[Path, ...],
    out: Path | None,
    threads: int,
    signature: str | None,
    pipeline_spec: str | None,
    stages: tuple[str, ...],
    config: Path | None,
) -> None:
    """Run one inference of MODEL_FILE (.tflite/.onnx) on INPUTS (.npz) and print or save the outputs.

    INPUTS holds one array per model input, under its name (a TFLite signature key or tensor name, an ONNX
    input name); a lone array feeds a lone input. 0-d arrays feed scalar inputs.

    With --pipeline SPEC, INPUTS feeds the pipeline's inputs and each stage's model comes from --stage
    NAME=PATH; with --pipeline NAME, the running daemon's installed pipeline answers (its local API, found
    through --config). The per-stage times are printed with the outputs.
    """
    from agent.offline import read_inputs, write_outputs

    if pipeline_spec is not None:
        if len(files) != 1:
            raise click.UsageError("with --pipeline give only INPUTS (the stages come from --stage NAME=PATH)")
        if Path(pipeline_spec).is_file() or not _PIPELINE_NAME.fullmatch(pipeline_spec):
            outputs = _predict_pipeline(Path(pipeline_spec), stages, files[0], threads)
        else:
            if stages:
                raise click.UsageError("--stage is for a pipeline SPEC file; an installed pipeline has its stages")
            outputs = _predict_installed(pipeline_spec, files[0], config)
    else:
        if stages:
            raise click.UsageError("--stage is for --pipeline")
        if len(files) != 2:
            raise click.UsageError("give MODEL_FILE and INPUTS (or --pipeline SPEC and INPUTS)")
        from agent.model import LoadedModel

        model_file, inputs = files
        _must_exist(model_file, inputs)
        model = LoadedModel.from_file(model_file, threads=threads, signature=signature)
        try:
            outputs = model.predict(read_inputs(inputs, model))
        except InputError as e:
            raise InputError(f"{inputs}: {e}") from e
    if out is not None:
        write_outputs(out, outputs)
        click.echo(f"wrote {', '.join(outputs)} to {out}")
        return
    for name, value in outputs.items():
        text = np.array2string(value, precision=5, threshold=200)
        click.echo(f"{name} {list(value.shape)} {value.dtype}:\n{text}")


def _predict_pipeline(spec_file: Path, stages: tuple[str, ...], inputs: Path, threads: int) -> dict[str, Any]:
    from agent.pipeline.local import load_spec_file, local_runner, parse_stage_options, read_pipeline_inputs

    _must_exist(spec_file, inputs)
    runner = local_runner(load_spec_file(spec_file), parse_stage_options(stages), threads)
    result = runner.run(read_pipeline_inputs(inputs, runner.spec))
    _say_times(runner.spec.name, runner.spec.version, result.node_ms)
    return result.outputs


def _say_times(name: str, version: int, node_ms: dict[str, float]) -> None:
    times = ", ".join(f"{node} {ms:.2f} ms" for node, ms in node_ms.items())
    click.echo(f"pipeline {name} v{version}: {sum(node_ms.values()):.2f} ms ({times})", err=True)


def _predict_installed(name: str, inputs: Path, config: Path | None) -> dict[str, Any]:
    """One call of the daemon's installed pipeline through its local API."""
    import httpx

    _must_exist(inputs)
    try:
        with np.load(inputs, allow_pickle=False) as data:
            arrays = {k: data[k].tolist() for k in data.files}
    except (OSError, ValueError) as e:
        raise click.ClickException(f"{inputs}: not a readable .npz file: {e}") from e
    with _local_api(config) as (client, where):
        try:
            response = client.post(f"/v1/pipelines/{name}/predict", json={"inputs": arrays})
        except httpx.HTTPError as e:
            raise click.ClickException(f"the agent's local API at {where} does not answer: {e}") from e
    body = response.json()
    if response.status_code != 200:
        raise click.ClickException(str(body.get("error", response.text)))
    _say_times(name, body["version"], body["timings_ms"])
    return {k: np.asarray(v) for k, v in body["outputs"].items()}


@agent.command()
@click.argument("files", nargs=-1, metavar="[MODEL_FILE] INPUTS", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help=".npz or .csv")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1, 1_000_000))
@click.option("--threads", default=1, show_default=True, type=click.IntRange(1, 64))
@_signature_option
@_pipeline_options
@readable_errors
def batch(
    files: tuple[Path, ...],
    out: Path,
    batch_size: int,
    threads: int,
    signature: str | None,
    pipeline_spec: str | None,
    stages: tuple[str, ...],
) -> None:
    """Run MODEL_FILE over every row of INPUTS (.npz or CSV) and write the predictions to --out.

    With --pipeline SPEC and --stage NAME=PATH, every row of INPUTS (.npz, one array per pipeline input) runs
    through the pipeline, one call per row."""
    from agent.model import LoadedModel
    from agent.offline import read_inputs, run_batches, write_outputs

    if pipeline_spec is not None:
        from agent.pipeline.local import (
            load_spec_file,
            local_runner,
            parse_stage_options,
            read_pipeline_inputs,
            run_rows,
        )

        if len(files) != 1:
            raise click.UsageError("with --pipeline give only INPUTS (the stages come from --stage NAME=PATH)")
        _must_exist(Path(pipeline_spec), files[0])
        runner = local_runner(load_spec_file(Path(pipeline_spec)), parse_stage_options(stages), threads)
        with _progress() as advance:
            results = run_rows(runner, read_pipeline_inputs(files[0], runner.spec), on_progress=advance)
        write_outputs(out, results)
        click.echo(f"wrote {len(next(iter(results.values())))} rows of {', '.join(results)} to {out}")
        return
    if stages:
        raise click.UsageError("--stage is for --pipeline")
    if len(files) != 2:
        raise click.UsageError("give MODEL_FILE and INPUTS (or --pipeline SPEC and INPUTS)")
    model_file, inputs = files
    _must_exist(model_file, inputs)
    model = LoadedModel.from_file(model_file, threads=threads, signature=signature)
    data = read_inputs(inputs, model)
    with _progress() as advance:
        outputs = run_batches(model, data, batch_size, on_progress=advance)
    write_outputs(out, outputs)
    rows = len(next(iter(outputs.values())))
    click.echo(f"wrote {rows} rows of {', '.join(outputs)} to {out}")


@agent.command()
@click.option("--config", type=click.Path(dir_okay=False, path_type=Path), help="agent.toml")
@readable_errors
def run(config: Path | None) -> None:
    """Run the daemon: enroll on first start, reconcile desired state, serve the local API."""
    import logging
    import os

    from agent.fsutil import lock_data_dir
    from agent.httpserver import bind_tcp_socket, bind_unix_socket
    from agent.settings import load_settings

    settings = load_settings(config)
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # One daemon per data_dir, and the API's socket bound before anything starts: a second agent, a port in
    # use or a socket another agent serves on stop the start here with one line, not mid-update.
    lock = lock_data_dir(settings.data_dir)
    sock: socket.socket | None = None
    try:
        if settings.api_enabled:
            uds = settings.api_uds
            sock = bind_unix_socket(uds) if uds else bind_tcp_socket(settings.api_host, settings.api_port)
        _serve(settings, sock)
    finally:
        if sock is not None:
            sock.close()
            if settings.api_uds is not None:
                settings.api_uds.unlink(missing_ok=True)
        os.close(lock)


def _serve(settings: AgentSettings, sock: socket.socket | None) -> None:
    """Start the daemon, serve the local API on `sock` (when it is on) until SIGTERM/SIGINT, stop the daemon."""
    import signal
    import threading

    from agent.daemon import Agent
    from agent.httpserver import LocalApiServer
    from agent.memory import fix_malloc_thresholds

    fix_malloc_thresholds()  # before models load: what threads free must not stay resident (agent/memory.py)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    daemon = Agent(settings)
    daemon.start()
    server: LocalApiServer | None = None
    try:
        if sock is not None:
            server = LocalApiServer(daemon.local_api(), sock, max_connections=settings.api_max_connections,
                                    max_per_peer=settings.api_max_per_peer, idle_timeout_s=settings.api_idle_timeout_s,
                                    request_deadline_s=settings.api_request_deadline_s)  # fmt: skip
            server.start()
        stop.wait()
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C may cut the stop short
    finally:
        if server is not None:
            server.stop()
        daemon.stop()


@contextlib.contextmanager
def _local_api(config: Path | None) -> Iterator[tuple[Any, str]]:
    """An httpx client for the running daemon's local API (TCP or unix socket, as agent.toml says) and
    where that is, for messages."""
    import httpx

    from agent.settings import load_settings

    settings = load_settings(config)
    if not settings.api_enabled:
        raise click.ClickException(
            "the local API is off in this config (api_enabled = false); the hub shows this device and can roll it back"
        )
    if settings.api_uds:
        transport = httpx.HTTPTransport(uds=str(settings.api_uds))
        with httpx.Client(transport=transport, base_url="http://agent", timeout=10) as client:
            yield client, f"unix socket {settings.api_uds}"
    else:
        base = f"http://{settings.api_host}:{settings.api_port}"
        with httpx.Client(base_url=base, timeout=10) as client:
            yield client, base


@agent.command()
@click.argument("model")
@click.option("--config", type=click.Path(dir_okay=False, path_type=Path), help="agent.toml")
@readable_errors
def rollback(model: str, config: Path | None) -> None:
    """Ask the running daemon to roll MODEL back to its previous version."""
    import httpx

    with _local_api(config) as (client, where):
        try:
            response = client.post(f"/v1/models/{model}/rollback")
        except httpx.HTTPError as e:
            raise click.ClickException(f"the agent's local API at {where} does not answer: {e}") from e
    if response.status_code != 202:
        raise click.ClickException(response.json().get("error", response.text))
    click.echo(f"rollback of {model} queued")


@agent.command()
@click.option("--config", type=click.Path(dir_okay=False, path_type=Path), help="agent.toml")
@readable_errors
def status(config: Path | None) -> None:
    """Show what the running daemon serves and where each update stands."""
    import httpx

    with _local_api(config) as (client, where):
        try:
            models = client.get("/v1/models").json()["models"]
            pipelines = client.get("/v1/pipelines").json()["pipelines"]
        except httpx.HTTPError as e:
            raise click.ClickException(f"the agent's local API at {where} does not answer: {e}") from e
    if not models and not pipelines:
        click.echo("no model installed (the daemon runs; nothing was rolled out to this device yet)")
    for kind, units in (("", models), ("pipeline ", pipelines)):
        for m in units:
            active = f"v{m['active_version']}" if m["active_version"] is not None else "none"
            previous = f"v{m['previous_version']}" if m["previous_version"] is not None else "none"
            line = f"{kind}{m['name']}: active {active}, previous {previous}, state {m['state']}"
            click.echo(line + (f" ({m['reason']})" if m.get("reason") else ""))
