"""Attach and detach time of the full function set, per backend, detach serial vs parallel.

Run as root on a kernel with kprobes (the VM harness boots one):

    python -m tests.vm.harness 6.12 -- .venv/bin/python bench/bench_attach.py

Classic kprobes are attached twice in the same run and detached once by closing the perf
events one at a time (the baseline: what BCC's cleanup does) and once from a thread pool;
the result is the ratio. kprobe-multi, where the kernel has it, is timed for comparison.
"""

from __future__ import annotations

import argparse
import logging
import time

from socketrace.attach.kprobe import DETACH_THREADS, KprobeAttacher
from socketrace.attach.kprobe_multi import KprobeMultiAttacher
from socketrace.discovery import discover
from socketrace.features import detect_features
from socketrace.options import AttachWay, Options, parse_regex
from socketrace.program import compile_program, plan_program


def timed(action) -> float:
    started = time.monotonic()
    action()
    return time.monotonic() - started


def bench_kprobes(options: Options, features) -> None:
    plan = plan_program(options, discover(options, with_functions=True), AttachWay.KPROBE, features)
    bpf = compile_program(plan)
    results = {}
    for label, threads in (("serial", 1), ("parallel", DETACH_THREADS)):
        attacher = KprobeAttacher(bpf, AttachWay.KPROBE, detach_threads=threads)
        attach = timed(lambda attacher=attacher: attacher.attach(plan.probes))
        detach = timed(attacher.detach)
        results[label] = detach
        print(f"kprobe: {attacher.report.attached} functions: attach {attach:.1f} s, detach ({label}) {detach:.1f} s")
    print(f"kprobe: parallel detach is {results['serial'] / results['parallel']:.1f}x faster than serial")


def bench_kprobe_multi(options: Options, features) -> None:
    plan = plan_program(options, discover(options, with_functions=True), AttachWay.KPROBE_MULTI, features)
    bpf = compile_program(plan)
    attacher = KprobeMultiAttacher(bpf, AttachWay.KPROBE_MULTI)
    attach = timed(lambda: attacher.attach(plan.probes))
    detach = timed(attacher.detach)
    print(f"kprobe-multi: {attacher.report.attached} functions: attach {attach:.2f} s, detach {detach:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--filter-funcs", help="limit the set (regex), e.g. for a quick run")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    options = Options(filter_funcs=parse_regex(args.filter_funcs) if args.filter_funcs else None)
    features = detect_features()
    if features.kprobe_multi:
        bench_kprobe_multi(options, features)
    if features.kprobes:
        bench_kprobes(options, features)
    else:
        print("this kernel has no kprobes")


if __name__ == "__main__":
    main()
