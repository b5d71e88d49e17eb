"""Beyond the original, per backend: JSON lines, timestamps, the in-kernel summary, --ready-file,
--filter-track-sock, family detail, return values and kernel-module functions, against real traffic."""

from __future__ import annotations

import json
import os
import re
import socket
import struct
import subprocess
from pathlib import Path

import pytest

from .conftest import Backend, free_port, parse, require_ss
from .traffic import WaitingProcess, tcp_exchange

PID = os.getpid()
NETNS = os.stat("/proc/self/ns/net").st_ino


def test_json_lines_field_by_field_and_deltas_per_socket(trace, backend: Backend) -> None:
    port = free_port()
    tracer = trace(*backend.args(), "--filter-port", str(port), "--output-json")
    exchange = tcp_exchange(port)
    for _ in range(2):
        tcp_exchange(port)
    result = tracer.stop()
    events = [json.loads(line) for line in result.lines]
    keys = set(events[0])
    assert all(set(event) == keys for event in events)  # no field ever dropped
    sends = [e for e in events if e["func"] in backend.sees("tcp") and e["sport"] == exchange.client_port]
    sends = [e for e in sends if e["socket_state"] == "CONNECTED"]
    if not backend.sees_in_sender("tcp"):  # softirq runs are any task's: take the sender's own
        sends = [e for e in sends if e["pid"] == PID]
    assert sends, events
    send = sends[0]
    assert (send["saddr"], send["daddr"], send["dport"]) == ("127.0.0.1", "127.0.0.1", port)
    assert (send["pid"], send["comm"], send["netns"]) == (PID, Path("/proc/self/comm").read_text().strip(), NETNS)
    assert (send["family"], send["protocol"], send["type"]) == ("AF_INET", "IPPROTO_TCP", "SOCK_STREAM")
    assert send["ino"] == exchange.client_inode
    assert re.fullmatch(r"0xffff[0-9a-f]{12}|0xff[0-9a-f]{14}", send["sk"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", send["time"])
    assert send["ret"] is None and send["stack"] == []
    last: dict[str, dict] = {}  # timestamps increase per socket, and each delta is the gap to its previous
    for event in events:
        previous = last.get(event["sk"])
        if previous is None:
            assert event["delta_ns"] == 0
        else:
            assert event["ts_ns"] >= previous["ts_ns"]
            assert event["delta_ns"] == event["ts_ns"] - previous["ts_ns"]
        last[event["sk"]] = event
    assert len(last) >= 3


@pytest.mark.userland
@pytest.mark.backends(best_only=True)
def test_timestamp_columns(trace, backend: Backend) -> None:
    """The TIME column is user space's: one backend proves its three forms."""
    port = free_port()
    for mode, pattern in (
        ("delta", r"\+\d+\.\d{6}"),
        ("relative", r"\d+\.\d{6}"),
        ("absolute", r"\d\d:\d\d:\d\d\.\d{6}"),
    ):
        tracer = trace(*backend.args(), "--filter-port", str(port), "--timestamp", mode)
        tcp_exchange(port)
        result = tracer.stop()
        assert result.lines
        assert all(re.match(pattern + r"\s+\d+\s+\d+\(", line) for line in result.lines), (mode, result.lines[:3])
        assert tracer.stdout_path.read_text().startswith("TIME ")


@pytest.mark.backends(sees=("udp",))
def test_summary_counts_in_the_kernel_equal_the_calls(trace, backend: Backend) -> None:
    port = free_port()
    sends = 7
    tracer = trace(*backend.args(), "--filter-port", str(port), "--summary")
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client,
    ):
        server.bind(("127.0.0.1", port))
        client.connect(("127.0.0.1", port))
        for _ in range(sends):
            client.send(b"x")
            server.recv(10)
        client_port = client.getsockname()[1]
    result = tracer.stop()
    text = tracer.stdout_path.read_text()
    func = backend.sees("udp")[0]
    assert re.search(rf"^{func}\s+{sends}$", text, re.M), text
    client_row = rf"^0x[0-9a-f]+ 127.0.0.1:{client_port} -> 127.0.0.1:{port} AF_INET IPPROTO_UDP\s+(\d+)$"
    match = re.search(client_row, text, re.M)
    assert match and int(match.group(1)) >= sends, text
    total = int(re.search(r"=== (\d+) events", text).group(1))
    assert re.search(rf"^{PID}\(.*\)\s+{total}$", text, re.M), text  # every event is this process's
    assert result.accounting()["printed"] == total  # "events counted"
    assert "events counted" in result.stderr


@pytest.mark.userland
@pytest.mark.backends(best_only=True)
def test_summary_every_interval_and_ready_file(trace, backend: Backend, tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    ready.write_text("stale")  # removed at start: a stale file would release a waiting script too early
    port = str(free_port())
    tracer = trace(
        *backend.args(), "--filter-port", port, "--summary", "--summary-interval", "0.5", "--ready-file", str(ready)
    )
    assert ready.exists() and ready.read_text() == ""  # created once attached ("Press Ctrl+C" came after it)
    assert tracer.wait_for(lambda lines: sum("=== 0 events in" in line for line in lines) >= 3)
    tracer.stop(settle=False)  # a table every 0.5 s: the output never rests
    assert tracer.stdout_path.read_text().count("=== 0 events in") >= 3


@pytest.mark.backends(sees=("udp",))
def test_track_sock_follows_a_socket_after_it_stops_matching(trace, backend: Backend) -> None:
    """The mark filter alone drops the unmarked send (test_address_and_mark_filters_both_ways); tracked,
    the socket is followed after its mark changed."""
    port = free_port()
    func = backend.sees("udp")[0]
    tracer = trace(*backend.args(func), "--filter-mark", "7", "--filter-track-sock", "--output-sock-info")
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client,
    ):
        server.bind(("127.0.0.1", port))
        client.connect(("127.0.0.1", port))
        client.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, 7)
        client.send(b"marked")
        client.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, 0)
        client.send(b"unmarked")
        client_port = client.getsockname()[1]
    result = tracer.stop()
    sends = [line for line in result.with_func(func) if f":{client_port} -> " in line]
    assert all(parse(line)[0] == PID for line in sends)
    assert [" mark=7 " in line for line in sends] == [True, False], sends  # the second one no longer matches


