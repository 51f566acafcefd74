"""`quanto` — the command line (DESIGN.md section 3). Every command takes --json.

Exit codes: 0 ok, 1 the job failed, 2 bad input (config, arguments).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from quanto.config.ingest import IngestConfig
from quanto.config.loading import ConfigError, load_config
from quanto.config.models import PipelineConfig
from quanto.config.retrain import RetrainConfig
from quanto.config.schedules import SchedulesConfig
from quanto.config.sweep import SweepJob
from quanto.config.trading import TradingConfig
from quanto.errors import InputError

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Quanto: durable quant research on Temporal."
)
server_app = typer.Typer(no_args_is_help=True, help="The local Temporal dev server.")
pipeline_app = typer.Typer(no_args_is_help=True, help="Research pipeline runs.")
config_app = typer.Typer(no_args_is_help=True, help="Job-file schemas.")
data_app = typer.Typer(no_args_is_help=True, help="Market data in the lake.")
features_app = typer.Typer(no_args_is_help=True, help="The feature registry.")
backtest_app = typer.Typer(
    no_args_is_help=True, help="Backtests beyond the pipeline's own: parameter sweeps."
)
models_app = typer.Typer(no_args_is_help=True, help="The model registry: candidates and production models.")
schedule_app = typer.Typer(no_args_is_help=True, help="Temporal Schedules from configs/schedules.yaml.")
retrain_app = typer.Typer(no_args_is_help=True, help="Retrain on a rolling window; promote only winners.")
trade_app = typer.Typer(no_args_is_help=True, help="Trading days: start, watch, halt, flatten, resume.")
exchange_app = typer.Typer(no_args_is_help=True, help="The local paper exchange (Alpaca's Trading API).")
trade_app.add_typer(exchange_app, name="exchange")
app.add_typer(server_app, name="server")
app.add_typer(pipeline_app, name="pipeline")
app.add_typer(config_app, name="config")
app.add_typer(data_app, name="data")
app.add_typer(features_app, name="features")
app.add_typer(backtest_app, name="backtest")
app.add_typer(models_app, name="models")
app.add_typer(schedule_app, name="schedule")
app.add_typer(retrain_app, name="retrain")
app.add_typer(trade_app, name="trade")

JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]
STATE_DIR = Path(os.environ.get("QUANTO_HOME", ".quanto"))


def _emit(as_json: bool, obj: dict[str, Any], text: str) -> None:
    if as_json:
        print(json.dumps(obj, default=str))
    else:
        print(text)


def _fail(as_json: bool, code: int, message: str) -> None:
    if as_json:
        print(json.dumps({"error": message, "exit_code": code}))
    print(f"error: {message}", file=sys.stderr)
    raise typer.Exit(code)


CONFIG_KINDS: dict[str, type] = {
    "pipeline": PipelineConfig,
    "sweep": SweepJob,
    "ingest": IngestConfig,
    "schedules": SchedulesConfig,
    "retrain": RetrainConfig,
    "trading": TradingConfig,
}


def _load(model: type, path: Path, as_json: bool) -> Any:
    try:
        return load_config(model, path)
    except ConfigError as err:
        _fail(as_json, 2, str(err))
        raise  # unreachable: _fail exits


def _load_pipeline(path: Path, as_json: bool) -> PipelineConfig:
    return _load(PipelineConfig, path, as_json)


def _lake_root(lake: Path | None) -> Path:
    """--lake, else $QUANTO_LAKE_ROOT, else .quanto/lake."""
    return (lake or Path(os.environ.get("QUANTO_LAKE_ROOT", ".quanto/lake"))).expanduser().resolve()


LakeOption = Annotated[
    Path | None, typer.Option("--lake", help="Lake folder (default $QUANTO_LAKE_ROOT or .quanto/lake).")
]


def _setup_logging() -> None:
    from quanto.observability.logging import configure_logging

    configure_logging(console=True)


def _dev_server() -> Any:
    """The dev server `quanto` manages: host and port from TEMPORAL_ADDRESS, UI port from QUANTO_UI_PORT."""
    from quanto.starter.client import temporal_address
    from quanto.starter.server import DevServer

    host, _, port = temporal_address().rpartition(":")
    return DevServer(
        state_dir=STATE_DIR,
        ip=host or "127.0.0.1",
        port=int(port),
        ui_port=int(os.environ.get("QUANTO_UI_PORT", 8233)),
    )


# --- server -------------------------------------------------------------------------------------------


@server_app.command("start")
def server_start(as_json: JsonFlag = False) -> None:
    """Start the local dev server (SQLite at .quanto/temporal.db, Web UI on :8233) unless one answers."""
    from quanto.starter.client import UI_URL, temporal_address
    from quanto.starter.server import is_healthy

    server = _dev_server()
    if is_healthy(temporal_address()):
        _emit(as_json, {"address": temporal_address(), "started": False, "ui_url": UI_URL},
              f"Temporal already answers on {temporal_address()} (Web UI {UI_URL})")  # fmt: skip
        return
    try:
        proc = server.start()
    except (RuntimeError, TimeoutError, FileNotFoundError) as err:
        _fail(as_json, 1, str(err))
    _emit(as_json, {"address": server.address, "started": True, "pid": proc.pid, "ui_url": UI_URL,
                    "db": str(server.db_file)},
          f"Temporal dev server started on {server.address} (pid {proc.pid}); Web UI {UI_URL}")  # fmt: skip


@server_app.command("stop")
def server_stop(as_json: JsonFlag = False) -> None:
    """Stop the dev server that `quanto server start` started."""
    stopped = _dev_server().stop()
    _emit(
        as_json, {"stopped": stopped}, "stopped" if stopped else "no dev server started from here is running"
    )


@server_app.command("status")
def server_status(as_json: JsonFlag = False) -> None:
    """Whether Temporal answers, and the dev server's pid if started from here."""
    from quanto.starter.client import UI_URL, temporal_address
    from quanto.starter.server import is_healthy

    healthy = is_healthy(temporal_address())
    pid = _dev_server().pid()
    _emit(as_json, {"address": temporal_address(), "healthy": healthy, "pid": pid, "ui_url": UI_URL},
          f"{temporal_address()}: {'SERVING' if healthy else 'not answering'}"
          + (f" (dev server pid {pid})" if pid else ""))  # fmt: skip
    if not healthy:
        raise typer.Exit(1)


