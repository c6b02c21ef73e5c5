"""The service fixtures (tests/service/conftest.py) for the sweep tests: the app in-process
on real Redis and a real database, and API keys of fresh tenants."""

from tests.service.conftest import auth, client, harness, other_auth  # noqa: F401
