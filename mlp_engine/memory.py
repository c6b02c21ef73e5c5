"""A training job's peak memory, estimated from its resolved spec and the data's size before
any of it is allocated, so that the service can refuse a job that a worker could not hold.

Imports no torch: the API process calls it at submit. The estimate follows what `fit`
allocates, phase by phase: `prepare_data` (copies of the data), the training step (what the
forward pass keeps for backward, the gradients, the loss's own buffers such as hinge pairs
and logits), evaluation on the validation split, the diagnostics, and the worker's
in-memory checkpoints. Parameters, gradients, optimiser state and the data tensors live
through all but the first. The peak is the largest phase, plus glibc's heap slack for
tensors it serves from the heap, plus a fixed per-job overhead. Bytes are counted above a
process that has imported torch and trained before (a worker between jobs).
`benchmarks/memory_estimate.py` compares the estimate with measured peaks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .findings import RuleSettings
from .registry import ACTIVATIONS
from .spec import DatasetInfo, JobSpec
from .theory import exact_parameter_count

__all__ = ["MemoryEstimate", "estimate_training_memory", "estimate_from_info", "format_bytes",
           "PHASES", "FIXED_OVERHEAD_BYTES", "HEAP_SLACK"]

_F32 = 4
_I64 = 8
# What a job adds besides its tensors: the run's Python objects, kernels' scratch, and a
# first job's lazy imports (scikit-learn for the builtin datasets). A tiny job in a warm
# process adds under 1 MiB; the rest is margin.
FIXED_OVERHEAD_BYTES = 32 * 2**20
# glibc serves blocks under its mmap threshold (which rises with use to 32 MiB) from the
# heap, which keeps freed blocks resident and fragments as tensors of one step are freed
# and those of the next allocated: deep nets of 8-16 MiB activations peaked 15-25 % above
# the bytes alive at once (and at them with MALLOC_MMAP_THRESHOLD_ fixed). Tensors from
# 32 MiB up are mapped and unmapped one by one and cost nothing more.
HEAP_SLACK = 0.25
_MMAP_MAX = 32 * 2**20
# a string label read from a table: the object array's slot and a small str object
_STRING_LABEL_BYTES = _I64 + 64
# a number of inline data: a Python float and its list slot, in the resolved spec that fit
# keeps and in the dump resolve_spec validates it from
_INLINE_CELL_BYTES = 2 * (24 + 8)

# Mirrors of the engine's constants (tests/mlp_engine/test_memory.py checks that they
# agree; importing them would import torch).
MAX_PAIRS = 8192  # losses.MAX_PAIRS: hinge pairs per batch
EVAL_CHUNK = 65_536  # metrics._CHUNK: rows per forward pass in evaluation
KNN_REFERENCE_ROWS = 4096  # metrics.evaluate: training rows 1-NN accuracy compares with
SAMPLE_ROWS = 2048  # diagnostics.SAMPLE_ROWS
CHUNK_VALUES = 2**16  # diagnostics.CHUNK_VALUES: pieces x width in one chunk of the walk
_F64 = 8  # diagnostics.linear_pieces works in float64
_CDIST_MM_ROWS = 25  # torch.cdist computes through a matmul above this many rows

# activations whose backward reads their output: their input is not kept
_SAVE_RESULT = frozenset({"relu", "sigmoid", "tanh"})
_FUSED_OPTIMIZERS = frozenset({"sgd", "adam", "adamw"})  # training._FUSED: in-place kernels

# (B, C) tensors a loss keeps besides the model's output: at the end of the forward pass
# (the previous batch's output is still held) or in backward (its saved tensors and the
# gradients it makes), whichever is more.
_LOSS_BUFFERS = {
    "cross_entropy": 3,  # log-probabilities, their gradient, the logits' gradient
    "nll": 2,  # the model's output is the log-probabilities: two gradients
    "multi_margin": 2,
    "bce_with_logits": 3,
    "multilabel_soft_margin": 6,  # log-sigmoid of x and -x, products, their gradients
    "multilabel_margin": 3,  # the is-target mask, the gradient
    "mse": 3, "l1": 3, "smooth_l1": 3, "huber": 3,
}
# evaluation: (N_val, C) temporaries of the loss and the metrics beside the output
_EVAL_BUFFERS = {"cross_entropy": 1, "nll": 0, "multi_margin": 1, "bce_with_logits": 3,
                 "multilabel_soft_margin": 4, "multilabel_margin": 2,
                 "mse": 3, "l1": 3, "smooth_l1": 3, "huber": 3}  # regression: units, residuals

_PERSISTENT = ("data_source", "data_tensors", "parameters", "gradients", "optimizer_state",
               "best_weights")
# the terms alive in each phase
PHASES: dict[str, tuple[str, ...]] = {
    "prepare": ("data_source", "prepare_copies"),
    "train_step": (*_PERSISTENT, "batch_indices", "activations", "activation_gradients",
                   "loss_buffers", "optimizer_step"),
    "evaluate": (*_PERSISTENT, "evaluation"),
    "diagnostics": (*_PERSISTENT, "diagnostics"),
    "checkpoint": (*_PERSISTENT, "checkpoint"),
}


def format_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


@dataclass(frozen=True)
class MemoryEstimate:
    """The estimated peak of a run, in bytes above a warm process that imported torch.

    `breakdown`: every term in bytes (see `PHASES` for which are alive together), with the
    peak phase's `allocator_slack` and the `fixed_overhead`; `phases`: each phase's total
    with its slack; `total_bytes`: the largest phase (`peak_phase`) plus the overhead.
    """

    total_bytes: int
    breakdown: dict[str, int]
    phases: dict[str, int]
    peak_phase: str

    def largest_terms(self, top: int = 3) -> list[tuple[str, int]]:
        """The peak phase's largest terms, largest first."""
        names = (*PHASES[self.peak_phase], "allocator_slack")
        return sorted(((t, self.breakdown[t]) for t in names if self.breakdown.get(t)),
                      key=lambda item: -item[1])[:top]

    def to_dict(self) -> dict[str, object]:
        """JSON-ready: for error bodies and logs."""
        return {"total_bytes": self.total_bytes, "peak_phase": self.peak_phase,
                "phases": dict(self.phases), "breakdown": dict(self.breakdown)}

    def summary(self) -> str:
        """'about 35.7 GiB (train step: activations 34.9 GiB, ...)', for messages."""
        parts = ", ".join(f"{t.replace('_', ' ')} {format_bytes(b)}"
                          for t, b in self.largest_terms())
        return (f"about {format_bytes(self.total_bytes)} "
                f"({self.peak_phase.replace('_', ' ')}: {parts})")


