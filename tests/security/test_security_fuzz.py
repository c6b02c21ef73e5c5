"""Schemathesis against the running API's own OpenAPI schema, with a valid key: every phase
the installed version has (examples, coverage, fuzzing, stateful), a bounded number of
examples so CI stays fast. No answer may be a 5xx, and every answer must match the schema
(status code, content type, headers, body)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.faults.procs import Stack

pytestmark = pytest.mark.slow

schemathesis = pytest.importorskip("schemathesis")

MAX_EXAMPLES = 15
STATEFUL_EXAMPLES = 5
# what "no 5xx and responses match the schema" means, in schemathesis's checks
CHECKS = ("not_a_server_error", "status_code_conformance", "content_type_conformance",
          "response_headers_conformance", "response_schema_conformance")


def _app_schema() -> dict[str, Any]:
    """The OpenAPI document the API serves, built from the app itself (no server needed at
    collection time; test_served_schema_is_the_one_fuzzed checks they are the same)."""
    from service.app import create_app
    from service.settings import Settings

    return create_app(Settings(data_dir="/nonexistent", database_url="sqlite://",
                               redis_url="redis://127.0.0.1:1/0")).openapi()


def _config(seed: int = 7) -> Any:
    checks: dict[str, Any] = {"enabled": False}
    checks.update({name: {"enabled": True} for name in CHECKS})
    return schemathesis.Config.from_dict({
        "seed": seed,
        "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True,
                       "database": "none"},
        "checks": checks,
        "phases": {"stateful": {"generation": {"max-examples": STATEFUL_EXAMPLES}}},
        "request-timeout": 30,
    })


APP_SCHEMA = _app_schema()
# the live event stream and a followed log never end on their own while a job runs; their
# answers are checked by hand (tests/security/test_security_isolation.py,
# tests/service/test_service_logs.py)
schema = schemathesis.openapi.from_dict(APP_SCHEMA, config=_config()).exclude(
    path_regex=r"/(events|logs)$")


@pytest.fixture(scope="module")
def fuzz_key(api: Stack) -> str:
    return api.new_key("fuzz")


@pytest.fixture(scope="module", autouse=True)
def _a_gpu_worker_is_announced(api: Stack) -> Any:
    """Generated specs ask for `device: cuda`; without a GPU worker that is a (documented)
    503 by design (SPEC 7), which is not what the fuzzer looks for: announce one."""
    import redis

    from messaging.queues import gpu_worker_key

    client = redis.Redis.from_url(api.redis.url)
    client.set(gpu_worker_key("fuzz-gpu"), "1", ex=3600)
    yield
    client.delete(gpu_worker_key("fuzz-gpu"))
    client.close()


def test_served_schema_is_the_one_fuzzed(api: Stack) -> None:
    import httpx

    assert httpx.get(f"{api.base_url}/openapi.json").json() == APP_SCHEMA


@schema.parametrize()
def test_api_answers_every_generated_request_within_its_schema(case: Any, api: Stack,
                                                                fuzz_key: str) -> None:
    case.call_and_validate(base_url=api.base_url,
                           headers={"Authorization": f"Bearer {fuzz_key}"})


def test_stateful_sequences_follow_the_schemas_links(api: Stack, fuzz_key: str) -> None:
    """createJob → getJob, cancelJob, metrics, weights, ... along the OpenAPI links."""
    machine = schema.as_state_machine()

    class Machine(machine):  # type: ignore[misc,valid-type]
        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            return {"base_url": api.base_url,
                    "headers": {"Authorization": f"Bearer {fuzz_key}"}}

    from hypothesis import HealthCheck, settings

    Machine.run(settings=settings(max_examples=STATEFUL_EXAMPLES, stateful_step_count=6,
                                  deadline=None, derandomize=True, database=None,
                                  suppress_health_check=list(HealthCheck)))
