"""Running socketrace for real: a tracer subprocess and real traffic on this kernel."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ..conftest import require, require_tool

READY_LINE = "Press Ctrl+C to stop"


def _bcc_importable() -> bool:
    return subprocess.run([sys.executable, "-c", "import bcc"], capture_output=True).returncode == 0


@pytest.fixture(scope="session", autouse=True)
def kernel_capabilities() -> None:
    require(os.geteuid() == 0, "tracing needs root")
    require(_bcc_importable(), "BCC's Python module (python3-bpfcc) is not importable")
    require(Path("/sys/kernel/btf/vmlinux").exists(), "kernel has no BTF")


@dataclass
class TraceResult:
    returncode: int
    lines: list[str]  # event lines, header removed
    stderr: str

    def with_func(self, func: str) -> list[str]:
        return [line for line in self.lines if line.split()[2:3] == [func]]


class Tracer:
    """socketrace as a subprocess; started, then stopped with a signal."""

    def __init__(self, tmp_path: Path, *args: str, command: list[str] | None = None) -> None:
        self.stdout_path = tmp_path / f"out-{uuid.uuid4().hex}.txt"
        self.stderr_path = tmp_path / f"err-{uuid.uuid4().hex}.txt"
        base = command or [sys.executable, "-m", "socketrace"]
        with open(self.stdout_path, "w") as out, open(self.stderr_path, "w") as err:
            self.process = subprocess.Popen([*base, *args], stdout=out, stderr=err)

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if READY_LINE in self.stderr_path.read_text():
                return
            if self.process.poll() is not None:
                raise AssertionError(f"socketrace exited early: {self.stderr_path.read_text()}")
            time.sleep(0.02)
        self.process.kill()
        raise AssertionError(f"socketrace not ready after {timeout}s: {self.stderr_path.read_text()}")

    def stop(self, sig: int = signal.SIGINT, settle: float = 0.3) -> TraceResult:
        time.sleep(settle)  # let the last events reach the reader
        self.process.send_signal(sig)
        return self.wait()

    def wait(self, timeout: float = 60) -> TraceResult:
        returncode = self.process.wait(timeout=timeout)
        text = self.stdout_path.read_text()
        lines = [line for line in text.splitlines() if line and not line.startswith(("CPU ", "TIME "))]
        return TraceResult(returncode, lines, self.stderr_path.read_text())


@pytest.fixture
def trace(tmp_path: Path) -> Iterator:
    """Start socketrace with the given flags and wait until it is attached."""
    started: list[Tracer] = []

    def start(*args: str, command: list[str] | None = None) -> Tracer:
        tracer = Tracer(tmp_path, *args, command=command)
        started.append(tracer)
        tracer.wait_ready()
        return tracer

    yield start
    for tracer in started:
        if tracer.process.poll() is None:
            tracer.process.kill()
            tracer.process.wait()


def free_port(family: int = socket.AF_INET) -> int:
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def netns() -> Iterator[str]:
    """A fresh network namespace with loopback up, removed afterwards."""
    ip = require_tool("ip")
    name = f"st-{uuid.uuid4().hex[:8]}"
    subprocess.run([ip, "netns", "add", name], check=True)
    try:
        subprocess.run([ip, "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run([ip, "netns", "del", name], check=False)


# Columns: CPU, pid(comm), FUNC, then the tuple.
LINE = re.compile(r"^(\d+)\s+(\d+)\((.*?)\)\s+(\S+)\s+(.*)$")


def parse(line: str) -> tuple[int, str, str]:
    """(pid, function, rest of the line) of an event line."""
    match = LINE.match(line)
    assert match, line
    return int(match.group(2)), match.group(4), match.group(5)


def socketrace_programs() -> list[str]:
    """Loaded BPF programs that are socketrace's, by name, as bpftool lists them kernel-wide."""
    bpftool = require_tool("bpftool")
    listing = json.loads(
        subprocess.run([bpftool, "-j", "prog", "show"], check=True, capture_output=True, text=True).stdout
    )
    return sorted(
        prog.get("name", "") for prog in listing if re.match(r"rawtp_|shared_handler|kprobe_", prog.get("name", ""))
    )


def programs_settle_to(expected: list[str], timeout: float = 10) -> bool:
    """The kernel frees programs after an RCU grace period: wait for it."""
    deadline = time.monotonic() + timeout
    while socketrace_programs() != expected:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True
