"""Browser fixtures: Debian's Chromium driven by Playwright (launched with `executable_path`;
Playwright's own browser download is not used), and the whole stack as real processes,
the same `stack` and `tenant` fixtures as tests/e2e.

Without Chromium these tests are skipped locally and fail in CI (`CI` set), where
.ci/run installs it. Screenshots go to `$MLP_TEST_ARTIFACTS` (or the test's tmp dir).
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# the real API and worker processes, started once per module (tests/e2e/conftest.py)
from tests.e2e.conftest import Stack, Tenant, stack

__all__ = ["Stack", "Tenant", "stack", "PageWatch", "chromium_path", "account", "browser", "page",
           "watch", "artifacts_dir"]

VIEWPORT = {"width": 1280, "height": 800}


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


@pytest.fixture(scope="module")
def account(stack: Stack) -> Iterator[Tenant]:
    """One tenant for the module's tests (a key costs an `mlpctl keys create` process);
    each test finds its own objects by id."""
    name = f"browser-{uuid.uuid4().hex[:10]}"
    key = stack.create_key(name)
    with stack.client(key) as client:
        yield Tenant(name, key, client)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Chromium for one test module: Playwright's sync API runs an event loop in this thread
    while it is open, which later tests' asyncio.run() cannot share."""
    executable = chromium_path()
    if executable is None:
        reason = ("Debian's chromium is not installed (apt-get install chromium; .ci/run "
                  "does it)")
        if _in_ci():
            pytest.fail(f"{reason}: the browser tests must run in CI", pytrace=False)
        pytest.skip(reason)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:  # the test extra brings it
        if _in_ci():
            pytest.fail(f"playwright is not installed: {exc}", pytrace=False)
        pytest.skip(f"playwright is not installed: {exc}")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, headless=True,
                                     args=["--no-sandbox", "--disable-gpu",
                                           "--disable-dev-shm-usage"])
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def artifacts_dir(tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    root = os.environ.get("MLP_TEST_ARTIFACTS")
    directory = Path(root) / "browser" if root else tmp_path / "screenshots"
    directory.mkdir(parents=True, exist_ok=True)
    return directory


class PageWatch:
    """What the page did that a test asserts never happens: dialogs (an alert() would be
    XSS), uncaught errors, and Content-Security-Policy violations in the console."""

    def __init__(self, page: Any) -> None:
        self.dialogs: list[str] = []
        self.errors: list[str] = []
        self.console: list[str] = []
        page.on("dialog", self._dialog)
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        page.on("console", lambda msg: self.console.append(f"{msg.type}: {msg.text}"))

    def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    def csp_violations(self) -> list[str]:
        return [m for m in self.console if "Content Security Policy" in m]


@pytest.fixture
def page(browser: Any, artifacts_dir: Path, request: pytest.FixtureRequest) -> Iterator[Any]:
    context = browser.new_context(viewport=VIEWPORT, accept_downloads=True)
    context.set_default_timeout(20_000)
    page = context.new_page()
    try:
        yield page
    finally:
        # the last state of every test, passed or failed, as an artifact
        try:
            page.screenshot(path=str(artifacts_dir / f"{request.node.name}-end.png"))
        except Exception:  # a page that crashed has nothing to show; the test says why
            pass
        context.close()


@pytest.fixture
def watch(page: Any) -> PageWatch:
    return PageWatch(page)

