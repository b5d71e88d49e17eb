"""Running socketrace for real: a tracer subprocess and real traffic on the running kernel.

Every end-to-end test takes a ``backend``: it runs once per backend the
running kernel offers (tracepoint everywhere; kprobe and kprobe-multi where
the kernel has them), or once per backend its ``@pytest.mark.backends(...)``
names among those. What a backend can see depends on the kernel (6.1 has no
raw tracepoint for a UDP send), so :class:`Backend` says which function shows
which traffic, and a test that needs something a backend cannot show is not
generated for it. Every wait is bounded.

Every wait is a multiple of one measured unit (:class:`Pace`): the time one
tracer start took on this kernel, in this guest, on this machine today, so a
slower machine stretches every bound alike and no test fails for being slow.

``SOCKETRACE_COMMAND`` runs another build than this checkout's (an installed
wheel, the zipapp); ``SOCKETRACE_REQUIRE_KERNEL_TESTS=1`` (CI) turns every
would-be skip into a failure.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

from socketrace.cli import build_options, command
from socketrace.discovery import discover
from socketrace.features import detect_features
from socketrace.options import AttachWay
from socketrace.program import ProgramPlan, plan_program

from ..conftest import require, require_tool

READY_LINE = "Press Ctrl+C to stop"
ROOT = Path(__file__).parents[2]
SYSTEM_PYTHON = "/usr/bin/python3"  # the distribution's, which has BCC: what the zipapp runs with
COMMAND = shlex.split(os.environ.get("SOCKETRACE_COMMAND", "")) or [sys.executable, "-m", "socketrace"]
ALL_WAYS = ("tracepoint", "kprobe", "kprobe-multi")
# Enough functions for the checks, few enough that classic kprobes attach in seconds under emulation.
KPROBE_SET = (
    "(tcp|udp|udpv6|inet|inet6|unix_stream|unix_dgram|netlink)_sendmsg|tcp_v4_connect|tcp_v6_connect|"
    "sock_sendmsg|inet_bind|__inet_bind|inet_bind_sk|inet_listen|tcp_close|inet_release|sk_destruct|tcp_recvmsg"
)
# What shows each kind of traffic, per kind of backend: (function or tracepoint names, as the event's FUNC).
KPROBE_SEES = {
    "tcp": ("tcp_sendmsg",),
    "udp": ("udp_sendmsg",),
    "udp6": ("udpv6_sendmsg",),
    "unix": ("unix_stream_sendmsg",),
    "netlink": ("netlink_sendmsg",),
}


def _bcc_importable() -> bool:
    return subprocess.run([sys.executable, "-c", "import bcc"], capture_output=True, timeout=60).returncode == 0


def _kernel_ready() -> str | None:
    """Why this machine cannot run the kernel tier, or None."""
    if os.geteuid() != 0:
        return "tracing needs root"
    if not Path("/sys/kernel/btf/vmlinux").exists():
        return "the kernel has no BTF"
    if not _bcc_importable():
        return "BCC's Python module (python3-bpfcc) is not importable"
    return None


@cache
def kernel_ways() -> tuple[str, ...]:
    """The backends this kernel and BCC offer, best first (as socketrace chooses), as narrowed."""
    if _kernel_ready() is not None:
        return ()
    from socketrace.attach import available_ways
    from socketrace.features import detect_features

    return narrowed(way.value for way in available_ways(detect_features()))


def narrowed(ways: Iterable[str]) -> tuple[str, ...]:
    """The backends of ``ways`` that SOCKETRACE_TEST_WAYS (comma-separated) names; all when it is unset.

    A guest that shares its kernel or its userland with another runs only the
    backends the other does not (tests/vm/test_guests.py says which).
    """
    wanted = os.environ.get("SOCKETRACE_TEST_WAYS", "")
    return tuple(way for way in ways if not wanted or way in wanted.split(","))


# Four port sets (the most the program declares): `or`s of 16 ports of one end each.
PORT_SETS_EXPRESSION = " and ".join(
    "( " + " or ".join(f"{end} = :{base + i}" for i in range(16)) + " )"
    for end, base in (("sport", 1000), ("dport", 2000), ("sport", 3000), ("dport", 4000))
)
# Four prefix sets (two per family, the most the program declares): `or`s of 16 prefixes each.
PREFIX_SETS_EXPRESSION = " and ".join(
    "( " + " or ".join(prefix.format(i) for i in range(16)) + " )"
    for prefix in ("src 10.{}.0.0/16", "dst 192.168.{}.0/24", "src 2001:db8:{:x}::/48", "dst fd00:{:x}::/32")
)


def program_plan(way: str, args: list[str]) -> ProgramPlan:
    """The program socketrace would build for these flags on this backend, as if the kernel could
    attach it (a kernel may load kprobe programs it cannot attach: this project's development kernel)."""
    flags = dict(command.make_context("socketrace", ["--kprobe-way", way, *args]).params)
    for cli_only in ("debug", "version"):
        flags.pop(cli_only)
    if way != "tracepoint":
        flags["filter_funcs"] = re.compile(KPROBE_SET)
    options = build_options(flags)
    kernel = dataclasses.replace(
        detect_features(), kprobes=True, kprobe_multi=way == "kprobe-multi", bcc_kprobe_multi=True
    )
    kprobes = way != "tracepoint"
    discovery = discover(options, with_functions=kprobes, with_registers=kprobes)
    # Any address does for classic kprobes' --filter-track-sock: the verifier does not look at it.
    return plan_program(options, discovery, AttachWay(way), kernel, sock_free_ip=0xFFFFFFFF81000000)


@cache
def kernel_tracepoints() -> frozenset[str]:
    """Raw tracepoints that take a sock on this kernel."""
    if _kernel_ready() is not None:
        return frozenset()
    listing = subprocess.run(
        [*COMMAND, "--list-funcs", "tracepoint"], capture_output=True, text=True, timeout=300, check=True
    ).stdout
    return frozenset(line.strip() for line in listing.splitlines() if line.startswith("  "))


@dataclass(frozen=True)
class Pace:
    """The seconds one tracer start took here (exec to ready: imports, discovery, BCC's compile, attach),
    measured once per session; every wait of this tier is a number of such starts. Under emulation a
    start takes 5-15 s, natively 0.3-3 s; one under a second counts as a second, so a fast machine
    keeps a margin against jitter."""

    start: float
    way: str

    def seconds(self, starts: float) -> float:
        return starts * max(self.start, 1.0)


# Waits, in tracer starts (Pace.seconds). A start with the full set of classic kprobes takes about
# four times the measured one (a subset), a stop with --wait-detach about as long again.
READY_STARTS = 30  # a tracer's start
EXIT_STARTS = 30  # a tracer's stop, detach included
SETTLE_STARTS = 20  # the kernel freeing programs and links after a stop (RCU), a child exiting
QUIET_STARTS = 0.05  # output unchanged this long: the reader has caught up with the traffic
CALIBRATION_CAP = 900  # the one fixed bound: the calibrating start itself; a tracer slower than this is broken


@cache
def pace() -> Pace:
    """Measure one tracer start on the best backend (its usual flags, a filter matching nothing)."""
    if not kernel_ways():
        return Pace(1.0, "none")
    backend = Backend(kernel_ways()[0], kernel_tracepoints())
    started = time.monotonic()
    process = subprocess.Popen(
        [*COMMAND, *backend.args(), "--filter-port", "9"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        for line in process.stderr:  # type: ignore[union-attr]
            if READY_LINE in line or time.monotonic() - started > CALIBRATION_CAP:
                break
        seconds = time.monotonic() - started
        process.send_signal(signal.SIGINT)
        _, rest = process.communicate(timeout=CALIBRATION_CAP)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=CALIBRATION_CAP)
    assert process.returncode == 0 and seconds < CALIBRATION_CAP, f"the calibrating tracer failed: {rest}"
    return Pace(seconds, backend.way)


# sock_diag's handlers for TCP and UDP, modules in Debian's kernels.
DIAG_MODULES = ("inet_diag", "tcp_diag", "udp_diag")


@cache
def require_ss() -> str:
    """ss, answering from the kernel's sock_diag rather than /proc/net: without tcp_diag ss reads
    /proc/net/tcp, where sk: is a hashed pointer instead of the socket's cookie and marks are missing,
    and without udp_diag it lists no UDP socket. The kernel loads them on demand by running modprobe
    from init's root, which in the guests is the initramfs, so they are loaded here."""
    ss = require_tool("ss")
    modprobe = shutil.which("modprobe")
    if modprobe is not None:  # built in, where modprobe -q finds no module
        subprocess.run([modprobe, "-q", "-a", *DIAG_MODULES], check=False, timeout=pace().seconds(SETTLE_STARTS))
    return ss


def kernel_has_module_btf() -> bool:
    """Loaded modules have BTF files beside vmlinux's (5.11+ with CONFIG_DEBUG_INFO_BTF_MODULES)."""
    btf = Path("/sys/kernel/btf")
    return btf.is_dir() and any(entry.name != "vmlinux" for entry in btf.iterdir())


@dataclass(frozen=True)
class Backend:
    """One backend on this kernel: the flags that force it, and what it can see."""

    way: str
    tracepoints: frozenset[str]

    @property
    def is_kprobe(self) -> bool:
        return self.way != "tracepoint"

    def args(self, funcs: str | None = None) -> list[str]:
        """--kprobe-way; for kprobes a --filter-funcs set (KPROBE_SET unless given), and --wait-detach,
        so each test finds the kernel as the previous one left it (removal in the background has its own test)."""
        if not self.is_kprobe:
            return ["--kprobe-way", self.way, *(["--filter-funcs", funcs] if funcs else [])]
        return ["--kprobe-way", self.way, "--filter-funcs", funcs or KPROBE_SET, "--wait-detach"]

    def sees(self, kind: str) -> tuple[str, ...]:
        """The FUNCs that show a send of this kind of socket (tcp, udp, udp6, unix, netlink); () if none."""
        if self.is_kprobe:
            return KPROBE_SEES[kind]
        if "sock_send_length" in self.tracepoints:  # 6.3+: every family's sends
            return ("sock_send_length",)
        return ("inet_sock_set_state", "tcp_probe") if kind == "tcp" else ()

    def sees_in_sender(self, kind: str) -> bool:
        """Whether every FUNC of sees(kind) runs in the sending process, so its PID column must be the
        sender's. The pre-6.3 tracepoints also fire in softirq (an ACK, a timer), on whatever task the
        CPU happened to run: the pytest process mostly, ksoftirqd or the tracer itself on a busy CPU."""
        return self.is_kprobe or "sock_send_length" in self.tracepoints


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize ``backend`` over the kernel's backends that the test's marker allows and that
    can see the traffic it names. On a machine that cannot trace at all, one placeholder skips."""
    if "backend" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("backends")
    wanted = (marker.args or ALL_WAYS) if marker else ALL_WAYS
    sees = marker.kwargs.get("sees", ()) if marker else ()
    if marker is not None and marker.kwargs.get("module_btf") and not kernel_has_module_btf():
        wanted = ()  # Debian 11's 5.10 has no BTF for its modules (CONFIG_DEBUG_INFO_BTF_MODULES)
    backends = [
        Backend(way, kernel_tracepoints())
        for way in kernel_ways()
        if way in wanted and all(Backend(way, kernel_tracepoints()).sees(kind) for kind in sees)
    ]
    if not kernel_ways():
        metafunc.parametrize("backend", [None], ids=["no-kernel"])
        return
    if marker is not None and marker.kwargs.get("best_only"):
        backends = backends[:1]
    if not backends:
        needs = ", ".join(wanted) or "kernel modules with BTF"
        needs += f" seeing {', '.join(sees)}" if sees else ""
        NOT_APPLICABLE[metafunc.definition.nodeid] = f"needs {needs}; this kernel offers {', '.join(kernel_ways())}"
    metafunc.parametrize("backend", backends, ids=[backend.way for backend in backends])


# Tests no backend of this kernel can run (kprobe tests on a kernel without kprobes): deselected, with the reason.
NOT_APPLICABLE: dict[str, str] = {}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    dropped = [item for item in items if item.nodeid.split("[")[0] in NOT_APPLICABLE]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [item for item in items if item not in dropped]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for nodeid, reason in sorted(NOT_APPLICABLE.items()):
        terminalreporter.write_line(f"NOT APPLICABLE on this kernel (deselected): {nodeid}: {reason}")
    if pace.cache_info().currsize:
        measured = pace()
        terminalreporter.write_line(
            f"pace: one tracer start took {measured.start:.2f} s here ({measured.way}); waits are multiples of it"
        )


@pytest.fixture(scope="session", autouse=True)
def kernel_capabilities() -> None:
    reason = _kernel_ready()
    require(reason is None, reason or "")


@dataclass
class TraceResult:
    returncode: int
    lines: list[str]  # event lines, header removed
    stderr: str

    def with_func(self, *funcs: str) -> list[str]:
        return [line for line in self.lines if line.split()[2:3] and line.split()[2] in funcs]

    def accounting(self) -> dict[str, int]:
        """The numbers of the exit report's first line."""
        match = re.search(
            r"(\d+) events (?:printed|counted), (\d+) dropped \(([^)]*)\)(?:, (\d+) not printed \([^)]*\))?, "
            r"(\d+) probe runs without a socket, (\d+) filtered out, (\d+) before ready or after stop: "
            r"(\d+) probe runs(?: \(the kernel counted (\d+)\))?",
            self.stderr,
        )
        assert match, self.stderr
        names = ("printed", "dropped", "causes", "unprinted", "no_sock", "filtered", "not_tracing", "runs", "kernel")
        values = dict(zip(names, match.groups()))
        causes = dict(
            (name.strip(), int(count)) for name, count in (part.split(":") for part in values.pop("causes").split(","))
        )
        numbers = {name: int(value) for name, value in values.items() if value is not None}
        numbers.update({f"dropped {name}": count for name, count in causes.items()})
        return numbers


class Tracer:
    """socketrace as a subprocess; started, then stopped with a signal."""

    def __init__(self, tmp_path: Path, *args: str, command: list[str] | None = None, **popen: object) -> None:
        self.stdout_path = tmp_path / f"out-{uuid.uuid4().hex}.txt"
        self.stderr_path = tmp_path / f"err-{uuid.uuid4().hex}.txt"
        with open(self.stdout_path, "w") as out, open(self.stderr_path, "w") as err:
            self.process = subprocess.Popen([*(command or COMMAND), *args], stdout=out, stderr=err, **popen)

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def wait_ready(self, timeout: float | None = None) -> None:
        timeout = timeout or pace().seconds(READY_STARTS)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if READY_LINE in self.stderr:
                return
            if self.process.poll() is not None:
                raise AssertionError(f"socketrace exited early ({self.process.returncode}): {self.stderr}")
            time.sleep(0.05)
        self.process.kill()
        self.process.wait(timeout=pace().seconds(EXIT_STARTS))
        raise AssertionError(f"socketrace not ready after {timeout:.0f} s: {self.stderr}")

    def lines_so_far(self) -> list[str]:
        """The event lines printed until now (the last one may still be partial)."""
        return _event_lines(self.stdout_path.read_text())

    def wait_for(self, condition: Callable[[list[str]], bool]) -> bool:
        """Wait until the lines printed so far satisfy ``condition`` (events the kernel makes after
        the traffic, such as a socket's destruction), bounded by SETTLE_STARTS."""
        return settles(lambda: condition(self.lines_so_far()))

    def caught_up(self) -> None:
        """Wait until the output has not grown for a while (QUIET_STARTS): the reader has printed what
        the traffic so far made. Bounded: under a steady load the output never rests."""
        quiet = max(0.3, pace().seconds(QUIET_STARTS))
        deadline = time.monotonic() + pace().seconds(SETTLE_STARTS)
        size, since = -1, time.monotonic()
        while time.monotonic() < deadline:
            now_size = self.stdout_path.stat().st_size
            if now_size != size:
                size, since = now_size, time.monotonic()
            elif time.monotonic() - since >= quiet:
                return
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGINT, settle: bool = True) -> TraceResult:
        """Signal the tracer, after its output has caught up (``settle``), and wait for its end."""
        if settle:
            self.caught_up()
        self.process.send_signal(sig)
        return self.wait()

    def wait(self, timeout: float | None = None) -> TraceResult:
        timeout = timeout or pace().seconds(EXIT_STARTS)
        try:
            returncode = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=timeout)
            raise AssertionError(f"socketrace did not end within {timeout:.0f} s: {self.stderr}") from None
        return TraceResult(returncode, _event_lines(self.stdout_path.read_text()), self.stderr)


