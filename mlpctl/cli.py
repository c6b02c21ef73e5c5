"""The `mlpctl` command: run the service and talk to it.

    mlpctl standalone [--host 127.0.0.1] [--port 8000] [--data-dir ./data]
    mlpctl api [--host H] [--port P]            # the API alone (docker-compose "api")
    mlpctl worker [--queues cpu,gpu] [--concurrency N]   # one Celery worker ("worker")
    mlpctl keys create --tenant NAME [--data-dir DIR]
    mlpctl jobs submit spec.yaml [--follow] | show ID | list | follow ID | cancel ID | metrics ID
    mlpctl jobs weights ID -o model.safetensors [--format pt|onnx] | predict ID '[[...]]'
    (client commands print tables; --json prints JSON for scripts)
    mlpctl jobs logs ID [-f] [--since N]       # the job's log; -f follows it until the end
    mlpctl datasets upload data.csv --target y | list | get ID | delete ID
    mlpctl sweeps submit sweep.yaml [--follow] | show ID | list | cancel ID | extend ID N

Server commands read the same environment as the service (`MLP_DATA_DIR`, `DATABASE_URL`,
`REDIS_URL`, ...; `--data-dir` sets `MLP_DATA_DIR`). Client commands read `MLP_URL`
(default http://127.0.0.1:8000) and `MLP_API_KEY`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from store.status import TERMINAL, JobStatus

__all__ = ["main", "build_parser", "celery_worker_argv"]

DEFAULT_URL = "http://127.0.0.1:8000"
# the extra each server command needs; `pip install mlp-training-service` alone brings the
# engine and the client commands (jobs, datasets)
SERVER_EXTRAS = {"standalone": "standalone", "api": "server", "worker": "server", "keys": "server"}
OUR_PACKAGES = {"mlp_engine", "store", "messaging", "service", "worker", "mlpctl"}


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value in (None, ""):
        return default
    try:
        return int(value)
    except ValueError:
        raise SystemExit(f"mlpctl: {name}={value!r} is not an integer") from None


def _use_data_dir(data_dir: str | None) -> None:
    """`--data-dir` is `MLP_DATA_DIR`, made absolute so children and URLs agree on it."""
    if data_dir:
        os.environ["MLP_DATA_DIR"] = str(Path(data_dir).expanduser().resolve())


def _database_url() -> str:
    """The database the service would use, from the same settings class it reads."""
    from store.settings import CommonSettings, ConfigError

    try:
        settings = CommonSettings.load()
    except ConfigError as exc:  # the message names the variable
        raise SystemExit(f"mlpctl: {exc}") from None
    return str(settings.database_url)


# --------------------------------------------------------------------------- server commands


def cmd_standalone(args: argparse.Namespace) -> int:
    from mlpctl.standalone import Standalone

    data_dir = args.data_dir or os.environ.get("MLP_DATA_DIR") or "./data"
    return Standalone(host=args.host, port=args.port, data_dir=Path(data_dir),
                      queues=args.queues, shutdown_timeout=args.shutdown_timeout,
                      console_logs=args.console_logs).run()


def cmd_api(args: argparse.Namespace) -> int:
    _use_data_dir(args.data_dir)
    from service.server import serve
    from service.settings import ConfigError, Settings

    try:
        settings = Settings.load()  # the app reads it again; here to fail before serving
    except ConfigError as exc:
        raise SystemExit(f"mlpctl api: {exc}") from None
    # (the app migrates the database to the latest schema as it starts)
    serve(host=args.host, port=args.port, log_level=args.log_level,
          header_timeout_s=settings.header_timeout_s,
          body_idle_timeout_s=settings.body_idle_timeout_s,
          max_connections=settings.max_connections, proxy_headers=True,
          # event streams stay open; do not let them hold a shutdown forever
          timeout_graceful_shutdown=5)
    return 0


def celery_worker_argv(*, queues: str | None, concurrency: int, loglevel: str = "INFO",
                       hostname: str | None = None) -> list[str]:
    """The Celery command line of one worker process; without `queues` the worker picks
    them (cpu, plus gpu where CUDA is available)."""
    argv = [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker",
            "-c", str(concurrency), "--loglevel", loglevel,
            # jobs are claimed and cancelled through the database: no worker-to-worker chatter
            "--without-mingle", "--without-gossip"]
    if queues:
        argv += ["-Q", queues]
    if hostname:
        argv += ["-n", hostname]
    return argv


def _parse_queues(queues: str) -> str | None:
    """`cpu`, `gpu`, `cpu,gpu` as given; None for `auto`."""
    names = [q.strip() for q in queues.split(",") if q.strip()]
    if names == ["auto"]:
        return None
    unknown = sorted(set(names) - {"cpu", "gpu"})
    if unknown or not names:
        raise SystemExit(f"mlpctl worker: --queues takes cpu, gpu, cpu,gpu or auto; "
                         f"got {queues!r}")
    return ",".join(names)


def cmd_worker(args: argparse.Namespace) -> int:
    _use_data_dir(args.data_dir)
    if args.threads is not None:
        os.environ["MLP_WORKER_THREADS"] = str(args.threads)
    if args.concurrency < 1:
        raise SystemExit("mlpctl worker: --concurrency must be at least 1")
    queues = _parse_queues(args.queues)
    # the worker's settings see what its command line says (threads = cores / concurrency)
    if queues:
        os.environ["MLP_WORKER_QUEUES"] = queues
    else:
        os.environ.pop("MLP_WORKER_QUEUES", None)
    os.environ["MLP_WORKER_CONCURRENCY"] = str(args.concurrency)
    import celery  # noqa: F401  (missing: say which extra here, not in the exec'd process)

    argv = celery_worker_argv(queues=queues, concurrency=args.concurrency,
                              loglevel=args.loglevel, hostname=args.hostname)
    sys.stdout.flush()
    sys.stderr.flush()
    # exec: Celery becomes this process, so signals from docker or a supervisor reach it
    os.execv(argv[0], argv)
    return 0  # pragma: no cover


def cmd_keys_create(args: argparse.Namespace) -> int:
    _use_data_dir(args.data_dir)
    from store.db import init_db, make_session_factory
    from store.keys import create_api_key

    url = _database_url()
    init_db(url)
    factory = make_session_factory(url)
    try:
        with factory() as session:
            key = create_api_key(session, args.tenant)
    except ValueError as exc:  # a tenant name it cannot take
        raise SystemExit(f"mlpctl keys create: {exc}") from None
    finally:
        factory.kw["bind"].dispose()
    print(key)
    print(f"(API key for tenant {args.tenant!r}; shown once, stored hashed)", file=sys.stderr)
    return 0


# --------------------------------------------------------------------------- client commands


def _client(args: argparse.Namespace) -> Any:
    from mlpctl.sdk import Client

    return Client(args.url, api_key=args.api_key)


def _print(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=False))


def _read_text(path: str, what: str) -> str:
    """A file's text (`-`: standard input), or a one-line error naming the file."""
    if path == "-":
        return sys.stdin.read()
    try:
        return Path(path).read_text()
    except FileNotFoundError:
        raise SystemExit(f"mlpctl: no {what} file {path!r}") from None
    except IsADirectoryError:
        raise SystemExit(f"mlpctl: {path!r} is a directory, not a {what} file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SystemExit(f"mlpctl: cannot read {what} file {path!r}: {exc}") from None


def read_spec(path: str) -> dict[str, Any]:
    """A job spec from a .json or .yaml file (`-` reads JSON or YAML from stdin)."""
    text = _read_text(path, "spec")
    if path.endswith((".yaml", ".yml")) or path == "-":
        import yaml

        try:
            spec = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            where = getattr(exc, "problem_mark", None)
            at = f" (line {where.line + 1}, column {where.column + 1})" if where else ""
            problem = getattr(exc, "problem", None) or "syntax error"
            raise SystemExit(f"mlpctl: {path} is not valid YAML{at}: {problem}") from None
    else:
        try:
            spec = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SystemExit(f"mlpctl: {path} is not valid JSON (line {exc.lineno}, column "
                             f"{exc.colno}): {exc.msg}") from None
    if not isinstance(spec, dict):
        raise SystemExit(f"mlpctl: {path} does not hold a job spec (a mapping)")
    return spec


def read_rows(value: str) -> list[Any]:
    """Rows to predict: inline JSON (`[[...]]`, `[{"name": value, ...}]` or `{"x": [...]}`),
    a JSON file, or `-`."""
    text = value if value.lstrip().startswith(("[", "{")) else _read_text(value, "input")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SystemExit(f"mlpctl: the rows are not valid JSON (line {exc.lineno}, column "
                         f"{exc.colno}): {exc.msg}; give [[...], ...] or a file") from None
    rows = data.get("x") if isinstance(data, dict) else data
    if not isinstance(rows, list):
        raise SystemExit('mlpctl: give the rows as [[...], ...], [{"feature": value, ...}, '
                         '...] or {"x": [...]}')
    return rows


def _exit_status(job: dict[str, Any]) -> int:
    return 0 if job["status"] == JobStatus.SUCCEEDED else 1


def cmd_jobs(args: argparse.Namespace) -> int:
    from mlpctl import display

    client = _client(args)
    action, as_json = args.jobs_action, args.json
    out = display.print_json if as_json else None
    if action == "submit":
        job = client.submit(read_spec(args.spec), idempotency_key=args.idempotency_key)
        if args.follow or args.wait:
            if not as_json:
                display.console.print(f"submitted {job['id']}; following it (Ctrl-C stops "
                                      f"following, not the job)", markup=False)
            return _exit_status(display.follow_job(client, job, as_json=as_json,
                                                   timeout=args.timeout))
        if out:
            out(job)
        else:
            display.console.print(f"submitted {job['id']} ({job['status']})\n"
                                  f"  follow it:  mlpctl jobs follow {job['id']}", markup=False)
        return 0 if job["status"] not in TERMINAL or job["status"] == JobStatus.SUCCEEDED else 1
    if action in ("get", "show"):
        job = client.get(args.job_id)
        if out:
            out(job)
        else:
            display.console.print(display.describe_job(job), markup=False)
    elif action == "findings":
        if out:
            out(client.findings(args.job_id))
        else:
            display.console.print(display.describe_job(client.get(args.job_id)), markup=False)
    elif action == "list":
        jobs = list(client.list_jobs(status=args.status, name=args.name, limit=args.limit))
        if out:
            out(jobs)
        elif not jobs:
            display.console.print("no jobs")
        else:
            display.table(display.JOB_COLUMNS, display.job_rows(jobs))
    elif action in ("wait", "follow"):
        return _exit_status(display.follow_job(client, client.get(args.job_id),
                                               as_json=as_json, timeout=args.timeout))
    elif action == "cancel":
        job = client.cancel(args.job_id)
        if out:
            out(job)
        else:
            display.console.print(f"{job['id']}: {job['status']}", markup=False)
    elif action == "delete":
        client.delete_job(args.job_id)
        if not as_json:
            display.console.print(f"deleted {args.job_id}", markup=False)
    elif action == "metrics":
        metrics = client.metrics(args.job_id, since=args.since)
        if out:
            out(metrics)
        else:
            display.metrics_table(metrics["epochs"])
    elif action == "logs":
        if args.follow:
            for line in client.follow_logs(args.job_id, since=args.since):
                print(line, flush=True)
        else:
            sys.stdout.write(client.logs(args.job_id, since=args.since))
    elif action == "weights":
        target = args.output or f"{args.job_id}.{args.format}"
        client.weights(args.job_id, target, format=args.format)
        print(target)
    elif action == "predict":
        answer = client.predict(args.job_id, read_rows(args.x))
        if out:
            out(answer)
        else:
            _prediction_table(display, answer)
    return 0


def _prediction_table(display: Any, answer: dict[str, Any]) -> None:
    probabilities = answer.get("probabilities")
    rows = []
    for i, prediction in enumerate(answer["predictions"]):
        p = probabilities[i] if probabilities else None
        top = max(p) if isinstance(p, list) and p and not isinstance(p[0], list) else None
        rows.append([i, prediction, top])
    display.table(("row", "prediction", "probability"), rows)


def cmd_datasets(args: argparse.Namespace) -> int:
    from mlpctl import display

    client = _client(args)
    action, out = args.datasets_action, (display.print_json if args.json else None)
    if action == "upload":
        path = Path(args.file)
        if not path.is_file():
            raise SystemExit(f"mlpctl: no file {args.file!r} to upload")
        ds = _upload(client, display, path, args, quiet=bool(out))
        if out:
            out(ds)
        else:
            display.key_values((k, ds.get(k)) for k in (
                "id", "name", "n_rows", "n_features", "n_classes", "target", "feature_names",
                "bytes", "sha256"))
    elif action == "list":
        items = list(client.list_datasets(limit=args.limit))
        if out:
            out(items)
        else:
            display.table(("id", "name", "rows", "features", "classes", "bytes", "age"),
                          ([d["id"], d.get("name"), d.get("n_rows"), d.get("n_features"),
                            d.get("n_classes"), d.get("bytes"), display.age(d.get("created_at"))]
                           for d in items))
    elif action == "get":
        ds = client.get_dataset(args.dataset_id)
        if out:
            out(ds)
        else:
            display.key_values(ds.items())
    elif action == "delete":
        client.delete_dataset(args.dataset_id)
        if not out:
            display.console.print(f"deleted {args.dataset_id}", markup=False)
    return 0


def _upload(client: Any, display: Any, path: Path, args: argparse.Namespace, *,
            quiet: bool) -> dict[str, Any]:
    """Upload, with a progress bar for files of a megabyte or more."""
    size = path.stat().st_size
    if quiet or size < 2**20:
        return dict(client.upload_dataset(path, target=args.target, name=args.name,
                                          format=args.format))
    from rich.progress import DownloadColumn, Progress, TransferSpeedColumn

    with Progress(*Progress.get_default_columns(), DownloadColumn(), TransferSpeedColumn(),
                  console=display.console, transient=True) as bar:
        task = bar.add_task(f"uploading {path.name}", total=size)
        return dict(client.upload_dataset(
            path, target=args.target, name=args.name, format=args.format,
            progress=lambda sent: bar.update(task, completed=sent)))


def cmd_webhooks(args: argparse.Namespace) -> int:
    from mlpctl import display

    webhooks = _client(args).webhooks
    action, out = args.webhooks_action, (display.print_json if args.json else None)
    if action == "create":
        hook = webhooks.create(args.webhook_url, events=args.events, secret=args.secret)
        if out:
            out(hook)
        else:
            display.key_values((k, hook.get(k)) for k in ("id", "url", "events", "created_at"))
            display.console.print(f"signing secret (shown once, keep it): {hook.get('secret')}",
                                  markup=False)
    elif action == "list":
        hooks = webhooks.list()
        if out:
            out(hooks)
        else:
            display.table(("id", "url", "events", "age"),
                          ([h["id"], h.get("url"), ", ".join(h.get("events") or []),
                            display.age(h.get("created_at"))] for h in hooks))
    elif action == "deliveries":
        items = list(webhooks.deliveries(args.webhook_id, limit=args.limit))
        if out:
            out(items)
        else:
            display.table(("id", "event", "status", "attempts", "last code", "next attempt"),
                          ([d.get("id"), d.get("event"), d.get("status"), d.get("attempts"),
                            d.get("last_status_code"), d.get("next_attempt_at")]
                           for d in items))
    elif action == "ping":
        answer = webhooks.ping(args.webhook_id)
        if out:
            out(answer)
        else:
            display.console.print(f"ping queued: delivery {answer.get('id')}", markup=False)
    elif action == "delete":
        webhooks.delete(args.webhook_id)
        if not out:
            display.console.print(f"deleted {args.webhook_id}", markup=False)
    return 0


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlpctl", description="Run and use the MLP training service.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    data_dir_help = "data directory (sets MLP_DATA_DIR; default: $MLP_DATA_DIR or ./data)"
    host = os.environ.get("MLP_HOST", "127.0.0.1")
    port = _env_int("MLP_PORT", 8000)

    p = sub.add_parser("standalone", help="API + one worker + Redis + SQLite in one process tree",
                       description="Run the whole service on this machine: the API, one "
                       "worker, SQLite and local artifacts in the data directory, and Redis "
                       "from REDIS_URL or an embedded one. Ctrl-C stops all of it.")
    p.add_argument("--host", default=host, help=f"address to listen on (default {host})")
    p.add_argument("--port", type=int, default=port, help=f"port to listen on (default {port})")
    p.add_argument("--data-dir", help=data_dir_help)
    p.add_argument("--queues", default="auto",
                   help="queues of the worker: cpu, gpu, cpu,gpu or auto (cpu, plus gpu when "
                        "CUDA is available; default)")
    p.add_argument("--shutdown-timeout", type=float, default=15.0,
                   help="seconds the processes get to stop before they are killed "
                        "(default 15)")
    p.add_argument("--console-logs", action="store_true",
                   help="show the children's logs here instead of in DATA_DIR/logs/")
    p.set_defaults(func=cmd_standalone)

    p = sub.add_parser("api", help="run the HTTP API alone (uvicorn)")
    p.add_argument("--host", default=host, help=f"address to listen on (default {host})")
    p.add_argument("--port", type=int, default=port, help=f"port to listen on (default {port})")
    p.add_argument("--data-dir", help=data_dir_help)
    p.add_argument("--log-level", default="info",
                   choices=["critical", "error", "warning", "info", "debug", "trace"])
    p.set_defaults(func=cmd_api)

    p = sub.add_parser("worker", help="run one Celery training worker alone")
    p.add_argument("--queues", default=os.environ.get("MLP_WORKER_QUEUES", "auto"),
                   help="comma-separated queues: cpu, gpu, or auto (cpu, plus gpu when CUDA "
                        "is available; default $MLP_WORKER_QUEUES or auto)")
    p.add_argument("--concurrency", type=int, default=_env_int("MLP_WORKER_CONCURRENCY", 1),
                   help="jobs trained at once (default $MLP_WORKER_CONCURRENCY or 1)")
    p.add_argument("--threads", type=int,
                   help="torch threads per job (sets MLP_WORKER_THREADS)")
    p.add_argument("--data-dir", help=data_dir_help)
    p.add_argument("--loglevel", default="INFO")
    p.add_argument("--hostname", help="Celery node name (default celery@HOSTNAME)")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("keys", help="manage API keys")
    keys = p.add_subparsers(dest="keys_action", required=True, metavar="ACTION")
    k = keys.add_parser("create", help="create an API key and print it once")
    k.add_argument("--tenant", required=True, help="tenant name (created if missing)")
    k.add_argument("--data-dir", help=data_dir_help)
    k.set_defaults(func=cmd_keys_create)

    def client_options(q: argparse.ArgumentParser) -> None:
        q.add_argument("--url", default=os.environ.get("MLP_URL", DEFAULT_URL),
                       help="service URL (default $MLP_URL or %(default)s)")
        q.add_argument("--api-key", default=os.environ.get("MLP_API_KEY"),
                       help="API key (default $MLP_API_KEY)")
        q.add_argument("--json", action="store_true",
                       help="print JSON for scripts (one object per line when following) "
                            "instead of tables")

    p = sub.add_parser("jobs", help="submit and follow training jobs")
    jobs = p.add_subparsers(dest="jobs_action", required=True, metavar="ACTION")
    j = jobs.add_parser("submit", help="submit a job spec (.json or .yaml)")
    j.add_argument("spec")
    j.add_argument("-f", "--follow", action="store_true",
                   help="follow it: a live progress bar (epoch, losses, the task metric, "
                        "ETA), findings as they come, then a summary")
    j.add_argument("--wait", action="store_true", help="the same as --follow")
    j.add_argument("--timeout", type=float, help="give up following after this many seconds")
    j.add_argument("--idempotency-key")
    for name, help_text in [("show", "a job: status, progress, best metrics, error and "
                                     "findings with what to change"),
                            ("get", "the same as show (--json: the whole job object)"),
                            ("findings", "what the rules found, with what to change"),
                            ("follow", "follow a job until it ends (as submit --follow)"),
                            ("wait", "the same as follow"),
                            ("cancel", "cancel a job"), ("delete", "delete a finished job")]:
        j = jobs.add_parser(name, help=help_text)
        j.add_argument("job_id")
        if name in ("wait", "follow"):
            j.add_argument("--timeout", type=float,
                           help="give up following after this many seconds")
    j = jobs.add_parser("list", help="list jobs, newest first")
    j.add_argument("--status")
    j.add_argument("--name")
    j.add_argument("--limit", type=int, help="at most this many jobs")
    j = jobs.add_parser("metrics", help="per-epoch metrics")
    j.add_argument("job_id")
    j.add_argument("--since", type=int)
    j = jobs.add_parser("logs", help="the job's log (start, device, data, epochs, warnings, "
                                     "errors)")
    j.add_argument("job_id")
    j.add_argument("-f", "--follow", action="store_true",
                   help="print new lines as they come, until the job ends")
    j.add_argument("--since", type=int, help="only lines after this line number")
    j = jobs.add_parser("weights", help="download the trained weights")
    j.add_argument("job_id")
    j.add_argument("-o", "--output")
    j.add_argument("--format", choices=["safetensors", "pt", "onnx"], default="safetensors")
    j = jobs.add_parser("predict", help="predict rows: inline JSON ('[[...], ...]' in the "
                                        "model's feature order, or '[{\"name\": value, ...}]' "
                                        'by feature name), a JSON file of rows or {"x": [...]}, '
                                        "or - for stdin")
    j.add_argument("job_id")
    j.add_argument("x", metavar="ROWS")
    for j in jobs.choices.values():
        client_options(j)
    p.set_defaults(func=cmd_jobs)

    p = sub.add_parser("datasets", help="upload and list datasets")
    datasets = p.add_subparsers(dest="datasets_action", required=True, metavar="ACTION")
    d = datasets.add_parser("upload", help="upload a CSV, NPZ or Parquet file")
    d.add_argument("file")
    d.add_argument("--target", required=True,
                   help="target column (several, comma-separated, for multilabel)")
    d.add_argument("--name")
    d.add_argument("--format", choices=["csv", "npz", "parquet"])
    d = datasets.add_parser("list", help="list datasets")
    d.add_argument("--limit", type=int)
    for name in ("get", "delete"):
        d = datasets.add_parser(name, help=f"{name} a dataset")
        d.add_argument("dataset_id")
    for d in datasets.choices.values():
        client_options(d)
    p.set_defaults(func=cmd_datasets)

    p = sub.add_parser("webhooks", help="signed notifications of job events to a URL")
    hooks = p.add_subparsers(dest="webhooks_action", required=True, metavar="ACTION")
    w = hooks.add_parser("create", help="subscribe a URL to events (prints the secret once)")
    w.add_argument("webhook_url", metavar="URL")
    w.add_argument("--event", dest="events", action="append", required=True,
                   help="an event name such as job.succeeded (repeat for several)")
    w.add_argument("--secret", help="the signing secret (default: generated)")
    hooks.add_parser("list", help="list webhooks")
    w = hooks.add_parser("deliveries", help="a webhook's delivery log, newest first")
    w.add_argument("webhook_id")
    w.add_argument("--limit", type=int)
    for name, help_text in [("ping", "send a ping delivery"),
                            ("delete", "delete a webhook and its deliveries")]:
        w = hooks.add_parser(name, help=help_text)
        w.add_argument("webhook_id")
    for w in hooks.choices.values():
        client_options(w)
    p.set_defaults(func=cmd_webhooks)

    from mlpctl import sweeps_cli

    sweeps_cli.add_parser(sub, client_options)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `mlpctl jobs list | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except ModuleNotFoundError as exc:
        extra = SERVER_EXTRAS.get(args.command)
        if extra is None or (exc.name or "").split(".")[0] in OUR_PACKAGES:
            raise
        print(f"mlpctl {args.command}: needs the '{extra}' extra (no module named "
              f"{exc.name!r}): pip install 'mlp-training-service[{extra}]'", file=sys.stderr)
        return 1
    except Exception as exc:
        message = _client_error(exc, args)
        if message is None:
            raise
        print(f"mlpctl: {message}", file=sys.stderr)
        return 1


def _client_error(exc: Exception, args: argparse.Namespace) -> str | None:
    """What a client command's failure means to a person; None: not a client failure."""
    if "url" not in args:
        return None
    import httpx

    from mlpctl.sdk import APIError

    if isinstance(exc, APIError | TimeoutError):
        return str(exc)
    if isinstance(exc, httpx.TransportError):
        return f"cannot reach the service at {args.url} ({exc}); is it running? (MLP_URL)"
    return None


if __name__ == "__main__":
    raise SystemExit(main())
