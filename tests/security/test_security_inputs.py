"""Hand-written bad inputs against the API process: malformed JSON, wrong types, huge
numbers, NaN in inline data, labels out of range, a CSV with formula injection, a zip bomb
npz, a pickle inside an npz, a 2 GB upload claim, path traversal in names and ids.

Each gets a 4xx whose JSON message a person can act on, never a 5xx, never a stack trace.
"""

from __future__ import annotations

import io
import json
import socket
import zipfile
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.faults.procs import Stack, tiny_spec
from tests.security.conftest import MAX_UPLOAD

pytestmark = pytest.mark.slow

TRACE_MARKERS = ("Traceback", 'File "/', "line ", ".py\", line")


def assert_clear_4xx(r: httpx.Response, *statuses: int, mentions: tuple[str, ...] = ()) -> dict:
    """A 4xx (one of `statuses` if given) with a JSON body and a message, no stack trace."""
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:500])
    if statuses:
        assert r.status_code in statuses, (r.status_code, r.text[:500])
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()
    message = body.get("message") or body.get("detail")
    assert isinstance(message, str) and message.strip(), body
    for marker in TRACE_MARKERS[:2]:
        assert marker not in r.text, r.text
    for needle in mentions:
        assert needle.lower() in r.text.lower(), (needle, body)
    return body


@pytest.fixture
def client(api: Stack, key: str):  # type: ignore[no-untyped-def]
    with api.http(key) as c:
        yield c


def post_json_text(client: httpx.Client, path: str, text: str | bytes) -> httpx.Response:
    return client.post(path, content=text, headers={"Content-Type": "application/json"})


# --------------------------------------------------------------------------- JSON


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/specs/validate"])
@pytest.mark.parametrize("text", [
    "{", '{"dataset": ', "", "null", "[]", '"a string"', "42", "{'single': 'quotes'}",
    '{"dataset": {"builtin": "iris"}} trailing', b"\xff\xfe\x00garbage",
    "[" * 50_000 + "]" * 50_000,  # nesting deep enough to break a recursive parser
    '{"a":' * 20_000 + "1" + "}" * 20_000,
], ids=["open", "cut", "empty", "null", "array", "string", "number", "quotes", "trailing",
        "not-utf8", "deep-array", "deep-object"])
def test_malformed_json_is_a_clear_4xx(client: httpx.Client, path: str,
                                       text: str | bytes) -> None:
    assert_clear_4xx(post_json_text(client, path, text), 400, 422)


