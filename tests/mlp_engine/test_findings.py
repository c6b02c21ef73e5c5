"""The findings rules (SPEC section 8): every rule fires on its broken configuration and the
healthy ones stay clean (the calibration's configurations); the rules never change the
weights or the records; thresholds and stop_on from the spec; once per (rule, layer), also
across a resume; and the numbers they read against independent references."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mlp_engine.errors import SpecError
from mlp_engine.findings import (
    RuleSettings,
    diagnostic_findings,
    metric_findings,
    sampled_epoch,
    static_findings,
)
from mlp_engine.registry import catalog
from mlp_engine.rule_monitor import RuleMonitor
from mlp_engine.rule_table import RULES
from mlp_engine.spec import JobSpec
from mlp_engine.training import fit

ROOT = Path(__file__).resolve().parents[2]


def _calibration():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("rule_calibration",
                                                  ROOT / "benchmarks" / "rule_calibration.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["rule_calibration"] = module
    spec.loader.exec_module(module)
    return module


CALIBRATION = _calibration()


@pytest.mark.parametrize("config", CALIBRATION.CONFIGS, ids=lambda c: c.name)
def test_calibration_configuration(config) -> None:  # type: ignore[no-untyped-def]
    result = CALIBRATION.run(config)
    serious = [f for f in result["found"] if f["severity"] != "info"]
    if config.expect:
        assert set(config.expect) <= {f["rule"] for f in serious}, result["found"]
    else:
        assert serious == [], f"a healthy run has no warning: {serious}"


def test_every_rule_is_calibrated_and_in_the_catalog() -> None:
    shown = {r for c in CALIBRATION.CONFIGS for r in c.expect}
    # batch_norm_batch_size_one and validation_missing_class are static and exact: tested
    # below; overparameterized is info only
    assert set(RULES) - shown == {"batch_norm_batch_size_one", "validation_missing_class",
                                  "overparameterized", "exploding_gradients"}
    listed = {r["name"]: r for r in catalog()["rules"]}
    assert set(listed) == set(RULES)
    assert listed["dead_units"]["parameters"] == [
        {"name": "threshold", "type": "float", "default": 0.5, "gt": 0.0, "le": 1.0,
         "doc": RULES["dead_units"].params[0].doc}]


def _digits(**over):  # type: ignore[no-untyped-def]
    spec = {"dataset": {"builtin": "digits"}, "training": {"epochs": 3, "seed": 1}}
    spec.update(over)
    return spec


def test_rules_change_neither_the_weights_nor_the_records() -> None:
    spec = _digits(model={"hidden_dims": [32, 32, 32]}, training={"epochs": 4, "seed": 2})
    plain = fit(spec, num_threads=1)
    monitor = RuleMonitor()
    watched = fit(spec, callbacks=[monitor], num_threads=1)
    a, b = plain.model.state_dict(), watched.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    timing = {"epoch_seconds", "samples_per_second"}
    for r1, r2 in zip(plain.history, watched.history, strict=True):
        assert {k: v for k, v in r1.items() if k not in timing} == \
            {k: v for k, v in r2.items() if k not in timing}
    # the diagnostics the rules asked for at epochs 1, 2, 4 are not in the records
    assert not any("grad_norm" in r or "dead_fraction" in r for r in watched.history)


def test_diagnostics_the_spec_asks_for_stay_in_the_record() -> None:
    result = fit(_digits(diagnostics={"activation_stats": True}), callbacks=[RuleMonitor()],
                 num_threads=1)
    assert all("dead_fraction" in r for r in result.history)
    assert all("grad_norm" not in r for r in result.history)


def test_stop_on_ends_training_after_the_epoch_of_the_finding() -> None:
    spec = _digits(model={"hidden_dims": [256] * 3}, optimizer={"name": "adam", "lr": 0.1},
                   training={"epochs": 8}, diagnostics={"stop_on": ["dead_units"]})
    monitor = RuleMonitor()
    result = fit(spec, callbacks=[monitor], num_threads=1)
    assert monitor.stopped_by is not None and monitor.stopped_by["rule"] == "dead_units"
    assert len(result.history) == monitor.stopped_by["epoch"] == 1
    assert result.stopped_early and result.stop_reason.startswith("rule dead_units: ")


def test_thresholds_and_switches_from_the_spec() -> None:
    base = dict(model={"hidden_dims": [256] * 3}, optimizer={"name": "adam", "lr": 0.1},
                training={"epochs": 2})
    strict = RuleMonitor()
    fit(_digits(**base, diagnostics={"rules": {"dead_units": {"threshold": 0.999}}}),
        callbacks=[strict], num_threads=1)
    loose = RuleMonitor()
    fit(_digits(**base), callbacks=[loose], num_threads=1)
    off = RuleMonitor()
    fit(_digits(**base, diagnostics={"rules": {"dead_units": False}}), callbacks=[off],
        num_threads=1)
    fired = {f["layer"] for f in loose.findings if f["rule"] == "dead_units"}
    assert fired, loose.findings
    strict_layers = {f["layer"] for f in strict.findings if f["rule"] == "dead_units"}
    assert strict_layers < fired
    assert not [f for f in off.findings if f["rule"] == "dead_units"]


def test_once_per_rule_and_layer_across_a_resume() -> None:
    spec = _digits(model={"hidden_dims": [256] * 3}, optimizer={"name": "adam", "lr": 0.1},
                   training={"epochs": 6})
    whole = RuleMonitor()
    fit(spec, callbacks=[whole], num_threads=1)
    keys = [(f["rule"], f["layer"]) for f in whole.findings]
    assert len(keys) == len(set(keys))

    first = RuleMonitor()
    saved = {}

    from mlp_engine.callbacks import Callback

    class Keep(Callback):
        def on_epoch_end(self, state, record):  # type: ignore[no-untyped-def]
            if record["epoch"] == 3:
                saved["ckpt"] = state.checkpoint()
                state.stop("simulated crash after epoch 3")

    fit(spec, callbacks=[first, Keep()], num_threads=1)
    # the resumed attempt starts from the checkpoint, knowing what the job row holds
    sink: list[dict] = []
    second = RuleMonitor(sink=sink.append, known=first.findings)
    fit(spec, callbacks=[second], resume=saved["ckpt"], num_threads=1)
    together = first.findings + sink
    assert sorted((f["rule"], f["layer"]) for f in together) == sorted(keys)


def test_static_findings_with_their_suggestions() -> None:
    def found(spec: dict, **kw):  # type: ignore[no-untyped-def]
        from mlp_engine.data import builtin_info
        from mlp_engine.spec import resolve_spec

        s = JobSpec.model_validate(spec)
        info = builtin_info(s.dataset.builtin or "", s.dataset.params)
        return {f["rule"]: f for f in static_findings(resolve_spec(s, info), info, **kw)}

    tanh_he = found({"dataset": {"builtin": "digits"},
                     "model": {"activation": "tanh", "init": "kaiming_normal"}})
    assert tanh_he["init_activation_mismatch"]["suggestion"] == {"model.init": "xavier_normal"}
    assert tanh_he["init_activation_mismatch"]["epoch"] is None
    sigmoid = found({"dataset": {"builtin": "digits"},
                     "model": {"activation": "sigmoid", "hidden_layers": 5}})
    assert sigmoid["variance_not_preserved"]["suggestion"] == {
        "model.activation": "relu", "model.init": "kaiming_normal"}
    assert "variance_not_preserved" not in found(
        {"dataset": {"builtin": "digits"}, "model": {"activation": "sigmoid", "hidden_layers": 3}})
    assert found({"dataset": {"builtin": "digits"}, "model": {"batch_norm": True},
                  "training": {"batch_size": 1}})["batch_norm_batch_size_one"]["severity"] \
        == "error"
    lr = found({"dataset": {"builtin": "digits"}, "optimizer": {"name": "adam", "lr": 0.5}})
    assert lr["learning_rate_out_of_range"]["evidence"]["lr"] == 0.5
    # one validation row cannot hold two classes; three can
    one = found({"dataset": {"builtin": "moons", "params": {"n_samples": 30}},
                 "training": {"validation_split": 0.04}})
    assert one["validation_missing_class"]["evidence"] == {
        "validation_rows": 1, "classes": 2, "validation_split": 0.04}
    assert "validation_missing_class" not in found(
        {"dataset": {"builtin": "moons", "params": {"n_samples": 30}},
         "training": {"validation_split": 0.1}})
    digits_small = found({"dataset": {"builtin": "digits"},
                          "training": {"validation_split": 0.004}})
    assert digits_small["validation_missing_class"]["evidence"]["validation_rows"] == 7
    # info only: iris with 2x64 has more parameters than 120 rows x 3 outputs
    iris = found({"dataset": {"builtin": "iris"}}, parameter_count=4 * 64 + 64 + 64 * 64 + 64
                 + 64 * 3 + 3)
    assert iris["overparameterized"]["severity"] == "info"
    # the healthy default has no warning before training either
    assert found({"dataset": {"builtin": "digits"}}, parameter_count=8970) == {}


def test_bad_rule_overrides_name_the_path() -> None:
    for diagnostics, words in (
            ({"rules": {"no_such_rule": False}}, "unknown rule 'no_such_rule'"),
            ({"rules": {"dead_units": {"thresh": 0.5}}}, "unknown threshold 'thresh'"),
            ({"rules": {"dead_units": {"threshold": 1.5}}}, "dead_units.threshold must be <="),
            ({"rules": {"dead_units": 3}}, "must be false, true or an object"),
            ({"stop_on": ["dead_units"], "rules": {"dead_units": False}}, "turns off")):
        with pytest.raises(ValueError, match=words):
            JobSpec.model_validate({"dataset": {"builtin": "iris"}, "diagnostics": diagnostics})
    assert not issubclass(SpecError, KeyError)


def test_the_metrics_rules_on_hand_made_histories() -> None:
    rules = RuleSettings.of(JobSpec.model_validate({"dataset": {"builtin": "iris"}}))

    def hist(train, val=None):  # type: ignore[no-untyped-def]
        return [{"epoch": i + 1, "train_loss": t, **({"val_loss": val[i]} if val else {})}
                for i, t in enumerate(train)]

    assert [f["rule"] for f in metric_findings(rules, hist([1.0, 0.5, 60.0]))] == ["diverging"]
    assert metric_findings(rules, hist([1.0, 0.5, 49.0])) == []
    flat = [1.0] + [0.9] * 11  # best 0.9 at epoch 2, ten epochs without 1 % better
    assert [f["rule"] for f in metric_findings(rules, hist(flat))] == ["loss_not_decreasing"]
    assert metric_findings(rules, hist(flat[:-1])) == []
    converged = [1.0] + [1e-4] * 11  # below 1e-3 of the first loss: nothing to gain
    assert metric_findings(rules, hist(converged)) == []
    train = [1.0, 0.8, 0.6, 0.5, 0.4, 0.3, 0.2]
    val = [1.0, 0.7, 0.8, 0.8, 0.8, 0.8, 0.85]  # best 0.7 at epoch 2; 0.85 > 1.2 * 0.7
    over = metric_findings(rules, hist(train, val))
    assert [f["rule"] for f in over] == ["overfitting"]
    assert over[0]["evidence"]["best_epoch"] == 2
    assert metric_findings(rules, hist(train, val[:-1] + [0.83])) == []  # within tolerance


def test_the_diagnostics_rules_on_hand_made_records() -> None:
    rules = RuleSettings.of(JobSpec.model_validate({"dataset": {"builtin": "iris"}}))
    record = {"epoch": 4, "grad_norm": [1e-5, 0.1, 0.5], "dead_fraction": [0.6, 0.1],
              "saturated_fraction": [None, None]}
    found = {f["rule"]: f for f in diagnostic_findings(rules, record, activation="relu")}
    assert set(found) == {"vanishing_gradients", "dead_units"}
    assert found["vanishing_gradients"]["layer"] == "hidden.0.0"
    assert math.isclose(found["vanishing_gradients"]["evidence"]["ratio"], 2e-5)
    assert found["dead_units"]["layer"] == "hidden.0"
    # leaky_relu never outputs exactly 0: dead_fraction does not apply
    assert "dead_units" not in {f["rule"] for f in diagnostic_findings(
        rules, record, activation="leaky_relu")}
    boom = diagnostic_findings(rules, {"epoch": 2, "grad_norm": [5e3, 1.0]}, activation="relu")
    assert [f["rule"] for f in boom] == ["exploding_gradients"]
    assert [e for e in range(1, 40) if sampled_epoch(e)] == [1, 2, 4, 8, 16, 32]


def test_saturated_fraction_against_tanh_and_sigmoid_by_hand() -> None:
    from mlp_engine.diagnostics import activation_stats
    from mlp_engine.model import build_model

    for act in ("tanh", "sigmoid"):
        spec = JobSpec.model_validate({
            "dataset": {"builtin": "iris"}, "task": "classification",
            "model": {"hidden_dims": [16], "activation": act, "input_dim": 4, "output_dim": 3}})
        model = build_model(spec)
        with torch.no_grad():
            model.hidden[0][0].weight.mul_(4.0)
        x = torch.randn(500, 4, generator=torch.Generator().manual_seed(0))
        z = model.hidden[0][0](x)
        if act == "tanh":
            slope = 1 - torch.tanh(z) ** 2  # peak 1
        else:
            s = torch.sigmoid(z)
            slope = s * (1 - s) / 0.25  # peak 1/4
        expected = float((slope < 0.05).float().mean())
        got = activation_stats(model, x)["saturated_fraction"][0]
        assert got == pytest.approx(expected, abs=1e-6) and 0.05 < got < 0.95


def test_class_counts_at_the_start_use_the_training_split() -> None:
    x, y = CALIBRATION._arrays("imbalanced")
    monitor = RuleMonitor()
    fit({"model": {"hidden_dims": [8]}, "training": {"epochs": 1}}, x, y,
        callbacks=[monitor], num_threads=1)
    (imbalance,) = [f for f in monitor.findings if f["rule"] == "class_imbalance"]
    counts = imbalance["evidence"]["class_counts"]
    assert counts["0"] == 12  # 15 rows of class 0, 80 % of them in training
    assert sum(counts.values()) == round(len(y) * 0.8)
    assert imbalance["suggestion"]["loss.class_weights"] == "balanced"
    assert np.isclose(imbalance["evidence"]["ratio"], max(counts.values()) / 12)
