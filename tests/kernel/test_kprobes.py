"""End to end with the kprobe backends, on real Debian kernels booted by tests/vm.

These run inside the guest (marker ``guest``); tests/vm/test_kernels.py starts them with
SOCKETRACE_TEST_WAY (the --kprobe-way to force, empty for auto) and SOCKETRACE_EXPECT_WAY
(the backend that must end up attached).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ..conftest import require, require_tool
from .conftest import free_port, parse, programs_settle_to, socketrace_programs
from .traffic import WaitingProcess, tcp_exchange, udp_exchange

pytestmark = pytest.mark.guest

WAY = os.environ.get("SOCKETRACE_TEST_WAY", "")
EXPECT = os.environ.get("SOCKETRACE_EXPECT_WAY", "")
# Enough for the checks below, small enough for classic kprobes under emulation.
SMALL_SET = "(tcp|udp|udpv6|inet|inet6|unix_stream|netlink)_sendmsg|tcp_v4_connect|tcp_v6_connect|sock_sendmsg"
KPROBES_LIST = Path("/sys/kernel/debug/kprobes/list")
KPROBE_EVENTS = Path("/sys/kernel/tracing/kprobe_events")


@pytest.fixture(autouse=True)
def _guest() -> None:
    require(bool(EXPECT), "SOCKETRACE_EXPECT_WAY is not set: these tests run inside tests/vm")


def way_args() -> list[str]:
    return ["--kprobe-way", WAY] if WAY else []


def test_full_set_every_family_in_a_namespace(trace, netns: str) -> None:
    port = free_port()
    inode = os.stat(f"/run/netns/{netns}").st_ino
    traffic = WaitingProcess(
        f"import json; from tests.kernel.traffic import every_family; print(json.dumps(every_family({port})))", netns
    )
    tracer = trace(*way_args(), "--filter-netns", netns)
    attached = re.search(rf"Attached kprobes \(via {EXPECT}\) to (\d+) functions", tracer.stderr_path.read_text())
    assert attached, tracer.stderr_path.read_text()
    assert int(attached.group(1)) > 1200
    tcp_exchange(port)  # the root namespace: filtered out
    ports = json.loads(traffic.run())
    time.sleep(2)  # emulated CPUs: let the last events arrive
    result = tracer.stop()
    assert result.returncode == 0, result.stderr
    pid = traffic.pid

    def seen(func: str, text: str, by: int = pid) -> bool:
        return any(parse(line)[0] == by and text in line for line in result.with_func(func))

    assert seen("tcp_sendmsg", f"127.0.0.1:{ports['tcp4']} -> 127.0.0.1:{port} "), result.lines[:50]
    assert seen("tcp_sendmsg", f"[::1]:{ports['tcp6']} -> [::1]:{port} ")
    assert seen("udp_sendmsg", f"127.0.0.1:{ports['udp4']} -> 127.0.0.1:{port} ")
    assert seen("udpv6_sendmsg", f"[::1]:{ports['udp6']} -> [::1]:{port} ")
    assert seen("unix_stream_sendmsg", "family=AF_UNIX")
    assert seen("netlink_sendmsg", "family=AF_NETLINK protocol=NETLINK_ROUTE", by=ports["ip_pid"])
    assert all(f"netns={inode} " in line for line in result.lines)
    assert not any(re.match(r"^\S+\s+\S+\s+0x", line) for line in result.lines)  # names, never addresses


def test_port_and_pid_filters_both_ways(trace) -> None:
    port, other_port = free_port(), free_port()
    traffic = WaitingProcess(
        f"from tests.kernel.traffic import tcp_exchange; tcp_exchange({port}); tcp_exchange({other_port})"
    )
    tracer = trace(
        *way_args(), "--filter-funcs", SMALL_SET, "--filter-port", str(port), "--filter-pid", str(traffic.pid)
    )
    tcp_exchange(port)  # right port, wrong process
    traffic.run()
    time.sleep(2)
    result = tracer.stop()
    sends = result.with_func("tcp_sendmsg")
    assert sends, result.lines
    assert {parse(line)[0] for line in result.lines} == {traffic.pid}
    assert all(f":{port} " in line and f":{other_port} " not in line for line in result.lines)


def test_address_and_protocol_filters_both_ways(trace) -> None:
    port = free_port()
    tracer = trace(*way_args(), "--filter-funcs", SMALL_SET, "--filter-addr", "::1", "--filter-protocol", "udp")
    udp_exchange(port)  # IPv4: dropped
    tcp_exchange(port, socket.AF_INET6)  # TCP: dropped
    v6 = udp_exchange(port, socket.AF_INET6)
    time.sleep(2)
    result = tracer.stop()
    assert any(f"[::1]:{v6.client_port} -> [::1]:{port} " in line for line in result.with_func("udpv6_sendmsg"))
    assert all("[::1]:" in line and "protocol=IPPROTO_UDP" in line for line in result.lines)


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_nothing_stays_attached(trace, stop_signal: int) -> None:
    require_tool("bpftool")
    before = socketrace_programs()
    tracer = trace(*way_args(), "--filter-funcs", SMALL_SET)
    assert _attached_kprobes() or _kprobe_multi_links()
    tracer.process.send_signal(stop_signal)
    tracer.wait(timeout=300)
    assert _settles(lambda: not _attached_kprobes() and not _kprobe_multi_links())
    assert programs_settle_to(before, timeout=60)
    assert KPROBE_EVENTS.read_text().strip() == ""


def _attached_kprobes() -> list[str]:
    """Kprobes registered in the kernel (debugfs), whoever made them."""
    return KPROBES_LIST.read_text().splitlines() if KPROBES_LIST.exists() else []


def _kprobe_multi_links() -> list[dict]:
    links = json.loads(
        subprocess.run(["bpftool", "-j", "link", "show"], check=True, capture_output=True, text=True).stdout
    )
    return [link for link in links if link.get("type") == "kprobe_multi"]


def _settles(condition, timeout: float = 120) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True


def test_bind_to_a_busy_port_shows_the_error(trace) -> None:
    """The classic question: which socket function returned -EADDRINUSE?"""
    if EXPECT != "kprobe-multi":
        result = subprocess.run(
            [sys.executable, "-m", "socketrace", *way_args(), "--filter-errors"], capture_output=True, text=True
        )
        assert result.returncode == 1 and "need kprobe-multi" in result.stderr
        return
    port = free_port()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        code = (
            "import socket, errno; s = socket.socket()\n"
            f"try: s.bind(('127.0.0.1', {port}))\n"
            "except OSError as e: assert e.errno == errno.EADDRINUSE\n"
        )
        traffic = WaitingProcess(code)
        tracer = trace(*way_args(), "--filter-pid", str(traffic.pid), "--filter-errors", "--output-json")
        traffic.run()
        time.sleep(2)
        result = tracer.stop()
    events = [json.loads(line) for line in result.lines]
    failing = {event["func"] for event in events if event["errno"] == "EADDRINUSE"}
    assert failing & {"inet_bind", "__inet_bind", "inet_bind_sk"}, events
    assert all(event["ret"] < 0 and event["duration_ns"] > 0 for event in events)


def test_kernel_module_functions(trace) -> None:
    """sctp's functions, found in its module BTF, traced with the backend under test."""
    subprocess.run(["modprobe", "sctp"], check=True)
    port = free_port()
    tracer = trace(*way_args(), "--kmods", "sctp", "--filter-funcs", "sctp_.*", "--filter-port", str(port))
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_SCTP) as server:
        server.bind(("127.0.0.1", port))
        server.listen()
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_SCTP) as client:
            client.connect(("127.0.0.1", port))
            client.send(b"ping")
            conn, _ = server.accept()
            with conn:
                assert conn.recv(10) == b"ping"
            client_port = client.getsockname()[1]
    time.sleep(2)
    result = tracer.stop()
    sends = [line for line in result.with_func("sctp_sendmsg") if f":{client_port} -> 127.0.0.1:{port} " in line]
    assert sends, result.lines[:40]
    assert all("protocol=IPPROTO_SCTP" in line for line in sends)


