"""The ``socketrace`` command: flags in, :class:`~socketrace.options.Options` out.

Bad input ends with one line on stderr and exit status 2; a failure at run
time with one line and exit status 1. Neither shows a traceback.
"""

from __future__ import annotations

import logging
import sys

import click

from .attach import AttachError
from .discovery import DiscoveryError
from .options import (
    AttachWay,
    Filters,
    OptionError,
    Options,
    OutputSpec,
    Timestamp,
    parse_addr,
    parse_kmods,
    parse_netns,
    parse_protocol,
    parse_regex,
)
from .program import ProgramError
from .run import RunError, StopRequested, run, stop_on_signals

__all__ = ["main"]

EXIT_RUNTIME_ERROR = 1
EXIT_USAGE_ERROR = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it

U32 = click.IntRange(0, 0xFFFF_FFFF)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--filter-pid", type=click.IntRange(1, 0x3FFFFFFF), help="Process id (thread group id).")
@click.option(
    "--filter-netns",
    metavar="INODE|PATH|NAME",
    help="Network namespace: inode, /proc/PID/ns/net, or a name in /run/netns.",
)
@click.option("--filter-mark", type=U32, help="Socket mark (sk_mark).")
@click.option("--filter-protocol", metavar="PROTO", help="tcp, udp, icmp, icmpv6, sctp, udplite, mptcp, or a number.")
@click.option("--filter-addr", metavar="ADDR", help="Local or remote IPv4 or IPv6 address.")
@click.option("--filter-port", type=click.IntRange(0, 65535), help="Local or remote TCP/UDP port.")
@click.option("--filter-funcs", metavar="REGEX", help="Trace functions whose whole name matches (Python regex).")
@click.option(
    "--filter-track-sock",
    is_flag=True,
    help="Once a socket passes the filters, follow it everywhere until the kernel frees it.",
)
@click.option(
    "--kprobe-way",
    type=click.Choice([way.value for way in AttachWay]),
    default="",
    show_default="auto",
    help="kprobe-multi, kprobe or tracepoint; empty picks the best the kernel has.",
)
@click.option("--output-file", metavar="FILE", help="Write events to FILE instead of stdout.")
@click.option("--output-limit-lines", type=click.IntRange(0), default=0, help="Stop after N events (0: no limit).")
@click.option("--output-sock-common", is_flag=True, help="Add state, reuseport, bound interface.")
@click.option("--output-sock-info", is_flag=True, help="Add rx interface, backlog, buffers, priority, mark, type.")
@click.option("--output-socket-info", is_flag=True, help="Add the struct socket's state, type, flags, inode.")
@click.option("--output-stack", is_flag=True, help="Add the kernel stack of each event.")
@click.option("--output-json", is_flag=True, help="One JSON object per line, every field always present.")
@click.option(
    "--timestamp",
    type=click.Choice([mode.value for mode in Timestamp]),
    default="none",
    show_default=True,
    help="TIME column: wall clock, seconds since start, or delta since the same socket's previous event.",
)
@click.option("--summary", is_flag=True, help="Print counts per function, socket and process instead of events.")
@click.option(
    "--summary-interval", type=click.FloatRange(0), default=0, metavar="SECONDS", help="With --summary: every N s."
)
@click.option("--summary-top", type=click.IntRange(1), default=10, show_default=True, help="Rows per summary table.")
@click.option("--ready-file", metavar="PATH", help="Create PATH once everything is attached.")
@click.option(
    "--output-return", is_flag=True, help="Print each call when it returns, with its return value and duration."
)
@click.option(
    "--filter-errors", is_flag=True, help="Only calls that returned a negative errno (implies --output-return)."
)
@click.option(
    "--list-funcs",
    type=click.Choice(["sock", "socket", "tracepoint"]),
    help="List traceable functions (or raw tracepoints) by socket argument position, then exit.",
)
@click.option("--kmods", metavar="NAME,...", help="Also trace functions of these kernel modules (from their BTF).")
@click.option("--all-kmods", is_flag=True, help="Also trace functions of every loaded module that has BTF.")
@click.option(
    "--kernel-btf",
    metavar="PATH",
    default="/sys/kernel/btf/vmlinux",
    show_default=True,
    help="Raw BTF file or vmlinux ELF to read kernel types from.",
)
@click.option(
    "--skb-tracepoints", is_flag=True, help="Also trace raw tracepoints that take a struct sk_buff *, via skb->sk."
)
@click.option(
    "--ebpf", "dump_program", is_flag=True, hidden=True, help="Print the BPF program and its macros, then exit."
)
def command(**flags: object) -> None:
    """Trace the kernel functions that handle sockets, filtered in the kernel."""
    options = build_options(**flags)  # type: ignore[arg-type]
    sys.exit(run(options, sys.stdout))


