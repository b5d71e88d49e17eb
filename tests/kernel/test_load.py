"""Per backend, under load: every probe run accounted for, memory bounded, kernel memory small.

The numbers these tests measure (lines per second, the accounting line, RSS
growth) are printed; ``pytest -s`` shows them.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import EXIT_STARTS, Backend, free_port, nothing_attached, pace, settles, socketrace_programs
from .traffic import UdpFlood, short_lived_udp_sockets

STATS = Path("/proc/sys/kernel/bpf_stats_enabled")
SOCKETS = 100_000


@pytest.fixture
def bpf_stats() -> Iterator[None]:
    """kernel.bpf_stats_enabled=1 for the test: the kernel counts each program's runs."""
    before = STATS.read_text().strip()
    STATS.write_text("1")
    try:
        yield
    finally:
        STATS.write_text(before)


def _runs_seen_by_bpftool() -> int:
    """The run counts bpftool shows for socketrace's entry programs (not the tail-call target)."""
    return sum(prog.get("run_cnt", 0) for prog in socketrace_programs() if prog.get("name") != "shared_handler")


@pytest.mark.backends(sees=("udp",))
def test_overload_accounts_for_every_probe_run(trace, backend: Backend, bpf_stats: None) -> None:
    """Several senders, no filter: whatever is dropped is counted by cause, and printed + dropped +
    without a socket + filtered + not tracing equals the kernel's own count of runs."""
    tracer = trace(*backend.args())
    memlock = _memlock_of_socketrace_maps()
    started = time.monotonic()
    with UdpFlood(senders=3, seconds=pace().seconds(EXIT_STARTS)):
        time.sleep(5)  # the load's length, not a wait: the rate below is per second of it
    loaded = time.monotonic() - started
    seen_by_bpftool = _runs_seen_by_bpftool()
    result = tracer.stop()
    counts = result.accounting()
    outcomes = counts["printed"] + counts.get("unprinted", 0) + counts["dropped"] + counts["no_sock"]
    outcomes += counts["filtered"] + counts["not_tracing"]
    assert counts["runs"] == outcomes == counts["kernel"], result.stderr
    assert counts["printed"] == len(result.lines)
    assert seen_by_bpftool <= counts["kernel"]  # bpftool's view while tracing, before the last runs
    assert settles(nothing_attached)
    accounting = next(line for line in result.stderr.splitlines() if "events printed" in line)
    print(f"\n{backend.way}: {counts['printed'] / loaded:.0f} lines/s over {loaded:.1f} s of load; {accounting}")
    print(f"{backend.way}: {memlock / 2**20:.2f} MiB of maps at defaults")
    assert 0 < memlock <= 8 * 2**20  # the README's promise: a 4 MiB ring buffer and small tables


def _rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmRSS:\s+(\d+) kB$", status, re.M).group(1))


@pytest.mark.userland
@pytest.mark.backends(sees=("udp",))
@pytest.mark.parametrize("mode", [["--timestamp", "delta"], ["--summary"]], ids=["delta", "summary"])
def test_memory_is_bounded_over_many_short_lived_sockets(trace, backend: Backend, mode: list[str]) -> None:
    """Per-socket state (delta times, cached text; the summary's kernel tables) has a bound."""
    port = free_port()
    tracer = trace(*backend.args(backend.sees("udp")[0]), "--filter-port", str(port), *mode)
    short_lived_udp_sockets(SOCKETS // 10, port)
    tracer.caught_up()
    warm = _rss_kib(tracer.process.pid)
    short_lived_udp_sockets(SOCKETS - SOCKETS // 10, port)
    tracer.caught_up()
    end = _rss_kib(tracer.process.pid)
    memlock = _memlock_of_socketrace_maps()
    result = tracer.stop()
    assert result.returncode == 0, result.stderr
    growth = (end - warm) / 1024
    print(f"\n{backend.way} {' '.join(mode)}: RSS {warm / 1024:.1f} -> {end / 1024:.1f} MiB over {SOCKETS} sockets")
    print(f"{backend.way} {' '.join(mode)}: {memlock / 2**20:.2f} MiB of maps")
    assert growth < 24, f"RSS grew {growth:.1f} MiB"
    assert 0 < memlock <= 8 * 2**20


def _memlock_of_socketrace_maps() -> int:
    maps = {map_id for prog in socketrace_programs() for map_id in prog.get("map_ids", [])}
    listing = json.loads(
        subprocess.run(["bpftool", "-j", "map", "show"], check=True, capture_output=True, text=True, timeout=120).stdout
    )
    return sum(item.get("bytes_memlock", 0) for item in listing if item["id"] in maps)
