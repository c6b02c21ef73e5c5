"""`mlpctl` as a person and as a script use it, against real processes: a job followed with
a live progress bar and a summary, the same as JSON lines with --json, tables by default,
and one-line errors (never a traceback) for the mistakes a newcomer makes."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

IRIS_YAML = """\
name: cli-iris
dataset: {builtin: iris}
model: {hidden_dims: [16]}
training: {epochs: 6, batch_size: 16}
"""


def run(mlpctl: list[str], env: dict[str, str], *args: str, cwd: Path | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*mlpctl, *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=timeout)


@pytest.fixture
def env(stack, tenant, newcomer_env) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {**newcomer_env, "MLP_URL": stack.base_url, "MLP_API_KEY": tenant.key,
            "COLUMNS": "160"}


def test_submit_follow_shows_progress_and_a_summary(mlpctl, env, tmp_path) -> None:
    spec = tmp_path / "iris.yaml"
    spec.write_text(IRIS_YAML)
    done = run(mlpctl, env, "jobs", "submit", str(spec), "--follow", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert out.startswith("submitted job_") and "following it" in out
    assert "epoch 6/6" in out and "train_loss" in out and "val_accuracy" in out
    assert "status    succeeded, epoch 6 of 6" in out
    assert "Traceback" not in out + done.stderr
    job_id = out.split()[1].rstrip(";")

    listed = run(mlpctl, env, "jobs", "list")
    assert listed.returncode == 0 and job_id in listed.stdout
    header = listed.stdout.splitlines()[0].split()
    assert header == ["id", "name", "status", "epoch", "best", "device", "age"]
    row = next(line for line in listed.stdout.splitlines() if job_id in line)
    assert "succeeded" in row and "6/6" in row and "val_accuracy" in row

    metrics = run(mlpctl, env, "jobs", "metrics", job_id)
    assert metrics.stdout.splitlines()[0].split()[:3] == ["epoch", "train_loss", "val_loss"]
    assert len(metrics.stdout.strip().splitlines()) == 7  # header + 6 epochs

    predicted = run(mlpctl, env, "jobs", "predict", job_id, "[[5.1, 3.5, 1.4, 0.2]]")
    assert predicted.returncode == 0, predicted.stderr
    assert predicted.stdout.splitlines()[0].split() == ["row", "prediction", "probability"]
    as_json = json.loads(run(mlpctl, env, "jobs", "predict", job_id,
                             '{"x": [[5.1, 3.5, 1.4, 0.2]]}', "--json").stdout)
    assert len(as_json["predictions"]) == 1


def test_json_follow_prints_one_event_per_line(mlpctl, env, tmp_path) -> None:
    spec = tmp_path / "iris.json"
    spec.write_text(json.dumps({"dataset": {"builtin": "iris"}, "training": {"epochs": 3}}))
    done = run(mlpctl, env, "jobs", "submit", str(spec), "--follow", "--json")
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds[-1] == "end" and events[-1]["data"]["status"] == "succeeded"
    assert [e["data"]["epoch"] for e in events if e["event"] == "metrics"] == [1, 2, 3]
    job = json.loads(run(mlpctl, env, "jobs", "get", events[-1]["data"]["id"], "--json").stdout)
    assert job["status"] == "succeeded" and job["progress"]["epoch"] == 3


@pytest.mark.parametrize("args, message", [
    (("jobs", "submit", "missing.yaml"), "mlpctl: no spec file 'missing.yaml'"),
    (("jobs", "submit", "bad.yaml"), "mlpctl: bad.yaml is not valid YAML (line 2, column 1)"),
    (("jobs", "submit", "bad.json"), "mlpctl: bad.json is not valid JSON (line 1"),
    (("jobs", "predict", "job_x", "[[1, 2"), "mlpctl: the rows are not valid JSON"),
    (("datasets", "upload", "missing.csv", "--target", "y"),
     "mlpctl: no file 'missing.csv' to upload"),
])
def test_a_newcomers_mistakes_are_one_line_errors(mlpctl, newcomer_env, tmp_path, args,
                                                  message) -> None:
    (tmp_path / "bad.yaml").write_text("dataset: [1\n")
    (tmp_path / "bad.json").write_text('{"dataset": ')
    done = run(mlpctl, {**newcomer_env, "MLP_URL": "http://127.0.0.1:9"}, *args, cwd=tmp_path,
               timeout=60)
    assert done.returncode != 0
    assert done.stderr.strip().startswith(message), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


SWEEP_YAML = """\
name: cli-sweep
base:
  dataset: {builtin: iris}
  model: {hidden_dims: [8]}
  training: {epochs: 3, batch_size: 32}
space:
  optimizer.lr: {choice: [0.001, 0.01]}
strategy: grid
max_concurrent: 2
objective: {metric: val_accuracy, mode: max}
"""


def test_sweeps_submit_follow_then_show_the_leaderboard(mlpctl, env, tmp_path) -> None:
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(SWEEP_YAML)
    done = run(mlpctl, env, "sweeps", "submit", str(sweep), "--follow")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2/2" in done.stdout and "rank" in done.stdout, done.stdout
    sweep_id = done.stdout.split()[1]
    shown = json.loads(run(mlpctl, env, "sweeps", "show", sweep_id, "--json").stdout)
    assert shown["sweep"]["status"] == "succeeded" and len(shown["trials"]) == 2
    listed = run(mlpctl, env, "jobs", "list", "--json")
    trial_jobs = [j for j in json.loads(listed.stdout) if j.get("sweep_id") == sweep_id]
    assert sorted(j["trial"] for j in trial_jobs) == [0, 1]
