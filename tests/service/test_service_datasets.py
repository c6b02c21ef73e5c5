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
    assert client.get(f"/v1/datasets/{ds['id']}", headers=auth).json() == ds


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
