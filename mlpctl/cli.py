"""The `mlpctl` command: run the service and talk to it.

    mlpctl standalone [--host 127.0.0.1] [--port 8000] [--data-dir ./data]
    mlpctl api [--host H] [--port P]            # the API alone (docker-compose "api")
    mlpctl worker [--queues cpu,gpu] [--concurrency N]   # one Celery worker ("worker")
    mlpctl keys create --tenant NAME [--data-dir DIR]
    mlpctl jobs submit spec.yaml [--wait] | get ID | list | wait ID | cancel ID | metrics ID
    mlpctl jobs weights ID -o model.safetensors [--format pt|onnx] | predict ID x.json
    mlpctl jobs logs ID [-f] [--since N]       # the job's log; -f follows it until the end
    mlpctl datasets upload data.csv --target y | list | get ID | delete ID

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


def read_spec(path: str) -> dict[str, Any]:
    """A job spec from a .json or .yaml file (`-` reads JSON or YAML from stdin)."""
    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    if path.endswith((".yaml", ".yml")) or path == "-":
        import yaml

        spec = yaml.safe_load(text)
    else:
        spec = json.loads(text)
    if not isinstance(spec, dict):
        raise SystemExit(f"mlpctl: {path} does not hold a job spec (a mapping)")
    return spec


def describe_job(job: dict[str, Any]) -> str:
    """A job as `mlpctl jobs show` prints it."""
    progress = job.get("progress") or {}
    lines = [f"job {job['id']}" + (f" ({job['name']})" if job.get("name") else ""),
             f"  status    {job['status']}, epoch {progress.get('epoch', 0)} of "
             f"{progress.get('epochs', '?')}, device {job.get('device') or '-'}, "
             f"{job.get('parameter_count') or 0} parameters"]
    metrics = job.get("metrics") or {}
    best = metrics.get("best") or {}
    if metrics.get("best_epoch") is not None:
        values = ", ".join(f"{k} {v:.4g}" for k, v in best.items()
                           if k != "epoch" and isinstance(v, (int, float)))
        lines.append(f"  best      epoch {metrics['best_epoch']}: {values}")
    if job.get("error"):
        lines.append(f"  error     {job['error'].get('type')}: {job['error'].get('message')}")
    findings = job.get("findings") or []
    lines.append(f"  findings  {len(findings) or 'none'}")
    for f in findings:
        when = f"epoch {f['epoch']}" if f.get("epoch") is not None else "before training"
        where = f", {f['layer']}" if f.get("layer") else ""
        lines.append(f"    [{f['severity']}] {f['rule']} ({when}{where}): {f['message']}")
        if f.get("suggestion"):
            change = ", ".join(f"{k}={json.dumps(v)}" for k, v in f["suggestion"].items())
            lines.append(f"      try: {change}")
    return "\n".join(lines)


def cmd_jobs(args: argparse.Namespace) -> int:
    client = _client(args)
    action = args.jobs_action
    if action == "submit":
        job = client.submit(read_spec(args.spec), idempotency_key=args.idempotency_key)
        if args.wait:
            job = client.wait(job["id"], timeout=args.timeout)
        _print(job)
        return 0 if job["status"] not in TERMINAL or job["status"] == JobStatus.SUCCEEDED else 1
    if action == "get":
        _print(client.get(args.job_id))
    elif action == "show":
        print(describe_job(client.get(args.job_id)))
    elif action == "findings":
        _print(client.findings(args.job_id))
    elif action == "list":
        _print(list(client.list_jobs(status=args.status, name=args.name, limit=args.limit)))
    elif action == "wait":
        job = client.wait(args.job_id, timeout=args.timeout)
        _print(job)
        return 0 if job["status"] == "succeeded" else 1
    elif action == "cancel":
        _print(client.cancel(args.job_id))
    elif action == "delete":
        client.delete_job(args.job_id)
    elif action == "metrics":
        _print(client.metrics(args.job_id, since=args.since))
    elif action == "logs":
        if args.follow:
            for line in client.follow_logs(args.job_id, since=args.since):
                print(line, flush=True)
        else:
            sys.stdout.write(client.logs(args.job_id, since=args.since))
    elif action == "weights":
        out = args.output or f"{args.job_id}.{args.format}"
        client.weights(args.job_id, out, format=args.format)
        print(out)
    elif action == "predict":
        x = json.loads(Path(args.x).read_text() if args.x != "-" else sys.stdin.read())
        _print(client.predict(args.job_id, x["x"] if isinstance(x, dict) else x))
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    client = _client(args)
    action = args.datasets_action
    if action == "upload":
        _print(client.upload_dataset(args.file, target=args.target, name=args.name,
                                     format=args.format))
    elif action == "list":
        _print(list(client.list_datasets(limit=args.limit)))
    elif action == "get":
        _print(client.get_dataset(args.dataset_id))
    elif action == "delete":
        client.delete_dataset(args.dataset_id)
    return 0


def cmd_webhooks(args: argparse.Namespace) -> int:
    webhooks = _client(args).webhooks
    action = args.webhooks_action
    if action == "create":
        _print(webhooks.create(args.webhook_url, events=args.events, secret=args.secret))
    elif action == "list":
        _print(webhooks.list())
    elif action == "deliveries":
        _print(list(webhooks.deliveries(args.webhook_id, limit=args.limit)))
    elif action == "ping":
        _print(webhooks.ping(args.webhook_id))
    elif action == "delete":
        webhooks.delete(args.webhook_id)
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

    p = sub.add_parser("jobs", help="submit and follow training jobs")
    jobs = p.add_subparsers(dest="jobs_action", required=True, metavar="ACTION")
    j = jobs.add_parser("submit", help="submit a job spec (.json or .yaml)")
    j.add_argument("spec")
    j.add_argument("--wait", action="store_true", help="wait until the job ends")
    j.add_argument("--timeout", type=float, help="give up waiting after this many seconds")
    j.add_argument("--idempotency-key")
    for name, help_text in [("get", "a job as JSON"),
                            ("show", "a job for people: status, progress, metrics, error and "
                                     "findings with what to change"),
                            ("findings", "what the rules found, as JSON"),
                            ("wait", "wait until a job ends"),
                            ("cancel", "cancel a job"), ("delete", "delete a finished job")]:
        j = jobs.add_parser(name, help=help_text)
        j.add_argument("job_id")
        if name == "wait":
            j.add_argument("--timeout", type=float)
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
    j = jobs.add_parser("predict", help='predict: a JSON file with {"x": [[...]]}')
    j.add_argument("job_id")
    j.add_argument("x")
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
