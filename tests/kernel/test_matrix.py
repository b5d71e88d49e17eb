"""Every flag's program passes this kernel's verifier, on every backend this kernel can load.

No traffic: each combination is compiled by BCC and loaded (the verifier runs)
in this process. The combinations cover every value of every dimension
(filters, IPv4/IPv6 address, --filter-track-sock, extra fields, stack, JSON,
summary, perf buffer, return values and errors) and combine them, all on
together where they may be, so a verifier regression in any of them fails here.
A kernel can load kprobe programs without being able to attach them (this
project's development kernel), so the backends here are the verifiable ones.
"""

from __future__ import annotations

import dataclasses
import re

import pytest

from socketrace.cli import build_options, command
from socketrace.discovery import discover
from socketrace.features import detect_features, verifiable_kinds
from socketrace.options import AttachWay
from socketrace.program import compile_program, plan_program

from .conftest import KPROBE_SET, kernel_ways

ALL_FILTERS = ["--filter-pid", "1", "--filter-netns", "4026531840", "--filter-mark", "7", "--filter-protocol", "tcp"]
ALL_FILTERS += ["--filter-port", "22", "--filter-addr", "10.0.0.1"]
EXTRAS = ["--output-sock-info", "--output-socket-info", "--output-sock-common", "--output-stack"]
EVERY_BACKEND = {
    "defaults": [],
    "filters-track-extras": [*ALL_FILTERS, "--filter-track-sock", *EXTRAS],
    "ipv6-json-perf": ["--filter-addr", "::1", "--output-json", "--perf-buffer"],
    "summary-filters-track": ["--summary", *ALL_FILTERS, "--filter-track-sock"],
    "perf-stack-track": ["--perf-buffer", "--output-stack", "--filter-track-sock", "--timestamp", "delta"],
}
KPROBE_MULTI_ONLY = {
    "returns-filters-extras": ["--output-return", *ALL_FILTERS, *EXTRAS],
    "errors-json-track-ipv6": ["--filter-errors", "--output-json", "--filter-track-sock", "--filter-addr", "::1"],
    "returns-summary-filters": ["--output-return", "--summary", *ALL_FILTERS],
    "errors-perf-stack": ["--filter-errors", "--perf-buffer", "--output-stack"],
}


def _cases() -> list[tuple[str, str, list[str]]]:
    if not kernel_ways():  # cannot trace here at all: the capability fixture says why
        return [("tracepoint", "defaults", [])]
    cases = []
    for way in verifiable_kinds():
        combos = {**EVERY_BACKEND, **(KPROBE_MULTI_ONLY if way == "kprobe-multi" else {})}
        cases += [(way, name, args) for name, args in combos.items()]
    return cases


@pytest.mark.parametrize(("way", "name", "args"), _cases(), ids=[f"{way}-{name}" for way, name, _ in _cases()])
def test_program_loads(way: str, name: str, args: list[str]) -> None:
    flags = dict(command.make_context("socketrace", ["--kprobe-way", way, *args]).params)
    for cli_only in ("debug", "version"):
        flags.pop(cli_only)
    if way != "tracepoint":
        flags["filter_funcs"] = re.compile(KPROBE_SET)
    options = build_options(flags)
    # As if the kernel could attach this backend: loading is what is tested.
    kernel = dataclasses.replace(
        detect_features(), kprobes=True, kprobe_multi=way == "kprobe-multi", bcc_kprobe_multi=True
    )
    kprobes = way != "tracepoint"
    discovery = discover(options, with_functions=kprobes, with_registers=kprobes)
    # Any address does for classic kprobes' --filter-track-sock: the verifier does not look at it.
    plan = plan_program(options, discovery, AttachWay(way), kernel, sock_free_ip=0xFFFFFFFF81000000)
    bpf = compile_program(plan)  # compiles, then loads every entry: the verifier's verdict
    try:
        assert set(bpf.funcs) >= {entry.name.encode() for entry in plan.entries}
    finally:
        bpf.cleanup()
