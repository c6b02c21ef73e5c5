"""The README tells the truth about configuration and about how to run things."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from mlpctl.cli import build_parser
from store.settings import env_name

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def _settings_classes() -> list[type]:
    from service.settings import Settings
    from store.settings import CommonSettings

    classes: list[type] = [CommonSettings, Settings]
    try:
        from worker.settings import WorkerSettings
    except ImportError:  # pragma: no cover - the worker package not there yet
        pass
    else:
        classes.append(WorkerSettings)
    return classes


def _config_table() -> str:
    start = README.index("## Configuration")
    return README[start:README.index("\n## ", start + 1)]


@pytest.mark.parametrize("cls", _settings_classes(), ids=lambda c: c.__name__)
def test_every_setting_is_in_the_configuration_table(cls: type) -> None:
    table = _config_table()
    missing = [env_name(cls, field) for field in cls.model_fields  # type: ignore[attr-defined]
               if f"`{env_name(cls, field)}`" not in table]
    assert not missing, f"README's configuration table lacks {missing}"


def test_scaling_guide_says_where_every_api_setting_goes() -> None:
    """docs/scaling.md sorts every setting of the API (the common ones included) into
    shared by all, the same in every replica, or per process; and the README links it."""
    from service.settings import Settings

    guide = (ROOT / "docs" / "scaling.md").read_text()
    missing = [env_name(Settings, field) for field in Settings.model_fields
               if f"`{env_name(Settings, field)}`" not in guide]
    assert not missing, f"docs/scaling.md does not say where {missing} go"
    running = README[README.index("## Running it for real"):README.index("## Configuration")]
    assert "(docs/scaling.md)" in running


def test_quick_start_has_the_two_commands() -> None:
    quick = README[README.index("## Quick start"):README.index("## A walk through")]
    blocks = re.findall(r"```bash\n(.*?)```", quick, re.S)
    first = blocks[0].strip()
    assert "\n" not in first, "the first command is one line, pasteable as it is"
    assert first.endswith("mlpctl standalone")
    # what `mlpctl standalone` needs, from the hash-checked locks, then the project itself
    locked = [c for c in first.split(" && ") if c.startswith("pip install --require-hashes ")]
    assert any("-r requirements/torch.lock" in c for c in locked), first
    assert any("-r requirements/standalone.lock" in c for c in locked), first
    assert first.rindex("--require-hashes") < first.index("pip install --no-deps -e .")
    assert blocks[1].strip() == "./scripts/test"


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert "set -euo pipefail" in ci
    assert re.search(r"^\./scripts/test\b", ci, re.M)
    assert "REDIS_URL=redis://127.0.0.1:6379/0" in ci
    assert "postgresql+psycopg://" in ci
    # CI cannot go green by skipping PostgreSQL: no `|| true` hides a server that is down,
    # and skipped `postgres` tests fail the run (tests/conftest.py)
    assert "|| true" not in ci
    assert re.search(r"^export MLP_REQUIRE_POSTGRES=1$", ci, re.M)
    assert re.search(r"python -m pytest .*-r\w*s", (ROOT / "scripts" / "test").read_text())
    for script in (ROOT / ".ci" / "run", ROOT / "scripts" / "test"):
        assert os.access(script, os.X_OK), f"{script} is not executable"


def test_readme_commands_parse() -> None:
    """Every `mlpctl ...` line in the README is a command line mlpctl accepts."""
    parser = build_parser()
    commands = [re.sub(r"\[[^\]]*\]", " ", line).split()  # drop optional [--flag X]
                for line in re.findall(r"^mlpctl ([^\n#|`]+)", README, re.M)
                + re.findall(r"`mlpctl ([^`]+)`", README)]
    # prose also names a bare subcommand or flag (`mlpctl worker --threads`): not a command
    commands = [c for c in commands if len(c) > 1 and not c[-1].startswith("--")]
    assert len(commands) > 5
    for words in commands:
        parser.parse_args(words)