LIFECYCLE = (
    "inet_bind|__inet_bind|inet_listen|inet_csk_accept|inet_accept|tcp_sendmsg|tcp_recvmsg|tcp_close|"
    "inet_release|sk_destruct|__sk_destruct|inet_sock_destruct|tcp_v4_destroy_sock"
)


@pytest.mark.backends("kprobe", "kprobe-multi")
def test_track_sock_follows_listener_and_child_to_the_end(trace, backend: Backend) -> None:
    """The listener and the child lose their mark before they close, so only tracking keeps their
    last functions; those still show the local port, which the kernel keeps in inet_sport."""
    port = free_port()
    code = (
        f"import socket; server = socket.socket(); server.bind(('127.0.0.1', {port}))\n"
        "server.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, 7); server.listen()\n"
        f"client = socket.create_connection(('127.0.0.1', {port})); child, _ = server.accept()\n"
        "child.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, 7)\n"
        "client.send(b'ping'); child.recv(10); child.send(b'pong'); client.recv(10)\n"
        "for marked in (server, child): marked.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, 0)\n"
        "client.close(); child.close(); server.close()\n"
    )
    traffic = WaitingProcess(code)
    tracer = trace(*backend.args(LIFECYCLE), "--filter-mark", "7", "--filter-track-sock")
    traffic.run()
    destructs = ("sk_destruct", "inet_sock_destruct")
    tracer.wait_for(lambda lines: len({line.split("sk=")[1].split()[0] for line in lines if destructs[0] in line}) >= 2)
    result = tracer.stop()
    tracked = {
        func: {line.split("sk=")[1].split()[0] for line in result.with_func(func)}
        for func in ("inet_listen", "tcp_recvmsg", "sk_destruct", "inet_sock_destruct")
    }
    listener = tracked["inet_listen"]
    children = tracked["tcp_recvmsg"] - listener
    destruct_lines = result.with_func("sk_destruct", "inet_sock_destruct")
    destroyed = {line.split("sk=")[1].split()[0] for line in destruct_lines}
    assert listener and children, tracked
    assert listener <= destroyed, tracked  # followed past close
    assert children & destroyed, tracked  # the accepted child too
    # By then skc_num is 0 (the port given back), inet_sport is not: the lines show the port.
    assert all(f" 127.0.0.1:{port} -> " in line for line in destruct_lines), destruct_lines


