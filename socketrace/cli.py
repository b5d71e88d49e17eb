"""The ``socketrace`` command: flags in, :class:`~socketrace.options.Options` out, errors as one line.

Bad input ends with one line on stderr and exit status 2; a failure at run
time with one line and exit status 1, after everything attached is detached.
Neither shows a traceback unless ``--debug`` (or ``SOCKETRACE_DEBUG=1``) asks.

Each option's destination is the name of the field it fills in
:class:`Filters`, :class:`OutputSpec` or :class:`Options`, so a new flag is
an option here and a field there.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import os
import platform
import sys
import traceback
from collections.abc import Callable
from typing import Any

import click

from . import __version__
from .filter_expr import AddrTest, And, Node, Or, PortTest, parse_filter
from .options import (
    AttachWay,
    Filters,
    OptionError,
    Options,
    OutputSpec,
    Timestamp,
    check_readable,
    check_writable,
    parse_host,
    parse_kmods,
    parse_netns,
    parse_port_range,
    parse_protocol,
    parse_regex,
    validate,
)
from .symbols import AF_INET, AF_INET6

__all__ = ["main"]

EXIT_RUNTIME_ERROR = 1
EXIT_USAGE_ERROR = 2
U32 = click.IntRange(0, 0xFFFF_FFFF)


class Parsed(click.ParamType):
    """A click type that validates with one of options.py's parsers (their errors name the flag)."""

    def __init__(self, name: str, parse: Callable[[str], Any]) -> None:
        self.name = name
        self._parse = parse

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value  # already converted (a default)
        try:
            return self._parse(value)
        except OptionError as err:
            message = str(err)  # click names the flag itself
            raise click.BadParameter(message.split(": ", 1)[-1] if message.startswith("--") else message) from None


def _path(flag: str, check: Callable[[str, str], str]) -> Parsed:
    return Parsed("path", lambda value: check(flag, value))


def _choice(enum: type) -> Parsed:
    values = [member.value for member in enum]

    def parse(value: str) -> Any:
        if value not in values:
            raise OptionError(f"{value!r} is not one of {', '.join(repr(v) for v in values)}")
        return enum(value)

    return Parsed("choice", parse)


# --help in sections, by what an option is about; each visible option in exactly one (a unit test checks).
HELP_SECTIONS = (
    (
        "Filters (in the kernel; all that are given must hold)",
        (
            "--filter",
            "--filter-port",
            "--filter-addr",
            "--filter-protocol",
            "--filter-pid",
            "--filter-netns",
            "--filter-mark",
            "--filter-funcs",
            "--filter-track-sock",
            "--filter-errors",
        ),
    ),
    (
        "Output",
        (
            "--output-file",
            "--output-json",
            "--output-limit-lines",
            "--output-sock-common",
            "--output-sock-info",
            "--output-socket-info",
            "--output-stack",
            "--output-return",
            "--timestamp",
        ),
    ),
    (
        "Summary (counted in the kernel, printed on exit or every interval)",
        ("--summary", "--summary-interval", "--summary-top"),
    ),
    (
        "Probes and backend",
        (
            "--kprobe-way",
            "--kmods",
            "--all-kmods",
            "--skb-tracepoints",
            "--kernel-btf",
            "--list-funcs",
            "--wait-detach",
        ),
    ),
    ("General", ("--ready-file", "--debug", "--version", "-h")),
)