@dataclass
class _Terms:
    """Bytes per term, and of them the bytes in heap-served tensors allocated afresh at
    every step or epoch (what the heap slack applies to)."""

    bytes: dict[str, int] = field(default_factory=dict)
    churn: dict[str, int] = field(default_factory=dict)

    def add(self, name: str, nbytes: int, churn: int = 0) -> None:
        self.bytes[name] = int(nbytes)
        self.churn[name] = int(churn)


def _heap(tensor_bytes: int, count: int | float = 1) -> int:
    """`count` tensors of `tensor_bytes` each, when glibc serves them from the heap."""
    return int(tensor_bytes * count) if tensor_bytes < _MMAP_MAX else 0


@dataclass(frozen=True)
class _Shape:
    """The sizes the estimate works with, from the spec and the data's size."""

    n_rows: int
    n_train: int
    n_val: int
    n_features: int
    hidden: tuple[int, ...]
    n_out: int
    batch: int

    @property
    def layers(self) -> list[tuple[int, int]]:
        """(fan_in, fan_out) of every Linear layer."""
        widths = (self.n_features, *self.hidden, self.n_out)
        return list(zip(widths, widths[1:], strict=False))

    @property
    def largest_weight(self) -> int:
        return max(a * b for a, b in self.layers)


def _split(n_rows: int, validation_split: float) -> tuple[int, int]:
    # data.split_indices: round(n * split) rows validate, unless that leaves a side empty
    n_val = round(n_rows * validation_split)
    if n_val <= 0 or n_val >= n_rows:
        n_val = 0
    return n_rows - n_val, n_val