# --- worker -------------------------------------------------------------------------------------------


@app.command("worker")
def worker(
    queue: Annotated[
        list[str] | None, typer.Option("--queue", "-q", help="Task queue(s); all by default.")
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            "--metrics-port",
            envvar="QUANTO_METRICS_PORT",
            help="Serve Prometheus metrics (Quanto's and the Temporal SDK's) at :PORT/metrics; off by default.",
        ),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Run workers for the task queues until interrupted (SIGINT/SIGTERM)."""
    from quanto.contracts import ALL_QUEUES
    from quanto.starter.client import connect
    from quanto.store.db import connect as db_connect
    from quanto.workers.build import run_workers

    unknown = [q for q in queue or [] if q not in ALL_QUEUES]
    if unknown:
        _fail(as_json, 2, f"--queue: unknown task queue(s) {unknown}; known: {list(ALL_QUEUES)}")
    _setup_logging()
    db_connect().close()  # create the database and apply migrations before any activity runs
    runtime = endpoint = metrics_dir = None
    if metrics_port is not None:
        runtime, endpoint, metrics_dir = _start_metrics(metrics_port, as_json)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        client = await connect(runtime=runtime)
        queues = queue or list(ALL_QUEUES)
        started: dict[str, Any] = {"worker": "running", "queues": queues, "pid": os.getpid()}
        if endpoint is not None:
            started["metrics_url"] = f"http://{endpoint.server_address[0]}:{endpoint.server_port}/metrics"
        if as_json:
            print(json.dumps(started), flush=True)
        else:
            print(f"worker running on {', '.join(queues)} (pid {os.getpid()}); Ctrl-C stops", file=sys.stderr)
        await run_workers(client, queue, stop)

    try:
        asyncio.run(main())
    finally:
        if endpoint is not None:
            endpoint.shutdown()
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _start_metrics(port: int, as_json: bool) -> tuple[Any, Any, Path]:
    """One endpoint at `port` for Quanto's metrics, from this process and its process pool (multiprocess
    files in a fresh folder), and the Temporal SDK's (a runtime serving them on a free local port).
    Returns (runtime, endpoint, folder); `QUANTO_METRICS_ADDR` is the address to bind (default 0.0.0.0)."""
    from quanto.observability.metrics import serve, use_multiprocess
    from quanto.starter.client import prometheus_runtime

    folder = use_multiprocess()  # before the process pool starts: its children inherit the folder
    runtime, sdk_url = prometheus_runtime()
    try:
        endpoint = serve(port, os.environ.get("QUANTO_METRICS_ADDR", "0.0.0.0"), sdk_metrics_url=sdk_url)
    except OSError as err:
        shutil.rmtree(folder, ignore_errors=True)
        _fail(as_json, 2, f"--metrics-port {port}: {err}")
        raise  # unreachable: _fail exits
    return runtime, endpoint, folder


# --- pipeline -----------------------------------------------------------------------------------------


async def _run_pipeline(
    cfg: PipelineConfig, source: str, wait: bool, echo: bool, alive: Any = None, until: str | None = None
) -> tuple[dict, int]:
    from quanto.starter.client import connect, ui_link
    from quanto.starter.pipeline import WorkflowFailureError, follow, result_json, start_pipeline

    client = await connect()
    handle = await start_pipeline(client, cfg, source, until=until)
    if echo:
        print(f"pipeline {handle.id}\n  Web UI: {ui_link(handle.id, handle.result_run_id)}", file=sys.stderr)
    if not wait:
        return {"workflow_id": handle.id, "run_id": handle.result_run_id, "ui_url": ui_link(handle.id)}, 0
    try:
        result = await follow(handle, echo=echo, alive=alive)
    except WorkflowFailureError as err:
        cause = err.cause
        while getattr(cause, "cause", None) is not None and not getattr(cause, "message", None):
            cause = cause.cause
        message = getattr(cause, "message", str(cause))
        return {
            "workflow_id": handle.id,
            "status": "failed",
            "error": message,
            "ui_url": ui_link(handle.id),
        }, 1
    out = result_json(result, handle.result_run_id)
    if until == "validate":
        from quanto.lake.materialize import hydrate
        from quanto.lake.storage import Lake

        lake = Path(cfg.lake_root).expanduser().resolve()
        validate = hydrate(Lake(lake), result.results["validate"])
        out["counters"] = validate.counters
        out["quality"] = validate.summary.get("by_rule", [])
        out["files"] = {f.role: str(lake / f.path) for f in validate.outputs if f.role != "bars"}
    return out, 0


def _print_result(out: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(out, default=str))
        return
    if out.get("status") == "failed":
        print(f"pipeline failed: {out['error']}\n  {out['ui_url']}", file=sys.stderr)
        return
    m = out.get("metrics", {})
    lines = [f"workflow {out['workflow_id']}: {out.get('status', 'started')}"]
    if m:
        fmt = lambda v, pct: "—" if v is None else (f"{v:.2%}" if pct else f"{v:.2f}")  # noqa: E731
        lines.append(
            f"  total return {fmt(m.get('total_return'), True)}  annual {fmt(m.get('annual_return'), True)}"
            f"  Sharpe {fmt(m.get('sharpe'), False)}  max drawdown {fmt(m.get('max_drawdown'), True)}"
            f"  trades {m.get('trades')}"
        )
    for key in ("report_html", "report_pdf", "ui_url"):
        if out.get(key):
            lines.append(f"  {key.replace('_', ' ')}: {out[key]}")
    print("\n".join(lines))


@pipeline_app.command("run")
def pipeline_run(
    config: Annotated[Path, typer.Option("--config", "-c", help="Pipeline job file (YAML).")],
    wait: Annotated[bool, typer.Option("--wait", help="Follow progress until the run ends.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Start ResearchPipelineWorkflow for a job file (a repeated start attaches to the running one)."""
    cfg = _load_pipeline(config, as_json)
    out, code = asyncio.run(_run_pipeline(cfg, str(config), wait, echo=not as_json))
    _print_result(out, as_json)
    raise typer.Exit(code)


