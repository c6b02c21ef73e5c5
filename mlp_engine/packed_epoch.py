"""The pack: the trials still training, as stacks (row r of every stack is trial r), and
their joint epoch: one batch of every trial at a time through the stacked model, loss,
penalty, clipping and optimiser; then one batched validation pass and each trial's record
and callbacks. Trials leave at batch or epoch boundaries, and the stacks shrink."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch

from .packed_loss import StackedLoss
from .packed_model import StackedMLP, class_log_softmax
from .packed_optim import stacked_optimizer

if TYPE_CHECKING:  # pragma: no cover
    from .packed_trial import Trial

__all__ = ["Pack", "Rows", "Stopwatch", "Unwatched"]

# a trial's tensor below this many elements is updated on one thread (see _optimizer_threads)
_SMALL_TENSOR = 1 << 15


class Stopwatch:
    """Where a packed run's time goes: seconds by phase (setup, gather, forward, backward,
    optimizer, per-batch callbacks, epoch end, ...). Pass one to `fit_packed`."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, phase: str) -> None:
        """Book the time since the previous lap to `phase`."""
        now = time.perf_counter()
        self.seconds[phase] = self.seconds.get(phase, 0.0) + now - self._last
        self._last = now


class Unwatched(Stopwatch):
    """A stopwatch that keeps nothing (the default)."""

    def lap(self, phase: str) -> None:
        pass


