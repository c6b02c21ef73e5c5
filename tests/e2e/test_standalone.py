"""`mlpctl standalone` as a newcomer runs it: no REDIS_URL, no DATABASE_URL, a fresh data
directory. It must come up with an embedded Redis and SQLite, print a key that works, stop
every process it started on Ctrl-C, and find its jobs again after a restart: finished ones
with their weights, and the one that was running, resumed."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from mlpctl.sdk import Client

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

KEY = re.compile(r"\bmlp_[A-Za-z0-9_-]{43}\b")


def _proc_start(pid: int) -> str | None:
    """The start time of a live process (to tell it from a later one with its pid)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def descendants(pid: int) -> dict[int, str]:
    """Every live process below `pid`, with its start time."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found: dict[int, str] = {}
    todo = list(children.get(pid, []))
    while todo:
        child = todo.pop()
        start = _proc_start(child)
        if start is not None:
            found[child] = start
            todo.extend(children.get(child, []))
    return found


class Standalone:
    """`mlpctl standalone` in the background, its output collected line by line."""

    def __init__(self, mlpctl: list[str], *args: str, cwd: Path, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [*mlpctl, "standalone", *args], cwd=cwd, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_ready(self, timeout: float = 150) -> None:
        deadline = time.monotonic() + timeout
        while not any(line.startswith("Ready:") for line in self.lines):
            assert self.process.poll() is None, f"standalone exited:\n{self.output}"
            assert time.monotonic() < deadline, f"standalone not ready:\n{self.output}"
            time.sleep(0.1)

    def interrupt(self, timeout: float = 90) -> int:
        """Ctrl-C, as a terminal sends it; the exit status."""
        self.process.send_signal(signal.SIGINT)
        code = self.process.wait(timeout=timeout)
        self._reader.join(timeout=5)
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            for pid in descendants(self.process.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.process.kill()
            self.process.wait()


def test_standalone_as_a_newcomer_runs_it(tmp_path: Path, mlpctl: list[str],
                                          newcomer_env: dict[str, str], free_port: int) -> None:
    port = free_port
    data_dir = tmp_path / "data"
    args = ("--port", str(port), "--data-dir", str(data_dir))
    base = f"http://127.0.0.1:{port}"

    first = Standalone(mlpctl, *args, cwd=tmp_path, env=newcomer_env)
    try:
        first.wait_ready()
        assert "embedded" in first.output and f"sqlite:///{data_dir}" in first.output
        keys = KEY.findall(first.output)
        assert keys, f"no API key printed:\n{first.output}"
        key = keys[0]

        with Client(base, api_key=key) as client:
            job = client.submit({"name": "newcomer", "dataset": {"builtin": "iris"},
                                 "model": {"hidden_dims": [8]}, "training": {"epochs": 5}})
            job = client.wait(job["id"], timeout=120, poll_s=0.3)
            assert job["status"] == "succeeded", (job, first.output)

            # a long job, running when Ctrl-C comes: it must resume after the restart
            long = client.submit({"name": "interrupted", "dataset": {"builtin": "digits"},
                                  "model": {"hidden_dims": [64]},
                                  "training": {"epochs": 5000, "batch_size": 64}})
            deadline = time.monotonic() + 60
            while client.get(long["id"])["progress"]["epoch"] < 3:
                assert time.monotonic() < deadline, first.output
                time.sleep(0.2)

        # a second standalone on the same data directory is refused, and says why
        second = subprocess.run([*mlpctl, "standalone", "--port", str(port + 1),
                                 "--data-dir", str(data_dir)], env=newcomer_env,
                                capture_output=True, text=True, timeout=60)
        assert second.returncode != 0 and "in use" in second.stdout + second.stderr

        started = descendants(first.process.pid)
        names = {Path(f"/proc/{pid}/exe").resolve().name for pid in started
                 if Path(f"/proc/{pid}/exe").exists()}
        assert "redis-server" in names and len(started) >= 3, (started, names)
        assert first.interrupt() == 0, first.output
        assert "Stopped." in first.output
        left = {pid for pid, start in started.items() if _proc_start(pid) == start}
        assert not left, f"processes left behind after Ctrl-C: {left}"
    finally:
        first.kill()
    with Client(base, api_key=key) as client:
        with pytest.raises(httpx.ConnectError):
            client.get(job["id"])  # nothing listens any more

    # the same data directory again: same database, same artifacts, same key
    again = Standalone(mlpctl, *args, cwd=tmp_path, env=newcomer_env)
    try:
        again.wait_ready()
        assert not KEY.findall(again.output), "a second key was printed for the same data"
        with Client(base, api_key=key) as client:
            found = client.get(job["id"])
            assert found["status"] == "succeeded" and found["progress"]["epoch"] == 5
            assert [j["id"] for j in client.list_jobs()] == [long["id"], job["id"]]
            client.weights(job["id"], tmp_path / "iris.safetensors")

            # the interrupted job runs again, from its checkpoint, as a second attempt
            stopped_at = client.get(long["id"])["progress"]["epoch"]
            assert stopped_at >= 3
            deadline = time.monotonic() + 90
            while True:
                resumed = client.get(long["id"])
                if resumed["attempts"] == 2 and resumed["progress"]["epoch"] > stopped_at:
                    break
                assert resumed["status"] in {"queued", "running"}, resumed
                assert time.monotonic() < deadline, (resumed, again.output)
                time.sleep(0.3)
            epochs = [r["epoch"] for r in client.metrics(long["id"])["epochs"]]
            assert epochs == list(range(1, len(epochs) + 1)), "each epoch recorded once"
            client.cancel(long["id"])
            assert client.wait(long["id"], timeout=60, poll_s=0.3)["status"] == "cancelled"
        assert again.interrupt() == 0, again.output
    finally:
        again.kill()
