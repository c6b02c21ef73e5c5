"""Dataset uploads (csv, npz, parquet; good and bad), list, read, delete, and jobs on them."""

from __future__ import annotations

import hashlib

import pytest

from .conftest import BOTH_BACKENDS, SMALL_UPLOAD, csv_bytes, npz_bytes, parquet_bytes, upload

pytestmark = BOTH_BACKENDS


def test_upload_csv_with_string_labels(harness, client, auth):
    content = csv_bytes()
    r = upload(client, auth, content, filename="flowers.csv", target="label")
    assert r.status_code == 201, r.text
    ds = r.json()
    assert r.headers["location"] == f"/v1/datasets/{ds['id']}"
    assert ds["name"] == "flowers"
    assert (ds["n_rows"], ds["n_features"], ds["n_classes"]) == (30, 3, 3)
    assert ds["feature_names"] == ["f1", "f2", "f3"]
    assert ds["class_labels"] == ["a", "b", "c"]
    assert ds["target"] == ["label"] and ds["format"] == "csv"
    assert ds["bytes"] == len(content)
    assert ds["sha256"] == hashlib.sha256(content).hexdigest()
    stored = harness.services.artifacts.get_bytes(f"datasets/{ds['id']}/data.csv")
    assert stored == content
    assert ds["target_defaulted"] is False  # the form named it
    # a stored dataset does not know whether its target was named: null there
    assert client.get(f"/v1/datasets/{ds['id']}", headers=auth).json() == {
        **ds, "target_defaulted": None}


def test_upload_npz_and_parquet(client, auth):
    r = upload(client, auth, npz_bytes(), filename="arrays.npz", name="arrays")
    assert r.status_code == 201, r.text
    assert (r.json()["n_features"], r.json()["n_classes"], r.json()["format"]) == (4, 2, "npz")
    r = upload(client, auth, parquet_bytes(), filename="table.bin", format="parquet",
               target="y")
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["format"] == "parquet" and body["n_features"] == 2
    assert body["n_classes"] is None  # a real-valued target


def test_upload_multilabel_targets(client, auth):
    content = b"a,b,l1,l2\n" + b"".join(
        f"{i},{i % 3},{i % 2},{(i // 2) % 2}\n".encode() for i in range(12))
    r = upload(client, auth, content, target="l1,l2")
    assert r.status_code == 201, r.text
    assert r.json()["multilabel"] is True and r.json()["target"] == ["l1", "l2"]


@pytest.mark.parametrize("content,fields,status,words", [
    (csv_bytes(), {"target": "species"}, 422, "'species' is not in the file"),
    (b"a,b,y\n1,2,0\nx,3,1\n", {"target": "y"}, 422, "not numeric"),
    (b"a,b,y\n1,2,0\n,3,1\n", {"target": "y"}, 422, ""),
    (b"a,b,y\n1,nan,0\n2,3,1\n", {"target": "y"}, 422, ""),
    (b"", {"target": "y"}, 422, "empty"),
    (b"not a zip", {"format": "npz"}, 422, "npz"),
    (csv_bytes(), {"target": "label", "format": "xlsx"}, 415, "xlsx"),
])
def test_upload_rejects_bad_files(client, auth, content, fields, status, words):
    r = upload(client, auth, content, **fields)
    assert r.status_code == status, r.text
    assert words in r.json()["message"]
    assert client.get("/v1/datasets", headers=auth).json()["items"] == []


def test_upload_unknown_extension_is_415(client, auth):
    r = upload(client, auth, csv_bytes(), filename="data.xls", target="label")
    assert r.status_code == 415
    assert "format" in r.json()["message"]


