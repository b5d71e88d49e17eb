"""Shared test helpers: capability checks that skip with a reason, or fail in CI."""

from __future__ import annotations

import os
import shutil

import pytest

# Set by .ci/run: on CI the capabilities exist, so a missing one is a failure, not a skip.
REQUIRE_KERNEL = os.environ.get("SOCKETRACE_REQUIRE_KERNEL_TESTS") == "1"


def require(condition: bool, reason: str) -> None:
    """Skip (or, in CI, fail) the calling test when a capability is missing."""
    if condition:
        return
    if REQUIRE_KERNEL:
        pytest.fail(f"required capability missing in CI: {reason}")
    pytest.skip(reason)


def require_tool(name: str) -> str:
    path = shutil.which(name)
    require(path is not None, f"{name} is not installed")
    assert path is not None
    return path