def _event_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith(("CPU ", "TIME "))]


@pytest.fixture
def trace(tmp_path: Path) -> Iterator:
    """Start socketrace with the given flags and wait until it is attached."""
    started: list[Tracer] = []

    def start(*args: str, command: list[str] | None = None, ready: bool = True, **popen: object) -> Tracer:
        tracer = Tracer(tmp_path, *args, command=command, **popen)
        started.append(tracer)
        if ready:
            tracer.wait_ready()
        return tracer

    yield start
    for tracer in started:
        if tracer.process.poll() is None:
            tracer.process.kill()
            tracer.process.wait(timeout=pace().seconds(EXIT_STARTS))


def free_port(family: int = socket.AF_INET) -> int:
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def netns() -> Iterator[str]:
    """A fresh network namespace with loopback up, removed afterwards."""
    ip = require_tool("ip")
    name = f"st-{uuid.uuid4().hex[:8]}"
    subprocess.run([ip, "netns", "add", name], check=True, timeout=60)
    try:
        subprocess.run([ip, "-n", name, "link", "set", "lo", "up"], check=True, timeout=60)
        yield name
    finally:
        subprocess.run([ip, "netns", "del", name], check=False, timeout=60)


# Columns: CPU, pid(comm), FUNC, then the tuple.
LINE = re.compile(r"^(\d+)\s+(\d+)\((.*?)\)\s+(\S+)\s+(.*)$")


