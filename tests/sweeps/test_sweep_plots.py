"""A sweep's pictures (GET /v1/sweeps/{id}/plots/{name}.svg|png) in-process on real Redis and
a real database: trials are run through the store as a worker would (several epochs each,
some pruned); SVGs parsed as XML, PNGs decoded at the size asked for."""

from __future__ import annotations

import pytest

from store.jobs import claim_job, finish_job, record_epochs
from store.models import JobStatus
from store.sweeps import advance_sweep, trials_of
from tests.service.conftest import BOTH_BACKENDS
from tests.service.test_plots import _png_size, _svg_text

pytestmark = BOTH_BACKENDS

_X = [[(i * 7 % 10) / 10, (i * 3 % 10) / 10, (i % 4) / 4] for i in range(30)]
_Y = [(i * 7 % 10) // 4 for i in range(30)]
SWEEP = {"name": "plots <b>sweep</b> $x$",
         "base": {"dataset": {"inline": {"x": _X, "y": _Y}},
                  "training": {"epochs": 4, "batch_size": 8}},
         "space": {"optimizer.lr": {"log_uniform": [0.001, 0.1]},
                   "model.hidden_dims": {"choice": [[4], [8, 8]]},
                   "regularization.l2": {"uniform": [0.0, 0.01]}},
         "strategy": "random", "max_trials": 4, "max_concurrent": 4, "seed": 1,
         "objective": {"metric": "val_accuracy", "mode": "max"}}


def _run_trials(harness, sweep_id: str) -> dict[int, float]:  # type: ignore[no-untyped-def]
    """Run every queued trial as a worker would: trial k reaches 0.2 + 0.1·k after its
    epochs; trial 0 is pruned after 2 epochs. Their best objectives by trial."""
    best: dict[int, float] = {}
    with harness.services.session_factory() as s:
        for job in trials_of(s, sweep_id):
            assert claim_job(s, job.id, worker_id="w", lease_s=30)
            k = job.trial or 0
            epochs = 2 if k == 0 else 4
            records = [{"epoch": e, "train_loss": 1.0 / e,
                        "val_accuracy": (0.2 + 0.1 * k) * e / epochs}
                       for e in range(1, epochs + 1)]
            record_epochs(s, job.id, records, worker_id="w")
            status = JobStatus.PRUNED if k == 0 else JobStatus.SUCCEEDED
            assert finish_job(s, job.id, status, worker_id="w")
            best[k] = records[-1]["val_accuracy"]
        advance_sweep(s, sweep_id)
    return best


@pytest.fixture(scope="module")
def sweep(harness):  # type: ignore[no-untyped-def]
    headers = harness.auth()
    r = harness.client.post("/v1/sweeps", json=SWEEP, headers=headers)
    assert r.status_code == 201, r.text
    sweep_id = r.json()["id"]
    running = harness.client.get(f"/v1/sweeps/{sweep_id}/plots/objective.svg", headers=headers)
    best = _run_trials(harness, sweep_id)
    assert harness.client.get(f"/v1/sweeps/{sweep_id}",
                              headers=headers).json()["status"] == "succeeded"
    return {"id": sweep_id, "headers": headers, "best": best, "running": running}


def test_a_sweep_without_epochs_yet_is_drawn_with_a_note(sweep) -> None:
    r = sweep["running"]
    assert r.status_code == 200, r.text
    assert "no epochs yet" in _svg_text(r.content)
    assert r.headers["cache-control"] == "no-cache"


def test_objective_svg_has_every_trial_the_best_and_the_pruned(client, sweep) -> None:
    r = client.get(f"/v1/sweeps/{sweep['id']}/plots/objective.svg", headers=sweep["headers"])
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("image/svg+xml")
    assert r.headers["x-content-type-options"] == "nosniff"
    text = _svg_text(r.content)
    # the user's name is drawn as text (escaped by the XML writer, never mathtext)
    assert "Objective per trial: plots <b>sweep</b> $x$" in text
    assert "epoch" in text and "val_accuracy" in text and "higher is better" in text
    best_trial = max(sweep["best"], key=lambda k: sweep["best"][k])
    assert f"best: trial {best_trial} ({sweep['best'][best_trial]:.4g})" in text
    assert "pruned" in text
    # each of the other trials is one line of its style's collection: count the paths drawn
    # with the pruned grey (one pruned trial) and the plain blue (two others)
    body = r.text
    assert body.count("stroke: #8c8c8c") >= 1 and body.count("stroke: #1f77b4") >= 2


def test_parallel_svg_has_an_axis_per_path_and_the_objective(client, sweep) -> None:
    r = client.get(f"/v1/sweeps/{sweep['id']}/plots/parallel.svg", headers=sweep["headers"])
    assert r.status_code == 200, r.text
    text = _svg_text(r.content)
    assert "Parallel coordinates" in text
    for path in SWEEP["space"]:
        assert path in text
    assert "(log)" in text and "(objective)" in text
    assert "[4]" in text and "[8, 8]" in text  # the choices, each at its place
    assert "0.001" in text and "0.1" in text    # the log axis' ends


@pytest.mark.parametrize("name, size", [("objective", (640, 360)), ("parallel", (1200, 700))])
def test_png_decodes_at_the_size_asked_for(client, sweep, name, size) -> None:
    r = client.get(f"/v1/sweeps/{sweep['id']}/plots/{name}.png", headers=sweep["headers"],
                   params={"width": size[0], "height": size[1]})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    assert _png_size(r.content) == size


def test_unknown_plot_404_lists_the_plots_and_other_tenants_see_nothing(
        client, sweep, other_auth) -> None:
    base = f"/v1/sweeps/{sweep['id']}/plots"
    r = client.get(f"{base}/loss.svg", headers=sweep["headers"])
    assert r.status_code == 404
    assert "objective" in r.json()["message"] and "parallel" in r.json()["message"]
    assert client.get(f"{base}/objective.svg", headers=other_auth).status_code == 404
    assert client.get(f"{base}/objective.svg").status_code == 401
    r = client.get(f"{base}/objective.gif", headers=sweep["headers"])
    assert r.status_code == 422 and "format" in r.json()["message"]


def test_a_finished_sweeps_plot_is_cached_by_etag(client, sweep) -> None:
    url = f"/v1/sweeps/{sweep['id']}/plots/objective.svg"
    first = client.get(url, headers=sweep["headers"])
    etag = first.headers["etag"]
    assert "max-age=" in first.headers["cache-control"]
    again = client.get(url, headers={**sweep["headers"], "If-None-Match": etag})
    assert again.status_code == 304 and again.headers["etag"] == etag
    assert first.headers["etag"] != sweep["running"].headers["etag"]
