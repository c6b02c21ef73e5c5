"""A small Python client for the MLP training service.

    from mlpctl.sdk import Client
    client = Client("http://127.0.0.1:8000", api_key="mlp_...")
    job = client.submit({"dataset": {"builtin": "iris"}, "training": {"epochs": 20}})
    job = client.wait(job["id"])
    client.weights(job["id"], "iris.safetensors")      # checks the sha256 ETag
    client.predict(job["id"], [[5.1, 3.5, 1.4, 0.2]])
    for line in client.follow_logs(job["id"]):          # the job's log, until it ends
        print(line)
    hook = client.webhooks.create("https://example.com/hook", events=["job.succeeded"])
    verify_signature(hook["secret"], request.headers, request_body)  # in the receiver

Every method answers the JSON the API answers (plain dicts); an HTTP error raises
`APIError` carrying the status code and the service's message.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from store.status import TERMINAL
from store.webhook_signature import verify_signature

__all__ = ["Client", "APIError", "TERMINAL_STATUSES", "Webhooks", "verify_signature"]

TERMINAL_STATUSES = TERMINAL


class APIError(Exception):
    """The service answered an error status; `.status` and `.body` say which and why."""

    def __init__(self, status: int, message: str, body: Any = None) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message
        self.body = body


def _message(body: Any, fallback: str) -> str:
    if isinstance(body, dict):
        for key in ("message", "detail", "error"):
            value = body.get(key)
            if isinstance(value, str):
                return value
            if isinstance(value, dict) and isinstance(value.get("message"), str):
                return value["message"]
            if value is not None:
                return json.dumps(value)
    return fallback


class _Counting:
    """A file that reports how many bytes were read from it (an upload's progress)."""

    def __init__(self, f: Any, progress: Callable[[int], object]) -> None:
        self._f, self._progress, self._sent = f, progress, 0

    def read(self, size: int = -1) -> bytes:
        chunk = self._f.read(size)
        self._sent += len(chunk)
        self._progress(self._sent)
        return bytes(chunk)

    def __getattr__(self, name: str) -> Any:  # seek, tell, name, ... for the encoder
        return getattr(self._f, name)


class Client:
    """A connection to one service as one tenant (its API key)."""

    def __init__(self, base_url: str | None = None, api_key: str | None = None, *,
                 timeout: float = 30.0, transport: httpx.BaseTransport | None = None) -> None:
        base_url = base_url or os.environ.get("MLP_URL", "http://127.0.0.1:8000")
        api_key = api_key if api_key is not None else os.environ.get("MLP_API_KEY")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers,
                                  timeout=timeout, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = self._http.request(method, path, **kwargs)
        _raise_for_status(response, fallback=response.reason_phrase or "error")
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._request(method, path, **kwargs).json()

    def _pages(self, path: str, params: dict[str, Any], limit: int | None) -> Iterator[Any]:
        params = {k: v for k, v in params.items() if v is not None}
        seen = 0
        cursor = None
        while True:
            page = self._json("GET", path, params={**params, **({"cursor": cursor}
                                                                if cursor else {})})
            for item in page["items"]:
                if limit is not None and seen >= limit:
                    return
                seen += 1
                yield item
            cursor = page.get("next_cursor")
            if not cursor:
                return

    # -- service

    def ready(self) -> bool:
        return self._http.get("/readyz").status_code == 200

    def catalog(self) -> dict[str, Any]:
        return self._json("GET", "/v1/catalog")

    def validate(self, spec: dict[str, Any]) -> dict[str, Any]:
        return self._json("POST", "/v1/specs/validate", json=spec)

    # -- jobs

    def submit(self, spec: dict[str, Any], *, idempotency_key: str | None = None) -> dict:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._json("POST", "/v1/jobs", json=spec, headers=headers)

    def get(self, job_id: str) -> dict[str, Any]:
        return self._json("GET", f"/v1/jobs/{job_id}")

    def list_jobs(self, *, status: str | None = None, name: str | None = None,
                  limit: int | None = None) -> Iterator[dict[str, Any]]:
        return self._pages("/v1/jobs", {"status": status, "name": name,
                                        "limit": min(limit, 100) if limit else None}, limit)

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._json("POST", f"/v1/jobs/{job_id}/cancel")

    def delete_job(self, job_id: str) -> None:
        self._request("DELETE", f"/v1/jobs/{job_id}")

    def wait(self, job_id: str, *, timeout: float | None = None,
             poll_s: float = 1.0) -> dict[str, Any]:
        """Poll until the job is succeeded, failed or cancelled; TimeoutError after
        `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.get(job_id)
            if job["status"] in TERMINAL_STATUSES:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} is still {job['status']} after {timeout} s")
            time.sleep(poll_s)

    def events(self, job_id: str, *, timeout: float | None = None
               ) -> Iterator[tuple[str, Any]]:
        """The job's Server-Sent Events as (event, data) pairs, until the `end` event."""
        yield from self._sse(f"/v1/jobs/{job_id}/events", timeout=timeout)

    def metrics(self, job_id: str, *, since: int | None = None) -> dict[str, Any]:
        params = {"since": since} if since is not None else None
        return self._json("GET", f"/v1/jobs/{job_id}/metrics", params=params)

    def logs(self, job_id: str, since: int | None = None) -> str:
        """The job's log as text, one line per log line (`<time> <LEVEL> <message>`);
        `since=N` gives the lines after line N (the answer's `X-Log-Last-Line` header is the
        number of its last line)."""
        params = {"since": since} if since is not None else None
        return self._request("GET", f"/v1/jobs/{job_id}/logs", params=params).text

    def follow_logs(self, job_id: str, *, since: int | None = None,
                    timeout: float | None = None) -> Iterator[str]:
        """The job's log lines (without their newline) as they are written, until the job
        ends."""
        params = {"follow": "true", **({"since": since} if since is not None else {})}
        with self._http.stream("GET", f"/v1/jobs/{job_id}/logs", params=params,
                               timeout=httpx.Timeout(timeout, connect=10.0)) as response:
            _raise_for_status(response)
            yield from response.iter_lines()

    def model_card(self, job_id: str) -> dict[str, Any]:
        return self._json("GET", f"/v1/jobs/{job_id}/model")

    def findings(self, job_id: str) -> list[dict[str, Any]]:
        """What the lecture's rules found about the job (each with rule, severity, epoch,
        layer, evidence, message, explanation and suggestion), in the order found."""
        return list(self._json("GET", f"/v1/jobs/{job_id}/findings")["findings"])

    def weights(self, job_id: str, path: str | os.PathLike[str], *,
                format: str = "safetensors") -> Path:
        """Download the weights (`format`: safetensors, pt or onnx) to `path`, checked
        against the sha256 ETag."""
        params = {"format": format} if format != "safetensors" else None
        response = self._request("GET", f"/v1/jobs/{job_id}/weights", params=params)
        data = response.content
        etag = response.headers.get("ETag", "").strip('"').removeprefix("W/").strip('"')
        if etag and etag != hashlib.sha256(data).hexdigest():
            raise APIError(502, f"the {format} weights of {job_id} do not match their ETag "
                                "(sha256)")
        target = Path(path)
        target.write_bytes(data)
        return target

    def predict(self, job_id: str, x: list[list[Any]] | list[dict[str, Any]]
                ) -> dict[str, Any]:
        """Predictions for rows of raw features: lists in the model's feature order, or dicts
        keyed by feature name (the dataset's column names)."""
        return self._json("POST", f"/v1/jobs/{job_id}/predict", json={"x": x})

    # -- datasets

    def upload_dataset(self, path: str | os.PathLike[str], *, target: str,
                       name: str | None = None, format: str | None = None,
                       progress: Callable[[int], object] | None = None) -> dict[str, Any]:
        """Upload a CSV, NPZ or Parquet file; `progress(bytes_sent)` is called as it goes."""
        p = Path(path)
        form = {"target": target, "name": name or p.stem}
        if format:
            form["format"] = format
        with p.open("rb") as f:
            body: Any = _Counting(f, progress) if progress else f
            return self._json("POST", "/v1/datasets", data=form,
                              files={"file": (p.name, body, "application/octet-stream")})

    def list_datasets(self, *, limit: int | None = None) -> Iterator[dict[str, Any]]:
        return self._pages("/v1/datasets", {"limit": min(limit, 100) if limit else None},
                           limit)

    def get_dataset(self, dataset_id: str) -> dict[str, Any]:
        return self._json("GET", f"/v1/datasets/{dataset_id}")

    def delete_dataset(self, dataset_id: str) -> None:
        self._request("DELETE", f"/v1/datasets/{dataset_id}")

    # -- sweeps (SPEC 9)

    def sweep(self, spec: dict[str, Any], *, idempotency_key: str | None = None
              ) -> dict[str, Any]:
        """Submit a sweep (`base`, `space`, `strategy`, `objective`, ...); answers it."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._json("POST", "/v1/sweeps", json=spec, headers=headers)

    def get_sweep(self, sweep_id: str) -> dict[str, Any]:
        return self._json("GET", f"/v1/sweeps/{sweep_id}")

    def list_sweeps(self, *, status: str | None = None, limit: int | None = None
                    ) -> Iterator[dict[str, Any]]:
        return self._pages("/v1/sweeps", {"status": status,
                                          "limit": min(limit, 100) if limit else None}, limit)

    def leaderboard(self, sweep_id: str) -> list[dict[str, Any]]:
        """The sweep's trials, best first: trial, job_id, status, values, objective."""
        return list(self._json("GET", f"/v1/sweeps/{sweep_id}/trials")["trials"])

    def sweep_events(self, sweep_id: str, *, timeout: float | None = None
                     ) -> Iterator[tuple[str, Any]]:
        """The sweep's Server-Sent Events as (event, data) pairs (`sweep`, `trial_started`,
        `trial_finished`, `trial_pruned`, `best`), until the `end` event."""
        return self._sse(f"/v1/sweeps/{sweep_id}/events", timeout=timeout)

    def cancel_sweep(self, sweep_id: str) -> dict[str, Any]:
        return self._json("POST", f"/v1/sweeps/{sweep_id}/cancel")

    def extend_sweep(self, sweep_id: str, max_trials: int) -> dict[str, Any]:
        """Raise the sweep's max_trials (a finished sweep runs again)."""
        return self._json("PATCH", f"/v1/sweeps/{sweep_id}", json={"max_trials": max_trials})

    def delete_sweep(self, sweep_id: str) -> None:
        self._request("DELETE", f"/v1/sweeps/{sweep_id}")

    def _sse(self, path: str, *, timeout: float | None) -> Iterator[tuple[str, Any]]:
        with self._http.stream("GET", path,
                               timeout=httpx.Timeout(timeout, connect=10.0)) as response:
            _raise_for_status(response)
            event, data = "message", list[str]()
            for line in response.iter_lines():
                if not line:
                    if data:
                        text = "\n".join(data)
                        try:
                            payload: Any = json.loads(text)
                        except ValueError:
                            payload = text
                        yield event, payload
                        if event == "end":
                            return
                    event, data = "message", []
                elif line.startswith(":"):
                    continue
                else:
                    name, _, value = line.partition(":")
                    value = value[1:] if value.startswith(" ") else value
                    if name == "event":
                        event = value
                    elif name == "data":
                        data.append(value)
            if event == "end":  # an `end` event without data, cut short
                yield event, None

    # -- webhooks

    @property
    def webhooks(self) -> Webhooks:
        """`client.webhooks.create(url, events=[...])`, `.list()`, `.delete(id)`,
        `.deliveries(id)`, `.ping(id)`."""
        return Webhooks(self)


class Webhooks:
    """The tenant's webhooks (SPEC section 10). Receivers check each delivery with
    `verify_signature(secret, request_headers, raw_body)`."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def create(self, url: str, *, events: list[str], secret: str | None = None
               ) -> dict[str, Any]:
        """Subscribe `url`; the answer holds the signing `secret`, shown this once."""
        body: dict[str, Any] = {"url": url, "events": list(events)}
        if secret is not None:
            body["secret"] = secret
        return self._client._json("POST", "/v1/webhooks", json=body)

    def list(self) -> list[dict[str, Any]]:
        return self._client._json("GET", "/v1/webhooks")["items"]  # type: ignore[no-any-return]

    def get(self, webhook_id: str) -> dict[str, Any]:
        return self._client._json("GET", f"/v1/webhooks/{webhook_id}")

    def delete(self, webhook_id: str) -> None:
        self._client._request("DELETE", f"/v1/webhooks/{webhook_id}")

    def deliveries(self, webhook_id: str, *, limit: int | None = None
                   ) -> Iterator[dict[str, Any]]:
        """The delivery log, newest first: status, attempts, last status code, next attempt."""
        return self._client._pages(f"/v1/webhooks/{webhook_id}/deliveries",
                                   {"limit": min(limit, 200) if limit else None}, limit)

    def ping(self, webhook_id: str) -> dict[str, Any]:
        """Queue a `ping` delivery; answers the delivery (follow it in `deliveries`)."""
        return self._client._json("POST", f"/v1/webhooks/{webhook_id}/ping")


def _raise_for_status(response: httpx.Response, *, fallback: str = "error") -> None:
    """APIError with the API's message (else `fallback`) for an answer that is an error,
    streamed or not."""
    if response.status_code >= 400:
        response.read()  # a streamed answer's body, read here; nothing for the others
        try:
            body: Any = response.json()
        except ValueError:
            body = response.text
        raise APIError(response.status_code, _message(body, fallback), body)
