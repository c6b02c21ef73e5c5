"""Plots of a job's epoch records (GET /v1/jobs/{id}/plots/{name}.svg|png): drawn from the
records of a real short training run with diagnostics on, stored the way a worker stores
them; SVGs parsed as XML, PNGs decoded at the size asked for."""

from __future__ import annotations

import struct
import xml.etree.ElementTree as ET
import zlib
from typing import Any

import pytest

from .conftest import BOTH_BACKENDS, SMALL_SPEC

pytestmark = BOTH_BACKENDS

DIAGNOSTICS = {"gradient_norms": True, "activation_stats": True, "linear_regions": True}
DIAG_SPEC = {**SMALL_SPEC, "name": "plots-diag",
             "training": {**SMALL_SPEC["training"], "epochs": 4},
             "diagnostics": DIAGNOSTICS}
PLAIN_SPEC = {**SMALL_SPEC, "name": "plots-plain"}


@pytest.fixture(scope="session")
def diag_history() -> list[dict[str, Any]]:
    """Epoch records of a real training run with the diagnostics on."""
    from mlp_engine import JobSpec, fit

    return [dict(r) for r in fit(JobSpec.model_validate(DIAG_SPEC)).history]


def _submit(harness, headers, spec) -> str:
    r = harness.client.post("/v1/jobs", headers=headers, json=spec)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _run(harness, job_id: str, records, *, claim: bool = True, finish: bool = True) -> None:
    """What a worker does: claim the job, record its epochs, finish it."""
    from store.jobs import claim_job, finish_job, record_epochs

    with harness.services.session_factory() as session:
        if claim:
            assert claim_job(session, job_id, worker_id="plot-test", lease_s=60) is not None
        record_epochs(session, job_id, records)
        if finish:
            assert finish_job(session, job_id, "succeeded")


@pytest.fixture(scope="module")
def jobs(harness, trained, diag_history):
    headers = harness.auth()
    diag = _submit(harness, headers, DIAG_SPEC)
    _run(harness, diag, diag_history)
    plain = _submit(harness, headers, PLAIN_SPEC)
    _run(harness, plain, trained["history"])
    return headers, {"diag": diag, "plain": plain}


def _svg_text(body: bytes) -> str:
    root = ET.fromstring(body)  # raises on anything that is not well-formed XML
    assert root.tag.endswith("svg")
    return " ".join(t.strip() for t in root.itertext() if t.strip())


