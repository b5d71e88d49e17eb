"""The unit and kernel tiers inside real Debian kernels and userlands, booted under QEMU.

Each guest runs what its kernel and userland can change, on the backends no
other guest covers for it: the host's userland (Debian 12) on 6.12 the kernel
tier on kprobe-multi and on 6.1 the kernel tier on classic kprobes and tracing
on raw tracepoints, both without the tests marked ``userland`` (this machine
ran them in the same userland); Debian 11's userland (Python 3.9, BCC 0.18) on
5.10 and Debian 13's (Python 3.13, BCC 0.31) on 6.12 the unit tier, tracing,
stops, the verifier matrix and the compile cache, on classic kprobes (without
bpf_get_func_ip) and kprobe-multi; Debian 12 arm64 on 6.12 (classic kprobes)
and 6.18 (kprobe-multi) tracing and the matrix, since arm64 is emulated
instruction by instruction (the compile cache reads BCC's output the same way on
both little-endian machines). Each guest's matrix verifies its own backend's programs; raw
tracepoint programs are verified on this machine. The ss differential test of
--filter runs on this machine only. The ten signals spread over start-up run
once per backend: raw tracepoints on this machine, classic kprobes on 6.1,
kprobe-multi on 6.12. In a userland other
than the host's, socketrace is the wheel built here, installed into that
userland's own venv as a user would, and the tests run that command. Guests are
listed longest first, so two at a time balance. ``SOCKETRACE_TEST_PLAN=full``
(``make test-full``, for releases) runs both tiers everywhere instead.

The tier has a budget (``SOCKETRACE_VM_BUDGET`` seconds from
``SOCKETRACE_VM_STARTED``, which `make` sets when the tier starts): each guest
may run until it is spent. The guests print a line as each test starts and
ends, so one cut off by the deadline says which test was running and what each
took. Each guest writes its row of the README's platform table to build/platforms/.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from ..conftest import PROGRESS_DONE, PROGRESS_START, require
from .harness import ARCHES, VENV, WHEELS, prepare_kernel, prepare_userland, run_in_vm

pytestmark = pytest.mark.vm

ROOT = Path(__file__).parents[2]
GUEST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Emulated arm64 is slow: the end-to-end tests of the kprobe backends on their function subset, and the matrix.
ARM64_SUBSET = "tests/kernel/test_trace.py tests/kernel/test_matrix.py"
KERNEL_TIER = "tests/kernel --ignore=tests/kernel/test_install.py"
EVERYTHING = f"tests/unit {KERNEL_TIER}"
TRACE = "tests/kernel/test_trace.py"  # attach, names and in-kernel filters of a backend
# What a new Python and BCC can change on a kernel another guest covers: attach, trace, stop, verify, the
# compile cache (it reads BCC's output).
LIFECYCLE = "tests/kernel/test_lifecycle.py"  # stops: signals, pipes, errors
NEW_USERLAND = f"tests/unit {TRACE} {LIFECYCLE} tests/kernel/test_matrix.py tests/kernel/test_program_cache.py"
SPREAD = "spread_offsets"  # the ten signals over start-up: once per backend, where the guest says
KERNEL_ONLY = "not userland"  # a -m expression: leave out what this machine's own userland ran
# The differential test against ss (hundreds of expressions, ~6 min in a guest) runs on this machine only:
# the in-kernel evaluation is one C on every backend, which each guest's matrix verifies and its tracing drives.
NOT_DIFFERENTIAL = "not filter_expressions_agree"


@dataclass(frozen=True)
class Run:
    """One pytest run in a guest: which tests, on which of the kernel's backends."""

    tests: str
    ways: str = ""  # SOCKETRACE_TEST_WAYS: backends to test ("" = every one the kernel offers)
    deselect: str = f"not {SPREAD}"  # a pytest -k expression
    markers: str = ""  # a pytest -m expression


@dataclass(frozen=True)
class Guest:
    name: str  # distribution and kernel, as the platform table says
    kernel: str  # a key of harness.KERNELS
    userland: str  # a key of harness.USERLANDS, or "" for the host's own
    runs: tuple[Run, ...]
    what: str  # what it runs, as the platform table says
    cpus: int = 1


GUESTS = [  # longest first, so two at a time balance
    # kprobe-multi in full, the ten signals included (classic kprobes: 6.1, 5.10, arm64 6.12).
    Guest(
        "Debian 12 (bookworm)",
        "6.12",
        "",
        (Run(KERNEL_TIER, "kprobe-multi", NOT_DIFFERENTIAL, KERNEL_ONLY),),
        "kernel tier (kprobe-multi)",
    ),
    # Debian 11's userland (Python 3.9, BCC 0.18) on classic kprobes without bpf_get_func_ip (5.15).
    Guest("Debian 11 (bullseye)", "5.10", "bullseye", (Run(NEW_USERLAND, "kprobe"),), "unit tier, tracing (kprobe)"),
    # Classic kprobes in full, the ten signals included; pre-6.3 raw tracepoints trace here.
    Guest(
        "Debian 12 (bookworm)",
        "6.1",
        "",
        (Run(KERNEL_TIER, "kprobe", NOT_DIFFERENTIAL, KERNEL_ONLY), Run(TRACE, "tracepoint", "", KERNEL_ONLY)),
        "kernel tier (kprobe), tracing (tracepoint)",
    ),
    Guest("Debian 13 (trixie)", "6.12", "trixie", (Run(NEW_USERLAND, "kprobe-multi"),), "unit tier, tracing"),
    *(
        Guest(
            "Debian 12 (bookworm) arm64",
            kernel,
            "bookworm-arm64",
            (Run(ARM64_SUBSET, way, markers=KERNEL_ONLY),),
            "the arm64 subset",
            cpus=2,
        )
        for kernel, way in (("6.12-arm64", "kprobe"), ("6.18-arm64", "kprobe-multi"))
    ),
]
FULL_PLAN = os.environ.get("SOCKETRACE_TEST_PLAN") == "full"
if FULL_PLAN:  # both tiers on every backend everywhere but on arm64, for releases
    GUESTS = [
        replace(guest, runs=(Run(EVERYTHING),), what="unit and kernel tiers") if guest.cpus == 1 else guest
        for guest in GUESTS
    ]