def test_upload_too_large_is_413(client, auth):
    big = b"a,b,y\n" + b"1.000000,2.000000,0\n" * (SMALL_UPLOAD // 20 + 10)
    assert len(big) > SMALL_UPLOAD
    r = upload(client, auth, big, target="y")
    assert r.status_code == 413
    assert "MLP_MAX_UPLOAD_BYTES" in r.json()["message"]

    # streamed without Content-Length: refused once the file passes the limit
    boundary = "xyzzy"
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="big.csv"\r\n\r\n').encode()
    tail = f"\r\n--{boundary}--\r\n".encode()

    def chunks():
        yield head
        for i in range(0, len(big), 8192):
            yield big[i:i + 8192]
        yield tail

    r = client.post("/v1/datasets", headers={
        **auth, "Content-Type": f"multipart/form-data; boundary={boundary}"}, content=chunks())
    assert r.status_code == 413


def test_upload_needs_multipart_and_a_file(client, auth):
    r = client.post("/v1/datasets", headers=auth, json={"x": 1})
    assert r.status_code == 415
    r = client.post("/v1/datasets", headers=auth, data={"name": "no file"},
                    files={"other": ("x.txt", b"hi")})
    assert r.status_code == 422


def test_list_get_delete(harness, client, auth):
    ids = [upload(client, auth, csv_bytes(10 + i), name=f"d{i}", target="label").json()["id"]
           for i in range(3)]
    page = client.get("/v1/datasets", headers=auth, params={"limit": 2}).json()
    assert [d["id"] for d in page["items"]] == ids[:0:-1]
    rest = client.get("/v1/datasets", headers=auth,
                      params={"limit": 2, "cursor": page["next_cursor"]}).json()
    assert [d["id"] for d in rest["items"]] == [ids[0]] and rest["next_cursor"] is None
    assert client.get("/v1/datasets", headers=auth,
                      params={"cursor": "%%%"}).status_code == 400
    assert [d["id"] for d in client.get("/v1/datasets", headers=auth,
                                        params={"name": "d1"}).json()["items"]] == [ids[1]]
    assert client.delete(f"/v1/datasets/{ids[0]}", headers=auth).status_code == 204
    assert client.get(f"/v1/datasets/{ids[0]}", headers=auth).status_code == 404
    assert not harness.services.artifacts.exists(f"datasets/{ids[0]}/data.csv")


def test_jobs_on_an_uploaded_dataset(client, auth):
    ds = upload(client, auth, csv_bytes(), target="label").json()
    spec = {"dataset": {"id": ds["id"]}, "model": {"hidden_dims": [4]}}
    v = client.post("/v1/specs/validate", headers=auth, json=spec)
    assert v.status_code == 200, v.text
    assert v.json()["resolved_spec"]["model"]["input_dim"] == 3
    assert v.json()["resolved_spec"]["model"]["output_dim"] == 3
    r = client.post("/v1/jobs", headers=auth, json=spec)
    assert r.status_code == 201
    # a queued job uses it: cannot be deleted
    d = client.delete(f"/v1/datasets/{ds['id']}", headers=auth)
    assert d.status_code == 409
    assert "job" in d.json()["message"]
    client.post(f"/v1/jobs/{r.json()['id']}/cancel", headers=auth)
    assert client.delete(f"/v1/datasets/{ds['id']}", headers=auth).status_code == 204


def _multipart(parts: list[tuple[str, bytes, str | None]], boundary: str = "b0und") -> bytes:
    out = []
    for name, value, filename in parts:
        disposition = f'form-data; name="{name}"' + (
            f'; filename="{filename}"' if filename else "")
        out.append(f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()
                   + value + b"\r\n")
    return b"".join(out) + f"--{boundary}--\r\n".encode()


def test_upload_form_fields_are_bounded(client, auth):
    """A flood of form fields (SPEC 7) is refused at the first one the route does not read,
    without keeping them; a known field is taken once and up to 64 KiB."""
    headers = {**auth, "Content-Type": "multipart/form-data; boundary=b0und"}
    flood = [(f"junk{i}", b"x" * 65_536, None) for i in range(200)]
    body = _multipart([("file", csv_bytes(), "d.csv"), *flood])
    # chunked, with no Content-Length that would give the size away
    r = client.post("/v1/datasets", headers=headers,
                    content=(body[i:i + 65_536] for i in range(0, len(body), 65_536)))
    assert r.status_code == 422, r.text
    assert "junk0" in r.json()["message"]
    twice = [("file", csv_bytes(), "d.csv"), ("name", b"a", None), ("name", b"b", None)]
    r = client.post("/v1/datasets", headers=headers, content=_multipart(twice))
    assert r.status_code == 422 and "twice" in r.json()["message"]
    big = [("file", csv_bytes(), "d.csv"), ("target", b"l" * 70_000, None)]
    r = client.post("/v1/datasets", headers=headers, content=_multipart(big))
    assert r.status_code == 413 and "target" in r.json()["message"]
    long_header = [("file", csv_bytes(), "d" * 20_000 + ".csv")]
    r = client.post("/v1/datasets", headers=headers, content=_multipart(long_header))
    # python-multipart's own header limit (400) or ours (413), whichever comes first
    assert r.status_code in (400, 413) and "header" in r.json()["message"].lower(), r.text
    assert client.get("/v1/datasets", headers=auth).json()["items"] == []
    ok = [("file", csv_bytes(), "flowers.csv"), ("target", b"label", None)]
    assert client.post("/v1/datasets", headers=headers,
                       content=_multipart(ok)).status_code == 201


def test_the_quota_counts_decoded_rows_not_compressed_bytes(make_app, database_url):
    """A tiny compressed file of many rows is charged what it takes decoded (SPEC 7)."""
    import io

    import numpy as np

    buffer = io.BytesIO()
    np.savez_compressed(buffer, x=np.zeros((20_000, 10), dtype=np.float32),
                        y=np.zeros(20_000, dtype=np.int64))
    content = buffer.getvalue()
    assert len(content) < 10_000
    app = make_app(max_dataset_bytes_per_tenant=500_000, max_upload_bytes=1_000_000,
                   database_url=database_url)
    headers = app.auth()
    r = upload(app.client, headers, content, filename="zeros.npz")
    assert r.status_code == 409, r.text
    assert "MLP_MAX_DATASET_BYTES_PER_TENANT" in r.json()["message"]
    assert "960000" in r.json()["message"]  # 20,000 × 10 × 4 + 20,000 × 8
    small = io.BytesIO()
    np.savez_compressed(small, x=np.zeros((2_000, 10), dtype=np.float32),
                        y=np.zeros(2_000, dtype=np.int64))
    r = upload(app.client, headers, small.getvalue(), filename="zeros.npz")
    assert r.status_code == 201, r.text
    assert r.json()["stored_bytes"] == 96_000 and r.json()["bytes"] == len(small.getvalue())


def test_string_labels_are_bounded_in_length_and_number(client, auth):
    long_label = "x" * 300
    content = b"a,label\n" + b"".join(
        f"{i},{long_label if i == 3 else 'c' + str(i % 2)}\n".encode() for i in range(10))
    r = upload(client, auth, content, target="label")
    assert r.status_code == 422 and "256" in r.json()["message"], r.text
    many = b"a,label\n" + b"".join(f"{i},class-{i}\n".encode() for i in range(1_200))
    r = upload(client, auth, many, target="label")
    assert r.status_code == 422 and "1000" in r.json()["message"], r.text


def test_listings_leave_out_long_label_lists(client, auth):
    content = b"a,label\n" + b"".join(
        f"{i},{'label-' + str(i % 150) + '-' + 'y' * 40}\n".encode() for i in range(600))
    r = upload(client, auth, content, target="label")
    assert r.status_code == 201, r.text
    listed = client.get("/v1/datasets", headers=auth).json()["items"][0]
    assert listed["labels_omitted"] is True and listed["class_labels"] is None
    one = client.get(f"/v1/datasets/{listed['id']}", headers=auth).json()
    assert len(one["class_labels"]) == 150 and one["labels_omitted"] is False


def test_npz_labels_that_are_not_utf8_are_422(client, auth):
    import io

    import numpy as np

    buffer = io.BytesIO()
    np.savez(buffer, x=np.zeros((4, 2), dtype=np.float32),
             y=np.array([b"\xff\xfe", b"ok", b"ok", b"\xff\xfe"], dtype="S2"))
    r = upload(client, auth, buffer.getvalue(), filename="bad.npz")
    assert r.status_code == 422, r.text
    assert "UTF-8" in r.json()["message"]
