"""Beyond the original, on this kernel's raw tracepoints: JSON lines, timestamps, the summary,
--ready-file and --filter-track-sock, each checked against real traffic."""

from __future__ import annotations

import json
import os
import re
import socket
import struct
import time
from pathlib import Path

from .conftest import free_port, parse
from .traffic import tcp_exchange

PID = os.getpid()
NETNS = os.stat("/proc/self/ns/net").st_ino


def test_json_lines_field_by_field(trace) -> None:
    port = free_port()
    tracer = trace("--filter-port", str(port), "--output-json")
    exchange = tcp_exchange(port)
    result = tracer.stop()
    events = [json.loads(line) for line in result.lines]
    keys = set(events[0])
    assert all(set(event) == keys for event in events)  # no field ever dropped
    sends = [e for e in events if e["func"] == "sock_send_length" and e["sport"] == exchange.client_port]
    assert sends, events
    send = sends[0]
    assert (send["saddr"], send["daddr"], send["dport"]) == ("127.0.0.1", "127.0.0.1", port)
    assert (send["pid"], send["comm"], send["netns"]) == (PID, Path("/proc/self/comm").read_text().strip(), NETNS)
    assert (send["family"], send["protocol"], send["type"]) == ("AF_INET", "IPPROTO_TCP", "SOCK_STREAM")
    assert (send["ino"], send["socket_state"], send["state"]) == (exchange.client_inode, "CONNECTED", "ESTABLISHED")
    assert re.fullmatch(r"0xffff[0-9a-f]{12}", send["sk"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", send["time"])


def test_timestamps_increase_per_socket_and_deltas_add_up(trace) -> None:
    port = free_port()
    tracer = trace("--filter-port", str(port), "--output-json")
    for _ in range(3):
        tcp_exchange(port)
    result = tracer.stop()
    last: dict[str, dict] = {}
    for event in map(json.loads, result.lines):
        previous = last.get(event["sk"])
        if previous is None:
            assert event["delta_ns"] == 0
        else:
            assert event["ts_ns"] >= previous["ts_ns"]
            assert event["delta_ns"] == event["ts_ns"] - previous["ts_ns"]
        last[event["sk"]] = event
    assert len(last) >= 3


def test_timestamp_columns(trace) -> None:
    port = free_port()
    for mode, pattern in (
        ("delta", r"\+\d+\.\d{6}"),
        ("relative", r"\d+\.\d{6}"),
        ("absolute", r"\d\d:\d\d:\d\d\.\d{6}"),
    ):
        tracer = trace("--filter-port", str(port), "--timestamp", mode)
        tcp_exchange(port)
        result = tracer.stop()
        assert result.lines
        assert all(re.match(pattern + r"\s+\d+\s+\d+\(", line) for line in result.lines), (mode, result.lines[:3])
        assert tracer.stdout_path.read_text().startswith("TIME ")


def test_summary_counts_equal_the_calls(trace) -> None:
    port = free_port()
    sends = 7
    tracer = trace("--filter-port", str(port), "--summary")
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
    assert re.search(rf"^sock_send_length\s+{sends}$", text, re.M), text
    assert re.search(rf"^sock_recv_length\s+{sends}$", text, re.M), text
    assert re.search(
        rf"^0x[0-9a-f]+ 127.0.0.1:{client_port} -> 127.0.0.1:{port} AF_INET IPPROTO_UDP\s+{sends}$", text, re.M
    )
    total = int(re.search(r"=== (\d+) events", text).group(1))
    assert re.search(rf"^{PID}\(.*\)\s+{total}$", text, re.M), text  # every event is this process's
    assert "events counted" in result.stderr


def test_summary_every_interval(trace) -> None:
    tracer = trace("--filter-port", str(free_port()), "--summary", "--summary-interval", "0.5")
    time.sleep(1.6)
    tracer.stop()
    assert tracer.stdout_path.read_text().count("=== 0 events in") >= 3


def test_ready_file(trace, tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    ready.write_text("stale")
    tracer = trace("--filter-port", "9", "--ready-file", str(ready))  # waits for "Press Ctrl+C"
    assert ready.exists() and ready.read_text() == ""
    tracer.stop()


def test_track_sock_follows_a_socket_after_it_stops_matching(trace) -> None:
    port = free_port()
    results = {}
    for track in (False, True):
        tracer = trace("--filter-mark", "7", "--filter-funcs", "sock_send_length", *(["--filter-track-sock"] * track))
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
        results[track] = [line for line in result.lines if f":{client_port} -> " in line]
        assert all(parse(line)[0] == PID for line in results[track])
    assert len(results[False]) == 1  # only the marked send
    assert len(results[True]) == 2  # tracked: the unmarked send too


def test_unix_path_and_peer_and_netlink_port(trace, tmp_path: Path) -> None:
    path = str(tmp_path / "app.sock")
    tracer = trace("--filter-pid", str(PID), "--filter-funcs", "sock_send_length")
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
    assert any(f"path={path} peer=0xffff" in line for line in unix), unix
    assert any(f"portid={portid} dst_portid=0" in line and "NETLINK_ROUTE" in line for line in result.lines), (
        result.lines
    )
