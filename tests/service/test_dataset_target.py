"""An upload without `target` takes the last column (csv, parquet) and says so in its answer."""

from __future__ import annotations

from .conftest import BOTH_BACKENDS, csv_bytes, npz_bytes, parquet_bytes, upload

pytestmark = BOTH_BACKENDS


def test_csv_without_target_says_the_last_column_was_taken(client, auth):
    r = upload(client, auth, csv_bytes(), filename="flowers.csv")
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["target"] == ["label"] and body["target_defaulted"] is True
    assert body["feature_names"] == ["f1", "f2", "f3"]  # the old behaviour, now visible
    stored = client.get(f"/v1/datasets/{body['id']}", headers=auth).json()
    assert stored["target"] == ["label"] and stored["target_defaulted"] is None


def test_a_named_target_is_not_defaulted(client, auth):
    content = b"a,b,y\n" + b"".join(f"{i},{i % 3},{i % 2}\n".encode() for i in range(20))
    r = upload(client, auth, content, filename="numbers.csv", target="a")
    assert r.status_code == 201, r.text
    assert r.json()["target"] == ["a"] and r.json()["target_defaulted"] is False
    assert r.json()["feature_names"] == ["b", "y"]


def test_parquet_and_npz_defaults(client, auth):
    r = upload(client, auth, parquet_bytes(), filename="table.parquet")
    assert r.status_code == 201, r.text
    assert r.json()["target"] == ["y"] and r.json()["target_defaulted"] is True
    r = upload(client, auth, npz_bytes(), filename="arrays.npz")
    assert r.status_code == 201, r.text
    assert r.json()["target"] == ["y"] and r.json()["target_defaulted"] is False
