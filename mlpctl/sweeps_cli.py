"""`mlpctl sweeps ...` (SPEC 9): submit a sweep file (and follow it live), show its
leaderboard, list, cancel, extend and delete. `add_parser(subparsers)` adds the command;
`run(args, client)` runs it (mlpctl.cli wires both)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from .sdk import APIError, Client

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any,
               client_options: Callable[[argparse.ArgumentParser], None]
               ) -> argparse.ArgumentParser:
    """`mlpctl sweeps ...`; `client_options` adds --url, --api-key and --json to each."""
    parser = subparsers.add_parser("sweeps", help="search job specs: submit, show, cancel")
    sub = parser.add_subparsers(dest="sweeps_command", required=True)
    submit = sub.add_parser("submit", help="submit a sweep file (.json or .yaml)")
    submit.add_argument("file", help="the sweep request (- reads stdin)")
    submit.add_argument("--follow", action="store_true",
                        help="show the trials live until the sweep ends")
    show = sub.add_parser("show", help="a sweep and its leaderboard")
    show.add_argument("id")
    sub.add_parser("list", help="your sweeps, newest first")
    cancel = sub.add_parser("cancel", help="no new trials; running ones cancelled")
    cancel.add_argument("id")
    extend = sub.add_parser("extend", help="raise max_trials (a finished sweep runs again)")
    extend.add_argument("id")
    extend.add_argument("max_trials", type=int)
    delete = sub.add_parser("delete", help="delete a finished sweep and its trials")
    delete.add_argument("id")
    for command in sub.choices.values():
        client_options(command)
    parser.set_defaults(func=_main)
    return parser


def _main(args: argparse.Namespace) -> int:
    from .sdk import Client

    return run(args, Client(args.url, api_key=args.api_key))


def run(args: argparse.Namespace, client: Client) -> int:
    from rich.console import Console

    console = Console()
    try:
        command = args.sweeps_command
        if command == "submit":
            from .cli import read_spec

            sweep = client.sweep(read_spec(args.file))
            if args.json and args.follow:  # one JSON object per event, for scripts
                for kind, data in client.sweep_events(sweep["id"]):
                    print(json.dumps({"event": kind, "data": data}), flush=True)
                return 0
            if args.json:
                print(json.dumps(sweep, indent=2))
                return 0
            console.print(f"sweep {sweep['id']} submitted ({sweep['trials_total']} trials)")
            if args.follow:
                _follow(client, sweep, console)
                _show(client, sweep["id"], console)
            return 0
        if command == "show":
            if args.json:
                print(json.dumps({"sweep": client.get_sweep(args.id),
                                  "trials": client.leaderboard(args.id)}, indent=2))
            else:
                _show(client, args.id, console)
            return 0
        if command == "list":
            _list(client, console)
            return 0
        if command == "cancel":
            sweep = client.cancel_sweep(args.id)
            console.print(f"sweep {sweep['id']} is {sweep['status']}")
            return 0
        if command == "extend":
            sweep = client.extend_sweep(args.id, args.max_trials)
            console.print(f"sweep {sweep['id']} is {sweep['status']}, max_trials "
                          f"{sweep['max_trials']}")
            return 0
        if command == "delete":
            client.delete_sweep(args.id)
            console.print(f"sweep {args.id} deleted")
            return 0
    except APIError as exc:
        console.print(f"[red]error[/red] {exc.status}: {exc.message}")
        return 1
    raise SystemExit(f"mlpctl sweeps: unknown command {args.sweeps_command!r}")


def _best_text(best: dict[str, Any] | None) -> str:
    if not best or best.get("objective") is None:
        return "best: -"
    values = ", ".join(f"{k}={v}" for k, v in (best.get("values") or {}).items())
    return f"best {best['objective']:.4g} (trial {best.get('trial')}: {values})"


def _follow(client: Client, sweep: dict[str, Any], console: Any) -> None:
    """A live progress bar (trials ended of the total, the best so far) from the events."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    total = int(sweep.get("trials_total") or sweep.get("max_trials") or 0)
    with Progress(TextColumn("[bold]{task.fields[status]}"), BarColumn(),
                  MofNCompleteColumn(), TextColumn("{task.fields[best]}"),
                  console=console) as progress:
        task = progress.add_task("trials", total=total, status=sweep["status"],
                                 best="best: -")
        for kind, data in client.sweep_events(sweep["id"]):
            if kind == "sweep" and isinstance(data, dict):
                total = int(data.get("trials_total") or total)
                progress.update(task, total=total, status=data.get("status"))
            elif kind in ("trial_finished", "trial_pruned"):
                progress.advance(task)
            elif kind == "best" and isinstance(data, dict):
                progress.update(task, best=_best_text(data))
            elif kind == "end" and isinstance(data, dict):
                progress.update(task, status=data.get("status"))


def _show(client: Client, sweep_id: str, console: Any) -> None:
    from rich.table import Table

    sweep = client.get_sweep(sweep_id)
    counts = {k: v for k, v in (sweep.get("counts") or {}).items() if v and k != "total"}
    console.print(f"sweep {sweep['id']}" + (f" ({sweep['name']})" if sweep.get("name") else "")
                  + f": {sweep['status']}, {sweep['strategy']}, "
                  f"{(sweep.get('counts') or {}).get('total', 0)} of "
                  f"{sweep['trials_total']} trials {counts or ''}")
    console.print(_best_text(sweep.get("best")))
    board = client.leaderboard(sweep_id)
    paths = list(sweep.get("space") or {})
    metric = sweep["objective"]["metric"]
    table = Table("rank", "trial", "status", metric, "epochs", *paths, "job")
    for row in board:
        objective = row.get("objective")
        table.add_row(str(row["rank"]), str(row["trial"]), row["status"],
                      "-" if objective is None else f"{objective:.4g}",
                      f"{row['epochs_run']}/{row['epochs']}",
                      *(json.dumps(row["values"].get(p)) for p in paths), row["job_id"])
    console.print(table)


def _list(client: Client, console: Any) -> None:
    from rich.table import Table

    table = Table("id", "name", "status", "strategy", "trials", "best")
    for sweep in client.list_sweeps(limit=100):
        best = (sweep.get("best") or {}).get("objective")
        table.add_row(sweep["id"], sweep.get("name") or "", sweep["status"], sweep["strategy"],
                      f"{(sweep.get('counts') or {}).get('total', 0)}/{sweep['trials_total']}",
                      "-" if best is None else f"{best:.4g}")
    console.print(table)