def _png_size(body: bytes) -> tuple[int, int]:
    """Decode the PNG: its chunks (each CRC checked), the IHDR size, and the IDAT stream
    inflated to exactly one filter byte plus `width` pixels per row."""
    assert body[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, {}
    while pos < len(body):
        (length,) = struct.unpack(">I", body[pos:pos + 4])
        kind, data = body[pos + 4:pos + 8], body[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", body[pos + 8 + length:pos + 12 + length])
        assert zlib.crc32(kind + data) == crc, kind
        chunks[kind] = chunks.get(kind, b"") + data
        pos += 12 + length
    width, height, depth, colour = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour]
    pixels = zlib.decompress(chunks[b"IDAT"])
    assert len(pixels) == height * (1 + width * channels * depth // 8)
    assert b"IEND" in chunks
    return width, height


def test_loss_svg_is_xml_with_title_and_axis_labels(client, jobs):
    headers, ids = jobs
    r = client.get(f"/v1/jobs/{ids['diag']}/plots/loss.svg", headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("image/svg+xml")
    text = _svg_text(r.content)
    assert "Loss: plots-diag" in text
    assert "epoch" in text and "loss (cross_entropy)" in text
    assert "train" in text and "validation" in text


@pytest.mark.parametrize("size", [None, (640, 360), (1200, 900)])
def test_png_decodes_at_the_size_asked_for(client, jobs, size):
    headers, ids = jobs
    params = {} if size is None else {"width": size[0], "height": size[1]}
    r = client.get(f"/v1/jobs/{ids['diag']}/plots/accuracy.png", headers=headers,
                   params=params)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    assert _png_size(r.content) == (size or (800, 500))


@pytest.mark.parametrize("params, field", [({"width": 10}, "width"),
                                           ({"height": 100_000}, "height"),
                                           ({"width": "wide"}, "width")])
def test_size_out_of_range_is_422_naming_it(client, jobs, params, field):
    headers, ids = jobs
    r = client.get(f"/v1/jobs/{ids['diag']}/plots/loss.png", headers=headers, params=params)
    assert r.status_code == 422, r.text
    assert field in r.json()["message"]


def test_a_format_other_than_svg_or_png_is_422(client, jobs):
    headers, ids = jobs
    r = client.get(f"/v1/jobs/{ids['diag']}/plots/loss.jpg", headers=headers)
    assert r.status_code == 422 and "format" in r.json()["message"]


def test_diagnostics_plots_are_heatmaps_and_bounds(client, jobs):
    headers, ids = jobs
    base = f"/v1/jobs/{ids['diag']}/plots"
    grads = _svg_text(client.get(f"{base}/gradient_norms.svg", headers=headers).content)
    assert "Gradient norms per layer" in grads and "layer" in grads
    assert "hidden 1" in grads and "output" in grads and "log scale" in grads
    acts = _svg_text(client.get(f"{base}/activations.svg", headers=headers).content)
    assert "mean" in acts and "standard deviation" in acts and "dead units" in acts
    pieces = _svg_text(client.get(f"{base}/linear_regions.svg", headers=headers).content)
    assert "linear pieces per segment" in pieces and "Montúfar" in pieces
    for name in ("lr", "gradient_norms", "activations", "linear_regions"):
        r = client.get(f"{base}/{name}.png", headers=headers)
        assert r.status_code == 200 and _png_size(r.content) == (800, 500), name


def test_an_unknown_plot_is_404_listing_the_plots_the_job_has(client, jobs):
    headers, ids = jobs
    r = client.get(f"/v1/jobs/{ids['diag']}/plots/confusion.svg", headers=headers)
    assert r.status_code == 404
    message = r.json()["message"]
    for name in ("loss", "accuracy", "lr", "gradient_norms", "activations", "linear_regions"):
        assert name in message
    # without diagnostics the heatmaps are not there, and the 404 says why
    r = client.get(f"/v1/jobs/{ids['plain']}/plots/gradient_norms.svg", headers=headers)
    assert r.status_code == 404
    message = r.json()["message"]
    assert "diagnostics.gradient_norms" in message
    assert "loss, accuracy, lr" in message and "activations," not in message


def test_another_tenants_job_is_404(client, jobs, other_auth):
    _, ids = jobs
    r = client.get(f"/v1/jobs/{ids['diag']}/plots/loss.svg", headers=other_auth)
    assert r.status_code == 404
    assert "plots-diag" not in r.text
    assert client.get(f"/v1/jobs/{ids['diag']}/plots/loss.svg").status_code == 401


def test_etag_304_and_cache_control_of_a_finished_job(client, jobs):
    headers, ids = jobs
    url = f"/v1/jobs/{ids['diag']}/plots/loss.svg"
    first = client.get(url, headers=headers)
    etag = first.headers["etag"]
    assert etag.startswith('"') and "max-age=" in first.headers["cache-control"]
    again = client.get(url, headers={**headers, "If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    assert again.headers["etag"] == etag
    same = client.get(url, headers=headers)
    assert same.content == first.content and same.headers["etag"] == etag
    other = client.get(url, headers=headers, params={"width": 900})
    assert other.headers["etag"] != etag
    png = client.get(url.replace(".svg", ".png"), headers=headers)
    assert png.headers["etag"] != etag


def test_a_running_job_shows_its_epochs_so_far(harness, client, diag_history):
    headers = harness.auth()
    job_id = _submit(harness, headers, DIAG_SPEC)
    url = f"/v1/jobs/{job_id}/plots/loss.svg"
    # no epoch yet: loss and lr exist, with a note; the metrics' plots do not
    empty = client.get(url, headers=headers)
    assert empty.status_code == 200 and "no epochs yet" in _svg_text(empty.content)
    assert empty.headers["cache-control"] == "no-cache"
    missing = client.get(f"/v1/jobs/{job_id}/plots/accuracy.svg", headers=headers)
    assert missing.status_code == 404 and "loss, lr" in missing.json()["message"]
    _run(harness, job_id, diag_history[:2], finish=False)
    two = client.get(url, headers=headers)
    assert two.status_code == 200 and "no epochs yet" not in _svg_text(two.content)
    assert two.headers["etag"] != empty.headers["etag"]
    assert two.headers["cache-control"] == "no-cache"
    _run(harness, job_id, diag_history[2:], claim=False, finish=False)
    assert client.get(url, headers=headers).headers["etag"] != two.headers["etag"]


def test_a_busy_renderer_answers_503_with_retry_after(client, jobs):
    from service.routes import plots as plot_routes

    headers, ids = jobs
    url = f"/v1/jobs/{ids['diag']}/plots/lr.png"
    # a size no other test asks for, so that no picture is in the render cache
    size = {"width": 211 + int(ids["diag"][-6:], 16) % 2000}
    with plot_routes._RENDERS.hold(), plot_routes._RENDERS.hold():
        busy = client.get(url, headers=headers, params=size)
    assert busy.status_code == 503 and busy.headers["retry-after"] == "1", busy.text
    assert client.get(url, headers=headers, params=size).status_code == 200


def test_a_job_name_is_drawn_as_text_not_mathtext(harness, client, trained):
    headers = harness.auth()
    job_id = _submit(harness, headers, {**PLAIN_SPEC, "name": r"cost $\frac{$ <b>&"})
    _run(harness, job_id, trained["history"])
    r = client.get(f"/v1/jobs/{job_id}/plots/loss.svg", headers=headers)
    assert r.status_code == 200, r.text
    assert r"cost $\frac{$ <b>&" in _svg_text(r.content)
    assert r.headers["content-security-policy"].startswith("default-src 'none'")
