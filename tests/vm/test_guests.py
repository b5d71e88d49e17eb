"""The unit and kernel tiers inside real Debian kernels and userlands, booted under QEMU.

Each guest runs the same tests as this machine, on its kernel's backends: the
host's userland (Debian 12: Python 3.11, BCC 0.26) on 6.1 (classic kprobes and
raw tracepoints: `make test` on a stock Debian 12) and on 6.12 (kprobe-multi
and classic kprobes; raw tracepoints are covered on 6.18, 6.1 and 5.10);
Debian 13's (Python 3.13, BCC 0.31) on 6.12 with its default backend, since
guest 2 covers that kernel's others; Debian 11's (Python 3.9, BCC 0.18) on its
5.10 (classic kprobes and raw tracepoints); Debian 12 arm64 on 6.12 (classic
kprobes) and 6.18 (kprobe-multi), a subset there since arm64 is emulated
instruction by instruction. The ten signals spread over start-up run once per
backend: raw tracepoints on this machine, classic kprobes on 6.1, kprobe-multi
on 6.12. In a userland other than the host's, socketrace is the wheel built
here, installed into that userland's own venv as a user would, and the tests
run that command. Guests are listed longest first, so two at a time balance.

Each guest writes its row of the README's platform table to build/platforms/.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from ..conftest import require
from .harness import ARCHES, VENV, WHEELS, prepare_kernel, prepare_userland, run_in_vm

pytestmark = pytest.mark.vm

ROOT = Path(__file__).parents[2]
GUEST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Emulated arm64 is slow: the end-to-end tests of the kprobe backends on their function subset, and the matrix.
ARM64_SUBSET = "tests/kernel/test_trace.py tests/kernel/test_matrix.py tests/kernel/test_lifecycle.py"
EVERYTHING = "tests/unit tests/kernel --ignore=tests/kernel/test_install.py"
SPREAD = "spread_offsets"  # the ten signals over start-up: once per backend, where the guest says


@dataclass(frozen=True)
class Guest:
    name: str  # distribution and kernel, as the platform table says
    kernel: str  # a key of harness.KERNELS
    userland: str  # a key of harness.USERLANDS, or "" for the host's own
    tests: str = EVERYTHING
    ways: str = ""  # SOCKETRACE_TEST_WAYS: backends to test ("" = every one the kernel offers)
    deselect: str = f"not {SPREAD}"  # a pytest -k expression
    cpus: int = 1


GUESTS = [
    Guest("Debian 12 (bookworm)", "6.12", "", ways="kprobe-multi,kprobe", deselect=f"not ({SPREAD} and not multi)"),
    Guest("Debian 12 (bookworm)", "6.1", "", deselect=f"not ({SPREAD} and tracepoint)"),
    Guest("Debian 11 (bullseye)", "5.10", "bullseye"),
    Guest("Debian 13 (trixie)", "6.12", "trixie", ways="kprobe-multi"),
    Guest("Debian 12 (bookworm) arm64", "6.18-arm64", "bookworm-arm64", ARM64_SUBSET, "kprobe-multi", cpus=2),
    Guest("Debian 12 (bookworm) arm64", "6.12-arm64", "bookworm-arm64", ARM64_SUBSET, "kprobe", cpus=2),
]


def _command(guest: Guest, wheel: Path | None) -> str:
    """Install the wheel in a built userland (or use the host's venv), report versions, run pytest."""
    env = (
        f"export PATH={GUEST_PATH} SOCKETRACE_REQUIRE_KERNEL_TESTS=1 PYTHONDONTWRITEBYTECODE=1 "
        f"SOCKETRACE_TEST_WAYS={guest.ways}; "
    )
    if guest.userland:
        assert wheel is not None
        install = f"{VENV}/bin/pip install -q --no-index --find-links {WHEELS} {wheel.relative_to(ROOT)} && "
        command = f"SOCKETRACE_COMMAND={VENV}/bin/socketrace"
        pytest_run = f"{command} PYTHONPATH=$PWD {VENV}/bin/python -m pytest"
        version = f"{VENV}/bin/socketrace --version"
    else:
        install = ""
        pytest_run = ".venv/bin/pytest"
        version = ".venv/bin/socketrace --version"
    selection = f"{guest.tests} -k {shlex.quote(guest.deselect)}"
    return f"{env}{install}{version} && {pytest_run} -p no:cacheprovider -q -rs {selection}"


@pytest.fixture(scope="session")
def wheel() -> Path:
    """The wheel `make wheel` built from this checkout (the guests install it)."""
    built = sorted((ROOT / "dist").glob("socketrace-*.whl"))
    require(bool(built), "no wheel in dist/: `make wheel` builds it (make test does)")
    return built[-1]


@pytest.mark.parametrize("guest", GUESTS, ids=[f"{g.kernel}-{g.userland or 'host'}" for g in GUESTS])
def test_guest(guest: Guest, wheel: Path) -> None:
    require(os.geteuid() == 0, "the VM harness needs root (apt-get download, mounts)")
    kernel = prepare_kernel(guest.kernel)
    qemu = ARCHES[kernel.arch].qemu
    require(shutil.which(qemu) is not None, f"{qemu} is not installed")
    root = prepare_userland(guest.userland) if guest.userland else Path("/")
    result = run_in_vm(kernel, _command(guest, wheel), ROOT, timeout=2400, cpus=guest.cpus, root=root)
    print(f"--- {guest.name}, {kernel.version}: {result.seconds:.0f} s\n{result.output}")
    assert result.returncode == 0, f"{result.output[-8000:]}\n--- console ---\n{result.console[-3000:]}"
    summary = re.search(r"(\d+) passed(.*) in [\d.]+s", result.output)
    assert summary and "skipped" not in summary.group(2) and "failed" not in summary.group(2), result.output[-3000:]
    _platform_row(guest, kernel.version, kernel.arch, result.output, int(summary.group(1)), result.seconds)


def _platform_row(guest: Guest, version: str, arch: str, output: str, passed: int, seconds: float) -> None:
    """The README's platform table, one row per guest, from what the guest printed."""

    def field(pattern: str) -> str:
        match = re.search(pattern, output, re.M)
        return match.group(1) if match else "?"

    python, bcc = field(r"^Python (\S+)"), field(r"^BCC (\S+)")
    offered = field(r"^backends: ([^;]+)").split(", ")
    tested = [way for way in offered if not guest.ways or way in guest.ways.split(",")]
    what = "the arm64 subset" if guest.tests == ARM64_SUBSET else "unit and kernel tiers"
    row = (
        f"| {guest.name} | {version} | {arch} | {python} | {bcc} | {offered[0]} | {', '.join(tested)} "
        f"| {what}: {passed} passed in {seconds / 60:.0f} min |\n"
    )
    out = ROOT / "build" / "platforms"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{guest.kernel}-{guest.userland or 'host'}.md").write_text(row)
