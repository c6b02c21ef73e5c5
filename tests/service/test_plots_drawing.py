"""The drawing of plots (service.plots) on hand-made and trained records, without the API,
and the API's start-up without matplotlib."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

from .test_plots import _svg_text


def test_importing_the_app_does_not_import_matplotlib():
    code = "import sys, service.app; sys.exit(int('matplotlib' in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0


def test_findings_are_marked_on_the_loss_curve(trained):
    from service.plots import PlotInput, render
    from service.routes.plots import _findings_of

    job = SimpleNamespace(findings=[
        {"rule": "overfitting", "epoch": 3, "severity": "warning"},
        {"rule": "poor_initialization", "epoch": None},  # before training: not on a curve
        "not a finding"])
    findings = _findings_of(job)
    assert [f["rule"] for f in findings] == ["overfitting"]
    assert _findings_of(SimpleNamespace()) == []  # a job row without findings
    data = PlotInput(records=trained["history"], spec={}, findings=findings, job_title="j")
    text = _svg_text(render("loss", "svg", data))
    assert "overfitting" in text and "poor_initialization" not in text


def test_loss_is_log_scaled_when_it_spans_more_than_two_decades():
    from service.plots import PlotInput, render

    steep = [{"epoch": e, "train_loss": 10.0 ** -e, "lr": 0.1} for e in range(1, 6)]
    flat = [{"epoch": e, "train_loss": 1.0 + e / 10, "lr": 0.1} for e in range(1, 6)]
    assert "log scale" in _svg_text(render("loss", "svg", PlotInput(steep, {})))
    assert "log scale" not in _svg_text(render("loss", "svg", PlotInput(flat, {})))


def test_task_metric_plots_follow_the_records():
    from service.plots import PlotInput, available

    regression = [{"epoch": 1, "train_loss": 1.0, "val_loss": 1.1, "val_r2": 0.3,
                   "val_mae": 2.0, "val_mse": 5.0, "val_rmse": 2.2, "lr": 0.01}]
    assert available(PlotInput(regression, {})) == ["loss", "r2", "mae", "mse", "rmse", "lr"]
    assert available(PlotInput([], {})) == ["loss", "lr"]
