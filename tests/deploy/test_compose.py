"""The deployment files: docker-compose.yml is valid, the commands its api and worker
services run work on this machine, and the Dockerfile builds the image they expect.

No Docker engine runs here, so the compose services' own command lines are run as local
processes, with the compose environment translated to this machine's test services
(the root fixtures' Redis, database and data directory).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from mlpctl.cli import build_parser
from mlpctl.sdk import Client
from mlpctl.standalone import Child, spawn, stop_children, wait_http_ok

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_S3 = ROOT / "docker-compose.s3.yml"  # the S3 variant, on top of COMPOSE
DOCKERFILE = ROOT / "Dockerfile"
GPU_BLOCK = re.compile(r"^# gpu-worker \(begin\).*?\n(.*?)^# gpu-worker \(end\)", re.S | re.M)
TEST_KEY = "mlp_compose-test-key-0123456789abcdefghijklmnopq"
TEST_MINIO_PASSWORD = "compose-test-minio-password"
S3_VARIABLES = ("MLP_ARTIFACTS_URL", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID",
                "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")


def compose_text(*, gpu: bool = False) -> str:
    text = COMPOSE.read_text()
    if gpu:  # the commented-out gpu-worker service, switched on
        match = GPU_BLOCK.search(text)
        assert match, "docker-compose.yml lost its '# gpu-worker (begin)/(end)' block"
        block = re.sub(r"^#", "", match.group(1), flags=re.M)
        text = text[:match.start(1)] + block + text[match.end(1):]
    return text


def services(*, gpu: bool = False) -> dict[str, Any]:
    return yaml.safe_load(compose_text(gpu=gpu))["services"]


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def exec_form(args: str) -> list[str]:
    value = yaml.safe_load(args)  # JSON exec form is valid YAML
    assert isinstance(value, list), f"use the exec form (a JSON list), not {args!r}"
    return value


def entrypoint() -> list[str]:
    return next(exec_form(a) for i, a in dockerfile_instructions() if i == "ENTRYPOINT")


# --------------------------------------------------------------------------- compose file


@pytest.mark.skipif(shutil.which("docker-compose") is None,
                    reason="docker-compose is not installed (.ci/run installs it)")
@pytest.mark.parametrize("gpu", [False, True], ids=["default", "gpu-worker-uncommented"])
def test_docker_compose_accepts_the_file(gpu: bool, tmp_path: Path) -> None:
    path = COMPOSE
    if gpu:
        path = tmp_path / "docker-compose.yml"
        path.write_text(compose_text(gpu=True))
    env = {k: v for k, v in os.environ.items() if k not in {"MLP_API_KEY", "POSTGRES_PASSWORD"}}
    argv = ["docker-compose", "-f", str(path), "--project-directory", str(ROOT), "config", "-q"]

    def config(**extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, capture_output=True, text=True, env={**env, **extra},
                              cwd=tmp_path, timeout=60)

    result = config(MLP_API_KEY=TEST_KEY)  # POSTGRES_PASSWORD has a default
    assert result.returncode == 0, result.stderr
    # without a key, `up` stops at once and says what to set
    result = config()
    assert result.returncode != 0 and "MLP_API_KEY" in result.stderr


@pytest.mark.skipif(shutil.which("docker-compose") is None,
                    reason="docker-compose is not installed (.ci/run installs it)")
def test_docker_compose_accepts_the_s3_variant(tmp_path: Path) -> None:
    """`-f docker-compose.yml -f docker-compose.s3.yml`: valid, and api and worker get the
    S3 variables on top of everything else they had."""
    env = {k: v for k, v in os.environ.items()
           if k not in {"MLP_API_KEY", "POSTGRES_PASSWORD", "MINIO_ROOT_USER",
                        "MINIO_ROOT_PASSWORD"}}
    argv = ["docker-compose", "-f", str(COMPOSE), "-f", str(COMPOSE_S3),
            "--project-directory", str(ROOT), "config"]

    def config(*flags: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*argv, *flags], capture_output=True, text=True,
                              env={**env, **extra}, cwd=tmp_path, timeout=60)

    secrets = {"MLP_API_KEY": TEST_KEY, "MINIO_ROOT_PASSWORD": TEST_MINIO_PASSWORD}
    result = config("-q", **secrets)
    assert result.returncode == 0, result.stderr
    result = config("-q", MLP_API_KEY=TEST_KEY)  # MinIO needs its password: `up` says so
    assert result.returncode != 0 and "MINIO_ROOT_PASSWORD" in result.stderr

    merged = yaml.safe_load(config(**secrets).stdout)["services"]
    assert {"proxy", "api", "worker", "redis", "postgres", "flower", "minio",
            "minio-init"} <= set(merged)
    base = services()
    for name in ("api", "worker"):
        got, before = merged[name]["environment"], base[name]["environment"]
        assert got["MLP_ARTIFACTS_URL"] == "s3://mlp/artifacts"
        assert got["AWS_ENDPOINT_URL"] == "http://minio:9000"
        assert got["AWS_ACCESS_KEY_ID"] == merged["minio"]["environment"]["MINIO_ROOT_USER"]
        assert got["AWS_SECRET_ACCESS_KEY"] == TEST_MINIO_PASSWORD
        assert got["AWS_DEFAULT_REGION"]
        # the rest as in the default file
        assert got["REDIS_URL"] == before["REDIS_URL"] and got["MLP_DATA_DIR"] == "/data"
        assert got["DATABASE_URL"].split("@")[1] == before["DATABASE_URL"].split("@")[1]
        depends = merged[name]["depends_on"]
        assert depends["minio-init"]["condition"] == "service_completed_successfully"
        assert depends["redis"]["condition"] == depends["postgres"]["condition"] == \
            "service_healthy"
    assert merged["minio-init"]["depends_on"]["minio"]["condition"] == "service_healthy"


def test_s3_variant_wiring() -> None:
    """The S3 file: pinned MinIO images, the bucket its init creates is the one the
    services use, and the settings accept what it sets. The default file has none of it."""
    s3 = yaml.safe_load(COMPOSE_S3.read_text())["services"]
    for name in ("minio", "minio-init"):
        image = s3[name]["image"]
        assert re.fullmatch(rf"minio/{'minio' if name == 'minio' else 'mc'}:RELEASE\.[\w-]+",
                            image), f"{name}: pin a release tag, not {image!r}"
    assert "latest" not in COMPOSE_S3.read_text()
    env = s3["api"]["environment"]
    assert s3["worker"]["environment"] == env
    bucket = env["MLP_ARTIFACTS_URL"].removeprefix("s3://").split("/")[0]
    init = " ".join(s3["minio-init"]["command"])
    assert f"mc mb --ignore-existing local/{bucket}" in init
    assert "http://minio:9000" in init and env["AWS_ENDPOINT_URL"] == "http://minio:9000"
    assert "9000" in s3["minio"]["expose"] and not any(
        p.split(":")[-2] == "9000" for p in s3["minio"].get("ports", []))

    from store.artifacts import s3_storage_options
    from store.settings import CommonSettings

    assert CommonSettings(artifacts_url=env["MLP_ARTIFACTS_URL"]).artifacts_url == \
        "s3://mlp/artifacts"
    options = s3_storage_options({k: str(v) for k, v in env.items()})
    assert options["client_kwargs"] == {"endpoint_url": "http://minio:9000"}

    for svc in services().values():  # the default stays on the local volume
        assert not {v for v in S3_VARIABLES if v.startswith("AWS_")} & set(
            svc.get("environment") or {})
    assert services()["api"]["environment"]["MLP_ARTIFACTS_URL"] == "/data/artifacts"


def test_compose_services_and_wiring() -> None:
    svc = services()
    assert {"proxy", "api", "worker", "redis", "postgres", "flower"} <= set(svc)
    api, worker = svc["api"], svc["worker"]

    # the API listens on 8000 inside; the proxy publishes it (tests/deploy/test_proxy.py)
    assert api["command"][:1] == ["api"] and "8000" in api["command"]
    assert svc["proxy"]["depends_on"]["api"]["condition"] == "service_healthy"
    assert worker["command"][:1] == ["worker"]
    assert worker["command"][worker["command"].index("--queues") + 1] == "cpu"
    for s in (api, worker):
        env = s["environment"]
        assert env["DATABASE_URL"].startswith("postgresql+psycopg://")
        assert env["DATABASE_URL"].split("@")[1].startswith("postgres:5432/")
        assert env["REDIS_URL"] == "redis://redis:6379/0"
        assert "MLP_API_KEY" in env
        assert s["build"]["args"]["TORCH_VARIANT"] == "cpu"
        # the API writes uploads, the worker weights: both see the same artifact volume
        assert any(v.startswith("artifacts:") for v in s["volumes"])
        assert s["depends_on"]["redis"]["condition"] == "service_healthy"
        assert s["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert worker["depends_on"]["api"]["condition"] == "service_healthy"  # migrated first

    redis = svc["redis"]
    assert redis["image"].startswith("redis:7")
    assert "--appendonly" in redis["command"] and "yes" in redis["command"]
    assert any(v.endswith(":/data") for v in redis["volumes"])
    assert svc["postgres"]["image"].startswith("postgres:16")
    assert "pg_isready" in " ".join(svc["postgres"]["healthcheck"]["test"])
    assert "flower" in " ".join(svc["flower"]["command"])


def test_gpu_worker_block_asks_for_the_gpu() -> None:
    assert "gpu-worker" not in services()  # commented out by default
    gpu = services(gpu=True)["gpu-worker"]
    assert gpu["build"]["args"]["TORCH_VARIANT"] == "cuda"
    assert gpu["command"][gpu["command"].index("--queues") + 1] == "gpu"
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device == {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}


# --------------------------------------------------------------------------- Dockerfile


def test_dockerfile_builds_the_image_compose_expects() -> None:
    steps = dockerfile_instructions()
    names = [i for i, _ in steps]
    args = dict(steps)
    assert args["FROM"] == "python:3.11-slim"
    assert any(i == "ARG" and a.startswith("TORCH_VARIANT") for i, a in steps)

    runs = [(n, a) for n, (i, a) in enumerate(steps) if i == "RUN"]
    copies = {a.split()[0]: n for n, (i, a) in enumerate(steps) if i == "COPY"}
    # torch first, from the one file that pins it: the CPU build from PyTorch's index,
    # hash-checked, or (TORCH_VARIANT=cuda) PyPI's build of the same version
    torch_step = next(n for n, a in runs if "requirements/torch.lock" in a)
    torch_run = steps[torch_step][1]
    assert "--require-hashes" in torch_run
    assert "--index-url https://download.pytorch.org/whl/cpu" in torch_run
    assert "TORCH_VARIANT" in torch_run and "cuda" in torch_run
    assert copies["requirements/torch.lock"] < torch_step
    assert not re.search(r"torch\s*[=<>~]=?\s*\d", DOCKERFILE.read_text()), \
        "the torch version is written in requirements/torch.lock only"
    # then the server extra's locked dependencies, not the test tools
    deps_step = next(n for n, a in runs if "requirements/server.lock" in a)
    assert "--require-hashes" in steps[deps_step][1]
    assert "test.lock" not in DOCKERFILE.read_text() and "[test]" not in DOCKERFILE.read_text()
    assert copies["requirements"] < deps_step
    # and the project, with no dependency left to fetch
    project_step = next(n for n, a in runs if re.search(r"pip install --no-deps \.(\s|$)", a))
    assert torch_step < deps_step < project_step, "torch, then the locks, then the project"

    # every package pyproject.toml installs is copied in before `pip install .`
    copied = {a.split()[0] for n, (i, a) in enumerate(steps) if i == "COPY" and n < project_step}
    packages = {p.rstrip("*") for p in tomllib.loads((ROOT / "pyproject.toml").read_text())
                ["tool"]["setuptools"]["packages"]["find"]["include"] if not p.endswith(".*")}
    for package in packages:
        assert package in copied, f"the Dockerfile does not COPY {package}"
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert not (packages | {"pyproject.toml", "requirements"}) & set(ignored)

    users = [a for i, a in steps if i == "USER"]
    assert users and users[-1] not in {"root", "0"}, "the image must not run as root"
    assert names.index("USER") < names.index("ENTRYPOINT")
    assert any(i == "ENV" and "MLP_DATA_DIR=/data" in a for i, a in steps)
    assert any(i == "VOLUME" and "/data" in a for i, a in steps)
    assert "/healthz" in args["HEALTHCHECK"]
    assert entrypoint() == ["mlpctl"]
    assert exec_form(args["CMD"])[0] == "api"


def test_image_commands_are_real_mlpctl_subcommands() -> None:
    """The Dockerfile's CMD and every compose command parse as `mlpctl` command lines."""
    mlpctl = shutil.which("mlpctl", path=str(Path(sys.executable).parent))
    argv = [mlpctl] if mlpctl else [sys.executable, "-m", "mlpctl"]
    help_text = subprocess.run([*argv, "--help"], capture_output=True, text=True,
                               check=True, timeout=60).stdout
    commands = [exec_form(dict(dockerfile_instructions())["CMD"])]
    for svc in services(gpu=True).values():
        if "build" in svc:  # our image: ENTRYPOINT mlpctl + command
            commands.append(svc["command"])
    parser = build_parser()
    for command in commands:
        assert re.search(rf"^\s+{command[0]}\s", help_text, re.M), \
            f"`mlpctl --help` does not list {command[0]!r}"
        parser.parse_args(command)  # exits (fails the test) on an unknown flag


