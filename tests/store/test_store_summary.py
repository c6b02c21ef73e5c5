"""store.jobs.summarize: `best` is one epoch's record (the best by the monitored metric),
`best_per_metric` each metric's own best with its epoch."""

from __future__ import annotations

from store.jobs import summarize


def _rec(epoch, val_loss, acc):
    return {"epoch": epoch, "train_loss": val_loss + 0.1, "val_loss": val_loss,
            "val_accuracy": acc, "lr": 0.01}


def test_best_is_the_record_of_the_best_epoch():
    summary = summarize([_rec(1, 1.0, 0.5), _rec(2, 0.5, 0.7), _rec(3, 0.7, 0.9)])
    assert summary["best_epoch"] == 2 and summary["monitor"] == "val_loss"
    assert summary["best"] == {"epoch": 2, "train_loss": 0.6, "val_loss": 0.5,
                               "val_accuracy": 0.7}
    assert summary["final"]["epoch"] == 3
    assert summary["best_per_metric"] == {
        "train_loss": {"value": 0.6, "epoch": 2}, "val_loss": {"value": 0.5, "epoch": 2},
        "val_accuracy": {"value": 0.9, "epoch": 3}}


def test_folding_in_steps_equals_folding_at_once():
    records = [_rec(1, 1.0, 0.5), _rec(2, 0.5, 0.7), _rec(3, 0.4, 0.6), _rec(4, 0.7, 0.9)]
    stepwise = None
    for record in records:
        stepwise = summarize([record], stepwise)
    assert stepwise == summarize(records)
    assert stepwise["best"]["epoch"] == stepwise["best_epoch"] == 3


def test_the_monitor_of_early_stopping_chooses_the_best_epoch():
    spec = {"training": {"early_stopping": {"metric": "val_accuracy"}}}
    summary = summarize([_rec(1, 1.0, 0.5), _rec(2, 0.5, 0.7), _rec(3, 0.7, 0.9)], spec=spec)
    assert summary["best_epoch"] == 3 and summary["best"]["val_loss"] == 0.7


def test_a_summary_written_before_best_per_metric_is_carried_over():
    old = {"best_epoch": 1, "monitor": "val_loss", "best_value": 1.0,
           "final": {"epoch": 1, "val_loss": 1.0, "val_accuracy": 0.8},
           "best": {"val_loss": 1.0, "val_accuracy": 0.8}}
    summary = summarize([_rec(2, 1.2, 0.6)], old)
    assert summary["best_per_metric"]["val_accuracy"] == {"value": 0.8, "epoch": None}
    assert summary["best_per_metric"]["val_loss"] == {"value": 1.0, "epoch": None}
    assert summary["best_epoch"] == 1 and summary["best"] == {}  # its values are not known
    summary = summarize([_rec(3, 0.5, 0.7)], summary)
    assert summary["best"] == {"epoch": 3, "train_loss": 0.6, "val_loss": 0.5,
                               "val_accuracy": 0.7}
