"""Formatted table lines per second from raw records, socketrace's way vs the per-event baseline.

The baseline is how BCC's tools print: decode each record into a ctypes struct,
format it from scratch, write and flush it. socketrace formats a poll's batch
with its text caches (the task and function, the socket) and writes it in one
call. Both run side by side in one process on the same synthetic records (a
realistic mix: 64 sockets, 8 tasks, 20 functions); best of 3 runs each.

    .venv/bin/python bench/bench_output.py [--events N] [--batch N]
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import random
import time
from collections.abc import Callable

from socketrace.contract import Event
from socketrace.events import BATCH
from socketrace.options import OutputSpec, Timestamp
from socketrace.output.clock import EventClock
from socketrace.output.json import JsonFormatter
from socketrace.output.text import TextFormatter
from socketrace.symbols import ProbeTable, family_name, protocol_name

NAMES = [f"func_{index}" for index in range(20)]


def synthetic_records(count: int) -> list[bytes]:
    rng = random.Random(1)
    sockets = [(0xFFFF888000000000 + index * 0x800, 40000 + index) for index in range(64)]
    records = []
    for _ in range(count):
        sk, port = rng.choice(sockets)
        tgid = 1000 + rng.randrange(8)
        event = Event(cpu=rng.randrange(2), tgid=tgid, pid=tgid, comm=b"bench", netns=4026531840, family=2, protocol=6)
        event.probe_id, event.sk, event.state = rng.randrange(len(NAMES)), sk, 1
        event.sport, event.dport, event.ts_ns = port, 5201, time.monotonic_ns()
        event.saddr[:4] = list(ipaddress.IPv4Address("127.0.0.1").packed)
        event.daddr[:4] = list(ipaddress.IPv4Address("127.0.0.2").packed)
        records.append(bytes(event))
    return records


def per_event(records: list[bytes], sink, names: list[str]) -> None:
    """BCC tools' way: a ctypes struct per record, formatted from scratch, written and flushed."""
    for raw in records:
        event = Event.from_buffer_copy(raw)
        local = ipaddress.IPv4Address(bytes(event.saddr[:4]))
        remote = ipaddress.IPv4Address(bytes(event.daddr[:4]))
        process = f"{event.tgid}({event.comm.decode()})"
        protocol = protocol_name(event.family, event.protocol)
        sink.write(
            f"{event.cpu:<3} {process:<32} {names[event.probe_id]:<32} {local}:{event.sport} -> {remote}:{event.dport}"
            f" netns={event.netns} family={family_name(event.family)} protocol={protocol} sk=0x{event.sk:x}\n"
        )
        sink.flush()


def batched(records: list[bytes], sink, format_batch: Callable[[list[bytes]], str], batch: int) -> None:
    for start in range(0, len(records), batch):
        sink.write(format_batch(records[start : start + batch]))
        sink.flush()


def measure(run: Callable[[], None], events: int, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return events / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=BATCH, help="records per poll")
    args = parser.parse_args()
    records = synthetic_records(args.events)
    probes = ProbeTable(NAMES)
    with open(os.devnull, "w") as sink:
        baseline = measure(lambda: per_event(records, sink, NAMES), args.events)
        table = measure(
            lambda: batched(records, sink, TextFormatter(OutputSpec(), probes).format_batch, args.batch), args.events
        )
        json_lines = measure(
            lambda: batched(
                records, sink, JsonFormatter(probes, EventClock(Timestamp.NONE), None).format_batch, args.batch
            ),
            args.events,
        )
    print(f"per-event baseline (BCC tools' way): {baseline:10,.0f} lines/s")
    print(f"socketrace table, batched + cached:    {table:10,.0f} lines/s  ({table / baseline:.1f}x)")
    print(f"socketrace JSON lines, batched:         {json_lines:10,.0f} lines/s  ({json_lines / baseline:.1f}x)")


if __name__ == "__main__":
    main()