@pipeline_app.command("status")
def pipeline_status(workflow_id: str, as_json: JsonFlag = False) -> None:
    """Status of a pipeline run: Temporal status and per-stage progress."""
    from quanto.contracts import StageStatus
    from quanto.starter.client import connect, ui_link

    async def main() -> dict:
        client = await connect()
        handle = client.get_workflow_handle(workflow_id)
        desc = await handle.describe()
        try:
            stages = [s.model_dump() for s in await handle.query("progress", result_type=list[StageStatus])]
        except Exception:
            stages = []
        return {
            "workflow_id": workflow_id,
            "run_id": desc.run_id,
            "status": desc.status.name if desc.status else "UNKNOWN",
            "started_at": desc.start_time,
            "closed_at": desc.close_time,
            "stages": stages,
            "ui_url": ui_link(workflow_id, desc.run_id),
        }

    try:
        out = asyncio.run(main())
    except Exception as err:  # RPCError not found
        _fail(as_json, 2, f"workflow {workflow_id!r}: {err}")
    text = f"{out['workflow_id']}: {out['status']}\n" + "\n".join(
        f"  {s['name']:<13} {s['status']}{' (skipped)' if s['skipped'] else ''}" for s in out["stages"]
    )
    _emit(as_json, out, text)


@pipeline_app.command("ls")
def pipeline_ls(limit: int = 20, as_json: JsonFlag = False) -> None:
    """Recent pipeline runs (Temporal visibility, QuantoKind = 'pipeline')."""
    from quanto.starter.client import connect

    async def main() -> list[dict]:
        client = await connect()
        rows = []
        async for wf in client.list_workflows('QuantoKind = "pipeline"', limit=limit):
            rows.append(
                {"workflow_id": wf.id, "run_id": wf.run_id, "status": wf.status.name if wf.status else None,
                 "started_at": wf.start_time, "closed_at": wf.close_time}
            )  # fmt: skip
        return rows

    rows = asyncio.run(main())
    text = "\n".join(
        f"{r['workflow_id']:<40} {r['status']:<12} {r['started_at']:%Y-%m-%d %H:%M:%S}" for r in rows
    )
    _emit(as_json, {"pipelines": rows}, text or "no pipeline runs yet")


# --- data ---------------------------------------------------------------------------------------------


@data_app.command("validate")
def data_validate(
    config: Annotated[Path, typer.Option("--config", "-c", help="Pipeline job file (YAML).")],
    as_json: JsonFlag = False,
) -> None:
    """Ingest and validate the job's universe (workflow validate-<name>-<hash8>); print the quality report."""
    cfg = _load_pipeline(config, as_json)
    out, code = asyncio.run(_run_pipeline(cfg, str(config), wait=True, echo=not as_json, until="validate"))
    if as_json or code:
        _print_result(out, as_json)
        raise typer.Exit(code)
    c = out["counters"]
    lines = [
        f"workflow {out['workflow_id']}: {out['status']}",
        f"  rows in {c['rows_in']:,} = accepted {c['accepted']:,} + quarantined {c['quarantined']:,}"
        f" + exact duplicates {c['duplicates_dropped']:,};  imputed {c.get('imputed', 0):,},"
        f" flagged {c.get('flagged', 0):,}",
    ]
    for q in out["quality"]:
        lines.append(
            f"  {q['symbol']:<8} {q['rule']:<20} {q.get('policy', ''):<10} {q['count']:>8,}  {q['example'][:70]}"
        )
    lines += [f"  {role}: {path}" for role, path in out["files"].items()]
    print("\n".join(lines))


