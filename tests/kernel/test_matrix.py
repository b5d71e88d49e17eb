"""Every flag's program passes this kernel's verifier, on every backend this kernel can load.

No traffic: each combination is compiled by BCC and loaded (the verifier runs)
in this process. The combinations cover every value of every dimension
(filters, IPv4/IPv6 address, --filter-track-sock, extra fields, stack, JSON,
summary, perf buffer, return values and errors) and combine them, all on
together where they may be, so a verifier regression in any of them fails here.
A kernel can load kprobe programs without being able to attach them (this
project's development kernel), so the backends here are the verifiable ones
(less those SOCKETRACE_TEST_WAYS leaves out, in a guest another one covers).
"""

from __future__ import annotations

import pytest

from socketrace.features import verifiable_kinds
from socketrace.program import compile_program

from .conftest import PORT_SETS_EXPRESSION, PREFIX_SETS_EXPRESSION, kernel_ways, narrowed, program_plan

ALL_FILTERS = ["--filter-pid", "1", "--filter-netns", "4026531840", "--filter-mark", "7", "--filter-protocol", "tcp"]
ALL_FILTERS += ["--filter-port", "22", "--filter-addr", "10.0.0.1"]
# --filter with 64 terms: ports (every operator), IPv4 and IPv6 prefixes (IPv4-mapped ones too), states,
# marks, protocol, family, netns and pid under not/and/or, nested: the verifier walks every branch.
LONG_EXPRESSION = " or ".join(
    f"( {group} )"
    for group in (
        "sport = :22 and not dport = :22 and src 10.0.0.0/8 and dst 192.168.0.0/16",
        "sport >= :1024 and dport < :1024 and src ::1/128 and dst 2001:db8::/32",
        "state established state syn-sent dport != :443 and fwmark = 0x10/0xf0 and family inet6",
        "not ( sport = :80 or sport = :8080 or dport = :80 or dport = :8080 ) and protocol tcp and netns 4026531840",
        "exclude listening exclude time-wait src 127.0.0.1:5000 and dst ::ffff:10.1.2.3/120",
        "fwmark = 7 and not fwmark = 0x100/0xf00 and pid 1 and sport <= :65535 and dport > :0",
        "( src fe80::/10 or dst fe80::/10 or src 169.254.0.0/16 ) and not ( state closed or state listening )",
        "protocol udp and ( dport = :53 or sport = :53 ) and not dst 8.8.8.8 and not dst 2001:4860:4860::8888",
        "family inet and src 172.16.0.0/12 and dst 0.0.0.0/0 and sport != :0 and not state time-wait",
        "( dport = :443 or dport = :8443 ) and netns 4026531841 and fwmark = 0x1/0x1",
        "state syn-recv and dst ::/0 and not fwmark = 0 and protocol sctp and sport = :9 and dport = :9",
        "src 10.1.0.0/16 and sport > :1000 and sport < :2000 and dport >= :3000 and dport <= :4000 and pid 4242",
        "dst [2001:db8::1]:443 and src ::/96 and not ( fwmark = 0x2/0x2 or state fin-wait-1 or family unix )",
    )
)
TEN_THOUSAND_PORTS = [arg for port in range(1, 10001) for arg in ("--filter-port", str(port))]
TEN_THOUSAND_PREFIXES = [arg for i in range(10000) for arg in ("--filter-addr", f"10.{i // 100}.{i % 100}.0/24")]
EXTRAS = ["--output-sock-info", "--output-socket-info", "--output-sock-common", "--output-stack"]
EVERY_BACKEND = {
    "defaults": [],
    "filters-track-extras": [*ALL_FILTERS, "--filter-track-sock", *EXTRAS],
    "ipv6-json-perf": ["--filter-addr", "::1", "--output-json", "--perf-buffer"],
    "summary-filters-track": ["--summary", *ALL_FILTERS, "--filter-track-sock"],
    "perf-stack-track": ["--perf-buffer", "--output-stack", "--filter-track-sock", "--timestamp", "delta"],
    "long-expression-filters-json": ["--filter", LONG_EXPRESSION, *ALL_FILTERS, "--output-json"],
    "long-expression-summary-track": ["--filter", LONG_EXPRESSION, "--summary", "--filter-track-sock"],
    "port-ranges-network": ["--filter-port", "22", "--filter-port", "1024-65535", "--filter-addr", "fe80::/10"],
    # Every port set and trie the program declares (the fifth set of the first case stays comparisons),
    # and 10,000-entry lists (the same instructions as short ones: only the maps grow).
    "lookup-sets-json": ["--filter", f"{PORT_SETS_EXPRESSION} and {PREFIX_SETS_EXPRESSION}", "--output-json"],
    "ten-thousand-lists-summary-track": [
        *TEN_THOUSAND_PORTS,
        *TEN_THOUSAND_PREFIXES,
        "--filter-addr",
        "::1/128",
        "--filter",
        PORT_SETS_EXPRESSION,
        "--summary",
        "--filter-track-sock",
    ],
}
KPROBE_MULTI_ONLY = {
    "returns-filters-extras": ["--output-return", *ALL_FILTERS, *EXTRAS],
    "errors-json-track-ipv6": ["--filter-errors", "--output-json", "--filter-track-sock", "--filter-addr", "::1"],
    "returns-summary-filters": ["--output-return", "--summary", *ALL_FILTERS],
    "errors-perf-stack": ["--filter-errors", "--perf-buffer", "--output-stack"],
}


def test_long_expression_has_64_terms() -> None:
    from socketrace.filter_expr import parse_filter

    parse_filter(LONG_EXPRESSION)  # within the bounds
    words = ("sport", "dport", "src", "dst", "fwmark", "state", "exclude", "protocol", "family", "netns", "pid")
    assert sum(LONG_EXPRESSION.split().count(word) for word in words) == 64


def _cases() -> list[tuple[str, str, list[str]]]:
    if not kernel_ways():  # cannot trace here at all: the capability fixture says why
        return [("tracepoint", "defaults", [])]
    cases = []
    for way in narrowed(verifiable_kinds()):
        combos = {**EVERY_BACKEND, **(KPROBE_MULTI_ONLY if way == "kprobe-multi" else {})}
        cases += [(way, name, args) for name, args in combos.items()]
    return cases


@pytest.mark.parametrize(("way", "name", "args"), _cases(), ids=[f"{way}-{name}" for way, name, _ in _cases()])
def test_program_loads(way: str, name: str, args: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOCKETRACE_CACHE_DIR", "off")  # BCC compiles every case: the compiler of record
    plan = program_plan(way, args)
    bpf = compile_program(plan)  # compiles, then loads every entry: the verifier's verdict
    try:
        assert set(bpf.funcs) >= {entry.name.encode() for entry in plan.entries}
    finally:
        bpf.cleanup()