def test_wrong_content_type_is_a_clear_4xx(client: httpx.Client) -> None:
    r = client.post("/v1/jobs", content=b"dataset=iris",
                    headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert_clear_4xx(r, 400, 415, 422)


@pytest.mark.parametrize("patch, field", [
    ({"training": {"epochs": "ten"}}, "epochs"),
    ({"training": {"epochs": 2.5}}, "epochs"),
    ({"training": {"batch_size": True}}, "batch_size"),
    ({"model": {"hidden_dims": "wide"}}, "hidden_dims"),
    ({"model": {"hidden_dims": [8, "x"]}}, "hidden_dims"),
    ({"dataset": "iris"}, "dataset"),
    ({"dataset": {"builtin": 7}}, "builtin"),
    ({"optimizer": {"name": "adam", "lr": "fast"}}, "lr"),
    ({"device": "tpu"}, "device"),
    ({"model": {"activation": {"name": "relu", "negative_slope": "x"}}}, "negative_slope"),
    ({"surprise": 1}, "surprise"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_wrong_types_name_the_field(client: httpx.Client, patch: dict[str, Any],
                                    field: str) -> None:
    spec = _merge(tiny_spec("types"), patch)
    for path in ("/v1/jobs", "/v1/specs/validate"):
        assert_clear_4xx(client.post(path, json=spec), 422, mentions=(field,))


@pytest.mark.parametrize("patch, field", [
    ({"training": {"epochs": 10**30}}, "epochs"),
    ({"training": {"epochs": 2**63}}, "epochs"),
    ({"training": {"batch_size": 2**64}}, "batch_size"),
    ({"training": {"seed": -1}}, "seed"),
    ({"training": {"max_runtime_s": 1e308}}, "max_runtime_s"),
    ({"optimizer": {"name": "adam", "lr": 1e308}}, "lr"),
    ({"model": {"hidden_dims": [10**12]}}, "hidden_dims"),
    ({"model": {"hidden_dims": [4096] * 40}}, "parameter"),
    ({"model": {"dropout": 1e-400 - 1}}, "dropout"),
], ids=["epochs-1e30", "epochs-2^63", "batch-2^64", "seed-negative", "runtime-1e308",
        "lr-1e308", "width-1e12", "params-over-limit", "dropout-negative"])
def test_huge_numbers_are_refused_naming_the_field_or_limit(client: httpx.Client,
                                                            patch: dict[str, Any],
                                                            field: str) -> None:
    spec = _merge(tiny_spec("huge"), patch)
    assert_clear_4xx(client.post("/v1/jobs", json=spec), 422, mentions=(field,))


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
@pytest.mark.parametrize("where", ["x", "y"])
def test_nan_and_inf_in_inline_data_are_refused(client: httpx.Client, literal: str,
                                                where: str) -> None:
    """JSON has no NaN, but Python's parser takes `NaN`, `Infinity` and `1e999` (inf): the
    API must refuse them in inline data instead of training on them."""
    spec = tiny_spec("nan", rows=6)
    spec["task"] = "regression"
    spec["dataset"]["inline"]["y"] = [float(i) for i in range(6)]
    text = json.dumps(spec)
    if where == "x":
        text = text.replace("[0.0, 0.0, 0.0]", f"[{literal}, 0.0, 0.0]", 1)
    else:
        text = text.replace('"y": [0.0,', f'"y": [{literal},', 1)
    assert literal in text
    for path in ("/v1/jobs", "/v1/specs/validate"):
        assert_clear_4xx(post_json_text(client, path, text), 400, 422,
                         mentions=("inline",))


def test_nan_in_predict_input_is_refused(api: Stack, key: str, trained: dict) -> None:
    from tests.security.conftest import make_succeeded_job

    job_id = make_succeeded_job(api, key, trained)
    with api.http(key) as client:
        ok = client.post(f"/v1/jobs/{job_id}/predict", json={"x": [[0.1, 0.2, 0.3]]})
        assert ok.status_code == 200, ok.text
        for text in ('{"x": [[NaN, 0.2, 0.3]]}', '{"x": [[1e999, 0.2, 0.3]]}',
                     '{"x": [[0.1, 0.2]]}', '{"x": [[0.1, 0.2, 0.3, 0.4]]}', '{"x": []}',
                     '{"x": [["a", "b", "c"]]}', '{"x": [[0.1, 0.2, 0.3], [0.1]]}'):
            assert_clear_4xx(post_json_text(client, f"/v1/jobs/{job_id}/predict", text),
                             400, 422)


@pytest.mark.parametrize("patch, mention", [
    ({"model": {"hidden_dims": [4], "output_dim": 2},
      "dataset": {"inline": {"x": [[0.0], [1.0], [2.0], [3.0]], "y": [0, 1, 5, 1]}}},
     "output_dim"),
    ({"loss": {"name": "cross_entropy", "class_weights": [1.0, 2.0, 3.0, 4.0, 5.0]}},
     "class_weights"),
    ({"loss": {"name": "cross_entropy", "class_weights": [1.0, -2.0]}}, "class_weights"),
    ({"task": "multilabel", "loss": {"name": "bce_with_logits"},
      "dataset": {"inline": {"x": [[0.0], [1.0]], "y": [[0, 1], [1, 3]]}}}, "y"),
    ({"model": {"hidden_dims": [4], "input_dim": 7}}, "input_dim"),
], ids=["label-over-output", "weights-too-many", "weights-negative", "multilabel-not-0-1",
        "input-dim-mismatch"])
def test_labels_out_of_range_are_refused(client: httpx.Client, patch: dict[str, Any],
                                         mention: str) -> None:
    spec = _merge(tiny_spec("labels"), patch)
    assert_clear_4xx(client.post("/v1/jobs", json=spec), 422, mentions=(mention,))


# --------------------------------------------------------------------------- uploads


def upload(client: httpx.Client, content: bytes, filename: str = "data.csv",
           **fields: str) -> httpx.Response:
    return client.post("/v1/datasets", files={"file": (filename, content)}, data=fields)


def test_csv_formula_injection_is_kept_as_inert_text(client: httpx.Client) -> None:
    """Cells that a spreadsheet would run (=, +, -, @) stay data: a string class label or
    a refused feature, never evaluated, and answered as JSON strings."""
    rows = ["f1,f2,label"] + [f"{i},{i % 3},{lab}" for i, lab in zip(
        range(12), ["=1+1", "@SUM(A1)", "=cmd|'/C calc'!A0"] * 4, strict=True)]
    r = upload(client, "\n".join(rows).encode(), "formula.csv", name="=HYPERLINK(\"x\")")
    assert r.status_code == 201, r.text
    body = r.json()
    assert sorted(body["class_labels"]) == sorted(["=1+1", "@SUM(A1)", "=cmd|'/C calc'!A0"])
    assert body["name"] == '=HYPERLINK("x")'
    # a formula where a number belongs is refused, naming the column
    bad = "f1,f2,label\n" + "\n".join(f"=2+{i},{i},{i % 2}" for i in range(8))
    assert_clear_4xx(upload(client, bad.encode(), "bad.csv"), 422, mentions=("f1",))


def _zip_bomb(rows: int) -> bytes:
    """An npz whose x and y declare `rows` rows of zeros (9 bytes a row uncompressed) and
    compress to almost nothing; written in chunks, never held in memory."""
    import numpy as np

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, descr, itemsize in (("x.npy", "<f8", 8), ("y.npy", "|i1", 1)):
            with zf.open(name, "w", force_zip64=True) as f:
                np.lib.format.write_array_header_1_0(
                    f, {"descr": descr, "fortran_order": False, "shape": (rows,)
                        if itemsize == 1 else (rows, 1)})
                chunk = bytes(1 << 20)
                for _ in range(rows * itemsize // len(chunk)):
                    f.write(chunk)
    return buf.getvalue()


def test_zip_bomb_npz_is_refused_without_inflating_it(client: httpx.Client) -> None:
    """A few hundred KB that inflate to 288 MiB: refused from the zip's declared sizes,
    before anything is inflated (a limit tied to MLP_MAX_UPLOAD_BYTES, not 1 GiB)."""
    bomb = _zip_bomb(32 << 20)
    assert len(bomb) < MAX_UPLOAD  # under the upload limit: only the inflated size is huge
    r = upload(client, bomb, "bomb.npz")
    assert_clear_4xx(r, 413, 422, mentions=("uncompressed",))


def test_a_pickle_inside_an_npz_is_never_unpickled(client: httpx.Client,
                                                   tmp_path: Path) -> None:
    """An object array in an npz is a pickle: the API refuses it and never runs it."""
    import numpy as np

    marker = tmp_path / "unpickled"

    class Boom:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (Path.touch, (marker,))

    buf = io.BytesIO()
    np.savez(buf, x=np.array([Boom(), Boom()], dtype=object), y=np.array([0, 1]))
    r = upload(client, buf.getvalue(), "pickle.npz")
    assert_clear_4xx(r, 415, 422, mentions=("object",))
    assert not marker.exists()


@pytest.mark.parametrize("path, content_type", [
    ("/v1/datasets", "multipart/form-data; boundary=xyz"),
    ("/v1/jobs", "application/json"),
])
def test_a_2gb_upload_claim_is_refused_at_once(api: Stack, key: str, path: str,
                                               content_type: str) -> None:
    """A request that declares 2 GB gets 413 before the server reads (or waits for) it."""
    host, port = "127.0.0.1", api.port
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {2 * 1024**3}\r\n\r\n")
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(head.encode() + b"--xyz\r\n")
        answer = b""
        while b"\r\n\r\n" not in answer:
            data = s.recv(65536)
            if not data:
                break
            answer += data
    status_line = answer.split(b"\r\n", 1)[0].decode()
    assert " 413 " in status_line + " ", answer[:500]


def test_an_upload_over_the_limit_is_413(client: httpx.Client) -> None:
    big = b"a,b,label\n" + b"1.0,2.0,0\n" * (MAX_UPLOAD // 10 + 10)
    assert_clear_4xx(upload(client, big, "big.csv"), 413, mentions=("MLP_MAX_UPLOAD_BYTES",))


@pytest.mark.parametrize("filename", ["../../../../escaped.csv", "..\\..\\escaped.csv",
                                      "/etc/passwd.csv", "a/../../escaped.csv",
                                      "%2e%2e%2fescaped.csv", "\x00evil.csv", "ok.csv\x00.sh"])
def test_path_traversal_in_upload_names_stays_inside(api: Stack, client: httpx.Client,
                                                     filename: str) -> None:
    csv = b"a,b,label\n" + b"".join(f"{i},{i % 3},{i % 2}\n".encode() for i in range(10))
    r = upload(client, csv, filename, name=filename)
    assert r.status_code in (201, 400, 415, 422), r.text
    if r.status_code >= 400:
        assert_clear_4xx(r)
    root = api.directory
    # nothing was written outside the data directory
    for p in (root / "escaped.csv", root.parent / "escaped.csv", Path("/escaped.csv"),
              root / "data" / "escaped.csv"):
        assert not p.exists(), p
    artifacts = root / "data" / "artifacts"
    for p in artifacts.rglob("*"):
        assert artifacts in p.resolve().parents, p


BAD_IDS = ["..%2F..%2Fetc%2Fpasswd", "%2e%2e", "..", "job_%00", "a" * 5000, "%ff%fe",
           "%0d%0aSet-Cookie:%20x=y"]


@pytest.mark.parametrize("prefix, raw", [
    pytest.param(prefix, raw, id=f"{prefix.split('/')[2]}-{raw[:12]}")
    for prefix in ("/v1/jobs/", "/v1/datasets/") for raw in BAD_IDS])
def test_path_traversal_in_ids_is_404(api: Stack, key: str, raw: str, prefix: str) -> None:
    with socket.create_connection(("127.0.0.1", api.port), timeout=10) as s:
        for _ in range(2):  # twice on one connection: the first answer left it clean
            s.sendall(f"GET {prefix}{raw} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}"
                      "\r\n\r\n".encode())
            answer = b""
            while b"\r\n\r\n" not in answer:
                chunk = s.recv(65536)
                if not chunk:
                    break
                answer += chunk
            head, _, body = answer.partition(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            assert status in (400, 404, 414, 422), answer[:300]
            assert b"Set-Cookie" not in head
            # read the rest of the body so the next request starts clean
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            while len(body) < length:
                body += s.recv(65536)
            assert b"Traceback" not in body


def test_bad_query_values_are_4xx(client: httpx.Client) -> None:
    for params in ({"limit": "-1"}, {"limit": "10**9"}, {"limit": "1e309"},
                   {"cursor": "not-a-cursor"}, {"cursor": "A" * 10_000},
                   {"status": "exploded"}):
        assert_clear_4xx(client.get("/v1/jobs", params=params), 400, 422)
    r = client.post("/v1/jobs", json=tiny_spec("q"))
    job_id = r.json()["id"]
    for params in ({"since": "-5"}, {"since": "x"}):
        assert_clear_4xx(client.get(f"/v1/jobs/{job_id}/metrics", params=params), 400, 422)
    assert_clear_4xx(client.get(f"/v1/jobs/{job_id}/weights",
                                params={"format": "../../etc/passwd"}), 400, 409, 422)


# --------------------------------------------------------------------------- helpers


def _merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = json.loads(json.dumps(base))
    for k, v in patch.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "dataset":
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


@pytest.mark.parametrize("case", ["job-name", "name-filter", "dataset-id", "dataset-path",
                                  "upload-name", "csv-label", "predict-string"])
def test_nul_characters_are_a_clear_4xx(api: Stack, client: httpx.Client, case: str) -> None:
    """A NUL character in any string: PostgreSQL refuses it, so the API must answer
    4xx (or keep it harmlessly), never pass it on and answer 500."""
    if case == "job-name":
        r = client.post("/v1/jobs", json=tiny_spec("nul\x00name"))
    elif case == "name-filter":
        r = client.get("/v1/jobs", params={"name": "a\x00b"})
    elif case == "dataset-id":
        r = client.post("/v1/jobs", json={**tiny_spec("nul"), "dataset": {"id": "ds_\x00"}})
    elif case == "dataset-path":
        r = client.get("/v1/datasets/ds_%00")
    elif case == "upload-name":
        csv = b"a,b,label\n" + b"".join(f"{i},{i % 3},{i % 2}\n".encode() for i in range(8))
        r = upload(client, csv, "n.csv", name="x\x00y")
    elif case == "csv-label":
        csv = b"a,b,label\n" + b"".join(f"{i},{i % 3},l\x00{i % 2}\n".encode()
                                        for i in range(8))
        r = upload(client, csv, "n.csv")
    else:
        r = client.post("/v1/jobs", json={**tiny_spec("nul"), "dataset": {"inline": {
            "x": [[0.0], [1.0], [2.0], [3.0]], "y": ["a\x00", "b", "a\x00", "b"]}}})
    assert r.status_code < 500, (r.status_code, r.text)
    if r.status_code >= 400:
        assert_clear_4xx(r)
