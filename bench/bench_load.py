"""A traced workload's speed, side by side with its floors, as ratios to the untraced workload.

Run as root (`make bench`; `make bench-vm` in the Debian 6.12 guest). Every round
measures every configuration in turn, so drift of the machine hits all alike:

  untraced            the workload alone (udp_pingpong.c: one 64-byte send + recv per iteration)
  empty program       a program that returns at once, on the same functions and backend: the floor
  filter, no match    socketrace --filter-port 1: every probe runs and rejects its socket
  expression, no match  socketrace --filter with 16 terms (ports, prefixes, mark, state) matching nothing
  port list, no match   socketrace with 10,000 --filter-port values (a hash set) matching nothing
  prefix list, no match socketrace with 10,000 --filter-addr prefixes (an LPM trie) matching nothing
  probes alone        the same, with the tracer stopped (SIGSTOP): the probes without the reader
  emitting            socketrace with no filter, every event written to a file
  summary             socketrace --summary with no filter: counted in the kernel

Reported per configuration: workload speed as a ratio to untraced (min / median / max
over rounds), kernel time per probe run and probe runs per iteration (from
kernel.bpf_stats_enabled, as bpftool shows them), lines written while the load ran;
and once: socketrace's ready time on a first run (nothing cached) and on a repeat run (discovery
and the compiled program from the cache), idle CPU, detach time and kernel memory, and the time
from Ctrl+C to exit while the workload floods a tracer with no filter.

    bench/bench_load.py [--rounds 3] [--seconds 3] [--way kprobe-multi|kprobe|tracepoint] [--stop-only]

``--stop-only`` measures only the stop under load, three times.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).parents[1]
SOCKETRACE = [sys.executable, "-m", "socketrace"]
STATS = Path("/proc/sys/kernel/bpf_stats_enabled")
PROGRAM_NAMES = re.compile(r"rawtp_|kprobe_")  # entry programs (not the tail-call target)
ALL_PROGRAMS = re.compile(r"rawtp_|kprobe_|shared_handler")


@dataclass
class Samples:
    ratios: list[float] = field(default_factory=list)
    ns_per_run: list[float] = field(default_factory=list)
    runs_per_iteration: list[float] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)


# 16 terms the workload's sockets (UDP on 127.0.0.1, no mark) never match: every rejected run
# evaluates the whole expression.
EXPRESSION_16 = " or ".join(
    (
        "sport = :1",
        "dport = :2",
        "( sport >= :3 and sport <= :9 )",
        "( dport > :10 and dport < :20 )",
        "src 10.0.0.0/8",
        "dst 192.0.2.0/24",
        "src 2001:db8::/32",
        "dst fe80::/10",
        "fwmark = 0x77/0xff",
        "state syn-recv",
        "protocol sctp",
        "family unix",
        "netns 1",
        "pid 1",
    )
)

# Ports 20,001-30,000 (the workload's are ephemeral ports the kernel picks from 32768 up): one hash set.
TEN_THOUSAND_PORTS = [arg for port in range(20001, 30001) for arg in ("--filter-port", str(port))]
# 10,000 /24 networks in 10.0.0.0/8 (the workload runs on 127.0.0.1): one LPM trie per end.
TEN_THOUSAND_PREFIXES = [arg for i in range(10000) for arg in ("--filter-addr", f"10.{i // 100}.{i % 100}.0/24")]


def build_workload(work: Path) -> Path:
    binary = work / "udp_pingpong"
    subprocess.run(["cc", "-O2", "-o", str(binary), str(ROOT / "bench" / "udp_pingpong.c")], check=True, timeout=120)
    return binary


def workload(binary: Path, seconds: float) -> float:
    """Iterations per second of the ping-pong."""
    out = subprocess.run([str(binary), str(seconds)], check=True, capture_output=True, text=True, timeout=seconds + 120)
    return int(out.stdout) / seconds


def _programs(names: re.Pattern[str]) -> list[dict]:
    """The loaded BPF programs whose names match, as ``bpftool prog show`` describes them."""
    listing = json.loads(
        subprocess.run(
            ["bpftool", "-j", "prog", "show"], check=True, capture_output=True, text=True, timeout=120
        ).stdout
    )
    return [prog for prog in listing if names.match(prog.get("name", ""))]


def entry_stats() -> tuple[int, int]:
    """(run_cnt, run_time_ns) summed over the loaded entry programs of socketrace (or of the floor)."""
    progs = _programs(PROGRAM_NAMES)
    return sum(prog.get("run_cnt", 0) for prog in progs), sum(prog.get("run_time_ns", 0) for prog in progs)


class Tracer:
    """A socketrace process (or the floor), ready when its ready file appears."""

    def __init__(self, args: list[str], work: Path, output: Path | None = None, cache: Path | None = None) -> None:
        self.ready = work / f"ready-{time.monotonic_ns()}"
        self.log = work / f"log-{time.monotonic_ns()}"
        env = {**os.environ, "SOCKETRACE_CACHE_DIR": str(cache)} if cache else None
        with open(self.log, "w") as log, open(output or os.devnull, "w") as out:
            self.process = subprocess.Popen([*args, "--ready-file", str(self.ready)], stdout=out, stderr=log, env=env)
        deadline = time.monotonic() + 600
        while not self.ready.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{' '.join(args)} did not start: {self.log.read_text()}")
            time.sleep(0.05)

    def stop(self, load: subprocess.Popen | None = None) -> float:
        """Stop with SIGINT (then end ``load`` at once); seconds until the process was gone."""
        started = time.monotonic()
        self.process.send_signal(signal.SIGCONT)
        self.process.send_signal(signal.SIGINT)
        if load is not None:
            load.kill()
        self.process.wait(timeout=600)
        return time.monotonic() - started


def floor_main(way: str) -> None:
    """--floor: the empty program on the same functions, through socketrace's own stages."""
    from socketrace.attach import choose_way, make_attacher
    from socketrace.discovery import discover
    from socketrace.events import set_tracing
    from socketrace.features import detect_features
    from socketrace.options import AttachWay, Options
    from socketrace.program import compile_program, plan_program

    stop = []
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    ready_file = sys.argv[sys.argv.index("--ready-file") + 1]
    features = detect_features()
    chosen = choose_way(AttachWay(way), features)
    kprobes = chosen is not AttachWay.TRACEPOINT
    plan = plan_program(Options(), discover(Options(), kprobes, kprobes), chosen, features, empty_entries=True)
    bpf = compile_program(plan)
    with make_attacher(bpf, plan, wait_detach=True) as attacher:
        attacher.attach()
        set_tracing(bpf, True)
        Path(ready_file).touch()
        while not stop:
            time.sleep(0.1)