# What each kind of backend sees of a TCP connection's last moments: the state changes (the tracepoint's
# FIN_WAIT2 -> CLOSE of the side that closed first comes after tcp_set_state() gave the port back),
# or the functions that run after that.
ENDINGS = {"tracepoint": "inet_sock_set_state", "kprobe": "tcp_v4_destroy_sock|sk_destruct|tcp_close|tcp_sendmsg"}
SS_SOCKET = re.compile(r" ino:(\d+) sk:([0-9a-f]+)")


def test_ports_to_the_last_event_and_cookies_as_ss_prints_them(trace, backend: Backend) -> None:
    """A connection over loopback closed by both sides, the server first: every event of the accepted
    socket carries the listening port, to its last one (the local port as inet_sock_set_state and ss
    show it, not skc_num, which the kernel zeroes as it gives the port back), and each socket's cookie
    is the one ss prints after sk: (in hex) beside the same ino:."""
    ss = require_ss()
    port = free_port()
    funcs = ENDINGS["tracepoint" if not backend.is_kprobe else "kprobe"]
    tracer = trace(*backend.args(funcs), "--filter-port", str(port), "--output-json")
    with socket.socket() as server:
        server.bind(("127.0.0.1", port))
        server.listen()
        client = socket.create_connection(("127.0.0.1", port))
        child, _ = server.accept()
        client.sendall(b"ping")
        assert child.recv(10) == b"ping"
        listing = subprocess.run(
            [ss, "-tanHe", f"( sport = :{port} or dport = :{port} )"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        cookies = {int(ino): int(cookie, 16) for ino, cookie in SS_SOCKET.findall(listing)}
        inodes = {name: os.fstat(sock.fileno()).st_ino for name, sock in (("child", child), ("client", client))}
        child.close()  # the server closes first: FIN_WAIT1, FIN_WAIT2, then TIME_WAIT
        assert client.recv(10) == b""
        client.close()
    result = tracer.stop()
    events = [json.loads(line) for line in result.lines]
    assert set(inodes.values()) <= set(cookies), listing
    assert all(port in (event["sport"], event["dport"]) for event in events), events  # what the filter promises
    sk_of = {event["ino"]: event["sk"] for event in events if event["ino"] is not None}
    child_events = [event for event in events if event["sk"] == sk_of[inodes["child"]]]
    assert child_events and all(event["sport"] == port for event in child_events), child_events
    last_with_file = max(index for index, event in enumerate(child_events) if event["ino"] is not None)
    orphaned = child_events[last_with_file + 1 :]  # after close(): no struct socket, still its cookie
    if backend.is_kprobe:
        last = {event["func"] for event in orphaned}
        assert "tcp_v4_destroy_sock" in last, child_events
    else:
        last = {event["state"] for event in orphaned if event["func"] == "inet_sock_set_state"}
        assert "FIN_WAIT2" in last, child_events  # FIN_WAIT2 -> CLOSE: skc_num was 0 by then
    for name, inode in inodes.items():
        sk = sk_of[inode]
        seen = {event["cookie"] for event in events if event["sk"] == sk and event["cookie"]}
        assert seen == {cookies[inode]}, (name, seen, listing)
    assert all(event["cookie"] == cookies[inodes["child"]] for event in orphaned), orphaned


@pytest.mark.backends(sees=("unix", "netlink"))
def test_unix_path_and_peer_and_netlink_port(trace, backend: Backend, tmp_path: Path) -> None:
    path = str(tmp_path / "app.sock")
    funcs = "|".join(backend.sees("unix") + backend.sees("netlink"))
    tracer = trace(*backend.args(funcs), "--filter-pid", str(PID))
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(path)
        server.listen()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(path)
            conn, _ = server.accept()
            with conn:
                conn.send(b"from the server")  # the accepted socket carries the bound path
                client.recv(100)
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as netlink:
        netlink.bind((0, 0))
        portid = netlink.getsockname()[0]
        # RTM_GETLINK dump request: nlmsghdr (len, type 18, flags REQUEST|DUMP, seq, pid) + ifinfomsg.
        netlink.send(struct.pack("=LHHLL", 32, 18, 0x301, 1, 0) + b"\0" * 16)
    result = tracer.stop()
    unix = [line for line in result.lines if "family=AF_UNIX" in line]
    assert any(f"path={path} peer=0xff" in line for line in unix), unix
    assert any(f"portid={portid} dst_portid=0" in line and "NETLINK_ROUTE" in line for line in result.lines), (
        result.lines
    )


def test_return_values_where_the_backend_has_them(trace, backend: Backend) -> None:
    """The classic question: which socket function returned -EADDRINUSE? kprobe-multi answers it;
    the other backends refuse --filter-errors with one line."""
    port = free_port()
    if backend.way != "kprobe-multi":
        result = subprocess.run(
            [*tracer_command(), "--kprobe-way", backend.way, "--filter-errors"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
        assert "need kprobe-multi" in result.stderr
        return
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        code = (
            "import socket, errno; s = socket.socket()\n"
            f"try: s.bind(('127.0.0.1', {port}))\n"
            "except OSError as e: assert e.errno == errno.EADDRINUSE\n"
        )
        traffic = WaitingProcess(code)
        tracer = trace(*backend.args(), "--filter-pid", str(traffic.pid), "--filter-errors", "--output-json")
        traffic.run()
        result = tracer.stop()
    events = [json.loads(line) for line in result.lines]
    failing = {event["func"] for event in events if event["errno"] == "EADDRINUSE"}
    assert failing & {"inet_bind", "__inet_bind", "inet_bind_sk"}, events
    assert all(event["ret"] < 0 and event["duration_ns"] > 0 for event in events)


@pytest.mark.backends("kprobe-multi")
def test_return_value_kinds(trace, backend: Backend) -> None:
    """No ret= for void, true/false for bool, a pointer in hex: from each function's BTF return type."""
    port = free_port()
    funcs = "tcp_set_state|sk_page_frag_refill|inet_csk_accept"
    tracer = trace(*backend.args(funcs), "--filter-port", str(port), "--output-return")
    tcp_exchange(port)
    result = tracer.stop()
    void = result.with_func("tcp_set_state")
    assert void and all("ret=" not in line and re.search(r" duration=\d+\.\dus ", line) for line in void), void
    assert any(" ret=true " in line for line in result.with_func("sk_page_frag_refill")), result.lines
    assert any(re.search(r" ret=0xff[0-9a-f]{14} ", line) for line in result.with_func("inet_csk_accept")), result.lines


def tracer_command() -> list[str]:
    from .conftest import COMMAND

    return COMMAND


@pytest.mark.backends("kprobe", "kprobe-multi", module_btf=True)
def test_kernel_module_functions(trace, backend: Backend) -> None:
    """sctp's functions, found in its module BTF, traced with the backend under test."""
    subprocess.run(["modprobe", "sctp"], check=True, timeout=120)
    port = free_port()
    tracer = trace(*backend.args("sctp_.*"), "--kmods", "sctp", "--filter-port", str(port))
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
    result = tracer.stop()
    sends = [line for line in result.with_func("sctp_sendmsg") if f":{client_port} -> 127.0.0.1:{port} " in line]
    assert sends, result.lines[:40]
    assert all("protocol=IPPROTO_SCTP" in line for line in sends)