@data_app.command("ingest")
def data_ingest(
    config: Annotated[Path, typer.Option("--config", "-c", help="Ingestion job file (YAML).")],
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Follow progress until the end.")] = True,
    as_json: JsonFlag = False,
) -> None:
    """Start IngestionWorkflow (ingest-<name>-<hash8>); a rerun skips partitions already in the lake."""
    from quanto.starter.client import connect, ui_link
    from quanto.starter.ingest import exchange_today, follow_ingest, result_json, start_ingest
    from quanto.starter.pipeline import WorkflowFailureError

    cfg = _load(IngestConfig, config, as_json)

    async def main() -> tuple[dict, int]:
        client = await connect()
        handle = await start_ingest(client, cfg, str(config), exchange_today(cfg))
        link = ui_link(handle.id)
        if not as_json:
            print(f"ingest {handle.id}\n  Web UI: {link}", file=sys.stderr)
        if not wait:
            return {"workflow_id": handle.id, "run_id": handle.result_run_id, "ui_url": link}, 0
        try:
            result = await follow_ingest(handle, echo=not as_json)
        except WorkflowFailureError as err:
            cause = err.cause
            while getattr(cause, "cause", None) is not None:
                cause = cause.cause
            return {"workflow_id": handle.id, "status": "failed", "error": getattr(cause, "message", str(cause)),
                    "ui_url": link}, 1  # fmt: skip
        return result_json(result, link), 0

    out, code = asyncio.run(main())
    if as_json:
        print(json.dumps(out, default=str))
    elif code:
        print(f"ingestion failed: {out['error']}\n  {out['ui_url']}", file=sys.stderr)
    elif "totals" in out:
        t = out["totals"]
        print(
            f"workflow {out['workflow_id']}: {out['status']} via {out['route']} ({out['reason']})\n"
            f"  partitions {out['partitions']}: fetched {t['fetched']}, already in the lake {t['skipped']}\n"
            f"  rows {t['rows']:,}, rejected {t['rejected']:,}, requests {t['requests']:,}, "
            f"retries {t['retries']:,} (429s {t['throttled']:,}), {out['seconds']:.1f}s\n"
            f"  manifest: {out['manifest']}"
        )
    else:
        print(f"workflow {out['workflow_id']} started")
    raise typer.Exit(code)


@data_app.command("ls")
def data_ls(lake: LakeOption = None, as_json: JsonFlag = False) -> None:
    """Datasets in the lake: per dataset, vendor, timeframe and symbol, the range and row count."""
    from quanto.data.catalog import list_datasets
    from quanto.lake.storage import Lake

    rows = list_datasets(Lake(_lake_root(lake)))
    text = "\n".join(
        f"{r['dataset']:<18} {r['vendor'] or '':<9} {r['timeframe'] or '':<6} {r['symbol'] or '':<12} "
        f"{str(r['start'] or ''):<26} {str(r['end'] or ''):<26} {r['rows']:>12,}"
        for r in rows
    )
    _emit(
        as_json,
        {"lake": str(_lake_root(lake)), "datasets": rows},
        text or "the lake holds no ingested data yet",
    )


@data_app.command("sql")
def data_sql(
    query: Annotated[
        str, typer.Argument(help='SQL over the lake, e.g. "SELECT symbol, count(*) FROM bars GROUP BY 1"')
    ],
    lake: LakeOption = None,
    limit: Annotated[int, typer.Option("--limit", help="Rows to print at most.")] = 1000,
    as_json: JsonFlag = False,
) -> None:
    """Run SQL (DuckDB) over the lake's datasets: views bars, trades, quotes, depth, corporate_actions, …"""
    from quanto.data.catalog import run_sql
    from quanto.lake.storage import Lake

    try:
        out = run_sql(Lake(_lake_root(lake)), query, limit=limit)
    except ValueError as err:
        _fail(as_json, 2, f"sql: {err}")
    if as_json:
        print(json.dumps(out, default=str))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(*out["columns"])
    for row in out["rows"]:
        table.add_row(*("" if v is None else str(v) for v in row))
    Console().print(table)
    if out["truncated"]:
        print(f"({out['row_count']:,} rows; the first {limit:,} shown)", file=sys.stderr)


# --- features -----------------------------------------------------------------------------------------