def _pairs(rows: int) -> int:
    """Hinge pairs taken from `rows` rows (losses.hinge_embedding_pairs)."""
    every = rows * (rows - 1) // 2
    return every if every <= MAX_PAIRS else MAX_PAIRS


def estimate_training_memory(spec: JobSpec, *, n_rows: int, n_features: int | None = None,
                             string_labels: bool = False, checkpoints: bool = True
                             ) -> MemoryEstimate:
    """Estimate the peak memory of training a resolved spec (task, loss and sizes known).

    `n_rows` and `n_features` describe the data (`DatasetInfo.n_rows` and `.n_features`;
    `n_features` defaults to `model.input_dim`); the classes, outputs or embedding size are
    the spec's `model.output_dim`. `string_labels`: the target holds strings (`not
    DatasetInfo.target_numeric`), which the worker keeps as Python objects. `checkpoints`:
    the worker serialises a checkpoint (weights, optimiser state) in memory after epochs.
    The data source follows `spec.dataset`: an uploaded table (`id`) is held by the worker
    as float32 arrays while `fit` runs; builtin and inline data are loaded by `fit`.

    Measured on the CPU (host memory); on CUDA the same terms bound device memory from above
    (dropout keeps a byte mask there, not a float one), the CUDA context aside.
    """
    m, tr = spec.model, spec.training
    d = n_features if n_features is not None else m.input_dim
    if d is None or m.output_dim is None or spec.task is None or spec.loss is None:
        raise ValueError("estimate_training_memory needs a resolved spec (task, loss, "
                         "model.input_dim and model.output_dim known): call resolve_spec")
    n_train, n_val = _split(n_rows, tr.validation_split)
    s = _Shape(n_rows=n_rows, n_train=n_train, n_val=n_val, n_features=d,
               hidden=tuple(m.hidden_dims or ()), n_out=m.output_dim,
               batch=max(1, min(tr.batch_size, n_train)))
    terms = _Terms()
    _data_terms(terms, spec, s, string_labels=string_labels)
    _model_terms(terms, spec, s)
    _step_terms(terms, spec, s)
    _evaluation_term(terms, spec, s)
    _diagnostics_term(terms, spec, s)
    state = sum(terms.bytes[t] for t in ("parameters", "optimizer_state", "best_weights"))
    # capture() copies the weights and optimiser state, torch.save writes them into a
    # BytesIO, whose growth may hold the buffer twice for a moment
    terms.add("checkpoint", 3 * state if checkpoints else 0,
              _heap(s.largest_weight * _F32, len(s.layers)) if checkpoints else 0)

    phases: dict[str, int] = {}
    slack: dict[str, int] = {}
    for name, alive in PHASES.items():
        slack[name] = int(HEAP_SLACK * sum(terms.churn[t] for t in alive))
        phases[name] = sum(terms.bytes[t] for t in alive) + slack[name]
    peak = max(phases, key=lambda p: phases[p])
    breakdown = {**terms.bytes, "allocator_slack": slack[peak],
                 "fixed_overhead": FIXED_OVERHEAD_BYTES}
    return MemoryEstimate(total_bytes=phases[peak] + FIXED_OVERHEAD_BYTES,
                          breakdown=breakdown, phases=phases, peak_phase=peak)


def estimate_from_info(spec: JobSpec, info: DatasetInfo, *, checkpoints: bool = True
                       ) -> MemoryEstimate:
    """`estimate_training_memory` for a spec resolved against `info` (what the API has)."""
    return estimate_training_memory(spec, n_rows=info.n_rows, n_features=info.n_features,
                                    string_labels=not info.target_numeric,
                                    checkpoints=checkpoints)


