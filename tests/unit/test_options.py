"""Validation of user input: clean values in, one-line errors and exit status 2 out."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys

import pytest

from socketrace.options import OptionError, parse_addr, parse_netns, parse_protocol, parse_regex


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


def test_unknown_protocol() -> None:
    with pytest.raises(OptionError, match="--filter-protocol"):
        parse_protocol("quic")


def test_netns_by_inode_path_and_name(tmp_path: os.PathLike) -> None:
    assert parse_netns("4026531840") == 4026531840
    assert parse_netns("/proc/self/ns/net") == os.stat("/proc/self/ns/net").st_ino
    with pytest.raises(OptionError, match="cannot open /run/netns/no-such-namespace"):
        parse_netns("no-such-namespace")
    with pytest.raises(OptionError, match="out of range"):
        parse_netns("99999999999")


def test_regex() -> None:
    assert parse_regex("tcp_.*").fullmatch("tcp_sendmsg")
    with pytest.raises(OptionError, match="--filter-funcs"):
        parse_regex("tcp_(")


@pytest.mark.parametrize(
    "args",
    [
        ["--filter-port", "70000"],
        ["--filter-port", "http"],
        ["--filter-pid", "-1"],
        ["--filter-mark", "4294967296"],
        ["--filter-addr", "1.2.3"],
        ["--filter-protocol", "quic"],
        ["--filter-netns", "/nonexistent/ns"],
        ["--filter-funcs", "tcp_("],
        ["--kprobe-way", "fentry"],
        ["--kmods", "sctp,../x"],
        ["--output-json", "--summary"],
        ["--no-such-flag"],
    ],
)
def test_bad_input_exits_2_with_one_line(args: list[str]) -> None:
    result = subprocess.run([sys.executable, "-m", "socketrace", *args], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("socketrace: error: ")
    assert "Traceback" not in result.stderr