def measure(args: argparse.Namespace, work: Path, binary: Path) -> dict[str, Samples]:
    way_args = ["--kprobe-way", args.way] if args.way else []
    floor = [sys.executable, __file__, "--floor", args.way or ""]
    configurations = {
        "empty program (floor)": (floor, False, False),
        "socketrace, filter matching nothing": ([*SOCKETRACE, *way_args, "--filter-port", "1"], False, False),
        "  same, tracer stopped (probes alone)": ([*SOCKETRACE, *way_args, "--filter-port", "1"], True, False),
        "socketrace --filter, 16 terms matching nothing": (
            [*SOCKETRACE, *way_args, "--filter", EXPRESSION_16],
            False,
            False,
        ),
        "socketrace, 10,000 --filter-port values matching nothing": (
            [*SOCKETRACE, *way_args, *TEN_THOUSAND_PORTS],
            False,
            False,
        ),
        "socketrace, 10,000 --filter-addr prefixes matching nothing": (
            [*SOCKETRACE, *way_args, *TEN_THOUSAND_PREFIXES],
            False,
            False,
        ),
        "socketrace, no filter, to a file": ([*SOCKETRACE, *way_args], False, True),
        "socketrace --summary, no filter": ([*SOCKETRACE, *way_args, "--summary"], False, False),
    }
    results = {"untraced": Samples(), **{name: Samples() for name in configurations}}
    for round_ in range(args.rounds):
        baseline = workload(binary, args.seconds)
        results["untraced"].ratios.append(1.0)
        results["untraced"].lines.append(int(baseline))
        for name, (command, stopped, to_file) in configurations.items():
            output = work / "events.txt" if to_file else None
            tracer = Tracer(command, work, output)
            if stopped:
                tracer.process.send_signal(signal.SIGSTOP)
            runs_before, time_before = entry_stats()
            speed = workload(binary, args.seconds)
            runs_after, time_after = entry_stats()
            lines = _lines_in(output) if output else 0
            tracer.stop()
            iterations = speed * args.seconds
            sample = results[name]
            sample.ratios.append(speed / baseline)
            runs = runs_after - runs_before
            sample.ns_per_run.append((time_after - time_before) / runs if runs else 0)
            sample.runs_per_iteration.append(runs / iterations if iterations else 0)
            sample.lines.append(lines)
        print(f"round {round_ + 1}/{args.rounds} done (untraced {baseline:,.0f} iterations/s)", file=sys.stderr)
    return results