def _target_bytes(spec: JobSpec, k: int) -> tuple[int, int]:
    """(encoded targets kept as tensors, extra while preparing them), bytes per row."""
    assert spec.loss is not None
    if spec.task in ("classification", "metric_learning"):
        return _I64, 4 * _I64  # int64 codes; np.unique's sorted copy and inverse
    if spec.task == "regression":
        # the metric targets, and standardised loss targets beside them
        kept = k * _F32 * (2 if spec.training.standardize else 1)
        return kept, 2 * k * _F32
    # multilabel: 0/1 floats; multilabel_margin's int64 label lists beside them
    kept = k * _F32 + (k * _I64 if spec.loss.name == "multilabel_margin" else 0)
    return kept, 3 * k * _I64


def _data_terms(terms: _Terms, spec: JobSpec, s: _Shape, *, string_labels: bool) -> None:
    n, d, k = s.n_rows, s.n_features, s.n_out
    cells = n * d
    y_source = n * (_STRING_LABEL_BYTES if string_labels
                    else _I64 * (k if spec.task == "multilabel" else 1))
    kept_y, prep_y = _target_bytes(spec, k)
    ds = spec.dataset
    if ds is not None and ds.builtin is not None:  # generated inside fit: float64, temps
        held, loaded = 0, 2 * cells * 8 + n * _I64
    elif ds is not None and ds.inline is not None:  # the lists stay; np.asarray: float64
        held, loaded = cells * _INLINE_CELL_BYTES + y_source, cells * 8
    else:  # an uploaded table (or arrays given to fit): float32 arrays held while fit runs
        held, loaded = cells * _F32 + y_source, 0
    # prepare_data: the float32 copy of x (astype), the split's fancy-indexed copies, the
    # split's index arrays, the targets; while the standardiser is fitted, a float64 copy
    # of the training rows and, inside np.std, their float64 deviations.
    copies = loaded + 2 * cells * _F32 + n * (prep_y + kept_y + 5 * _I64)
    if spec.training.standardize:
        copies += 2 * s.n_train * d * 8
    terms.add("data_source", held)
    terms.add("prepare_copies", copies)
    # x_train and x_val as tensors (sharing the prepared arrays), the targets
    terms.add("data_tensors", cells * _F32 + n * kept_y)


def _moments(spec: JobSpec) -> int:
    """Tensors of the parameters' size the optimiser keeps as state."""
    opt = spec.optimizer
    momentum = opt.params.get("momentum", 0.0) > 0
    if opt.name in ("adam", "adamw"):
        return 2  # exp_avg, exp_avg_sq
    if opt.name == "rmsprop":
        return 1 + momentum  # square_avg (+ momentum_buffer)
    return int(momentum)  # sgd's momentum_buffer


def _model_terms(terms: _Terms, spec: JobSpec, s: _Shape) -> None:
    m = spec.model
    n_params = exact_parameter_count(s.n_features, list(s.hidden), s.n_out,
                                     batch_norm=m.batch_norm)
    weights = n_params * _F32 + (2 * _F32 * sum(s.hidden) if m.batch_norm else 0)
    moments = _moments(spec)
    es = spec.training.early_stopping
    terms.add("parameters", weights)
    # set to None before every backward pass, so allocated afresh at every step
    terms.add("gradients", n_params * _F32,
              sum(_heap(a * b * _F32) for a, b in s.layers))
    terms.add("optimizer_state", moments * n_params * _F32)
    # EarlyStopping(restore_best) clones the state dict at every improvement
    terms.add("best_weights", weights if es is not None and es.restore_best else 0)


def _saved_per_layer(spec: JobSpec) -> int:
    """(B, h) tensors one hidden block keeps for backward (counted with
    torch.autograd.graph.saved_tensors_hooks: tests/mlp_engine/test_memory.py)."""
    m = spec.model
    keeps_output = m.activation.name in _SAVE_RESULT
    bn, dropout = m.batch_norm, m.dropout > 0
    n = 1 if bn or not keeps_output else 0  # Linear's output: BatchNorm's or the activation's input
    n += 1 if bn and not keeps_output else 0  # BatchNorm's output, the activation's input
    n += 1 if keeps_output or not dropout else 0  # the activation's output (or next Linear's input)
    n += 2 if dropout else 0  # on the CPU dropout keeps a float mask, and its output
    return n


