"""Calibration of the findings rules (SPEC section 8): healthy runs stay clean, broken ones
are found.

    python benchmarks/rule_calibration.py [--only NAME ...] [--json]

Trains each configuration of `CONFIGS` with `mlp_engine.fit` and the `RuleMonitor`, adds
the static findings (what `POST /v1/specs/validate` answers), and prints a markdown table:
the findings at warning or error severity (rule@epoch, `start` before the first epoch,
`static` before training), the rules the configuration must show, and whether it passed:
a healthy configuration passes with no warning, a broken one when every rule it must show
is found. Exits 1 when one does not pass. The thresholds of `mlp_engine.rule_table` are
the ones this table was made with; tests/mlp_engine/test_findings.py runs the same
configurations.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@dataclass(frozen=True)
class Config:
    name: str
    spec: dict[str, Any]
    expect: tuple[str, ...] = ()  # rules that must fire; () for a healthy run
    why: str = ""
    data: str | None = None  # arrays made by `_arrays` instead of the spec's dataset
    tags: tuple[str, ...] = field(default=())


def _digits(**over: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"dataset": {"builtin": "digits"}, "training": {"epochs": 20}}
    for key, value in over.items():
        spec[key] = {**spec.get(key, {}), **value} if isinstance(value, dict) else value
    return spec


CONFIGS: tuple[Config, ...] = (
    # healthy: the defaults (relu, 2x64, auto init, adam 1e-3, 20 epochs)
    Config("digits (defaults)", {"dataset": {"builtin": "digits"}}, why="healthy"),
    Config("iris (defaults)", {"dataset": {"builtin": "iris"}}, why="healthy"),
    Config("wine (defaults)", {"dataset": {"builtin": "wine"}}, why="healthy"),
    Config("breast_cancer (defaults)", {"dataset": {"builtin": "breast_cancer"}}, why="healthy"),
    Config("diabetes (defaults)", {"dataset": {"builtin": "diabetes"}}, why="healthy"),
    Config("digits tanh 3x128", _digits(model={"activation": "tanh", "hidden_dims": [128] * 3}),
           why="healthy: tanh with its Xavier init"),
    Config("digits relu 6x128 batch_norm",
           _digits(model={"hidden_dims": [128] * 6, "batch_norm": True}),
           why="healthy: deep relu with He's init"),
    # broken
    Config("deep sigmoid", _digits(model={"activation": "sigmoid", "hidden_dims": [64] * 8},
                                   optimizer={"name": "sgd", "lr": 0.05}),
           expect=("variance_not_preserved", "vanishing_gradients"),
           why="8 sigmoid layers: gradients shrink 4x per layer"),
    Config("tanh + He init", _digits(model={"activation": "tanh", "hidden_dims": [256] * 4,
                                             "init": "kaiming_normal"},
                                      training={"standardize": False}),
           expect=("init_activation_mismatch", "saturated_activations"),
           why="He's variance with tanh on raw pixels (0..16): units saturate"),
    Config("lr far too high", _digits(optimizer={"name": "sgd", "lr": 8.0, "momentum": 0.9}),
           expect=("learning_rate_out_of_range", "diverging"),
           why="sgd lr 8 with momentum"),
    Config("lr far too low", _digits(optimizer={"name": "adam", "lr": 1e-7},
                                     training={"epochs": 30}),
           expect=("learning_rate_out_of_range", "loss_not_decreasing"),
           why="adam lr 1e-7"),
    Config("random labels, big network",
           _digits(model={"hidden_dims": [512, 512]}, training={"epochs": 40}),
           expect=("overfitting",), data="random_labels",
           why="digits' pixels with shuffled labels: only memorising is left"),
    Config("dead ReLUs (huge Adam step)",
           _digits(model={"hidden_dims": [256] * 3}, optimizer={"name": "adam", "lr": 0.1},
                   training={"epochs": 8}),
           expect=("dead_units",),
           why="adam at lr 0.1 (the top of its usual range times 10) drives units negative"),
    Config("relu 6x256, torch_default init",
           _digits(model={"hidden_dims": [256] * 6, "init": "torch_default"},
                   training={"epochs": 4}),
           expect=("poor_initialization",), why="std 0.41x He's per layer: 0.41^5 = 0.01"),
    Config("imbalanced classes", _digits(training={"epochs": 5}), expect=("class_imbalance",),
           data="imbalanced", why="digits with 90% of the rows of class 0 dropped but 15"),
)


def _arrays(kind: str) -> tuple[Any, Any]:
    import numpy as np
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(0)
    if kind == "random_labels":
        return x.astype(np.float32), rng.permutation(y)
    if kind == "imbalanced":
        zeros = np.flatnonzero(y == 0)
        keep = np.concatenate([zeros[:15], np.flatnonzero(y != 0)])
        return x[keep].astype(np.float32), y[keep]
    raise ValueError(kind)


def run(config: Config) -> dict[str, Any]:
    """Train one configuration; its findings and whether it passed."""
    from mlp_engine.data import builtin_info, describe, load_inline
    from mlp_engine.errors import DivergedError
    from mlp_engine.findings import static_findings
    from mlp_engine.rule_monitor import RuleMonitor
    from mlp_engine.spec import ArrayJobSpec, JobSpec, resolve_spec
    from mlp_engine.theory import exact_parameter_count
    from mlp_engine.training import fit

    x = y = None
    if config.data:
        x, y = _arrays(config.data)
        spec_dict = {k: v for k, v in config.spec.items() if k != "dataset"}
        spec = ArrayJobSpec.model_validate(spec_dict)
        info = describe(load_inline(x.tolist(), y.tolist()))
    else:
        spec = JobSpec.model_validate(config.spec)
        info = builtin_info(spec.dataset.builtin or "", spec.dataset.params)
    resolved = resolve_spec(spec, info)
    m = resolved.model
    assert m.input_dim and m.output_dim and m.hidden_dims is not None
    count = exact_parameter_count(m.input_dim, m.hidden_dims, m.output_dim,
                                  batch_norm=m.batch_norm)
    found = [dict(f, when="static") for f in static_findings(resolved, info,
                                                             parameter_count=count)]
    monitor = RuleMonitor()
    started = time.perf_counter()
    error = None
    try:
        fit(spec, x, y, callbacks=[monitor], num_threads=1)
    except DivergedError as exc:
        error = str(exc)
    seconds = time.perf_counter() - started
    found += [dict(f, when="start" if f["epoch"] is None else f"epoch {f['epoch']}")
              for f in monitor.findings]
    serious = [f for f in found if f["severity"] != "info"]
    rules = {f["rule"] for f in serious}
    passed = set(config.expect) <= rules if config.expect else not serious
    return {"name": config.name, "why": config.why, "expect": list(config.expect),
            "found": [{"rule": f["rule"], "severity": f["severity"], "when": f["when"],
                       "layer": f["layer"], "evidence": f["evidence"]} for f in found],
            "passed": passed, "seconds": seconds, "error": error}


def _cell(found: list[dict[str, Any]]) -> str:
    items = []
    for f in found:
        if f["severity"] == "info":
            continue
        when = f["when"].replace("epoch ", "@")
        items.append(f"{f['rule']} {when if when.startswith('@') else '(' + when + ')'}")
    return ", ".join(items) or "none"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", help="configuration names (substrings)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    configs = [c for c in CONFIGS
               if not args.only or any(o in c.name for o in args.only)]
    results = [run(c) for c in configs]
    if args.json:
        print(json.dumps(results, indent=1, default=str))
    else:
        print("| configuration | must show | warnings and errors found | passed |")
        print("|---|---|---|---|")
        for r in results:
            expect = ", ".join(r["expect"]) or "nothing (healthy)"
            print(f"| {r['name']} | {expect} | {_cell(r['found'])} | "
                  f"{'yes' if r['passed'] else '**no**'} |")
        total = sum(r["seconds"] for r in results)
        print(f"\n{sum(r['passed'] for r in results)}/{len(results)} passed "
              f"({total:.0f} s of training)")
    return 0 if all(r["passed"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
