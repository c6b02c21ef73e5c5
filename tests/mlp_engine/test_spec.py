"""The job spec: every refusal names its field or limit; defaults fill in what SPEC §2 says."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from mlp_engine.errors import SpecError
from mlp_engine.registry import ACTIVATIONS, INITS, catalog
from mlp_engine.spec import (
    DEFAULT_EMBEDDING_DIM,
    DEFAULT_HIDDEN_DIM,
    ArrayJobSpec,
    DatasetInfo,
    JobSpec,
    Limits,
    resolve_spec,
    stored_spec,
)

IRIS: dict[str, Any] = {"builtin": "iris"}
IRIS_INFO = DatasetInfo(n_rows=150, n_features=4, n_classes=3, class_labels=(0, 1, 2))
REGRESSION_INFO = DatasetInfo(n_rows=100, n_features=3, n_outputs=2, default_task="regression")
MULTILABEL_INFO = DatasetInfo(n_rows=100, n_features=5, n_outputs=4, multilabel=True,
                              default_task="multilabel")


def refusal(data: dict[str, Any]) -> tuple[str, str]:
    """(dotted location, message) of the first error JobSpec raises for `data`."""
    with pytest.raises(ValidationError) as info:
        JobSpec.model_validate(data)
    first = info.value.errors()[0]
    return ".".join(str(p) for p in first["loc"]), first["msg"]


def spec(**fields: Any) -> dict[str, Any]:
    return {"dataset": IRIS, **fields}


# --------------------------------------------------------------------------- unknown fields


@pytest.mark.parametrize(("data", "where"), [
    (spec(epochs=3), "epochs"),
    (spec(model={"hidden_dimz": [3]}), "model.hidden_dimz"),
    (spec(training={"epochs": 3, "lr": 0.1}), "training.lr"),
    (spec(training={"early_stopping": {"patience": 2, "mode": "min"}}),
     "training.early_stopping.mode"),
    (spec(regularization={"l3": 0.1}), "regularization.l3"),
    (spec(diagnostics={"hessian": True}), "diagnostics.hessian"),
    ({"dataset": {"builtin": "iris", "url": "http://x"}}, "dataset.url"),
    ({"dataset": {"inline": {"x": [[1.0]], "y": [1], "z": [2]}}}, "dataset.inline.z"),
])
def test_unknown_fields_are_refused_by_name(data: dict[str, Any], where: str) -> None:
    loc, msg = refusal(data)
    assert loc == where
    assert "Extra inputs are not permitted" in msg


@pytest.mark.parametrize(("data", "where", "kind", "name"), [
    (spec(model={"activation": "swish"}), "model.activation", "activation", "swish"),
    (spec(model={"init": {"name": "orthogonal"}}), "model.init", "init", "orthogonal"),
    (spec(loss="focal"), "loss", "loss", "focal"),
    (spec(optimizer={"name": "lbfgs"}), "optimizer", "optimizer", "lbfgs"),
    (spec(optimizer={"name": "sgd", "scheduler": "cyclic"}), "optimizer.scheduler",
     "scheduler", "cyclic"),
])
def test_unknown_choice_names(data: dict[str, Any], where: str, kind: str, name: str) -> None:
    loc, msg = refusal(data)
    assert loc == where
    assert f"unknown {kind} '{name}'" in msg
    assert "choose one of" in msg


def test_unknown_builtin_dataset_and_its_params() -> None:
    loc, msg = refusal({"dataset": {"builtin": "mnist"}})
    assert loc == "dataset" and "unknown builtin dataset 'mnist'" in msg
    loc, msg = refusal({"dataset": {"builtin": "moons", "params": {"n_samplez": 10}}})
    assert loc == "dataset" and "n_samplez" in msg and "moons" in msg


@pytest.mark.parametrize(("data", "where", "text"), [
    (spec(model={"activation": {"name": "relu", "negative_slope": 0.1}}), "model.activation",
     "unknown parameter(s) ['negative_slope'] for activation 'relu'"),
    (spec(loss={"name": "mse", "beta": 2.0}), "loss",
     "unknown parameter(s) ['beta'] for loss 'mse'"),
    (spec(optimizer={"name": "adam", "momentum": 0.9}), "optimizer",
     "unknown parameter(s) ['momentum'] for optimizer 'adam'"),
    (spec(model={"init": {"name": "kaiming_normal", "gain": 2.0}}), "model.init",
     "unknown parameter(s) ['gain'] for init 'kaiming_normal'"),
])
def test_unknown_params_are_named(data: dict[str, Any], where: str, text: str) -> None:
    loc, msg = refusal(data)
    assert loc == where
    assert text in msg


@pytest.mark.parametrize(("data", "where", "text"), [
    (spec(model={"activation": {"name": "leaky_relu", "negative_slope": 2}}),
     "model.activation", "negative_slope must be < 1.0"),
    # a slope of 1 is the identity: the network would be affine (it used to be accepted)
    (spec(model={"activation": {"name": "leaky_relu", "negative_slope": 1}}),
     "model.activation", "negative_slope must be < 1.0"),
    (spec(model={"activation": {"name": "leaky_relu", "negative_slope": -0.1}}),
     "model.activation", "negative_slope must be >= 0.0"),
    (spec(model={"activation": {"name": "elu", "alpha": 0}}), "model.activation",
     "alpha must be > 0.0"),
    (spec(model={"activation": {"name": "gelu", "approximate": "erf"}}), "model.activation",
     "approximate must be one of ['none', 'tanh']"),
    (spec(optimizer={"name": "sgd", "lr": -1}), "optimizer", "lr must be > 0.0"),
    (spec(optimizer={"name": "sgd", "nesterov": "yes"}), "optimizer",
     "nesterov must be true or false"),
    (spec(loss={"name": "multi_margin", "p": 3}), "loss", "p must be one of [1, 2]"),
    (spec(loss={"name": "cross_entropy", "label_smoothing": 1.0}), "loss",
     "label_smoothing must be < 1.0"),
    (spec(loss={"name": "cross_entropy", "class_weights": [1, -2]}), "loss",
     "class_weights must hold positive finite numbers"),
    (spec(loss={"name": "cross_entropy", "class_weights": "inverse"}), "loss",
     "class_weights must be a non-empty list"),
    (spec(optimizer={"name": "sgd", "scheduler": {"name": "step", "step_size": 0}}),
     "optimizer.scheduler", "step_size must be >= 1"),
    (spec(model={"init": {"name": "xavier_normal", "gain": 0}}), "model.init",
     "gain must be > 0.0"),
])
def test_out_of_bounds_params_are_named(data: dict[str, Any], where: str, text: str) -> None:
    loc, msg = refusal(data)
    assert loc == where
    assert text in msg


@pytest.mark.parametrize(("data", "where"), [
    (spec(model={"dropout": 1.0}), "model.dropout"),
    (spec(model={"hidden_dims": [16, 0]}), "model.hidden_dims.1"),
    (spec(training={"epochs": 0}), "training.epochs"),
    (spec(training={"validation_split": 0.95}), "training.validation_split"),
    (spec(training={"max_runtime_s": 0}), "training.max_runtime_s"),
    (spec(regularization={"l2": -0.1}), "regularization.l2"),
    (spec(task="clustering"), "task"),
    (spec(device="tpu"), "device"),
])
def test_field_bounds(data: dict[str, Any], where: str) -> None:
    loc, _ = refusal(data)
    assert loc == where


def test_loss_that_does_not_fit_the_task() -> None:
    _, msg = refusal(spec(task="regression", loss="cross_entropy"))
    assert "loss: 'cross_entropy' is for classification, not task regression" in msg
    assert "mse" in msg  # the losses that do fit are offered
    _, msg = refusal(spec(task="classification", loss="hinge_embedding"))
    assert "'hinge_embedding' is for metric_learning" in msg


def test_early_stopping_metric_must_fit_the_task() -> None:
    _, msg = refusal(spec(task="regression",
                          training={"early_stopping": {"metric": "val_accuracy"}}))
    assert "training.early_stopping.metric" in msg and "val_accuracy" in msg


def test_hidden_dims_with_hidden_layers() -> None:
    loc, msg = refusal(spec(model={"hidden_dims": [8], "hidden_layers": 2}))
    assert loc == "model"
    assert "either 'hidden_dims' or 'hidden_layers'/'hidden_dim'" in msg
    loc, _ = refusal(spec(model={"hidden_dims": [8], "hidden_dim": 4}))
    assert loc == "model"


# --------------------------------------------------------------------------- datasets


@pytest.mark.parametrize("dataset", [
    {},
    {"params": {"n_samples": 10}},
    {"builtin": "iris", "id": "abc"},
    {"id": "abc", "inline": {"x": [[1.0]], "y": [1]}},
])
def test_dataset_needs_exactly_one_source(dataset: dict[str, Any]) -> None:
    loc, msg = refusal({"dataset": dataset})
    assert loc == "dataset"
    assert "exactly one of 'builtin', 'id' or 'inline'" in msg or "'params' goes with" in msg


def test_params_only_with_builtin() -> None:
    loc, msg = refusal({"dataset": {"id": "abc", "params": {"n_samples": 10}}})
    assert loc == "dataset" and "'params' goes with 'builtin' only" in msg


def test_inline_length_mismatch() -> None:
    loc, msg = refusal({"dataset": {"inline": {"x": [[1.0], [2.0]], "y": [0]}}})
    assert loc == "dataset.inline"
    assert "x has 2 rows but y has 1" in msg


def test_inline_ragged_rows() -> None:
    loc, msg = refusal({"dataset": {"inline": {"x": [[1.0, 2.0], [3.0]], "y": [0, 1]}}})
    assert loc == "dataset.inline"
    assert "x row 1 has 1 values, row 0 has 2" in msg


def test_inline_ragged_target_lists_and_mixed_targets() -> None:
    _, msg = refusal({"dataset": {"inline": {"x": [[1.0], [2.0]], "y": [[0, 1], [1]]}}})
    assert "same, non-zero length" in msg
    _, msg = refusal({"dataset": {"inline": {"x": [[1.0], [2.0]], "y": [1, "a"]}}})
    assert "mixes" in msg


@pytest.mark.parametrize(("data", "where"), [
    ({"dataset": {"inline": {"x": [[1.0], [float("nan")]], "y": [0, 1]}}},
     "dataset.inline.x.1.0"),
    ({"dataset": {"inline": {"x": [[1.0], [float("inf")]], "y": [0, 1]}}},
     "dataset.inline.x.1.0"),
    (spec(regularization={"l1": float("nan")}), "regularization.l1"),
    (spec(training={"max_runtime_s": float("inf")}), "training.max_runtime_s"),
    (spec(model={"dropout": float("nan")}), "model.dropout"),
])
def test_nan_and_inf_are_refused(data: dict[str, Any], where: str) -> None:
    loc, msg = refusal(data)
    assert loc == where
    assert "finite" in msg


def test_nan_in_json_and_in_targets() -> None:
    with pytest.raises(ValidationError) as info:
        JobSpec.model_validate_json('{"dataset": {"inline": {"x": [[NaN]], "y": [1]}}}')
    assert "finite" in str(info.value)
    _, msg = refusal({"dataset": {"inline": {"x": [[1.0], [2.0]], "y": [1.0, float("nan")]}}})
    assert "finite" in msg or "NaN" in msg
    _, msg = refusal(spec(loss={"name": "cross_entropy", "class_weights": [1.0, float("nan")]}))
    assert "class_weights" in msg and "finite" in msg


def test_name_refuses_control_characters() -> None:
    loc, msg = refusal(spec(name="a\nb"))
    assert loc == "name" and "control characters" in msg


# --------------------------------------------------------------------------- defaults


def test_defaults() -> None:
    s = JobSpec.model_validate({"dataset": IRIS})
    assert s.task is None and s.loss is None  # both follow from the data at resolution
    assert s.model.hidden_dims == [DEFAULT_HIDDEN_DIM, DEFAULT_HIDDEN_DIM]
    assert s.model.activation.name == "relu"
    # the lecture's init for the activation (SPEC section 2, amended: it was torch_default,
    # which leaves biases non-zero and gives ReLU layers 0.41x He's std); kept as "auto"
    assert s.model.init.name == "auto"
    assert s.optimizer.name == "adam" and s.optimizer.params["lr"] == 0.001
    assert s.optimizer.scheduler is None
    assert s.training.early_stopping is None
    assert not s.diagnostics.any
    assert s.device == "auto"


@pytest.mark.parametrize(("loss", "task"), [
    ("cross_entropy", "classification"), ("nll", "classification"),
    ("multi_margin", "classification"), ("bce_with_logits", "multilabel"),
    ("multilabel_soft_margin", "multilabel"), ("multilabel_margin", "multilabel"),
    ("mse", "regression"), ("l1", "regression"), ("smooth_l1", "regression"),
    ("huber", "regression"), ("hinge_embedding", "metric_learning"),
])
def test_task_follows_from_loss(loss: str, task: str) -> None:
    assert JobSpec.model_validate(spec(loss=loss)).task == task


@pytest.mark.parametrize(("task", "loss"), [
    ("classification", "cross_entropy"), ("multilabel", "bce_with_logits"),
    ("regression", "mse"), ("metric_learning", "hinge_embedding"),
])
def test_loss_follows_from_task(task: str, loss: str) -> None:
    s = JobSpec.model_validate(spec(task=task))
    assert s.loss is not None and s.loss.name == loss


def test_param_defaults_are_filled_in() -> None:
    s = JobSpec.model_validate(spec(
        loss={"name": "smooth_l1"}, model={"activation": "leaky_relu", "init": "xavier_normal"},
        optimizer={"name": "sgd", "momentum": 0.5}))
    assert s.loss is not None and s.loss.params == {"beta": 1.0}
    assert s.model.activation.params == {"negative_slope": 0.01}
    assert s.model.init.params == {"gain": None}
    assert s.optimizer.params == {"lr": 0.01, "weight_decay": 0.0, "momentum": 0.5,
                                  "nesterov": False}


def test_hidden_layers_and_hidden_dim_expand() -> None:
    m = JobSpec.model_validate(spec(model={"hidden_layers": 3, "hidden_dim": 10})).model
    assert m.hidden_dims == [10, 10, 10]
    assert m.hidden_layers is None and m.hidden_dim is None
    m = JobSpec.model_validate(spec(model={"hidden_layers": 1})).model
    assert m.hidden_dims == [DEFAULT_HIDDEN_DIM]
    m = JobSpec.model_validate(spec(model={"hidden_dim": 7})).model
    assert m.hidden_dims == [7, 7]
    m = JobSpec.model_validate(spec(model={"hidden_layers": 0})).model
    assert m.hidden_dims == []
    # the expanded spec round-trips through JSON (the worker re-validates stored JSON)
    s = JobSpec.model_validate(spec(model={"hidden_layers": 3, "hidden_dim": 10}))
    assert JobSpec.model_validate_json(s.model_dump_json()) == s


def test_metric_learning_embedding_defaults_to_8() -> None:
    s = JobSpec.model_validate(spec(loss="hinge_embedding"))
    assert DEFAULT_EMBEDDING_DIM == 8 and s.model.output_dim == 8
    s = JobSpec.model_validate(spec(task="metric_learning", model={"output_dim": 3}))
    assert s.model.output_dim == 3
    assert resolve_spec(s, IRIS_INFO).model.output_dim == 3
    r = resolve_spec(JobSpec.model_validate(spec(task="metric_learning")), IRIS_INFO)
    assert r.model.output_dim == 8 and r.model.input_dim == 4


def test_scheduler_beside_optimizer() -> None:
    s = JobSpec.model_validate(spec(optimizer={"name": "sgd", "lr": 0.1},
                                    scheduler={"name": "step", "step_size": 3}))
    assert s.optimizer.name == "sgd" and s.optimizer.params["lr"] == 0.1
    assert s.optimizer.scheduler is not None
    assert s.optimizer.scheduler.name == "step"
    assert s.optimizer.scheduler.params == {"step_size": 3, "gamma": 0.1}
    # beside a default optimizer, or an optimizer given by name only
    assert JobSpec.model_validate(spec(scheduler="cosine")).optimizer.name == "adam"
    s = JobSpec.model_validate(spec(optimizer="rmsprop", scheduler="cosine"))
    assert s.optimizer.name == "rmsprop" and s.optimizer.scheduler is not None
    # and inside the optimizer, the same thing
    inside = JobSpec.model_validate(spec(optimizer={"name": "sgd", "lr": 0.1, "scheduler": {
        "name": "step", "step_size": 3}}))
    assert inside == JobSpec.model_validate(spec(optimizer={"name": "sgd", "lr": 0.1},
                                                 scheduler={"name": "step", "step_size": 3}))
    _, msg = refusal(spec(optimizer={"name": "sgd", "scheduler": "step"}, scheduler="cosine"))
    assert "give 'scheduler' once" in msg


# --------------------------------------------------------------------------- resolution


def test_resolve_fills_in_sizes_task_and_loss() -> None:
    r = resolve_spec(JobSpec.model_validate(spec()), IRIS_INFO)
    assert r.task == "classification"
    assert r.loss is not None and r.loss.name == "cross_entropy"
    assert (r.model.input_dim, r.model.output_dim) == (4, 3)
    r = resolve_spec(JobSpec.model_validate(spec()), REGRESSION_INFO)
    assert r.task == "regression" and r.loss is not None and r.loss.name == "mse"
    assert (r.model.input_dim, r.model.output_dim) == (3, 2)
    r = resolve_spec(JobSpec.model_validate(spec()), MULTILABEL_INFO)
    assert r.task == "multilabel" and r.loss is not None and r.loss.name == "bce_with_logits"
    assert r.model.output_dim == 4


def test_resolve_refuses_a_task_the_data_cannot_serve() -> None:
    with pytest.raises(SpecError) as info:
        resolve_spec(JobSpec.model_validate(spec(loss="cross_entropy")), REGRESSION_INFO)
    assert info.value.field == "task" and "class labels" in str(info.value)
    with pytest.raises(SpecError) as info:
        resolve_spec(JobSpec.model_validate(spec(task="multilabel")), IRIS_INFO)
    assert info.value.field == "task" and "0/1" in str(info.value)


def test_class_weights_length_must_match_classes() -> None:
    s = JobSpec.model_validate(spec(loss={"name": "cross_entropy", "class_weights": [1, 2]}))
    with pytest.raises(SpecError) as info:
        resolve_spec(s, IRIS_INFO)
    assert info.value.field == "loss.class_weights"
    assert "2 weights but the data has 3 classes" in str(info.value)
    ok = JobSpec.model_validate(spec(loss={"name": "nll", "class_weights": [1, 2, 3]}))
    loss = resolve_spec(ok, IRIS_INFO).loss
    assert loss is not None and loss.params["class_weights"] == [1.0, 2.0, 3.0]


def test_input_and_output_dims_must_agree_with_the_data() -> None:
    with pytest.raises(SpecError) as info:
        resolve_spec(JobSpec.model_validate(spec(model={"input_dim": 5})), IRIS_INFO)
    assert info.value.field == "model.input_dim"
    assert "model.input_dim is 5 but the dataset has 4 features" in str(info.value)
    with pytest.raises(SpecError) as info:
        resolve_spec(JobSpec.model_validate(spec(model={"output_dim": 2})), IRIS_INFO)
    assert info.value.field == "model.output_dim"
    assert "model.output_dim is 2" in str(info.value) and "3" in str(info.value)
    agreeing = JobSpec.model_validate(spec(model={"input_dim": 4, "output_dim": 3}))
    assert resolve_spec(agreeing, IRIS_INFO).model.output_dim == 3


@pytest.mark.parametrize(("over", "at", "limits", "where", "limit"), [
    ({"training": {"epochs": 11}}, {"training": {"epochs": 10}}, Limits(max_epochs=10),
     "training.epochs", "max_epochs=10"),
    ({"model": {"hidden_dims": [8, 65]}}, {"model": {"hidden_dims": [8, 64]}},
     Limits(max_hidden_width=64), "model.hidden_dims", "max_hidden_width=64"),
    ({"model": {"hidden_layers": 5, "hidden_dim": 4}},
     {"model": {"hidden_layers": 4, "hidden_dim": 4}}, Limits(max_hidden_layers=4),
     "model.hidden_dims", "max_hidden_layers=4"),
    ({"model": {"hidden_dims": [100, 100]}}, {"model": {"hidden_dims": [10]}},
     Limits(max_parameters=10_000), "model", "max_parameters=10000"),
    ({"training": {"batch_size": 512}}, {"training": {"batch_size": 256}},
     Limits(max_batch_size=256), "training.batch_size", "max_batch_size=256"),
    ({"training": {"max_runtime_s": 120}}, {"training": {"max_runtime_s": 60}},
     Limits(max_runtime_s=60), "training.max_runtime_s", "60"),
])
def test_limits_name_the_limit(over: dict[str, Any], at: dict[str, Any], limits: Limits,
                               where: str, limit: str) -> None:
    with pytest.raises(SpecError) as info:
        resolve_spec(JobSpec.model_validate(spec(**over)), IRIS_INFO, limits)
    assert info.value.field == where
    assert limit in str(info.value)
    resolve_spec(JobSpec.model_validate(spec(**at)), IRIS_INFO, limits)  # at the limit: fine


def test_parameter_limit_counts_exactly() -> None:
    # 4 -> 100 -> 100 -> 3: 500 + 10100 + 303 = 10903 parameters
    s = JobSpec.model_validate(spec(model={"hidden_dims": [100, 100]}))
    resolve_spec(s, IRIS_INFO, Limits(max_parameters=10_903))
    with pytest.raises(SpecError) as info:
        resolve_spec(s, IRIS_INFO, Limits(max_parameters=10_902))
    assert "10903 parameters" in str(info.value)


def test_inline_rows_limit() -> None:
    rows = 11
    s = JobSpec.model_validate({"dataset": {"inline": {
        "x": [[float(i)] for i in range(rows)], "y": [i % 2 for i in range(rows)]}}})
    info_ = DatasetInfo(n_rows=rows, n_features=1, n_classes=2, class_labels=(0, 1))
    with pytest.raises(SpecError) as info:
        resolve_spec(s, info_, Limits(max_inline_rows=10))
    assert info.value.field == "dataset.inline"
    assert "max_inline_rows=10" in str(info.value)
    resolve_spec(s, info_, Limits(max_inline_rows=11))


def test_resolved_spec_round_trips_and_resolves_again() -> None:
    s = JobSpec.model_validate(spec(loss={"name": "cross_entropy", "class_weights": "balanced"},
                                    scheduler="step", model={"hidden_layers": 2}))
    r = resolve_spec(s, IRIS_INFO)
    again = JobSpec.model_validate_json(r.model_dump_json())
    assert again == r
    assert resolve_spec(again, IRIS_INFO) == r


# --------------------------------------------------------------------------- amended §2, §5


def test_a_leaky_slope_just_below_one_is_an_activation() -> None:
    s = JobSpec.model_validate(spec(model={"activation": {"name": "leaky_relu",
                                                          "negative_slope": 0.999}}))
    assert s.model.activation.params == {"negative_slope": 0.999}


def test_auto_init_stays_visible_and_the_catalog_says_what_it_means() -> None:
    r = resolve_spec(JobSpec.model_validate(spec(model={"activation": "tanh"})), IRIS_INFO)
    assert r.model.init.name == "auto"
    assert r.model_dump(mode="json")["model"]["init"] == {"name": "auto"}
    cat = catalog()
    assert cat["default_init"] == "auto" and "auto" in INITS
    auto_doc = next(c["doc"] for c in cat["inits"] if c["name"] == "auto")
    assert "kaiming_normal" in auto_doc and "xavier_normal" in auto_doc
    assert "LeCun" in auto_doc
    # every activation says which init `auto` gives it (SPEC §2's list)
    picks = {c["name"]: c["auto_init"] for c in cat["activations"]}
    assert set(picks) == set(ACTIVATIONS)
    for name in ("relu", "leaky_relu", "relu6", "elu", "gelu", "silu"):
        assert picks[name] == {"name": "kaiming_normal"}
    assert picks["sigmoid"] == picks["tanh"] == {"name": "xavier_normal"}
    assert picks["selu"] == {"name": "kaiming_normal", "gain": "linear"}


def test_the_catalog_says_regression_losses_are_in_standardised_units() -> None:
    losses = {c["name"]: c for c in catalog()["losses"]}
    for name in ("mse", "l1", "smooth_l1", "huber"):
        assert "standardised target units" in losses[name]["unit"]
        assert "val_mse" in losses[name]["unit"]
    assert "unit" not in losses["cross_entropy"]


def test_the_job_spec_still_requires_a_dataset() -> None:
    # the API's request body: a spec without data is refused as a missing field
    with pytest.raises(ValidationError) as info:
        JobSpec.model_validate({"training": {"epochs": 1}})
    (err,) = info.value.errors()
    assert err["type"] == "missing" and err["loc"] == ("dataset",)
    with pytest.raises(ValidationError):
        JobSpec.model_validate({"dataset": None})
    assert "dataset" in JobSpec.model_json_schema()["required"]


def test_an_array_job_spec_needs_no_dataset() -> None:
    s = ArrayJobSpec.model_validate({"model": {"hidden_dims": [4]}})
    assert s.dataset is None and isinstance(s, JobSpec)
    r = resolve_spec(s, IRIS_INFO)
    assert type(r) is ArrayJobSpec and r.dataset is None and r.model.input_dim == 4
    # stored as JSON (a weights file, a checkpoint) it reads back as what it was
    assert stored_spec(r.model_dump_json()) == r
    with_data = resolve_spec(JobSpec.model_validate(spec()), IRIS_INFO)
    back = stored_spec(with_data.model_dump_json())
    assert type(back) is JobSpec and back == with_data
    # everything else is validated as for a JobSpec
    with pytest.raises(ValidationError, match="colour"):
        ArrayJobSpec.model_validate({"colour": "red"})