class Rows:
    """The training (or validation) rows of every trial, each distinct set once: trial r's
    row i is row `offsets[r] + i` of `x` and `y`."""

    def __init__(self, xs: Sequence[torch.Tensor], ys: Sequence[torch.Tensor]) -> None:
        self.n = xs[0].shape[0]
        blocks: list[tuple[torch.Tensor, torch.Tensor]] = []
        where: list[int] = []
        for x, y in zip(xs, ys, strict=True):
            same = next((b for b, (bx, by) in enumerate(blocks)
                         if bx is x or (torch.equal(bx, x) and torch.equal(by, y))), None)
            if same is None:
                blocks.append((x, y))
                same = len(blocks) - 1
            where.append(same)
        self.x = torch.cat([bx for bx, _ in blocks])  # (blocks * n, d_in)
        self.y = torch.cat([by for _, by in blocks])  # (blocks * n, ...)
        self.offsets = torch.tensor(where, device=self.x.device) * self.n  # (K,)

    def take(self, rows: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Rows (K, B) of `x`, written into x (K, B, d_in), and their targets (K * B, ...)."""
        flat = rows.reshape(-1)
        torch.index_select(self.x, 0, flat, out=x.view(flat.shape[0], -1))
        return self.y.index_select(0, flat)

    def fill(self, x: torch.Tensor, start: int) -> None:
        """Every trial's rows start, start + 1, ... into x (K, m, d_in)."""
        rows = self.offsets[:, None] + torch.arange(start, start + x.shape[1],
                                                    device=self.x.device)
        self.take(rows, x)

    def targets(self) -> torch.Tensor:
        """Every trial's targets (K * n, ...), trial by trial."""
        rows = self.offsets[:, None] + torch.arange(self.n, device=self.x.device)
        return self.y.index_select(0, rows.reshape(-1))

    def keep(self, rows: list[int]) -> None:
        self.offsets = self.offsets[rows]


class Pack:
    """The trials still training, as stacks (row r is `trials[r]`), and their joint epoch."""

    def __init__(self, trials: list[Trial], watch: Stopwatch) -> None:
        loops = [t.loop for t in trials]
        first = loops[0]
        self.trials = trials
        self.watch = watch
        self.model = StackedMLP([lp.model for lp in loops], [t.rng for t in trials])
        self.optimizer = stacked_optimizer(first.spec.optimizer.name, self.model.params,
                                           self.model.grads, [lp.optimizer for lp in loops])
        self.loss = StackedLoss([lp.loss_fn for lp in loops])
        self.train = Rows([lp.data.x_train for lp in loops], [lp.data.y_train for lp in loops])
        self.val = Rows([lp.data.x_val for lp in loops], [lp.data.y_val for lp in loops])
        self.rows, self.batch_size = first.rows, first.batch_size
        self.metric_learning = first.task == "metric_learning"

        def per_trial(values: list[float]) -> torch.Tensor:
            return torch.tensor(values, dtype=self.model.params[0].dtype)

        reg = [lp.spec.regularization for lp in loops]
        clip = [lp.spec.training.gradient_clip_norm for lp in loops]
        self.l1, self.l2 = per_trial([r.l1 for r in reg]), per_trial([r.l2 for r in reg])
        self.clip = per_trial([c if c is not None else float("inf") for c in clip])
        self.clipped = torch.tensor([c is not None for c in clip])
        self._flags()
        self.version = 0  # optimiser steps taken: a trial's lone copies are current at it
        self.small_tensors = max(p[0].numel() for p in self.model.params) < _SMALL_TENSOR
        for row, trial in enumerate(trials):
            trial.pack, trial.row = self, row
        # the epoch under way
        self.order = torch.empty(0, dtype=torch.long)
        self.loss_sum = torch.zeros(0)
        self.objective_sum: torch.Tensor | None = None
        self.grad_norms: torch.Tensor | None = None

    def run_epoch(self) -> None:
        """Every trial's next epoch, batch by batch; a trial whose per-batch callback ends
        it leaves at that batch's end."""
        watch, bs = self.watch, self.batch_size
        orders = torch.stack([t.loop.epoch_order() for t in self.trials])  # (K, n)
        self.order = orders + self.train.offsets[:, None]
        k = len(self.trials)
        self.loss_sum = torch.zeros(k)
        penalised = self.any_l1 or self.any_l2
        self.objective_sum = torch.zeros(k) if penalised else None
        self.grad_norms = None
        last = (self.rows - 1) // bs * bs  # where the last batch starts
        watch.lap("epoch start")
        for batch, first_row in enumerate(range(0, self.rows, bs), start=1):
            if not self.trials:
                return
            idx = self.order[:, first_row:first_row + bs]  # (K, B)
            ws = self.model.workspace(idx.shape[1])
            y = self.train.take(idx, ws.x)  # (K * B, ...); the inputs into ws.x
            watch.lap("gather")
            out = self.model.forward(ws, train=True)  # (K, B, d_out)
            # the loss (and nll's log_softmax) by autograd, on the outputs only
            head = out.detach().requires_grad_()
            loss = self.loss(class_log_softmax(head) if self.model.log_softmax else head,
                             y)  # (K,)
            watch.lap("forward")
            (grad_out,) = torch.autograd.grad(loss.sum(), head)
            self.model.backward(ws, grad_out)
            grads = self.model.grads
            watch.lap("backward")
            with torch.no_grad():
                objective = self._penalise(loss.detach(), grads) if penalised else None
                if first_row == last:  # gradient_norms reports gradients before clipping
                    self.grad_norms = torch.stack(
                        [torch.linalg.vector_norm(g, dim=(1, 2)) for g in grads[0::2]], dim=1)
                if self.any_clip:
                    self._clip(grads)
            with self._optimizer_threads():
                self.optimizer.step()
            self.version += 1
            rows = idx.shape[1]
            self.loss_sum.add_(loss.detach(), alpha=rows)
            if self.objective_sum is not None and objective is not None:
                self.objective_sum.add_(objective, alpha=rows)
            watch.lap("optimizer")
            for trial in self.trials:
                trial.after_batch(batch)
            self.leave([t for t in self.trials if t.done])
            watch.lap("batch callbacks")
        for trial in self.trials:
            # what torch's LR schedulers check (else they warn that the optimiser never
            # stepped): each lone optimiser did step, through the stack
            setattr(trial.loop.optimizer, "_opt_called", True)  # noqa: B010

    def end_epoch(self, started: float) -> None:
        """Every trial's record and on_epoch_end; those that end leave."""
        if not self.trials:
            return
        sums = self.loss_sum.tolist()
        objectives = self.objective_sum.tolist() if self.objective_sum is not None else None
        validation = self._validation()
        assert self.grad_norms is not None
        self.watch.lap("validation")
        for row, trial in enumerate(self.trials):
            objective = objectives[row] / self.rows \
                if objectives is not None and trial.penalised else None
            trial.close_epoch(train_loss=sums[row] / self.rows, objective=objective,
                              validation=validation[row], grad_norms=self.grad_norms[row],
                              started=started)
        self.watch.lap("epoch end (records, callbacks)")
        self.leave([t for t in self.trials if t.done])
        self.watch.lap("leave")

    @contextmanager
    def _optimizer_threads(self) -> Iterator[None]:
        """One intra-op thread for the optimiser's kernels when the tensors are small:
        they run per trial and per tensor, and a parallel region per call (a few µs each)
        would cost more than the update itself."""
        threads = torch.get_num_threads()
        if threads == 1 or not self.small_tensors:
            yield
            return
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(threads)

    def _validation(self) -> list[dict[str, float] | None]:
        """Per trial its validation metrics from one batched forward pass; {} without
        validation rows; None for metric_learning (the record evaluates the lone model)."""
        if self.val.n == 0:
            return [{} for _ in self.trials]
        if self.metric_learning:
            return [None for _ in self.trials]
        out = self.model.evaluate(self.val.n, self.val.fill)  # (K, n_val, d_out)
        with torch.no_grad():
            losses = self.loss(out, self.val.targets())  # (K,)
        return [t.loop.validation(o, loss) for t, o, loss in
                zip(self.trials, out, losses, strict=True)]

    def _flags(self) -> None:
        """Which of the per-trial extras any trial still in the pack has."""
        self.any_l1, self.any_l2 = bool(self.l1.any()), bool(self.l2.any())
        self.any_clip = bool(self.clipped.any())

    def _penalise(self, loss: torch.Tensor, grads: list[torch.Tensor]) -> torch.Tensor:
        """Add each trial's l1/l2 gradient to its gradients (autograd's: λ₁·sign θ and
        2λ₂·θ); returns the objective (K,): the loss plus λ₁Σ|θ| + λ₂Σθ²."""
        objective = loss.clone()
        for p, g in zip(self.model.params, grads, strict=True):
            dims = tuple(range(1, p.dim()))
            shape = (-1,) + (1,) * (p.dim() - 1)
            if self.any_l1:
                objective += self.l1 * p.abs().sum(dim=dims)
                g.add_(torch.sign(p) * self.l1.view(shape))
            if self.any_l2:
                objective += self.l2 * p.pow(2).sum(dim=dims)
                g.add_(p * (2 * self.l2).view(shape))
        return objective

    def _clip(self, grads: list[torch.Tensor]) -> None:
        """torch.nn.utils.clip_grad_norm_ per trial that clips (over all its gradients)."""
        norms = torch.stack([torch.linalg.vector_norm(g.flatten(1), dim=1) for g in grads])
        total = torch.linalg.vector_norm(norms, dim=0)  # (K,)
        coef = torch.where(self.clipped, (self.clip / (total + 1e-6)).clamp(max=1.0),
                           torch.ones_like(total))
        for g in grads:
            g.mul_(coef.view((-1,) + (1,) * (g.dim() - 1)))

    def leave(self, leaving: list[Trial]) -> None:
        """End these trials (on_train_end, outcome) and take them out of the stacks."""
        if not leaving:
            return
        for trial in leaving:
            trial.end()
        rows = [t.row for t in self.trials if not t.ended]
        self.trials = [self.trials[r] for r in rows]
        for row, trial in enumerate(self.trials):
            trial.row = row
        if not self.trials:
            return
        self.model.keep(rows)
        self.optimizer.keep(rows, self.model.params, self.model.grads)
        self.loss.keep(rows)
        self.train.keep(rows)
        self.val.keep(rows)
        self.l1, self.l2, self.clip = self.l1[rows], self.l2[rows], self.clip[rows]
        self.clipped = self.clipped[rows]
        self._flags()
        self.order, self.loss_sum = self.order[rows], self.loss_sum[rows]
        if self.objective_sum is not None:
            self.objective_sum = self.objective_sum[rows]
        if self.grad_norms is not None:
            self.grad_norms = self.grad_norms[rows]