def parse(line: str) -> tuple[int, str, str]:
    """(pid, function, rest of the line) of an event line."""
    match = LINE.match(line)
    assert match, line
    return int(match.group(2)), match.group(4), match.group(5)


PROGRAM_NAME = re.compile(r"rawtp_|shared_handler|kprobe_")


def socketrace_programs() -> list[dict]:
    """Loaded BPF programs that are socketrace's, as bpftool lists them kernel-wide."""
    bpftool = require_tool("bpftool")
    listing = json.loads(
        subprocess.run([bpftool, "-j", "prog", "show"], check=True, capture_output=True, text=True, timeout=120).stdout
    )
    return [prog for prog in listing if PROGRAM_NAME.match(prog.get("name", ""))]


def settles(condition, timeout: float | None = None) -> bool:
    """Wait for a condition the kernel reaches asynchronously (programs are freed after an RCU grace period)."""
    deadline = time.monotonic() + (timeout or pace().seconds(SETTLE_STARTS))
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


KPROBES_LIST = Path("/sys/kernel/debug/kprobes/list")


def attached_kprobes() -> list[str]:
    """Kprobes registered in the kernel (debugfs), whoever made them."""
    return KPROBES_LIST.read_text().splitlines() if KPROBES_LIST.exists() else []


def kprobe_multi_links() -> list[dict]:
    bpftool = require_tool("bpftool")
    links = json.loads(
        subprocess.run([bpftool, "-j", "link", "show"], check=True, capture_output=True, text=True, timeout=120).stdout
    )
    return [link for link in links if link.get("type") == "kprobe_multi"]


def nothing_attached() -> bool:
    """No program of socketrace's is loaded, no kprobe or kprobe-multi link remains."""
    return not socketrace_programs() and not attached_kprobes() and not kprobe_multi_links()
