"""Events per second through decoding and formatting, batched vs the per-event baseline.

The baseline is how BCC's tools print: decode, format, write and flush each event as it
arrives. socketrace decodes a poll's worth of records and writes them in one call.
Both run side by side in one process on the same synthetic records; the result is a ratio.

    .venv/bin/python bench/bench_output.py [--events N] [--batch N]
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import time
from collections.abc import Callable

from socketrace.events import Event, decode_record
from socketrace.options import OutputSpec
from socketrace.output.text import TextFormatter
from socketrace.symbols import ProbeNames

NAMES = ["tcp_sendmsg", "tcp_recvmsg", "inet_sock_set_state"]


def synthetic_records(count: int) -> list[bytes]:
    records = []
    for index in range(count):
        event = Event(cpu=index % 2, tgid=1000 + index % 7, comm=b"bench", netns=4026531840, family=2, protocol=6)
        event.probe_id = index % len(NAMES)
        event.sport, event.dport = 40000 + index % 1000, 5201
        event.saddr[:4] = list(ipaddress.IPv4Address("127.0.0.1").packed)
        event.daddr[:4] = list(ipaddress.IPv4Address("127.0.0.2").packed)
        records.append(bytes(event))
    return records


def per_event(records: list[bytes], formatter: TextFormatter, sink) -> None:
    for raw in records:
        sink.write(formatter.format(decode_record(raw)) + "\n")
        sink.flush()


def batched(records: list[bytes], formatter: TextFormatter, sink, batch: int) -> None:
    for start in range(0, len(records), batch):
        chunk = [decode_record(raw) for raw in records[start : start + batch]]
        sink.write("".join(formatter.format(record) + "\n" for record in chunk))
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
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=256, help="records per poll")
    args = parser.parse_args()
    records = synthetic_records(args.events)
    formatter = TextFormatter(OutputSpec(), ProbeNames(NAMES).name_of)
    with open(os.devnull, "w") as sink:
        baseline = measure(lambda: per_event(records, formatter, sink), args.events)
        ours = measure(lambda: batched(records, formatter, sink, args.batch), args.events)
    print(f"per-event baseline: {baseline:10.0f} events/s")
    print(f"batched (ours):     {ours:10.0f} events/s")
    print(f"ratio:              {ours / baseline:10.2f}x")


if __name__ == "__main__":
    main()
