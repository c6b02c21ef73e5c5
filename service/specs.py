"""Resolving a client's job spec against its dataset and the configured limits, shared by
`POST /v1/specs/validate` and `POST /v1/jobs`, and the theory the validate answer adds
(closed-form parameter count, linear-region bound). Runs in a worker thread: inline data
is parsed here."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from sqlalchemy.orm import Session

from mlp_engine.data import builtin_info, describe, infer_task, load_inline
from mlp_engine.findings import static_findings
from mlp_engine.memory import MemoryEstimate, estimate_from_info
from mlp_engine.registry import ACTIVATIONS
from mlp_engine.spec import DatasetInfo, JobSpec, Limits, resolve_spec
from mlp_engine.theory import (
    exact_parameter_count,
    linear_region_bounds,
    parameter_count_formula,
    parameter_count_formula_text,
)
from store.datasets import get_dataset_for_tenant
from store.models import Dataset

from .errors import InvalidInput

__all__ = ["Resolved", "resolve_for_tenant", "dataset_info", "request_hash", "theory_of",
           "MAX_REGION_BOUND_DIM"]

# linear_region_bounds sums binomials C(n_L, j) for j up to d = min(n0, widths); past a
# few thousand that takes seconds of CPU and tens of kilobytes of digits, so the bound is
# left out (null) when d is over this.
MAX_REGION_BOUND_DIM = 1024


@dataclass(frozen=True)
class Resolved:
    spec: JobSpec  # resolved: task, loss and sizes filled in
    info: DatasetInfo
    dataset_id: str | None
    parameter_count: int
    memory: MemoryEstimate

    def findings(self) -> list[dict[str, Any]]:
        """What the rules can tell before training (SPEC section 8)."""
        return static_findings(self.spec, self.info, parameter_count=self.parameter_count)


def dataset_info(row: Dataset) -> DatasetInfo:
    """A stored dataset's description, as `mlp_engine.data.describe` gave it at upload."""
    labels = tuple(row.class_labels) if row.class_labels is not None else None
    default_task = infer_task(numeric=row.target_numeric, multilabel=row.multilabel,
                              n_classes=row.n_classes)
    return DatasetInfo(n_rows=row.n_rows, n_features=row.n_features, n_outputs=row.n_outputs,
                       n_classes=row.n_classes, class_labels=labels,
                       target_numeric=row.target_numeric, multilabel=row.multilabel,
                       default_task=default_task)


def _validation_to_invalid(exc: ValidationError) -> InvalidInput:
    first = exc.errors()[0]
    field = ".".join(str(p) for p in first.get("loc", ())) or None
    msg = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    return InvalidInput(msg, field=field)


def resolve_for_tenant(session: Session, *, tenant_id: str, spec: JobSpec,
                       limits: Limits, max_job_memory_bytes: int | None = None) -> Resolved:
    """Resolve `spec` against its dataset (builtin, inline, or the tenant's upload) and the
    limits, and estimate its training memory (refused over `max_job_memory_bytes`). Raises
    SpecError/DataError/InvalidInput naming the field or limit (all 422)."""
    ds = spec.dataset
    dataset_id = None
    if ds.builtin is not None:
        info = builtin_info(ds.builtin, ds.params)
    elif ds.inline is not None:
        rows = len(ds.inline.x)
        if rows > limits.max_inline_rows:
            raise InvalidInput(f"{rows} inline rows is over the limit max_inline_rows="
                               f"{limits.max_inline_rows}; upload the data with "
                               "POST /v1/datasets instead", field="dataset.inline")
        info = describe(load_inline(ds.inline.x, ds.inline.y))
    else:
        row = get_dataset_for_tenant(session, tenant_id, ds.id)
        if row is None:
            raise InvalidInput(f"no dataset '{ds.id}' for this API key; upload one with "
                               "POST /v1/datasets or list yours with GET /v1/datasets",
                               field="dataset.id")
        info, dataset_id = dataset_info(row), row.id
    try:
        resolved = resolve_spec(spec, info, limits)
    except ValidationError as exc:  # the resolved sizes broke a bound of the spec itself
        raise _validation_to_invalid(exc) from exc
    m = resolved.model
    assert m.input_dim is not None and m.output_dim is not None and m.hidden_dims is not None
    count = exact_parameter_count(m.input_dim, m.hidden_dims, m.output_dim,
                                  batch_norm=m.batch_norm)
    memory = estimate_from_info(resolved, info)
    if max_job_memory_bytes is not None and memory.total_bytes > max_job_memory_bytes:
        raise InvalidInput(
            f"training this job would take about {memory.total_bytes} bytes "
            f"({memory.summary()}), over the limit max_job_memory_bytes="
            f"{max_job_memory_bytes} (MLP_MAX_JOB_MEMORY_BYTES); use a smaller batch_size, "
            "fewer or narrower layers, or fewer rows", field="training.batch_size")
    return Resolved(spec=resolved, info=info, dataset_id=dataset_id, parameter_count=count,
                    memory=memory)


def request_hash(spec: JobSpec) -> str:
    """sha256 of the spec as validated (defaults filled in), so two bodies that mean the
    same job hash the same."""
    canonical = json.dumps(spec.model_dump(mode="json"), sort_keys=True,
                           separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def theory_of(resolved: JobSpec) -> dict[str, Any]:
    """`parameter_count_formula` and `linear_regions_bound` for the validate answer."""
    m = resolved.model
    assert m.input_dim is not None and m.output_dim is not None and m.hidden_dims is not None
    hidden = list(m.hidden_dims)
    formula = detail = None
    if len(set(hidden)) <= 1 and not m.batch_norm:
        n = hidden[0] if hidden else None
        formula = parameter_count_formula(m.input_dim, n or 0, len(hidden), m.output_dim)
        detail = {"formula": parameter_count_formula_text(len(hidden)),
                  "n0": m.input_dim, "n": n, "L": len(hidden), "k": m.output_dim}
    regions = None
    piecewise = bool(ACTIVATIONS[m.activation.name].extra.get("piecewise_linear"))
    if piecewise and min([m.input_dim, *hidden]) <= MAX_REGION_BOUND_DIM:
        regions = linear_region_bounds(m.input_dim, hidden)
        regions["decimal"] = regions["lower_bound"]
    return {"parameter_count_formula": formula, "parameter_count_formula_detail": detail,
            "linear_regions_bound": regions}