# --------------------------------------------------------------------------- run them here


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def local_command(command: list[str], *, port: int) -> list[str]:
    """The container's `ENTRYPOINT + command`, listening on loopback and a free port here."""
    argv = list(command)
    for flag, value in (("--host", "127.0.0.1"), ("--port", str(port))):
        if flag in argv:
            argv[argv.index(flag) + 1] = value
    mlpctl = shutil.which(entrypoint()[0], path=str(Path(sys.executable).parent))
    head = [mlpctl] if mlpctl else [sys.executable, "-m", "mlpctl"]
    return head + argv


def local_env(compose_env: dict[str, str], *, translate: dict[str, str]) -> dict[str, str]:
    """This machine's environment, stripped of service settings, plus the compose service's
    variables with the compose-network addresses replaced by `translate`."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MLP_") and k not in {"DATABASE_URL", "REDIS_URL"}}
    for key, value in compose_env.items():
        compose_only = any(s in str(value) for s in ("${", "redis:", "postgres:"))
        assert key in translate or not compose_only, f"no local value for compose's {key}"
        env[key] = translate.get(key, str(value))
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture
def compose_stack(tmp_path: Path, data_dir: Path, database_url: str,
                  redis_url: str) -> Iterator[tuple[str, list[Child]]]:
    svc = services()
    port = _free_port()
    translate = {"DATABASE_URL": database_url, "REDIS_URL": redis_url,
                 "MLP_DATA_DIR": str(data_dir), "MLP_ARTIFACTS_URL": str(data_dir / "artifacts"),
                 "MLP_API_KEY": TEST_KEY}
    children: list[Child] = []
    try:
        for name in ("api", "worker"):
            children.append(spawn(
                name, local_command(svc[name]["command"], port=port),
                env=local_env(svc[name]["environment"], translate=translate),
                log_path=tmp_path / f"{name}.log", stop_signals=(signal.SIGTERM, signal.SIGQUIT)))
        yield f"http://127.0.0.1:{port}", children
    finally:
        stop_children(children, step_timeout=10)
        for child in children:
            print(f"--- {child.name}: {shlex.join(child.process.args)}\n{child.log_tail(40)}")


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_compose_api_and_worker_commands_train_a_job(compose_stack) -> None:
    base, children = compose_stack
    api = children[0]
    ok, last = wait_http_ok(f"{base}/readyz", timeout=60, alive=api.alive)
    assert ok, f"/readyz: {last}\n{api.log_tail()}"

    with Client(base, api_key=TEST_KEY) as client:
        job = client.submit({"name": "compose-iris", "dataset": {"builtin": "iris"},
                             "model": {"hidden_dims": [8]},
                             "training": {"epochs": 5, "batch_size": 32}})
        assert job["status"] in {"queued", "running"}
        job = client.wait(job["id"], timeout=120, poll_s=0.5)
        assert job["status"] == "succeeded", (job, children[1].log_tail())
        assert job["progress"]["epoch"] == 5
    for child in children:
        assert child.alive(), f"{child.name} exited:\n{child.log_tail()}"
