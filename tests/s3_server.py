"""A real S3 protocol server for tests: moto's server (`python -m moto.server`, the [test]
extra) as a subprocess on a free loopback port, and the AWS environment that points
botocore and s3fs at it.

    with MotoServer() as server:
        server.create_bucket("mlp-test-...")
        env = server.env()      # AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ... for monkeypatch

Everything it holds lives in the server process's memory and goes with it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from typing import IO, Any

__all__ = ["MotoServer", "REGION"]

REGION = "us-east-1"
_START_TIMEOUT_S = 30.0


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class MotoServer:
    """moto's S3 server in a subprocess, listening on `host` (loopback by default); a context
    manager that starts and stops it."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = 0
        self._log: IO[bytes] | None = None
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def env(self) -> dict[str, str]:
        """The environment a client of this server reads (botocore's own variables), and
        none of the machine's AWS files or instance metadata."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": REGION,
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def start(self) -> MotoServer:
        last_error = "not started"
        for _ in range(3):  # another process may take the free port before moto binds it
            self.port = _free_port(self.host)
            # its log (a line per request) goes to a file: a pipe nobody reads would fill
            # up after some hundred requests and stop the server mid-test
            self._log = tempfile.TemporaryFile()
            self.process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(self.port)],
                stdout=subprocess.DEVNULL, stderr=self._log,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
            deadline = time.monotonic() + _START_TIMEOUT_S
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    self._log.seek(0)
                    last_error = self._log.read().decode(errors="replace")[-2000:]
                    break
                try:
                    with urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=1):
                        return self
                except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
                    last_error = str(exc)
                    time.sleep(0.1)
            else:
                self.stop()
                raise RuntimeError(f"moto's S3 server did not answer on {self.endpoint} "
                                   f"within {_START_TIMEOUT_S:.0f} s ({last_error})")
        raise RuntimeError(f"moto's S3 server did not start: {last_error}")

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> MotoServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def client(self) -> Any:
        """A boto3 client of this server, to look at or damage what the store wrote."""
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name=REGION,
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def delete_bucket(self, name: str) -> None:
        """Empty the bucket (objects and unfinished multipart uploads), then remove it."""
        client = self.client()
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                client.delete_objects(Bucket=name, Delete={"Objects": keys})
        for upload in client.list_multipart_uploads(Bucket=name).get("Uploads", []):
            client.abort_multipart_upload(Bucket=name, Key=upload["Key"],
                                          UploadId=upload["UploadId"])
        client.delete_bucket(Bucket=name)