# The tier's budget, from its start; each guest runs until it is spent (CI has 90 minutes in all).
BUDGET = float(os.environ.get("SOCKETRACE_VM_BUDGET", 4800 if not FULL_PLAN else 9000))
STARTED = float(os.environ.get("SOCKETRACE_VM_STARTED", time.time()))


def _command(guest: Guest, wheel: Path | None) -> str:
    """Install the wheel in a built userland (or use the host's venv), report versions, run pytest."""
    env = f"export PATH={GUEST_PATH} SOCKETRACE_REQUIRE_KERNEL_TESTS=1 PYTHONDONTWRITEBYTECODE=1 "
    env += "SOCKETRACE_TEST_PROGRESS=1; "
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
    runs = []
    for run in guest.runs:
        selection = run.tests
        selection += f" -k {shlex.quote(run.deselect)}" if run.deselect else ""
        selection += f" -m {shlex.quote(run.markers)}" if run.markers else ""
        runs.append(
            f"SOCKETRACE_TEST_WAYS={run.ways} {pytest_run} -p no:cacheprovider -q -rs --durations=10 {selection}"
        )
    return f"{env}{install}{version} && " + " && ".join(runs)


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
    left = STARTED + BUDGET - time.time()
    require(left > 60, f"the tier's budget ({BUDGET:.0f} s) is spent before this guest could start")
    result = run_in_vm(kernel, _command(guest, wheel), ROOT, timeout=left, cpus=guest.cpus, root=root)
    print(f"--- {guest.name}, {kernel.version}: {result.seconds:.0f} s\n{_without_progress(result.output)}")
    if result.returncode < 0 and result.seconds >= left - 1:
        pytest.fail(f"{guest.name}, {kernel.version}: {_out_of_time(result.output, left)}", pytrace=False)
    assert result.returncode == 0, f"{result.output[-8000:]}\n--- console ---\n{result.console[-3000:]}"
    summaries = re.findall(r"(\d+) passed(.*) in [\d.]+s", result.output)
    assert len(summaries) == len(guest.runs), result.output[-3000:]
    assert not any("skipped" in rest or "failed" in rest for _, rest in summaries), result.output[-3000:]
    passed = sum(int(count) for count, _ in summaries)
    _platform_row(guest, kernel.version, kernel.arch, result.output, passed, result.seconds)


def _without_progress(output: str) -> str:
    """The guest's pytest output less its per-test progress lines."""
    return "\n".join(line for line in output.splitlines() if not line.lstrip(".FEsx").startswith("progress: "))


def _slowest(output: str, count: int) -> tuple[dict[str, tuple[float, str]], str]:
    """The tests a guest's progress lines say have ended (seconds, outcome), and the slowest as text."""
    done = {match.group(3): (float(match.group(1)), match.group(2)) for match in PROGRESS_DONE.finditer(output)}
    slowest = sorted(done.items(), key=lambda item: -item[1][0])[:count]
    return done, "\n".join(f"  {spent:7.1f} s {outcome:6} {nodeid}" for nodeid, (spent, outcome) in slowest)


def _out_of_time(output: str, seconds: float) -> str:
    """What a guest cut off by its deadline was doing: the test that was running, and what each took."""
    started = [line.split(PROGRESS_START, 1)[1] for line in output.splitlines() if PROGRESS_START in line]
    done, took = _slowest(output, 15)
    running = next((nodeid for nodeid in reversed(started) if nodeid not in done), "none (between tests)")
    return (
        f"ran out of time after {seconds:.0f} s (the tier's budget) while running {running}; "
        f"{len(done)} tests had ended, {sum(spent for spent, _ in done.values()):.0f} s in all; the slowest:\n{took}"
    )


def _platform_row(guest: Guest, version: str, arch: str, output: str, passed: int, seconds: float) -> None:
    """The README's platform table, one row per guest, from what the guest printed."""

    def field(pattern: str) -> str:
        match = re.search(pattern, output, re.M)
        return match.group(1) if match else "?"

    python, bcc = field(r"^Python (\S+)"), field(r"^BCC (\S+)")
    offered = field(r"^backends: ([^;]+)").split(", ")
    asked = {way for run in guest.runs for way in (run.ways.split(",") if run.ways else offered)}
    tested = [way for way in offered if way in asked]
    row = (
        f"| {guest.name} | {version} | {arch} | {python} | {bcc} | {offered[0]} | {', '.join(tested)} "
        f"| {guest.what}: {passed} passed in {seconds / 60:.0f} min |\n"
    )
    out = ROOT / "build" / "platforms"
    out.mkdir(parents=True, exist_ok=True)
    name = f"{guest.kernel}-{guest.userland or 'host'}"
    (out / f"{name}.md").write_text(row)
    # Its times, for the Tests section: the calibration of each run, the slowest tests.
    paces = "; ".join(
        match.group(0) for match in re.finditer(r"pace: one tracer start took \S+ s here \(\S+\)", output)
    )
    (out / f"{name}.times").write_text(f"{name}: {seconds:.0f} s; {paces}\n{_slowest(output, 5)[1]}\n")
