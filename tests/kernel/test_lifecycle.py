"""Per backend: how a run ends. Signals at any moment of start-up, during a load, twice; a closed
pipe; a full disk; errors at run time; and after each, nothing of socketrace left in the kernel."""

from __future__ import annotations

import array
import contextlib
import fcntl
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import termios
import time
from pathlib import Path

import pytest

from ..conftest import require
from .conftest import (
    COMMAND,
    EXIT_STARTS,
    READY_LINE,
    READY_STARTS,
    ROOT,
    SYSTEM_PYTHON,
    Backend,
    TraceResult,
    attached_kprobes,
    free_port,
    nothing_attached,
    pace,
    settles,
)
from .traffic import UdpFlood, tcp_exchange

SIGNAL_EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}


def _handlers_installed(pid: int) -> bool:
    """SigCgt lists SIGTERM once socketrace's entry point has run (Python alone catches only SIGINT)."""
    with contextlib.suppress(OSError):
        status = Path(f"/proc/{pid}/status").read_text()
        caught = int(re.search(r"^SigCgt:\s*([0-9a-f]+)$", status, re.M).group(1), 16)
        return bool(caught & (1 << (signal.SIGTERM - 1)))
    return False


def _ends_cleanly(process: subprocess.Popen, stderr: str, sig: int) -> None:
    """Exit status 128+signal before tracing, 0 once tracing; no traceback; nothing attached."""
    tracing = READY_LINE in stderr
    assert process.returncode == (0 if tracing else SIGNAL_EXIT[sig]), stderr
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
    last = stderr.strip().splitlines()[-1] if stderr.strip() else ""
    assert tracing or last == "socketrace: interrupted", stderr
    assert settles(nothing_attached), "something of socketrace stayed in the kernel"


def test_signals_at_spread_offsets_over_start_up(backend: Backend, tmp_path: Path) -> None:
    """Ten signals: one once tracing, nine spread over start-up (importing, discovering, compiling,
    attaching), SIGINT and SIGTERM in turn."""
    args = [*COMMAND, *backend.args(), "--filter-port", "9"]
    started = time.monotonic()
    probe = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + pace().seconds(READY_STARTS)
    while not _handlers_installed(probe.pid) and time.monotonic() < deadline:
        time.sleep(0.005)
    installed = time.monotonic()
    for line in probe.stderr:  # type: ignore[union-attr]
        if READY_LINE in line:
            break
    start_up = time.monotonic() - installed
    probe.send_signal(signal.SIGINT)
    _, rest = probe.communicate(timeout=pace().seconds(EXIT_STARTS))
    assert probe.returncode == 0, f"the first run did not trace ({time.monotonic() - started:.1f} s): {rest}"
    assert settles(nothing_attached)
    for step in range(9):
        sig = (signal.SIGTERM, signal.SIGINT)[step % 2]
        process = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
        while not _handlers_installed(process.pid) and process.poll() is None:
            time.sleep(0.002)
        time.sleep(start_up * step / 9)
        process.send_signal(sig)
        _, stderr = process.communicate(timeout=pace().seconds(READY_STARTS + EXIT_STARTS))
        _ends_cleanly(process, stderr, sig)


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGKILL])  # SIGINT: the test above
def test_nothing_stays_attached(trace, backend: Backend, stop_signal: int) -> None:
    tracer = trace(*backend.args(), "--filter-port", "9")
    assert not nothing_attached()
    result = tracer.stop(stop_signal, settle=False)
    if stop_signal != signal.SIGKILL:
        assert result.returncode == 0 and "Detaching" in result.stderr, result.stderr
    assert settles(nothing_attached)


