"""`RuleMonitor`: the training-time rules of SPEC section 8 as a callback.

Before the first epoch it looks at the training data (class counts, the classes validation
holds) and at the activations of the initialised network; at every epoch end it reads the
record (the metrics rules) and, at the sampled epochs (1, 2, 4, 8, ...), the gradient norms
and activation statistics it asked `fit` for (`wants_diagnostics`). Those are computed on
the side, so the weights and the training random stream are the same with or without it;
fields the spec itself did not ask for are taken out of the record again.

Each finding is emitted once per (rule, layer), to `findings` and to `sink` if given; the
emitted keys are part of the checkpoint (and `known` seeds them), so a resumed run emits
none twice. A finding of a rule in `diagnostics.stop_on` (warning or error) ends training
after its epoch with `state.stop`; `stopped_by` holds it.

    monitor = RuleMonitor()
    result = fit(spec, callbacks=[monitor])
    monitor.findings   # [{"rule", "severity", "epoch", "layer", "evidence", ...}, ...]
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Iterable
from typing import Any, cast

from .callbacks import Callback, TrainState
from .errors import DivergedError
from .findings import (
    Finding,
    MetricTrend,
    RuleSettings,
    class_count_findings,
    diagnostic_findings,
    diverged_finding,
    finding_key,
    missing_class_findings,
    sampled_epoch,
    start_findings,
)
from .metric_table import METRICS
from .registry import DIAGNOSTICS

__all__ = ["RuleMonitor", "RULE_STOP_PREFIX"]

RULE_STOP_PREFIX = "rule "  # state.stop_reason of a stop_on stop: "rule <name>: <message>"
_CLASS_TASKS = ("classification", "metric_learning")


class RuleMonitor(Callback):
    def __init__(self, *, sink: Callable[[Finding], None] | None = None,
                 known: Iterable[Finding] = ()) -> None:
        self.sink = sink
        self.findings: list[Finding] = []
        self._keys = {finding_key(f) for f in known}
        self._known_stops = [f for f in known]
        self.rules: RuleSettings | None = None
        self.trend: MetricTrend | None = None
        self.stopped_by: Finding | None = None
        self._extra: set[str] = set()

    @property
    def state_key(self) -> str:
        return "RuleMonitor"

    # ------------------------------------------------------------------ hooks

    def on_train_begin(self, state: TrainState) -> None:
        self.rules = RuleSettings.of(state.spec)
        self.trend = MetricTrend(self.rules)
        for earlier in state.history:  # a resumed run's epochs
            self.trend.add(earlier)
        for f in self._known_stops:  # static findings the job was stored with
            self._maybe_stop(state, f)
        if state.epoch == 0 and state.data is not None:
            for f in self._start_findings(state):
                self._emit(state, f)

    def wants_diagnostics(self, state: TrainState, epoch: int) -> Collection[str]:
        assert self.rules is not None
        self._extra = set()
        if not sampled_epoch(epoch):
            return ()
        needed = self.rules.needs() & set(DIAGNOSTICS)
        self._extra = {n for n in needed if not getattr(state.spec.diagnostics, n)}
        return needed

    def on_epoch_end(self, state: TrainState, record: dict[str, Any]) -> None:
        assert self.rules is not None and self.trend is not None
        lr = record.get("lr")
        self.trend.add(record)
        found = self.trend.findings(self.rules, int(record["epoch"]), lr=lr)
        if sampled_epoch(int(record["epoch"])):
            found += diagnostic_findings(self.rules, record,
                                         activation=state.spec.model.activation.name, lr=lr)
        for name in self._extra:  # computed for the rules only: not part of the record
            for field in _fields_of(name):
                record.pop(field, None)
        self._extra = set()
        for f in found:
            self._emit(state, f)

    def on_train_end(self, state: TrainState, error: BaseException | None) -> None:
        if isinstance(error, DivergedError) and self.rules is not None:
            f = diverged_finding(self.rules, error.epoch, state.history,
                                 lr=state.optimizer.param_groups[0].get("lr"))
            if f is not None:
                self._emit(state, f)

    def state_dict(self) -> dict[str, Any]:
        return {"findings": json.dumps(self.findings),
                "keys": json.dumps(sorted([list(k) for k in self._keys], key=str)),
                "stopped_by": json.dumps(self.stopped_by)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.findings = json.loads(state_dict.get("findings", "[]"))
        self._keys |= {(k[0], k[1]) for k in json.loads(state_dict.get("keys", "[]"))}
        self.stopped_by = self.stopped_by or json.loads(state_dict.get("stopped_by", "null"))

    # ------------------------------------------------------------------ internals

    def _emit(self, state: TrainState, finding: Finding) -> None:
        key = finding_key(finding)
        if key in self._keys:
            return
        self._keys.add(key)
        self.findings.append(finding)
        if self.sink is not None:
            self.sink(finding)
        self._maybe_stop(state, finding)

    def _maybe_stop(self, state: TrainState, finding: Finding) -> None:
        assert self.rules is not None
        if finding["rule"] in self.rules.stop_on and finding["severity"] != "info" \
                and self.stopped_by is None:
            self.stopped_by = finding
            state.stop(f"{RULE_STOP_PREFIX}{finding['rule']}: {finding['message']}")

    def _start_findings(self, state: TrainState) -> list[Finding]:
        import torch

        from .diagnostics import activation_stats
        from .model import MLP

        assert self.rules is not None and state.data is not None
        data, spec = state.data, state.spec
        out: list[Finding] = []
        labels = state.preprocessing.get("class_labels")
        if spec.task in _CLASS_TASKS and data.train_metric.ndim == 1 \
                and data.train_metric.numel() > 0:
            n_classes = len(labels) if labels else int(data.train_metric.max()) + 1
            counts = torch.bincount(data.train_metric.long(), minlength=n_classes).tolist()
            out += class_count_findings(spec, self.rules, counts, labels)
            if data.val_metric.numel() > 0:
                out += missing_class_findings(
                    self.rules, torch.unique(data.train_metric).tolist(),
                    torch.unique(data.val_metric).tolist(), labels)
        if self.rules.on("poor_initialization") and \
                len(spec.model.hidden_dims or []) >= self.rules["poor_initialization"]["min_layers"]:
            stats = activation_stats(cast(MLP, state.model), data.x_train)  # eval, no_grad
            out += start_findings(self.rules, stats["activation_std"],
                                  activation=spec.model.activation.name,
                                  init=spec.model.init.name)
        return out


def _fields_of(diagnostic: str) -> list[str]:
    return [m.name for m in METRICS.values() if m.diagnostic == diagnostic]
