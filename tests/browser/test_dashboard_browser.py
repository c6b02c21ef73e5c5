"""The dashboard in a real browser (Debian's Chromium, driven by Playwright) against real API
and worker processes: sign in, watch a job train in the table and on its page (curves grow
over Server-Sent Events), download its weights, submit a spec through the form with
validate-as-you-type, upload a dataset, and render a hostile job name as text.

`MLP_UPDATE_DOCS_SCREENSHOT=1` also rewrites docs/dashboard.png (the README's picture).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

REPO = Path(__file__).resolve().parents[2]
EPOCHS = 100
# a job long enough to watch (0.1-0.2 s an epoch on one CPU thread), short enough for a test
LIVE_SPEC = {
    "name": "moons-live",
    "dataset": {"builtin": "moons", "params": {"n_samples": 12000, "noise": 0.2}},
    "model": {"hidden_dims": [32, 32], "activation": "relu"},
    "optimizer": {"name": "adam", "lr": 0.003},
    "training": {"epochs": EPOCHS, "batch_size": 64, "seed": 0},
    "diagnostics": {"gradient_norms": True, "activation_stats": True},
}
XSS_NAME = "<img src=x onerror=alert(1)>"


def wait_until(check: Callable[[], Any], *, timeout: float, what: str,
               poll_s: float = 0.15) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def shoot(page: Any, directory: Path, name: str) -> None:
    page.screenshot(path=str(directory / f"{name}.png"))


def sign_in(page: Any, base_url: str, key: str, hash_: str = "") -> None:
    page.goto(f"{base_url}/{hash_}")
    page.fill("#api-key", key)
    page.get_by_role("button", name="Sign in").click()
    page.locator("#sign-out").wait_for(state="visible")


def test_sign_in_refuses_a_bad_key_with_the_apis_message(stack, account, page, watch) -> None:
    page.goto(f"{stack.base_url}/")
    assert page.locator("#api-key").evaluate("el => el === document.activeElement")
    page.fill("#api-key", "not-a-key")
    page.keyboard.press("Enter")  # the form works from the keyboard
    api_message = httpx.get(f"{stack.base_url}/v1/catalog",
                            headers={"Authorization": "Bearer not-a-key"}).json()["message"]
    alert = page.get_by_role("alert")
    alert.wait_for()
    assert alert.inner_text() == api_message
    assert page.evaluate("sessionStorage.length") == 0 and page.context.cookies() == []

    page.fill("#api-key", account.key)
    page.keyboard.press("Enter")
    page.locator("#jobs-table").wait_for()
    assert page.evaluate("Object.values(sessionStorage)") == [account.key]
    assert page.context.cookies() == [] and account.key not in page.url
    assert not watch.errors and not watch.csp_violations(), (watch.errors, watch.console)


def test_a_training_job_live_in_the_table_and_on_its_page_then_its_weights(
        stack, account, browser, page, watch, artifacts_dir) -> None:
    sign_in(page, stack.base_url, account.key)
    job = account.client.submit(LIVE_SPEC)
    job_id = job["id"]

    # a second tab on the job's page (its own session storage: it signs in too), opened
    # first: the table may take a poll (3 s) to show the job, the curve must see it train
    detail = page.context.new_page()
    detail_watch = type(watch)(detail)
    sign_in(detail, stack.base_url, account.key, f"#/jobs/{job_id}")
    detail.locator("#loss-chart svg").wait_for()
    assert detail.locator("#job-title").inner_text() == "moons-live"
    row = page.locator(f'tr[data-job-id="{job_id}"]')
    row.wait_for(timeout=10_000)  # the table polls every 3 s
    assert row.locator("td.name-cell").inner_text() == "moons-live"

    progress_seen: set[int] = set()
    points_seen: set[int] = set()

    def watch_both() -> bool:
        value = row.locator("progress").get_attribute("value")
        if value is not None:
            progress_seen.add(int(value))
        points = int(detail.locator("#loss-chart svg").get_attribute("data-points") or 0)
        if 0 < points < EPOCHS:
            points_seen.add(points)
        return detail.locator('[data-status="succeeded"]').count() > 0

    wait_until(lambda: watch_both() or len(points_seen) >= 3, timeout=60,
               what="the curve growing")
    shoot(detail, artifacts_dir, "job-page-while-training")
    wait_until(watch_both, timeout=90, what=f"job {job_id} to succeed")
    wait_until(lambda: watch_both() and EPOCHS in progress_seen, timeout=10,
               what="the table showing the job done")
    # the table polls every 3 s: it showed the job part-way, then further on
    midway = [v for v in progress_seen if 0 < v < EPOCHS]
    assert midway and max(progress_seen) > min(midway), \
        f"the table's progress never advanced while the job trained: {sorted(progress_seen)}"
    assert len(points_seen) >= 3, f"the curve did not grow point by point: {points_seen}"

    # the finished page: every epoch on the curves, the model card, the pictures, the log
    wait_until(lambda: detail.locator("#loss-chart svg").get_attribute("data-points")
               == str(EPOCHS), timeout=10, what="all epochs on the curve")
    assert detail.locator("#metric-chart svg .series polyline").count() == 1
    detail.locator("#layers-table tbody tr").first.wait_for()
    assert detail.locator("#layers-table tbody tr").count() == 6  # 3 Linear: weight, bias
    detail.locator('#plots figure[data-plot="loss"] img').wait_for(timeout=30_000)
    src = detail.locator('#plots figure[data-plot="loss"] img').get_attribute("src")
    assert src.startswith("blob:")
    for name in ("loss", "accuracy", "gradient_norms", "activations"):  # heatmaps too
        wait_until(lambda name=name: detail.locator(f'#plots figure[data-plot="{name}"] img')
                   .evaluate("img => img.complete && img.naturalWidth > 0"),
                   timeout=10, what=f"the {name} plot drawn")
    wait_until(lambda: "epoch" in detail.locator("#logs").inner_text(), timeout=10,
               what="the log")

    # weights: fetched with the key, saved through a blob: URL, sha256 = ETag = artifacts
    finished = account.client.get(job_id)
    sha = finished["artifacts"]["weights"]["sha256"]
    etag = httpx.get(f"{stack.base_url}/v1/jobs/{job_id}/weights",
                     headers={"Authorization": f"Bearer {account.key}"}).headers["etag"]
    assert etag.strip('"') == sha
    with detail.expect_download() as info:
        detail.locator('#downloads button[data-format="safetensors"]').click()
    download = info.value
    assert download.suggested_filename == f"{job_id}.safetensors"
    assert hashlib.sha256(Path(download.path()).read_bytes()).hexdigest() == sha
    detail.get_by_text("sha256 matches the ETag").wait_for()
    if "weights_pt" in finished["artifacts"]:
        with detail.expect_download() as info:
            detail.locator('#downloads button[data-format="pt"]').click()
        got = hashlib.sha256(Path(info.value.path()).read_bytes()).hexdigest()
        assert got == finished["artifacts"]["weights_pt"]["sha256"]

    detail.screenshot(path=str(artifacts_dir / "job-page-finished-full.png"), full_page=True)
    if os.environ.get("MLP_UPDATE_DOCS_SCREENSHOT") == "1":
        detail.evaluate("window.scrollTo(0, 0)")
        detail.screenshot(path=str(REPO / "docs" / "dashboard.png"))

    # the table links to the page, by keyboard too
    link = row.locator("td.name-cell a")
    link.focus()
    page.keyboard.press("Enter")
    page.locator("#job-title").wait_for()
    assert page.url.endswith(f"#/jobs/{job_id}")
    for w in (watch, detail_watch):
        assert not w.errors and not w.csp_violations() and not w.dialogs, w.console


def test_the_form_validates_as_you_type_and_submits(stack, account, page, watch,
                                                    artifacts_dir) -> None:
    sign_in(page, stack.base_url, account.key, "#/submit")
    count = page.locator("#v-parameter-count")
    count.wait_for()
    # the default spec: iris, 4 -> 64 -> 64 -> 3
    assert count.inner_text() == f"{4 * 64 + 64 + 64 * 64 + 64 + 64 * 3 + 3:,}"
    assert "n0=4, n=64, L=2, k=3" in page.locator("#validation").inner_text()

    page.fill("#f-hidden", "64, 0")
    error = page.locator("#f-hidden-error")
    wait_until(lambda: "model.hidden_dims.1" in error.inner_text(), timeout=10,
               what="the error at the hidden widths")
    assert "greater than or equal to 1" in error.inner_text()
    assert page.locator("#f-hidden").get_attribute("aria-invalid") == "true"
    shoot(page, artifacts_dir, "form-field-error")

    page.fill("#f-hidden", "16")
    wait_until(lambda: count.is_visible() and count.inner_text() == f"{4 * 16 + 16 + 16 * 3 + 3}",
               timeout=10, what="the parameter count of 4 -> 16 -> 3")
    assert page.locator("#f-hidden").get_attribute("aria-invalid") is None
    assert error.inner_text() == ""

    # the JSON names an activation the catalog lacks: the error sits at the activation field
    spec_text = page.locator("#spec-json")
    spec_text.fill(spec_text.input_value().replace('"relu"', '"nope"'))
    activation_error = page.locator("#f-activation-error")
    wait_until(lambda: "unknown activation 'nope'" in activation_error.inner_text(),
               timeout=10, what="the error at the activation")

    page.select_option("#f-activation", "tanh")
    page.fill("#f-name", "form-job")
    page.fill("#f-epochs", "2")
    wait_until(lambda: count.is_visible() and activation_error.inner_text() == "",
               timeout=10, what="a valid spec again")
    page.get_by_role("button", name="Submit job").click()
    page.wait_for_url("**/#/jobs/*")
    title = page.locator("#job-title")
    title.wait_for()
    assert title.inner_text() == "form-job"
    job_id = page.url.rsplit("/", 1)[-1]
    job = account.client.get(job_id)
    assert job["spec"]["model"]["hidden_dims"] == [16]
    assert job["spec"]["model"]["activation"] in ("tanh", {"name": "tanh"})
    assert job["spec"]["training"]["epochs"] == 2
    assert not watch.errors and not watch.csp_violations(), watch.console


def test_a_dataset_uploads_from_the_form(stack, account, page, watch, tmp_path) -> None:
    csv = tmp_path / "points.csv"
    csv.write_text("a,b,label\n" + "".join(f"{i},{i % 7},{'yes' if i % 2 else 'no'}\n"
                                           for i in range(40)))
    sign_in(page, stack.base_url, account.key, "#/datasets")
    page.set_input_files("#ds-file", str(csv))
    page.fill("#ds-name", "points")
    page.fill("#ds-target", "label")
    page.get_by_role("button", name="Upload").click()
    notice = page.locator("#upload-message .notice")
    notice.wait_for()
    assert "40 rows, 2 features, 2 classes" in notice.inner_text()
    assert page.locator("#datasets-table tbody tr", has_text="points").count() == 1
    # an API error shows the API's message
    page.set_input_files("#ds-file", str(csv))
    page.fill("#ds-target", "no_such_column")
    page.get_by_role("button", name="Upload").click()
    page.locator("#upload-message .error").wait_for()
    assert "no_such_column" in page.locator("#upload-message .error").inner_text()
    assert not watch.errors and not watch.csp_violations(), watch.console


def test_a_hostile_job_name_renders_as_text(stack, account, page, watch,
                                            artifacts_dir) -> None:
    job = account.client.submit({"name": XSS_NAME, "dataset": {"builtin": "iris"},
                                "model": {"hidden_dims": [4]}, "training": {"epochs": 1}})
    sign_in(page, stack.base_url, account.key)
    cell = page.locator(f'tr[data-job-id="{job["id"]}"] td.name-cell')
    cell.wait_for()
    assert cell.inner_text() == XSS_NAME
    cell.locator("a").click()
    page.locator("#job-title").wait_for()
    assert page.locator("#job-title").inner_text() == XSS_NAME
    assert XSS_NAME in page.title()
    page.wait_for_timeout(500)  # an onerror handler would have fired by now
    assert page.locator('img[src="x"]').count() == 0
    assert watch.dialogs == [] and not watch.errors, (watch.dialogs, watch.errors)

    # dark mode follows the system's preference
    light = page.evaluate("getComputedStyle(document.body).backgroundColor")
    page.emulate_media(color_scheme="dark")
    page.get_by_role("link", name="Jobs", exact=True).click()
    page.locator("#jobs-table").wait_for()
    dark = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert dark != light
    shoot(page, artifacts_dir, "jobs-dark")


def test_a_sweep_page_shows_the_leaderboard_and_its_plots(stack, account, page, watch,
                                                           artifacts_dir) -> None:
    sweep = account.client.sweep({
        "name": XSS_NAME, "base": {"dataset": {"builtin": "iris"},
                                   "model": {"hidden_dims": [4]},
                                   "training": {"epochs": 3, "seed": 0}},
        "space": {"optimizer.lr": {"choice": [0.001, 0.03]}},
        "strategy": "grid", "max_concurrent": 2,
        "objective": {"metric": "val_accuracy", "mode": "max"}})
    sign_in(page, stack.base_url, account.key, "#/sweeps")
    cell = page.locator(f'tr[data-sweep-id="{sweep["id"]}"] td.name-cell')
    cell.wait_for()
    assert cell.inner_text() == XSS_NAME  # the user's text as text
    cell.locator("a").click()
    page.locator("#sweep-title").wait_for()
    assert page.locator("#sweep-title").inner_text() == XSS_NAME
    # live: the trials end and the leaderboard, the best and the pictures follow
    page.locator("#sweep-summary").get_by_text("2/2 trials ended").wait_for(timeout=90_000)
    rows = page.locator("#leaderboard tbody tr")
    wait_until(lambda: rows.count() == 2, timeout=10, what="both trials in the leaderboard")
    board = account.client.leaderboard(sweep["id"])
    assert rows.nth(0).get_attribute("data-trial") == str(board[0]["trial"])
    assert "optimizer.lr=" in rows.nth(0).inner_text()
    best = page.locator("#sweep-summary a", has_text="trial")
    assert best.get_attribute("href") == f"#/jobs/{board[0]['job_id']}"
    for name in ("objective", "parallel"):
        img = page.locator(f'#sweep-plots figure[data-plot="{name}"] img')
        img.wait_for(timeout=20_000)
        wait_until(lambda img=img: img.evaluate("el => el.complete && el.naturalWidth > 0"),
                   timeout=10, what=f"the {name} picture to load")
    shoot(page, artifacts_dir, "sweep")
    # a trial's page links back to its sweep
    rows.nth(0).locator("a").click()
    page.locator("#job-title").wait_for()
    page.get_by_role("link", name=f"trial {board[0]['trial']} of sweep {sweep['id']}").click()
    page.locator("#sweep-title").wait_for()
    page.wait_for_timeout(300)
    assert page.locator('img[src="x"]').count() == 0
    assert watch.dialogs == [] and not watch.errors and not watch.csp_violations(), (
        watch.dialogs, watch.errors, watch.console)