def build_options(
    filter_pid: int | None,
    filter_netns: str | None,
    filter_mark: int | None,
    filter_protocol: str | None,
    filter_addr: str | None,
    filter_port: int | None,
    filter_funcs: str | None,
    kprobe_way: str,
    output_file: str | None,
    output_limit_lines: int,
    output_sock_common: bool,
    output_sock_info: bool,
    output_socket_info: bool,
    output_stack: bool,
    output_json: bool,
    timestamp: str,
    summary: bool,
    summary_interval: float,
    summary_top: int,
    ready_file: str | None,
    filter_track_sock: bool,
    output_return: bool,
    filter_errors: bool,
    list_funcs: str | None,
    kernel_btf: str,
    kmods: str | None,
    all_kmods: bool,
    skb_tracepoints: bool,
    dump_program: bool,
) -> Options:
    """Validate every flag; raises OptionError naming the flag."""
    filters = Filters(
        pid=filter_pid,
        netns=parse_netns(filter_netns) if filter_netns is not None else None,
        mark=filter_mark,
        protocol=parse_protocol(filter_protocol) if filter_protocol is not None else None,
        addr=parse_addr(filter_addr) if filter_addr is not None else None,
        port=filter_port,
        track_sock=filter_track_sock,
        errors_only=filter_errors,
    )
    if output_json and summary:
        raise OptionError("--output-json and --summary: choose one")
    output = OutputSpec(
        file=output_file,
        limit_lines=output_limit_lines,
        sock_common=output_sock_common,
        sock_info=output_sock_info,
        socket_info=output_socket_info,
        stack=output_stack,
        json=output_json,
        timestamp=Timestamp(timestamp),
        summary=summary,
        summary_interval=summary_interval,
        summary_top=summary_top,
        ready_file=ready_file,
        return_values=output_return or filter_errors,
    )
    return Options(
        filters=filters,
        output=output,
        filter_funcs=parse_regex(filter_funcs) if filter_funcs is not None else None,
        attach_way=AttachWay(kprobe_way),
        kernel_btf=kernel_btf,
        skb_tracepoints=skb_tracepoints,
        kmods=parse_kmods(kmods) if kmods is not None else (),
        all_kmods=all_kmods,
        list_funcs=list_funcs,
        dump_program=dump_program,
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    stop_on_signals()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%Y/%m/%d %H:%M:%S", stream=sys.stderr
    )
    try:
        result = command.main(args=argv, prog_name="socketrace", standalone_mode=False)
    except (click.UsageError, OptionError) as err:
        message = err.format_message() if isinstance(err, click.UsageError) else str(err)
        click.echo(f"socketrace: error: {message}", err=True)
        return EXIT_USAGE_ERROR
    except (RunError, DiscoveryError, ProgramError, AttachError) as err:
        click.echo(f"socketrace: error: {err}", err=True)
        return EXIT_RUNTIME_ERROR
    except (click.Abort, StopRequested):
        click.echo("socketrace: interrupted", err=True)
        return EXIT_INTERRUPTED
    except SystemExit as exit_:
        return int(exit_.code or 0)
    return int(result or 0)