@features_app.command("ls")
def features_ls(
    family: Annotated[str | None, typer.Option("--family", help="Only this family.")] = None,
    markdown: Annotated[
        bool, typer.Option("--markdown", help="A Markdown table (docs/features.md).")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Every registered feature: name, family, parameters, lookback, version, description."""
    from quanto.features.registry import feature_catalog

    rows = feature_catalog()
    families = sorted({r["family"] for r in rows})
    if family is not None:
        if family not in families:
            _fail(as_json, 2, f"--family: unknown family {family!r}; known: {families}")
        rows = [r for r in rows if r["family"] == family]
    if as_json:
        print(json.dumps({"features": rows}))
    elif markdown:
        from quanto.features.registry import catalog_markdown

        print(catalog_markdown(family), end="")
    else:
        print(
            "\n".join(
                f"{r['name']:<40} {r['family']:<12} {r['lookback']:>5}  {r['description']}" for r in rows
            )
        )


@features_app.command("check-lookahead")
def features_check_lookahead(
    names: Annotated[list[str], typer.Argument(help="Feature names (or `default`, or `talib:FUNC(...)`).")],
    symbols: Annotated[str, typer.Option(help="Sample symbols to test on, comma-separated.")] = "AAPL,IBM",
    cuts: Annotated[int, typer.Option(help="Random truncation points.")] = 7,
    as_json: JsonFlag = False,
) -> None:
    """Compute features on the full sample history and on histories cut at random points; values at or
    before each cut must not change. Exit 0 only when every feature passes."""
    import datetime as dt

    from quanto.data.sample import load_sample_bars
    from quanto.features.registry import check_lookahead, expand_names

    try:
        expanded = expand_names(names)
        bars = load_sample_bars(symbols.split(","), dt.date(2004, 1, 1), dt.date(2013, 1, 1), "all")
    except ValueError as err:
        _fail(as_json, 2, str(err))
    bad = check_lookahead(bars, expanded, n_cuts=cuts)
    results = [{"name": n, "ok": n not in bad, "mismatches": bad.get(n, 0)} for n in expanded]
    text = "\n".join(
        f"{'ok  ' if r['ok'] else 'FAIL'} {r['name']}"
        + ("" if r["ok"] else f" ({r['mismatches']} values changed)")
        for r in results
    )
    _emit(as_json, {"passed": not bad, "features": results}, text)
    if bad:
        raise typer.Exit(1)


# --- models -------------------------------------------------------------------------------------------


def _registry_call(as_json: bool, action: Any) -> Any:
    """Run one registry operation on Quanto's database: an unknown id or bad input exits 2, a
    database that cannot be reached exits 1."""
    import psycopg

    from quanto.store.db import connect, dsn_from_env, redact_dsn

    try:
        conn = connect()
    except psycopg.Error as err:
        _fail(as_json, 1, f"PostgreSQL at {redact_dsn(dsn_from_env())} is not usable: {err}".strip())
    try:
        with conn:
            return action(conn)
    except InputError as err:
        _fail(as_json, 2, str(err))


@models_app.command("ls")
def models_ls(
    name: Annotated[str | None, typer.Option("--name", help="Only models of this job name.")] = None,
    stage: Annotated[
        str | None, typer.Option("--stage", help="Only this stage: candidate or production.")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Registered models, newest first: id, job name, family, objective, stage, created_at, metrics."""
    from quanto.models.registry import list_models

    rows = _registry_call(as_json, lambda c: [r.summary() for r in list_models(c, name=name, stage=stage)])
    text = "\n".join(
        f"{r['model_id']:<40} {r['name']:<20} {r['family']:<13} {r['objective']:<14} {r['stage']:<10} "
        f"{r['created_at'][:19]}"
        for r in rows
    )
    _emit(as_json, {"models": rows}, text or "no models registered yet")


@models_app.command("show")
def models_show(model_id: str, lake: LakeOption = None, as_json: JsonFlag = False) -> None:
    """One model's full record (features with versions, config, data hashes, metrics) and its artifact
    files in the lake, checked against the hashes recorded at registration."""
    from quanto.lake.storage import Lake
    from quanto.models.registry import get_model, inspect_artifact

    record = _registry_call(as_json, lambda c: get_model(c, model_id))
    artifact = inspect_artifact(Lake(_lake_root(lake)), model_id)
    out = {
        **record.to_json(),
        "artifact_dir": str(artifact.folder),
        "files": [f.model_dump(include={"path", "sha256", "role"}) for f in artifact.files],
        "problems": artifact.problems,
    }
    lines = [
        f"{out['model_id']}  ({out['name']}, {out['family']} {out['objective']})",
        f"  stage       {out['stage']}" + (f" since {out['promoted_at'][:19]}" if out["promoted_at"] else ""),
        f"  created     {out['created_at'][:19]}  code {out['code_version']}",
        f"  metrics     {json.dumps(out['metrics'])}",
        f"  features    {len(out['features'])}: "
        + ", ".join(f"{n}@{'—' if v is None else v}" for n, v in out["features"].items()),
        f"  data        {len(out['data_hashes'])} files hashed",
        f"  artifact    {out['artifact_dir']}",
        *(f"    {f['path'].rsplit('/', 1)[-1]:<24} {f['sha256'][:16]}" for f in out["files"]),
        *(f"  problem     {p}" for p in out["problems"]),
    ]
    _emit(as_json, out, "\n".join(lines))


@models_app.command("promote")
def models_promote(model_id: str, as_json: JsonFlag = False) -> None:
    """Make a model the production model of its job name; the previous production model becomes a
    candidate again. Promoting the production model again changes nothing."""
    from quanto.models.registry import promote

    out = _registry_call(as_json, lambda c: promote(c, model_id).to_json())
    if not out["changed"]:
        text = f"{model_id} already is the production model of {out['name']}"
    else:
        demoted = f"; {', '.join(out['demoted'])} back to candidate" if out["demoted"] else ""
        text = f"{model_id} is now the production model of {out['name']}{demoted}"
    _emit(as_json, out, text)


# --- backtest -----------------------------------------------------------------------------------------


@backtest_app.command("sweep")
def backtest_sweep(
    config: Annotated[Path, typer.Option("--config", "-c", help="Sweep job file (YAML).")],
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the leaderboard.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Start SweepWorkflow: the job's pipeline up to its predictions, one backtest per grid point,
    then the leaderboard with the probability of backtest overfitting and the deflated Sharpe ratio."""
    from temporalio.client import WorkflowFailureError

    from quanto.starter.client import connect, ui_link
    from quanto.starter.sweep import start_sweep

    job = _load(SweepJob, config, as_json)

    async def main() -> tuple[dict, int]:
        client = await connect()
        handle = await start_sweep(client, job, str(config))
        out: dict[str, Any] = {"workflow_id": handle.id, "ui_url": ui_link(handle.id)}
        if not wait:
            return out, 0
        try:
            result = await handle.result()
        except WorkflowFailureError as err:
            return {**out, "status": "failed", "error": str(err.cause or err)}, 1
        return {**out, "status": "completed", **result.summary}, 0

    out, code = asyncio.run(main())
    board = out.get("leaderboard", [])
    text = "\n".join(
        [f"sweep {out['workflow_id']}: {out.get('status', 'started')}  {out['ui_url']}"]
        + [
            f"  #{r['rank']} {r['params']}  {out.get('metric')} {r.get(out.get('metric'))}"
            for r in board[:10]
        ]
        + ([f"  PBO {out['pbo']['pbo']:.2f}"] if out.get("pbo") else [])
    )
    _emit(as_json, out, text)
    raise typer.Exit(code)


# --- retrain ------------------------------------------------------------------------------------------


@retrain_app.command("run")
def retrain_run(
    config: Annotated[Path, typer.Option("--config", "-c", help="Retrain job file (YAML).")],
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the decision.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Start RetrainWorkflow: the research job on its rolling window, the challenger trained without
    the holdout, then promote or keep by the job's rule (the decision is recorded either way)."""
    from quanto.config.retrain import load_retrain
    from quanto.starter.retrain import result_text, run_retrain, utc_today

    try:
        cfg = load_retrain(config)
        cfg.research(cfg.window_end(utc_today()))  # a window that cannot exist fails here, not in the run
    except ValueError as err:  # ConfigError and InputError included
        _fail(as_json, 2, str(err))
    out, code = asyncio.run(run_retrain(cfg, str(config), wait, echo=not as_json))
    if as_json:
        print(json.dumps(out, default=str))
    else:
        print(result_text(out), file=sys.stderr if code else sys.stdout)
    raise typer.Exit(code)


@retrain_app.command("ls")
def retrain_ls(
    name: Annotated[str | None, typer.Option("--name", help="Only decisions of this job name.")] = None,
    limit: Annotated[int, typer.Option("--limit", help="Decisions to list at most.")] = 20,
    as_json: JsonFlag = False,
) -> None:
    """Recorded retraining decisions, newest first: challenger, incumbent, scores, decision, reason."""
    from quanto.models.retraining import list_decisions

    rows = _registry_call(as_json, lambda c: list_decisions(c, name=name, limit=limit))
    text = "\n".join(
        f"{r['decided_at'][:19]}  {r['name']:<16} {r['decision']:<7} {'promoted' if r['promoted'] else '':<8} "
        f"{r['challenger']}  {r['metric']} {r['challenger_score']} vs {r['incumbent'] or '—'} {r['incumbent_score']}"
        for r in rows
    )
    _emit(as_json, {"decisions": rows}, text or "no retraining decisions recorded yet")


# --- trade --------------------------------------------------------------------------------------------

SessionId = Annotated[str | None, typer.Option("--id", help="Workflow id (default: the latest session).")]
SessionConfig = Annotated[
    Path | None, typer.Option("--config", "-c", help="The trading job file (its session is meant).")
]


def _trade_call(as_json: bool, action: Any) -> Any:
    """Run `action(client)` against Temporal; bad input exits 2, an unknown session exits 2."""
    from temporalio.service import RPCError

    from quanto.starter.client import connect

    async def main() -> Any:
        return await action(await connect())

    try:
        return asyncio.run(main())
    except (InputError, ConfigError) as err:
        _fail(as_json, 2, str(err))
    except RPCError as err:
        _fail(as_json, 2, f"trading session: {err.message}")


@trade_app.command("start")
def trade_start(
    config: Annotated[Path, typer.Option("--config", "-c", help="Trading job file (YAML).")],
    date: Annotated[str | None, typer.Option("--date", help="Session date (default: the job's).")] = None,
    confirm_live: Annotated[
        bool, typer.Option("--confirm-live", help="Required with mode: live (real money).")
    ] = False,
    wait: Annotated[bool, typer.Option("--wait", help="Wait until the session closes.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Start TradingDayWorkflow for the job's session (a repeated start attaches to the running one)."""
    import datetime as dt

    from quanto.execution.day import check_live
    from quanto.starter.client import ui_link
    from quanto.starter.trade import start_trading

    cfg = _load(TradingConfig, config, as_json)
    try:
        day = dt.date.fromisoformat(date) if date else cfg.session_date()
    except ValueError:
        _fail(as_json, 2, f"--date: expected YYYY-MM-DD, got {date!r}")
    try:
        check_live(cfg, confirm_live)  # before anything connects or starts
    except InputError as err:
        _fail(as_json, 2, str(err))

    async def action(client: Any) -> dict:
        handle = await start_trading(client, cfg, str(config), day, confirm_live)
        out: dict[str, Any] = {
            "workflow_id": handle.id,
            "run_id": handle.result_run_id,
            "ui_url": ui_link(handle.id),
        }
        if not as_json:
            print(f"trading {handle.id}\n  Web UI: {out['ui_url']}", file=sys.stderr)
        if wait:
            result = await handle.result()
            out.update(result.model_dump(mode="json"))
        return out

    out = _trade_call(as_json, action)
    text = f"workflow {out['workflow_id']}: {out.get('status', 'started')}"
    if out.get("report_html"):
        text += f"\n  session report: {out['report_html']}"
    _emit(as_json, out, text)


@trade_app.command("status")
def trade_status(
    workflow_id: SessionId = None, config: SessionConfig = None, as_json: JsonFlag = False
) -> None:
    """State (ACTIVE|REDUCING|HALTED), when it halted, positions, orders and P&L of a session."""
    from quanto.starter.trade import find_session, status

    out = _trade_call(as_json, lambda client: _then(find_session(client, workflow_id, config), status))
    pnl = out.get("pnl") or {}
    money = lambda v: "—" if v is None else f"{v:,.2f}"  # noqa: E731
    open_orders = sum(o["status"] in ("new", "accepted", "partially_filled") for o in out["orders"])
    text = (
        f"{out['workflow_id']}: {out['state']} ({out.get('phase')}, {out.get('bars_done', 0)} bars)"
        + (f", halted at {out['halted_at']}: {out.get('reason')}" if out.get("halted_at") else "")
        + f"\n  equity {money(pnl.get('equity'))}  P&L {money(pnl.get('pnl'))}"
        f"  positions {sum(p['qty'] != 0 for p in out['positions'])}  open orders {open_orders}"
    )
    _emit(as_json, out, text)


async def _then(handle_coro: Any, fn: Any, *args: Any) -> Any:
    return await fn(await handle_coro, *args)


def _trade_signal(
    signal: str, reason: str | None, workflow_id: str | None, config: Path | None, as_json: bool
) -> None:
    from quanto.starter.trade import control, find_session

    out = _trade_call(
        as_json, lambda client: _then(find_session(client, workflow_id, config), control, signal, reason)
    )
    _emit(as_json, out, f"{out['workflow_id']}: {signal} sent; state {out['state']}")


ReasonOption = Annotated[str, typer.Option("--reason", help="Why (recorded in the audit log).")]


@trade_app.command("halt")
def trade_halt(
    reason: ReasonOption,
    workflow_id: SessionId = None,
    config: SessionConfig = None,
    as_json: JsonFlag = False,
) -> None:
    """Kill switch: no new orders, open orders cancelled."""
    _trade_signal("halt", reason, workflow_id, config, as_json)


@trade_app.command("flatten")
def trade_flatten(
    reason: ReasonOption,
    workflow_id: SessionId = None,
    config: SessionConfig = None,
    as_json: JsonFlag = False,
) -> None:
    """Halt and close every position."""
    _trade_signal("flatten", reason, workflow_id, config, as_json)


@trade_app.command("resume")
def trade_resume(
    workflow_id: SessionId = None, config: SessionConfig = None, as_json: JsonFlag = False
) -> None:
    """Trade again after a halt."""
    _trade_signal("resume", None, workflow_id, config, as_json)


@trade_app.command("limits")
def trade_limits(
    limits: Annotated[
        str, typer.Argument(help="New risk limits as JSON, e.g. '{\"max_daily_loss\": 0.01}'.")
    ],
    workflow_id: SessionId = None,
    config: SessionConfig = None,
    as_json: JsonFlag = False,
) -> None:
    """Change a running session's risk limits (validated by the workflow's update; a bad value changes nothing)."""
    from temporalio.client import WorkflowUpdateFailedError

    from quanto.starter.trade import find_session

    try:
        wanted = json.loads(limits)
    except json.JSONDecodeError as err:
        _fail(as_json, 2, f"limits: not JSON ({err})")

    async def action(client: Any) -> dict:
        handle = await find_session(client, workflow_id, config)
        try:
            current = await handle.execute_update("set_risk_limits", wanted, result_type=dict)
        except WorkflowUpdateFailedError as err:
            raise InputError(str(getattr(err.cause, "message", err.cause))) from err
        return {"workflow_id": handle.id, "limits": current}

    out = _trade_call(as_json, action)
    _emit(as_json, out, json.dumps(out["limits"], indent=2))


PortOption = Annotated[int, typer.Option("--port", help="The exchange's port on 127.0.0.1.")]


@exchange_app.command("start")
def exchange_start(port: PortOption = 8765, as_json: JsonFlag = False) -> None:
    """Start the local paper exchange in the background (no-op when it already runs)."""
    from quanto.starter.exchange import ensure_exchange

    url = ensure_exchange(port)
    _emit(as_json, {"url": url}, f"paper exchange at {url}")


@exchange_app.command("stop")
def exchange_stop(port: PortOption = 8765, as_json: JsonFlag = False) -> None:
    """Stop the local paper exchange."""
    from quanto.starter.exchange import stop_exchange

    stopped = stop_exchange(port)
    _emit(as_json, {"stopped": stopped}, "stopped" if stopped else "no exchange was running")


@exchange_app.command("status")
def exchange_status_cmd(port: PortOption = 8765, as_json: JsonFlag = False) -> None:
    """Whether the local paper exchange runs, and where."""
    from quanto.starter.exchange import exchange_status

    out = exchange_status(port)
    _emit(as_json, out, json.dumps(out))


# --- schedules ----------------------------------------------------------------------------------------


def _schedule_call(as_json: bool, what: str, action: Any) -> Any:
    """Run one schedule operation against Temporal; a missing schedule or bad input exits 2."""
    from temporalio.service import RPCError, RPCStatusCode

    from quanto.starter.client import connect

    async def main() -> Any:
        return await action(await connect())

    try:
        return asyncio.run(main())
    except RPCError as err:
        code = 2 if err.status in (RPCStatusCode.NOT_FOUND, RPCStatusCode.INVALID_ARGUMENT) else 1
        _fail(as_json, code, f"{what}: {err.message}")
    except InputError as err:  # ConfigError included
        _fail(as_json, 2, f"{what}: {err}" if not isinstance(err, ConfigError) else str(err))
    except RuntimeError as err:  # the client could not connect
        from quanto.starter.client import temporal_address

        _fail(as_json, 1, f"{what}: Temporal at {temporal_address()} is not reachable ({err})")


@schedule_app.command("apply")
def schedule_apply(
    config: Annotated[Path, typer.Option("--config", "-c", help="Schedules file (YAML).")],
    as_json: JsonFlag = False,
) -> None:
    """Create or update Temporal Schedules to match the file; re-applying changes nothing."""
    from quanto.starter import schedules

    cfg = _load(SchedulesConfig, config, as_json)
    out = _schedule_call(as_json, "apply", lambda c: schedules.apply(c, cfg, config.parent))
    text = "\n".join(f"{k:<9} {', '.join(v) or '—'}" for k, v in out.items())
    _emit(as_json, out, text)


@schedule_app.command("ls")
def schedule_ls(as_json: JsonFlag = False) -> None:
    """Quanto's schedules: paused or not, next runs, recent runs."""
    from quanto.starter import schedules

    rows = _schedule_call(as_json, "ls", schedules.list_schedules)
    text = "\n".join(
        f"{r['name']:<24} {'paused' if r['paused'] else 'active':<7} next {', '.join(r['next_runs'][:1]) or '—'}"
        f"  runs {r['runs']}"
        for r in rows
    )
    _emit(
        as_json, {"schedules": rows}, text or "no schedules; create them with quanto schedule apply -c FILE"
    )


def _schedule_op(name: str, op: str, as_json: bool, *args: Any) -> None:
    from quanto.starter import schedules

    _schedule_call(as_json, f"schedule {name!r}", lambda c: getattr(schedules, op)(c, name, *args))
    _emit(as_json, {"schedule": name, "action": op}, f"{op}: {name}")


@schedule_app.command("pause")
def schedule_pause(name: str, as_json: JsonFlag = False) -> None:
    """Pause a schedule."""
    _schedule_op(name, "pause", as_json)


@schedule_app.command("unpause")
def schedule_unpause(name: str, as_json: JsonFlag = False) -> None:
    """Resume a paused schedule."""
    _schedule_op(name, "unpause", as_json)


@schedule_app.command("trigger")
def schedule_trigger(name: str, as_json: JsonFlag = False) -> None:
    """Run a schedule's action now."""
    _schedule_op(name, "trigger", as_json)


@schedule_app.command("delete")
def schedule_delete(name: str, as_json: JsonFlag = False) -> None:
    """Delete a schedule (runs it started are not affected)."""
    _schedule_op(name, "delete", as_json)


@schedule_app.command("backfill")
def schedule_backfill(
    name: str,
    start: Annotated[str, typer.Option("--from", help="ISO date-time (UTC if no offset).")],
    end: Annotated[str, typer.Option("--to", help="ISO date-time (UTC if no offset).")],
    as_json: JsonFlag = False,
) -> None:
    """Run every action the schedule would have run between --from and --to."""
    import datetime as dt

    try:
        lo, hi = (dt.datetime.fromisoformat(v) for v in (start, end))
    except ValueError as err:
        _fail(as_json, 2, f"--from/--to: {err}")
    lo, hi = (t if t.tzinfo else t.replace(tzinfo=dt.UTC) for t in (lo, hi))
    if hi <= lo:
        _fail(as_json, 2, f"--to ({end}) must be after --from ({start})")
    _schedule_op(name, "backfill", as_json, lo, hi)


# --- config -------------------------------------------------------------------------------------------


@config_app.command("schema")
def config_schema(kind: str, as_json: JsonFlag = False) -> None:
    """JSON Schema of a job file kind (for editor completion)."""
    model = CONFIG_KINDS.get(kind)
    if model is None:
        _fail(as_json, 2, f"kind: unknown job-file kind {kind!r}; known: {sorted(CONFIG_KINDS)}")
    schema = model.model_json_schema()
    print(json.dumps(schema, indent=None if as_json else 2))


# --- demo ---------------------------------------------------------------------------------------------


@app.command("demo")
def demo(
    config: Annotated[Path, typer.Option("--config", "-c")] = Path("configs/demo.yaml"),
    as_json: JsonFlag = False,
) -> None:
    """Dev server (if none) + a worker + the research pipeline on configs/demo.yaml, waiting for the end."""
    from quanto.starter.client import UI_URL, temporal_address
    from quanto.starter.server import is_healthy
    from quanto.store.db import connect as db_connect
    from quanto.store.db import dsn_from_env, redact_dsn

    cfg = _load_pipeline(config, as_json)
    echo = not as_json
    try:
        db_connect().close()
    except Exception as err:  # psycopg.OperationalError and friends
        _fail(as_json, 1, f"PostgreSQL at {redact_dsn(dsn_from_env())} is not usable: {err}".strip())
    if not is_healthy(temporal_address()):
        server = _dev_server()
        if echo:
            print(f"starting Temporal dev server on {server.address} (Web UI {UI_URL}) …", file=sys.stderr)
        try:
            server.start()
        except (RuntimeError, TimeoutError, FileNotFoundError) as err:
            _fail(as_json, 1, str(err))
    elif echo:
        print(f"using the Temporal server on {temporal_address()} (Web UI {UI_URL})", file=sys.stderr)
    log_dir = STATE_DIR / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    worker_log = log_dir / "demo-worker.log"
    with open(worker_log, "ab") as log:
        worker_proc = subprocess.Popen(
            [sys.executable, "-m", "quanto.starter.cli", "worker"], stdout=log, stderr=subprocess.STDOUT
        )

    def worker_alive() -> str | None:
        code = worker_proc.poll()
        return None if code is None else f"the demo's worker exited with code {code}; see {worker_log}"

    try:
        t0 = time.perf_counter()
        try:
            out, code = asyncio.run(_run_pipeline(cfg, str(config), wait=True, echo=echo, alive=worker_alive))
        except RuntimeError as err:
            _fail(as_json, 1, str(err))
        out["seconds"] = round(time.perf_counter() - t0, 2)
    finally:
        worker_proc.send_signal(signal.SIGTERM)
        try:
            worker_proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker_proc.kill()
    _print_result(out, as_json)
    if echo and code == 0:
        print(
            f"  done in {out['seconds']:.1f}s — open the report, or browse the run in the Web UI",
            file=sys.stderr,
        )
    raise typer.Exit(code)


def main() -> None:
    """Console-script entry point.

    After a command that used a Temporal client, the process ends with os._exit once output is
    flushed: the SDK's native runtime threads can otherwise call into Python while the interpreter
    finalizes, which aborts the process (SIGABRT, "PyGILState_Release ... finalizing") after the
    command itself succeeded.
    """
    try:
        app()
        code: int = 0
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
        if isinstance(done.code, str):
            print(done.code, file=sys.stderr)
    if "temporalio.bridge.runtime" not in sys.modules:
        sys.exit(code)
    import logging

    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


if __name__ == "__main__":
    main()
