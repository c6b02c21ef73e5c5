"""mlpctl: run the MLP training service (standalone, api, worker), manage API keys, and
talk to a running service from the shell (`mlpctl jobs ...`) or Python (`mlpctl.sdk`)."""

from __future__ import annotations

__all__ = ["Client", "APIError"]


def __getattr__(name: str) -> object:
    # the SDK needs only httpx; keep `import mlpctl` free of it until asked for
    if name in __all__:
        from . import sdk

        return getattr(sdk, name)
    raise AttributeError(f"module 'mlpctl' has no attribute {name!r}")
