"""Shared test helpers: capability checks that skip with a reason, or fail in CI."""

from __future__ import annotations

import os
import re
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


# SOCKETRACE_TEST_PROGRESS=1 (the guests): a line as each test starts and as it ends, with its time,
# so that a run cut off by its deadline still says which test was running and what each took.
PROGRESS = os.environ.get("SOCKETRACE_TEST_PROGRESS") == "1"
PROGRESS_START = "progress: start "
PROGRESS_DONE = re.compile(r"progress: (\d+\.\d) s (\w+) (\S+)$", re.M)  # after pytest's dots, if -q
_config: pytest.Config | None = None
_spent: dict[str, float] = {}
_failed: set[str] = set()


def _progress(config: pytest.Config | None, text: str) -> None:
    reporter = config.pluginmanager.get_plugin("terminalreporter") if config is not None else None
    if reporter is not None:
        reporter.write_line(text)
        reporter.flush()


def pytest_runtest_logstart(nodeid: str, location: tuple) -> None:
    if PROGRESS:
        _progress(_config, PROGRESS_START + nodeid)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if not PROGRESS:
        return
    _spent[report.nodeid] = _spent.get(report.nodeid, 0.0) + report.duration
    if report.failed:
        _failed.add(report.nodeid)
    if report.when == "teardown":
        outcome = "failed" if report.nodeid in _failed else "done"
        _progress(_config, f"progress: {_spent.pop(report.nodeid):.1f} s {outcome} {report.nodeid}")


def pytest_configure(config: pytest.Config) -> None:
    global _config
    _config = config