LIFECYCLE = (
    "inet_bind|__inet_bind|inet_listen|inet_csk_accept|inet_accept|tcp_sendmsg|tcp_recvmsg|tcp_close|"
    "inet_release|sk_destruct|__sk_destruct|inet_sock_destruct|tcp_v4_destroy_sock"
)


def test_track_sock_follows_listener_and_child_to_the_end(trace) -> None:
    """After close the port is reset to 0, so only tracking keeps the sockets' last functions."""
    port = free_port()
    code = (
        f"import socket; server = socket.socket(); server.bind(('127.0.0.1', {port})); server.listen()\n"
        f"client = socket.create_connection(('127.0.0.1', {port})); child, _ = server.accept()\n"
        "client.send(b'ping'); child.recv(10); child.send(b'pong'); client.recv(10)\n"
        "client.close(); child.close(); server.close()\n"
    )
    seen = {}
    for track in (True, False):
        traffic = WaitingProcess(code)
        flags = ["--filter-port", str(port), "--filter-funcs", LIFECYCLE, *(["--filter-track-sock"] * track)]
        tracer = trace(*way_args(), *flags)
        traffic.run()
        time.sleep(3)
        result = tracer.stop()
        sk_of = {
            func: {line.split("sk=")[1].split()[0] for line in result.with_func(func)}
            for func in ("inet_listen", "tcp_recvmsg", "sk_destruct", "inet_sock_destruct")
        }
        seen[track] = sk_of
    tracked = seen[True]
    listener = tracked["inet_listen"]
    children = tracked["tcp_recvmsg"] - listener
    destroyed = tracked["sk_destruct"] | tracked["inet_sock_destruct"]
    assert listener and children, tracked
    assert listener <= destroyed, tracked  # followed past close, when the port no longer matches
    assert children & destroyed, tracked  # the accepted child too
    untracked = seen[False]
    assert not (untracked["sk_destruct"] | untracked["inet_sock_destruct"]) & untracked["inet_listen"]