def _step_terms(terms: _Terms, spec: JobSpec, s: _Shape) -> None:
    """One training step: what forward keeps for backward, backward's gradients, the loss."""
    assert spec.loss is not None
    b, k = s.batch, s.n_out
    per_layer = _saved_per_layer(spec)
    # the batch's rows (x[idx]), the hidden blocks' saved tensors, the model's output (held
    # by the loop until the next batch's replaces it)
    acts = (b * s.n_features + per_layer * b * sum(s.hidden) + b * k) * _F32
    acts_churn = (_heap(b * s.n_features * _F32) + _heap(b * k * _F32)
                  + sum(_heap(b * h * _F32, per_layer) for h in s.hidden))
    terms.add("activations", acts, acts_churn)
    # the gradient flowing down and the one being made (BatchNorm's backward: one more)
    widest = max((s.n_features, *s.hidden))
    count = 3 if spec.model.batch_norm else 2
    terms.add("activation_gradients", count * b * widest * _F32,
              _heap(b * widest * _F32, count))
    if spec.loss.name == "hinge_embedding":
        pairs = _pairs(b)
        # emb[i], emb[j], their difference and difference + eps in forward; the saved
        # difference and two gradients of pair rows in backward; then each side's (B, C)
        # gradient scattered back; the pair indices and targets
        loss = (4 * pairs * k + 2 * b * k) * _F32 + pairs * (2 * _I64 + 3 * _F32)
        churn = _heap(pairs * k * _F32, 4) + _heap(b * k * _F32, 2)
    else:
        units = _LOSS_BUFFERS.get(spec.loss.name, 3) + (
            1 if spec.loss.params.get("label_smoothing") else 0)
        loss, churn = units * b * k * _F32, _heap(b * k * _F32, units)
    terms.add("loss_buffers", loss, churn)
    largest = s.largest_weight * _F32
    reg = spec.regularization
    # unfused optimisers (rmsprop) make a temporary or two per parameter tensor; so does
    # the L1/L2 penalty (|θ| or θ², and its gradient)
    unfused = spec.optimizer.name not in _FUSED_OPTIMIZERS or bool(reg.l1 or reg.l2)
    terms.add("optimizer_step", 2 * largest if unfused else 0,
              _heap(largest, 2) if unfused else 0)
    terms.add("batch_indices", (s.n_train + b) * _I64)  # the epoch's permutation


def _forward_peak(spec: JobSpec, s: _Shape, rows: int) -> int:
    """Floats alive at once in a no-grad forward pass over `rows` rows: a block's input,
    held by MLP.forward, beside the current module's input and output."""
    widths = (s.n_features, *s.hidden)
    blocks = max((a + 2 * h for a, h in zip(widths, widths[1:], strict=False)), default=0)
    head = widths[-1] + s.n_out * (2 if spec.loss is not None and spec.loss.name == "nll" else 1)
    return rows * max(blocks, head)