class SectionedCommand(click.Command):
    """A command whose --help lists its options in HELP_SECTIONS instead of one flat list."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # By any of an option's names: click's help option lists its own in an order of its choosing.
        records = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is not None:
                records[next((name for name in param.opts if name in _SECTIONED), param.opts[0])] = record
        for title, names in HELP_SECTIONS:
            with formatter.section(title):
                formatter.write_dl([records.pop(name) for name in names if name in records])
        if records:  # an option added without a section still shows
            with formatter.section("Other options"):
                formatter.write_dl(list(records.values()))


_SECTIONED = frozenset(name for _, names in HELP_SECTIONS for name in names)


@click.command(cls=SectionedCommand, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--filter-pid", "pid", type=click.IntRange(1, 0x3FFFFFFF), help="Process id (thread group id).")
@click.option(
    "--filter-netns",
    "netns",
    type=Parsed("netns", parse_netns),
    metavar="INODE|PATH|NAME",
    help="Network namespace: inode, /proc/PID/ns/net, or a name in /run/netns.",
)
@click.option("--filter-mark", "mark", type=U32, help="Socket mark (sk_mark).")
@click.option(
    "--filter-protocol",
    "protocol",
    type=Parsed("protocol", parse_protocol),
    metavar="PROTO",
    help="tcp, udp, icmp, icmpv6, sctp, udplite, mptcp, or a number.",
)
@click.option(
    "--filter-addr",
    "addr",
    type=Parsed("addr", parse_host),
    multiple=True,
    metavar="ADDR[/PREFIX]",
    help="Local or remote IPv4 or IPv6 address or network; repeated: any of them.",
)
@click.option(
    "--filter-port",
    "port",
    type=Parsed("port", parse_port_range),
    multiple=True,
    metavar="PORT|A-B",
    help="Local or remote TCP/UDP port or range; repeated: any of them.",
)
@click.option(
    "--filter",
    "expr",
    type=Parsed("expression", parse_filter),
    metavar="EXPR",
    help="An ss(8)-style filter expression, e.g. 'not ( sport = :22 or dport = :22 )' (README: Filter expressions).",
)
@click.option(
    "--filter-funcs",
    "filter_funcs",
    type=Parsed("regex", parse_regex),
    metavar="REGEX",
    help="Trace functions whose whole name matches (Python regex).",
)
@click.option(
    "--filter-track-sock",
    "track_sock",
    is_flag=True,
    help="Once a socket passes the filters, follow it everywhere until the kernel frees it.",
)
@click.option(
    "--filter-errors", "errors_only", is_flag=True, help="Only calls that returned an error (implies --output-return)."
)
@click.option(
    "--kprobe-way",
    "attach_way",
    type=_choice(AttachWay),
    default="",
    show_default="auto",
    help="kprobe-multi, kprobe or tracepoint; empty picks the best the kernel has.",
)
@click.option("--output-file", "file", type=_path("--output-file", check_writable), help="Write events to FILE.")
@click.option("--output-limit-lines", "limit_lines", type=click.IntRange(0), default=0, help="Stop after N events.")
@click.option("--output-sock-common", "sock_common", is_flag=True, help="Add state, reuseport, bound interface.")
@click.option("--output-sock-info", "sock_info", is_flag=True, help="Add rx interface, backlog, buffers, mark, type.")
@click.option("--output-socket-info", "socket_info", is_flag=True, help="Add the struct socket's state, type, flags.")
@click.option("--output-stack", "stack", is_flag=True, help="Add the kernel stack of each event.")
@click.option("--output-json", "json", is_flag=True, help="One JSON object per line, every field always present.")
@click.option(
    "--output-return",
    "return_values",
    is_flag=True,
    help="Print each call when it returns, with its return value and duration (kprobe-multi).",
)
@click.option(
    "--timestamp",
    "timestamp",
    type=_choice(Timestamp),
    default="none",
    show_default=True,
    help="TIME column: absolute, relative (since start), or delta (since the same socket's previous event).",
)
@click.option("--summary", "summary", is_flag=True, help="Counts per function, socket and process instead of events.")
@click.option(
    "--summary-interval", type=click.FloatRange(0), default=0, metavar="SECONDS", help="With --summary: every N s."
)
@click.option("--summary-top", type=click.IntRange(1), default=10, show_default=True, help="Rows per summary table.")
@click.option(
    "--ready-file", type=_path("--ready-file", check_writable), help="Create PATH once everything is attached."
)
@click.option(
    "--wait-detach",
    is_flag=True,
    help="Remove classic kprobes before exiting (by default they are removed in the background).",
)
@click.option(
    "--list-funcs",
    type=click.Choice(["sock", "socket", "tracepoint"]),
    help="List traceable functions (or raw tracepoints) by socket argument position, then exit.",
)
@click.option(
    "--kmods",
    type=Parsed("modules", parse_kmods),
    metavar="NAME,...",
    help="Also trace functions of these kernel modules (from their BTF).",
)
@click.option("--all-kmods", is_flag=True, help="Also trace functions of every loaded module that has BTF.")
@click.option(
    "--kernel-btf",
    type=_path("--kernel-btf", check_readable),
    help="Raw BTF file or vmlinux ELF to read kernel types from (default: the running kernel's).",
)
@click.option("--skb-tracepoints", is_flag=True, help="Also trace raw tracepoints that take a struct sk_buff *.")
@click.option("--debug", is_flag=True, help="Show tracebacks and compiler or verifier logs of errors.")
@click.option("--ebpf", "dump_program", is_flag=True, hidden=True, help="Print the BPF program and its macros.")
@click.option("--perf-buffer", is_flag=True, hidden=True, help="Use the perf buffer even where ring buffers exist.")
@click.option("--version", is_flag=True, help="Print the versions of socketrace, Python, BCC and the kernel; exit.")
def command(**flags: Any) -> None:
    """Trace the kernel functions that handle sockets, filtered in the kernel."""
    flags.pop("debug")
    if flags.pop("version"):
        click.echo(version_report())
        return
    from .run import run  # BCC and the kernel stages are loaded only to trace

    sys.exit(run(build_options(flags), sys.stdout))


def build_options(flags: dict[str, Any]) -> Options:
    """Flags (named as the fields they fill) into validated Options."""
    for name, default in (("kmods", ()), ("kernel_btf", Options.kernel_btf)):
        if flags.get(name) is None:
            flags[name] = default

    def take(kind: type) -> dict[str, Any]:
        return {name.name: flags.pop(name.name) for name in dataclasses.fields(kind) if name.name in flags}

    _flags_to_tree(flags)
    filters = Filters(**take(Filters))
    output = OutputSpec(**take(OutputSpec))
    return validate(Options(filters=filters, output=output, **flags))


def _flags_to_tree(flags: dict[str, Any]) -> None:
    """Several --filter-port values, a port range, several --filter-addr values or a network: nodes of the
    --filter tree, `and`ed with it. One port or one address keeps its own fast macro (FILTER_PORT, FILTER_ADDR*)."""
    nodes: list[Node] = []
    ports = flags.get("port")
    if isinstance(ports, int):
        ports = ((ports, ports),)
    if ports is not None:
        ranges = tuple(dict.fromkeys(ports))
        flags["port"] = ranges[0][0] if len(ranges) == 1 and ranges[0][0] == ranges[0][1] else None
        if ranges and flags["port"] is None:
            nodes.append(Or(tuple(_port_range(end, low, high) for low, high in ranges for end in ("src", "dst"))))
    addrs = flags.get("addr")
    if addrs is not None and not isinstance(addrs, tuple):
        addrs = (addrs,)
    if addrs is not None:
        unique = tuple(dict.fromkeys(addrs))
        plain = len(unique) == 1 and isinstance(unique[0], (ipaddress.IPv4Address, ipaddress.IPv6Address))
        flags["addr"] = unique[0] if plain else None
        if unique and not plain:
            networks = [ipaddress.ip_network(addr) for addr in unique]
            nodes.append(Or(tuple(_addr_test(end, network) for network in networks for end in ("src", "dst"))))
    if nodes:
        expr = flags.get("expr")
        flags["expr"] = nodes[0] if len(nodes) == 1 and expr is None else And((*nodes, *([expr] if expr else [])))


def _addr_test(end: str, network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> Node:
    family = AF_INET if network.version == 4 else AF_INET6
    return AddrTest(end, family, int(network.network_address), network.prefixlen)


def _port_range(end: str, low: int, high: int) -> Node:
    if low == high:
        return PortTest(end, "==", low)
    return And((PortTest(end, ">=", low), PortTest(end, "<=", high)))


def version_report() -> str:
    """What a bug report needs: socketrace, Python, BCC, the kernel, the backends it offers."""
    lines = [f"socketrace {__version__}", f"Python {platform.python_version()} ({sys.executable})"]
    try:
        import bcc

        lines.append(f"BCC {getattr(bcc, '__version__', 'unknown')} ({os.path.dirname(bcc.__file__)})")
    except ImportError:
        lines.append("BCC not importable: install python3-bpfcc (see README, Installing)")
    lines.append(f"kernel {platform.release()} {platform.machine()}")
    if os.geteuid() != 0:
        lines.append("backends: unknown (run as root to probe the kernel)")
    else:
        from .attach import available_ways
        from .features import detect_features

        features = detect_features()
        ways = ", ".join(way.value for way in available_ways(features))
        lines.append(f"backends: {ways}; ring buffer: {'yes' if features.ring_buffer else 'no (perf buffer)'}")
    return "\n".join(lines)


def _debugging(argv: list[str]) -> bool:
    return "--debug" in argv or os.environ.get("SOCKETRACE_DEBUG") == "1"


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns the exit status. Signals are handled by socketrace.entry."""
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(
        level=logging.DEBUG if _debugging(argv) else logging.INFO,
        format="%(asctime)s %(message)s",
        datefmt="%Y/%m/%d %H:%M:%S",
        stream=sys.stderr,
    )
    from .errors import RUNTIME_ERRORS, describe

    try:
        result = command.main(args=argv, prog_name="socketrace", standalone_mode=False)
    except (click.UsageError, OptionError) as err:
        message = err.format_message() if isinstance(err, click.UsageError) else str(err)
        click.echo(f"socketrace: error: {message}", err=True)
        return EXIT_USAGE_ERROR
    except click.Abort:
        return EXIT_RUNTIME_ERROR
    except SystemExit as exit_:
        return int(exit_.code or 0)
    except RUNTIME_ERRORS as err:
        if _debugging(argv):
            traceback.print_exc()
            log = getattr(err, "log", "")
            if log:
                sys.stderr.write(log)
        click.echo(f"socketrace: error: {describe(err)}", err=True)
        return EXIT_RUNTIME_ERROR
    return int(result or 0)