def stop_under_load(args: argparse.Namespace, work: Path, binary: Path) -> str:
    """Ctrl+C while the workload runs and every probe run emits (no filter): the buffer is full at
    the stop, and its drain is bounded (run.DRAIN_SECONDS); what it leaves is counted. The load ends
    right after the signal: detaching kprobe-multi from code that runs on another emulated vCPU can
    crash a TCG guest (platform facts), and the buffer is full by then anyway."""
    way_args = ["--kprobe-way", args.way] if args.way else []
    tracer = Tracer([*SOCKETRACE, *way_args], work, work / "flood.txt")
    load = subprocess.Popen([str(binary), "600"], stdout=subprocess.DEVNULL)
    try:
        time.sleep(2)
        seconds = tracer.stop(load)
    finally:
        load.kill()
        load.wait(timeout=60)
    log = tracer.log.read_text().splitlines()
    accounting = next((line for line in log if "events printed" in line), "no accounting line")
    return f"Ctrl+C to exit under load (no filter, the workload running): {seconds:.2f} s; {accounting}"


def once(args: argparse.Namespace, work: Path) -> list[str]:
    """Ready time, idle CPU, detach time and kernel memory of socketrace with a filter."""
    way_args = ["--kprobe-way", args.way] if args.way else []
    cache = work / "cache"  # empty: the first start fills it, the second reads it
    first = Tracer([*SOCKETRACE, *way_args, "--filter-port", "1"], work, cache=cache)
    first.stop()
    tracer = Tracer([*SOCKETRACE, *way_args, "--filter-port", "1"], work, cache=cache)
    first_ready, ready = (re.search(r"Ready ([\d.]+) s after start", t.log.read_text()) for t in (first, tracer))
    ticks = os.sysconf("SC_CLK_TCK")

    def cpu_seconds() -> float:
        fields = Path(f"/proc/{tracer.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / ticks

    before = cpu_seconds()
    time.sleep(3)
    idle = (cpu_seconds() - before) / 3
    maps = {m for p in _programs(ALL_PROGRAMS) for m in p.get("map_ids", [])}
    listing = json.loads(
        subprocess.run(["bpftool", "-j", "map", "show"], capture_output=True, text=True, timeout=120).stdout
    )
    memlock = sum(item.get("bytes_memlock", 0) for item in listing if item["id"] in maps)
    detach = tracer.stop()
    backend = re.search(r"\(via ([\w-]+)\) to (\d+) (functions|raw tracepoints)", tracer.log.read_text())
    return [
        f"backend: {backend.group(1)}, {backend.group(2)} {backend.group(3)}" if backend else "backend: ?",
        f"ready: {first_ready.group(1) if first_ready else '?'} s after exec on a first run (nothing cached), "
        f"{ready.group(1) if ready else '?'} s on a repeat run (discovery and the compiled program cached)",
        f"idle CPU of the tracer: {idle:.3f} CPU",
        f"Ctrl+C to exit: {detach:.2f} s",
        f"kernel memory (maps, memlock): {memlock / 2**20:.2f} MiB",
    ]


def _lines_in(path: Path) -> int:
    """Event lines written so far (the header is not one)."""
    with open(path, "rb") as events:
        return max(0, sum(1 for _ in events) - 1)


def _spread(values: list[float], form: str) -> str:
    if not values:
        return "-"
    return " / ".join(format(value, form) for value in (min(values), statistics.median(values), max(values)))


def report(results: dict[str, Samples], rounds: int) -> str:
    lines = [
        f"| configuration ({rounds} rounds: min / median / max) | speed vs untraced | ns per probe run "
        "| probe runs per iteration | lines written during the load |",
        "|---|---|---|---|---|",
    ]
    for name, sample in results.items():
        if name == "untraced":
            median = statistics.median(sample.lines)
            lines.append(f"| untraced | 1.00 ({median:,.0f} iterations/s) | - | - | - |")
            continue
        written = _spread(sample.lines, ",.0f") if any(sample.lines) else "-"
        lines.append(
            f"| {name} | {_spread(sample.ratios, '.2f')} | {_spread(sample.ns_per_run, '.0f')} "
            f"| {_spread(sample.runs_per_iteration, '.1f')} | {written} |"
        )
    return "\n".join(lines)


def main() -> None:
    if "--floor" in sys.argv:
        floor_main(sys.argv[sys.argv.index("--floor") + 1])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0, help="workload length per measurement")
    parser.add_argument("--way", default="", help="force a backend (default: socketrace's choice)")
    parser.add_argument("--stop-only", action="store_true", help="only Ctrl+C under load, three times")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_load.py needs root")
    stats_before = STATS.read_text().strip()
    STATS.write_text("1")
    try:
        with tempfile.TemporaryDirectory(prefix="socketrace-bench-") as tmp:
            work = Path(tmp)
            binary = build_workload(work)
            if args.stop_only:
                print("\n".join(f"- {stop_under_load(args, work, binary)}" for _ in range(3)))
                return
            results = measure(args, work, binary)
            extra = [*once(args, work), stop_under_load(args, work, binary)]
    finally:
        STATS.write_text(stats_before)
    print(report(results, args.rounds))
    print("\n".join(f"- {line}" for line in extra))


if __name__ == "__main__":
    main()
