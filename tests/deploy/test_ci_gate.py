"""CI cannot go green by skipping: tests/conftest.py, run in a pytest of its own on small
probe tests, fails a test whose promised server does not answer, and fails a run in which a
`postgres` test was skipped before it ran where PostgreSQL was required."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NOWHERE_PG = "postgresql+psycopg://postgres@127.0.0.1:1/test"  # port 1: refused at once
NOWHERE_REDIS = "redis://127.0.0.1:1/0"

NEEDS_SERVERS = '''
import pytest

@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_needs_postgres(database_url):
    pass

def test_needs_redis(redis_url):
    pass
'''

SKIPS_POSTGRES = '''
import pytest

@pytest.fixture
def postgres_server():
    pytest.skip("no PostgreSQL today")

@pytest.mark.postgres
def test_skipped_without_postgres(postgres_server):
    pass

@pytest.mark.postgres
def test_not_for_postgres():
    pytest.skip("SQLite only")  # the test's own decision, not a missing server

def test_passes():
    pass
'''


def run_probe(tmp_path: Path, body: str, **env: str) -> subprocess.CompletedProcess[str]:
    probe = tmp_path / "test_probe.py"
    probe.write_text(body)
    clean = {k: v for k, v in os.environ.items()
             if k not in {"DATABASE_URL", "REDIS_URL", "MLP_TEST_POSTGRES_URL",
                          "MLP_REQUIRE_POSTGRES", "PYTEST_ADDOPTS"}}
    # the root conftest as a plugin, the project's pytest settings, the probe outside tests/
    argv = [sys.executable, "-m", "pytest", "-c", str(ROOT / "pyproject.toml"),
            "-p", "tests.conftest", "-p", "no:cacheprovider", "-q", "-rs", str(probe)]
    return subprocess.run(argv, cwd=ROOT, env={**clean, **env}, capture_output=True,
                          text=True, timeout=120)


def test_promised_servers_that_do_not_answer_fail_the_tests(tmp_path: Path) -> None:
    done = run_probe(tmp_path, NEEDS_SERVERS, DATABASE_URL=NOWHERE_PG,
                     REDIS_URL=NOWHERE_REDIS)
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    assert "2 errors" in out and "skipped" not in out, out
    assert "PostgreSQL at postgresql+psycopg://postgres@127.0.0.1:1/test does not answer" in out
    assert f"REDIS_URL={NOWHERE_REDIS} does not answer" in out


def test_a_skipped_postgres_test_fails_a_run_that_requires_postgres(tmp_path: Path) -> None:
    done = run_probe(tmp_path, SKIPS_POSTGRES, MLP_REQUIRE_POSTGRES="1")
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    assert "1 passed, 2 skipped" in out
    assert "skipped PostgreSQL tests fail this run" in out
    assert "test_skipped_without_postgres: no PostgreSQL today" in out
    assert "test_not_for_postgres:" not in out


def test_without_the_requirement_a_postgres_skip_is_only_reported(tmp_path: Path) -> None:
    done = run_probe(tmp_path, SKIPS_POSTGRES)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "1 passed, 2 skipped" in out and "no PostgreSQL today" in out  # -rs
    assert "fail this run" not in out