def test_closed_pipe_ends_cleanly(backend: Backend) -> None:
    port = free_port()
    command = shlex.join([*COMMAND, *backend.args(), "--filter-port", str(port)])
    pipeline = subprocess.Popen(
        ["bash", "-c", f'set -o pipefail; {command} | head -n 2; echo "status=${{PIPESTATUS[0]}}" >&2'],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + pace().seconds(READY_STARTS + EXIT_STARTS)
    while pipeline.poll() is None and time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            tcp_exchange(port)
        time.sleep(0.1)
    stdout, stderr = pipeline.communicate(timeout=pace().seconds(EXIT_STARTS))
    assert len(stdout.splitlines()) == 2
    assert "status=0" in stderr and "Traceback" not in stderr, stderr
    assert settles(nothing_attached)


@pytest.mark.backends(sees=("udp",))
def test_signal_under_sustained_load_ends_the_run(trace, backend: Backend) -> None:
    """Output keeps flowing while a load lasts, and a signal in the middle of a poll ends the run."""
    with UdpFlood(senders=2, seconds=pace().seconds(READY_STARTS + EXIT_STARTS)):
        tracer = trace(*backend.args(), "--filter-protocol", "udp")
        written = tracer.stdout_path.stat
        assert settles(lambda: written().st_size > 0), "nothing written while the load ran"
        early = written().st_size
        assert settles(lambda: written().st_size > early), "output stopped while the load went on"
        tracer.process.send_signal(signal.SIGINT)
        result = tracer.wait()
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr
    counts = result.accounting()
    outcomes = counts["printed"] + counts.get("unprinted", 0) + counts["dropped"] + counts["no_sock"]
    assert counts["runs"] == outcomes + counts["filtered"] + counts["not_tracing"], result.stderr
    assert counts["printed"] == len(result.lines), result.stderr
    assert settles(nothing_attached)


@pytest.mark.userland
@pytest.mark.backends(sees=("udp",))
def test_signal_ends_a_run_whose_reader_stopped_reading(backend: Backend, tmp_path: Path) -> None:
    """``socketrace | reader`` whose reader stopped reading: the pipe fills and a write blocks;
    a signal still ends the run (the write is abandoned), and what was not written is counted."""
    stderr_path = tmp_path / "stderr.txt"
    read_end, write_end = os.pipe()
    try:
        with UdpFlood(senders=2, seconds=pace().seconds(READY_STARTS + EXIT_STARTS)), open(stderr_path, "w") as stderr:
            command = [*COMMAND, *backend.args(), "--filter-protocol", "udp"]
            process = subprocess.Popen(command, stdout=write_end, stderr=stderr)
            os.close(write_end)
            write_end = -1
            nearly_full = 48 * 1024  # of the default 64 KiB (partly filled pages keep it from the top)
            full = lambda: _unread(read_end) >= nearly_full or process.poll() is not None  # noqa: E731
            assert settles(full, timeout=pace().seconds(READY_STARTS))
            assert process.poll() is None, stderr_path.read_text()
            time.sleep(1)  # blocked in a write now
            process.send_signal(signal.SIGTERM)
            try:
                returncode = process.wait(timeout=pace().seconds(EXIT_STARTS))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=pace().seconds(EXIT_STARTS))
                stuck = stderr_path.read_text()
                raise AssertionError(f"a stalled pipe kept socketrace from stopping: {stuck}") from None
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)
    result = TraceResult(returncode, [], stderr_path.read_text())
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert re.search(r"\d+ not printed \(the output stopped taking them", result.stderr), result.stderr
    counts = result.accounting()
    outcomes = counts["printed"] + counts["unprinted"] + counts["dropped"] + counts["no_sock"] + counts["filtered"]
    assert counts["runs"] == outcomes + counts["not_tracing"], result.stderr
    assert settles(nothing_attached)


def _unread(read_end: int) -> int:
    """Bytes in a pipe that nobody has read."""
    buffer = array.array("i", [0])
    fcntl.ioctl(read_end, termios.FIONREAD, buffer)
    return buffer[0]


def test_second_signal_while_stopping_does_not_abandon_the_detach(trace, backend: Backend) -> None:
    tracer = trace(*backend.args(), "--filter-port", "9")
    tracer.process.send_signal(signal.SIGINT)
    for _ in range(5):
        time.sleep(0.02)
        if tracer.process.poll() is None:
            tracer.process.send_signal(signal.SIGINT)
    result = tracer.wait()
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert settles(nothing_attached)