def _evaluation_term(terms: _Terms, spec: JobSpec, s: _Shape) -> None:
    """metrics.evaluate on the validation rows: forward in chunks, torch.cat, the metrics."""
    assert spec.loss is not None
    n, k = s.n_val, s.n_out
    if n == 0:
        terms.add("evaluation", 0)
        return
    chunk = min(n, EVAL_CHUNK)
    # the earlier chunks' outputs wait for torch.cat, which copies them all once more
    forward = _forward_peak(spec, s, chunk) + (n - chunk) * k
    out = n * k
    tensor = max(chunk * max((*s.hidden, s.n_features)), out)  # a typical one, in floats
    if spec.task == "metric_learning":
        pairs = _pairs(n)
        pair_tmp = 4 * pairs * k + pairs  # emb[i], emb[j], difference, + eps; distances
        ref = min(KNN_REFERENCE_ROWS, s.n_train)  # the training rows' embeddings
        ref_forward = _forward_peak(spec, s, min(ref, EVAL_CHUNK)) + ref * k
        if n > _CDIST_MM_ROWS or ref > _CDIST_MM_ROWS:
            # x1·(-2) beside [x1, |x1|², 1] and [x2, |x2|², 1], then the (N, R) distances
            cdist = (n + ref) * (k + 2) + max(n, ref) * k + n * ref
        else:
            cdist = n * ref
        after = out + max(pair_tmp, ref_forward, ref * k + cdist)
        tensor = max(tensor, pairs * k)
    else:
        after = out * (1 + _EVAL_BUFFERS.get(spec.loss.name, 3))
    peak = max(forward, 2 * out, after) * _F32
    terms.add("evaluation", peak, peak if tensor * _F32 < _MMAP_MAX else 0)


def _diagnostics_term(terms: _Terms, spec: JobSpec, s: _Shape) -> None:
    """The per-epoch diagnostics the spec asks for (they run one after another)."""
    dg = spec.diagnostics
    units = sum(s.hidden)
    need: list[tuple[int, int]] = [(0, 0)]
    # the findings rules ask for activation statistics at sampled epochs on their own
    if dg.activation_stats or "activation_stats" in RuleSettings.of(spec).needs():
        rows = min(SAMPLE_ROWS, s.n_train)
        # every layer's activation input and output kept by the hooks; a forward pass
        b = _F32 * (rows * units * 2 + _forward_peak(spec, s, rows))
        need.append((b, b))
    n_params = exact_parameter_count(s.n_features, list(s.hidden), s.n_out,
                                     batch_norm=spec.model.batch_norm)
    if dg.linear_regions and ACTIVATIONS[spec.model.activation.name].extra["piecewise_linear"]:
        kinks = 2 if spec.model.activation.name == "relu6" else 1
        # the float64 copy of the weights, and the largest layer of one segment's walk
        b = 2 * n_params * _F64 + _F64 * _pieces_peak(s.hidden, kinks)
        need.append((b, b))
    if dg.internal_covariate_shift:
        largest = s.largest_weight * _F32
        step = ("activations", "activation_gradients", "loss_buffers")
        # the probe model, G, and the step's gradients, beside the copy of the optimiser's
        # state while it steps, or the hidden blocks' stepped values after; the forward
        # pass kept for backward; G' of one layer
        copies = 3 + max(_moments(spec), 1)
        b = copies * n_params * _F32 + largest + sum(terms.bytes[t] for t in step)
        churn = (sum(_heap(a * o * _F32, copies) for a, o in s.layers) + _heap(largest)
                 + sum(terms.churn[t] for t in step))
        need.append((b, churn))
    b, churn = max(need)
    terms.add("diagnostics", b, churn)


def _pieces_peak(hidden: tuple[int, ...], kinks: int) -> int:
    """Values alive at once in diagnostics.linear_pieces' walk of one segment: per layer,
    the chunk of pieces waiting to go on (its pre-activations, n x h, at most CHUNK_VALUES
    each, and its pieces' breakpoints and owners, up to 1 + kinks·h per piece of the
    chunk), and about ten arrays of the chunk being worked on (its input, the midpoint
    values, slopes, offsets, crossings). A piece crosses at most kinks·h kinks of a layer
    of width h: small networks stay far below the chunk size."""
    waiting = largest = 0
    pieces = 1
    for h in hidden:
        chunk = min(pieces * h, CHUNK_VALUES)
        parents = min(pieces, max(CHUNK_VALUES // h, 1))
        waiting += 2 * chunk + 2 * parents * (1 + kinks * h)
        largest = max(largest, chunk)
        pieces = min(pieces * (1 + kinks * h), 2**40)
    return waiting + 10 * largest
