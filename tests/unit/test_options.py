"""Validation of user input: clean values in, one-line errors and exit status 2 out, before anything is compiled."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from socketrace.cli import HELP_SECTIONS, command, main
from socketrace.options import Filters, OptionError, parse_addr, parse_netns, parse_protocol, parse_regex


def test_addresses_of_both_families() -> None:
    assert parse_addr("10.0.0.1") == ipaddress.IPv4Address("10.0.0.1")
    assert parse_addr("::1") == ipaddress.IPv6Address("::1")
    with pytest.raises(OptionError, match="--filter-addr"):
        parse_addr("10.0.0")


@pytest.mark.parametrize(
    ("text", "number"), [("tcp", 6), ("UDP", 17), ("icmp", 1), ("icmpv6", 58), ("sctp", 132), ("47", 47)]
)
def test_protocols(text: str, number: int) -> None:
    assert parse_protocol(text) == number


def test_netns_by_inode_path_and_name() -> None:
    assert parse_netns("4026531840") == 4026531840
    assert parse_netns("/proc/self/ns/net") == os.stat("/proc/self/ns/net").st_ino
    with pytest.raises(OptionError, match="cannot open /run/netns/no-such-namespace"):
        parse_netns("no-such-namespace")


def test_netns_must_be_a_network_namespace() -> None:
    with pytest.raises(OptionError, match="/etc/hostname is not a namespace file"):
        parse_netns("/etc/hostname")
    with pytest.raises(OptionError, match="is a mount namespace, not a network namespace"):
        parse_netns("/proc/self/ns/mnt")


def test_regex() -> None:
    assert parse_regex("tcp_.*").fullmatch("tcp_sendmsg")
    with pytest.raises(OptionError, match="--filter-funcs"):
        parse_regex("tcp_(")


NO_DIR = "/nonexistent-dir/events.txt"
BAD_INPUTS = [
    ["--filter-port", "70000"],
    ["--filter-port", "-1"],
    ["--filter-port", "http"],
    ["--filter-pid", "-1"],
    ["--filter-pid", "0"],
    ["--filter-pid", "abc"],
    ["--filter-mark", "4294967296"],
    ["--filter-mark", "-3"],
    ["--filter-addr", "1.2.3"],
    ["--filter-addr", "::g"],
    ["--filter-addr", ""],
    ["--filter-addr", "10.0.0.0/33"],
    ["--filter-addr", "::/x"],
    ["--filter-port", "5-3"],
    ["--filter-port", "1-70000"],
    ["--filter-port", "22", "--filter-port", "1-"],
    ["--filter-protocol", "quic"],
    ["--filter-protocol", "70000"],
    ["--filter-netns", "/nonexistent/ns"],
    ["--filter-netns", "/etc/hostname"],
    ["--filter-netns", "/proc/self/ns/mnt"],
    ["--filter-netns", "/proc/self/ns/uts"],
    ["--filter-netns", "0"],
    ["--filter-netns", "99999999999"],
    ["--filter-netns", ""],
    ["--filter-funcs", "tcp_("],
    ["--filter", ""],
    ["--filter", "sport = :22 or"],
    ["--filter", "( dport = :22"],
    ["--filter", "src example.com"],
    ["--filter", "dst 10.0.0.0/33"],
    ["--filter", "sport = :nosuchservice"],
    ["--filter", "sport = 1 or sport = 2 and sport = 3"],
    ["--kprobe-way", "fentry"],
    ["--kmods", "sctp,../x"],
    ["--kmods", ","],
    ["--output-json", "--summary"],
    ["--output-file", NO_DIR],
    ["--output-file", "/"],
    ["--ready-file", "/"],
    ["--ready-file", NO_DIR],
    ["--output-file", "/tmp/same", "--ready-file", "/tmp/same"],
    ["--output-limit-lines", "-1"],
    ["--timestamp", "sometimes"],
    ["--summary-interval", "-1", "--summary"],
    ["--summary-interval", "1"],
    ["--summary-top", "0", "--summary"],
    ["--summary-top", "3"],
    ["--summary", "--output-stack"],
    ["--summary", "--timestamp", "delta"],
    ["--summary", "--output-limit-lines", "5"],
    ["--kprobe-way", "kprobe", "--output-return"],
    ["--kprobe-way", "tracepoint", "--filter-errors"],
    ["--kprobe-way", "tracepoint", "--kmods", "sctp"],
    ["--kprobe-way", "kprobe-multi", "--skb-tracepoints"],
    ["--skb-tracepoints", "--output-return"],
    ["--skb-tracepoints", "--kmods", "sctp"],
    ["--kernel-btf", "/nonexistent/vmlinux"],
    ["--list-funcs", "sockets"],
    ["--no-such-flag"],
    ["extra-argument"],
]


@pytest.mark.parametrize("args", BAD_INPUTS, ids=[" ".join(args) or "empty" for args in BAD_INPUTS])
def test_bad_input_exits_2_with_one_line(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(args) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("socketrace: error: ") and "Traceback" not in captured.err


def test_bad_input_from_the_command_line(tmp_path: Path) -> None:
    """The same through a real process: status 2, one line, and nothing compiled (well under a second)."""
    result = subprocess.run(
        [sys.executable, "-m", "socketrace", "--filter-netns", "/etc/hostname"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and result.stdout == ""
    assert (
        result.stderr
        == "socketrace: error: Invalid value for '--filter-netns': /etc/hostname is not a namespace file\n"
    )


def test_filter_expression_error_names_the_column(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--filter", "dst 10.0.0.0/33"]) == 2
    assert capsys.readouterr().err == (
        "socketrace: error: Invalid value for '--filter': prefix /33 is longer than an IPv4 address (32 bits) "
        "(column 14)\n"
    )


def test_filter_expression_joins_the_flags() -> None:
    from socketrace.cli import build_options, command
    from socketrace.filter_expr import Not, Or, PortTest

    flags = dict(command.make_context("socketrace", ["--filter", "not ( sport = :ssh or dport = :22 )"]).params)
    for cli_only in ("debug", "version"):
        flags.pop(cli_only)
    filters = build_options({**flags, "port": ((80, 80),)}).filters
    assert filters.expr == Not(Or((PortTest("src", "==", 22), PortTest("dst", "==", 22))))
    assert filters.port == 80  # both filter: `and`


def _filters(*args: str) -> Filters:
    from socketrace.cli import build_options, command

    flags = dict(command.make_context("socketrace", list(args)).params)
    for cli_only in ("debug", "version"):
        flags.pop(cli_only)
    return build_options(flags).filters


def test_ports_ranges_and_networks_become_tree_nodes() -> None:
    from socketrace.filter_expr import AddrTest, And, Or, PortTest, StateTest

    assert _filters("--filter-port", "22") == Filters(port=22)  # one port: the fast macro, as before
    assert _filters("--filter-addr", "10.0.0.1/32").addr == ipaddress.IPv4Address("10.0.0.1")
    both = _filters("--filter-port", "22", "--filter-port", "1000-2000", "--filter", "state listening")
    assert both.port is None
    ends = [PortTest(end, "==", 22) for end in ("src", "dst")]
    ranges = [And((PortTest(end, ">=", 1000), PortTest(end, "<=", 2000))) for end in ("src", "dst")]
    assert both.expr == And((Or((ends[0], ends[1], ranges[0], ranges[1])), StateTest(frozenset({10}))))
    network = _filters("--filter-addr", "10.1.2.3/8")
    assert network.addr is None
    assert network.expr == Or(tuple(AddrTest(end, 2, 10 << 24, 8) for end in ("src", "dst")))


def test_help_lists_every_option_once_in_its_section() -> None:
    shown = [param.opts[0] for param in command.params if isinstance(param, click.Option) and not param.hidden] + ["-h"]
    sectioned = [name for _, names in HELP_SECTIONS for name in names]
    assert sorted(sectioned) == sorted(shown)  # each in one section; none forgotten, none stale
    text = CliRunner().invoke(command, ["--help"]).output
    titles = [title for title, _ in HELP_SECTIONS]
    assert [line[:-1] for line in text.splitlines() if line[:-1] in titles] == titles
    assert "Other options" not in text