@pytest.mark.backends("kprobe")
def test_classic_kprobes_are_removed_in_the_background(trace, backend: Backend) -> None:
    """Ctrl+C gives the prompt back at once; the removal finishes in a child; a new run works meanwhile."""
    port = free_port()
    args = [arg for arg in backend.args() if arg != "--wait-detach"]
    first = trace(*args, "--filter-port", str(port))
    before = len(attached_kprobes())
    assert before > 0
    started = time.monotonic()
    result = first.stop(settle=False)
    prompt_after = time.monotonic() - started
    match = re.search(r"Removing (\d+) kprobes in the background \(pid (\d+)\)", result.stderr)
    assert result.returncode == 0 and match, result.stderr
    remover = int(match.group(2))
    second = trace(*backend.args(), "--filter-port", str(port))  # while the first one's probes are removed
    exchange = tcp_exchange(port)
    removed = settles(lambda: not Path(f"/proc/{remover}").exists(), timeout=pace().seconds(EXIT_STARTS))
    assert removed, "the removal never finished"
    second_result = second.stop()
    assert any(f":{exchange.client_port} -> 127.0.0.1:{port} " in line for line in second_result.lines)
    assert settles(nothing_attached)
    print(f"prompt back {prompt_after:.2f} s after SIGINT with {before} kprobes attached")


@pytest.mark.userland
@pytest.mark.backends(best_only=True)
@pytest.mark.parametrize("summary", [False, True], ids=["lines", "summary"])
def test_full_disk_ends_the_run_with_one_line(trace, backend: Backend, tmp_path: Path, summary: bool) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], check=True, timeout=60)
    try:
        with open(disk / "filler", "wb") as filler, contextlib.suppress(OSError):
            filler.write(b"x" * (64 * 1024))  # the disk is full: not one page is left
        port = free_port()
        output = ["--output-file", str(disk / "events.txt")]
        tracer = trace(*backend.args(), "--filter-port", str(port), *output, *(["--summary"] if summary else []))
        for _ in range(20):
            tcp_exchange(port)
        # Lines fill the disk while tracing; the summary's one table is written at the stop.
        result = tracer.stop() if summary else tracer.wait()
    finally:
        subprocess.run(["umount", str(disk)], check=False, timeout=60)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1, result.stderr
    assert re.fullmatch(r"socketrace: error: writing events to .*events.txt: No space left on device.*", lines[-1])
    assert "Traceback" not in result.stderr
    assert re.search(r"\d+ events (printed|counted), .* probe runs", result.stderr)  # accounted before the error
    assert settles(nothing_attached)


def _zipapp_any_user_can_run() -> Path:
    """dist/socketrace copied where any user can read it: the checkout and its venv may lie where only
    root can (CI clones into a folder of its own choosing, such as one from ``mktemp -d``, mode 0700)."""
    zipapp = ROOT / "dist" / "socketrace"
    require(zipapp.exists(), "dist/socketrace is not built (make dist; make test builds it first)")
    folder = Path(tempfile.mkdtemp(prefix="socketrace-any-user-"))
    folder.chmod(0o755)
    copy = folder / "socketrace"
    shutil.copyfile(zipapp, copy)
    copy.chmod(0o755)
    return copy


@pytest.mark.userland
def test_runtime_errors_are_one_line(tmp_path: Path) -> None:
    """A failure at run time: one line, exit 1, whatever failed."""
    not_btf = tmp_path / "not-btf"
    not_btf.write_bytes(b"\0" * 64)
    as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    zipapp = _zipapp_any_user_can_run()
    cases = [
        ([*COMMAND, "--kernel-btf", str(not_btf)], "cannot read kernel BTF"),
        ([*as_nobody, SYSTEM_PYTHON, str(zipapp)], "tracing needs root"),
    ]
    try:
        for args, message in cases:
            result = subprocess.run(args, capture_output=True, text=True, timeout=pace().seconds(READY_STARTS), cwd="/")
            lines = result.stderr.strip().splitlines()
            assert result.returncode == 1, result.stderr
            assert lines[-1].startswith("socketrace: error: ") and message in lines[-1], result.stderr
            assert "Traceback" not in result.stderr
    finally:
        shutil.rmtree(zipapp.parent)


@pytest.mark.userland
def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    not_btf = tmp_path / "not-btf"
    not_btf.write_bytes(b"\0" * 64)
    result = subprocess.run(
        [*COMMAND, "--kernel-btf", str(not_btf), "--debug"],
        capture_output=True,
        text=True,
        timeout=pace().seconds(READY_STARTS),
    )
    assert result.returncode == 1 and "Traceback" in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("socketrace: error: ")
