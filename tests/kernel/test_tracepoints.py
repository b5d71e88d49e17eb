"""End to end on this kernel with the raw tracepoint backend: real traffic, printed lines."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from .conftest import free_port, parse, programs_settle_to, socketrace_programs
from .traffic import tcp_exchange, tcp_exchange_elsewhere, udp_exchange

PID = os.getpid()


def test_tcp_ipv4_exact_tuple(trace) -> None:
    port = free_port()
    tracer = trace("--kprobe-way", "tracepoint", "--filter-port", str(port))
    exchange = tcp_exchange(port)
    result = tracer.stop()
    assert result.returncode == 0, result.stderr
    client_tuple = f"127.0.0.1:{exchange.client_port} -> 127.0.0.1:{port} "
    server_tuple = f"127.0.0.1:{port} -> 127.0.0.1:{exchange.client_port} "
    sent = [parse(line) for line in result.with_func("sock_send_length") if client_tuple in line]
    assert sent and all(pid == PID for pid, _, _ in sent)
    assert any(server_tuple in line for line in result.with_func("sock_recv_length"))
    assert result.with_func("inet_sock_set_state")
    for line in result.lines:
        _, _, rest = parse(line)
        assert f":{port} " in rest, line  # the filter kept nothing else
        assert "family=AF_INET protocol=IPPROTO_TCP" in rest
    assert re.search(rf"{len(result.lines)} events printed, 0 dropped", result.stderr)


def test_tcp_ipv6_with_address_filter(trace) -> None:
    port = free_port(socket.AF_INET6)
    tracer = trace("--filter-addr", "::1", "--filter-port", str(port))
    exchange = tcp_exchange(port, socket.AF_INET6)
    result = tracer.stop()
    client_tuple = f"[::1]:{exchange.client_port} -> [::1]:{port} "
    assert any(client_tuple in line for line in result.with_func("sock_send_length")), result.lines
    assert result.lines and all("[::1]:" in line and "family=AF_INET6" in line for line in result.lines)


def test_udp_both_families(trace) -> None:
    port = free_port()
    tracer = trace("--filter-port", str(port), "--filter-protocol", "udp")
    v4 = udp_exchange(port)
    v6 = udp_exchange(port, socket.AF_INET6)
    result = tracer.stop()
    sends = result.with_func("sock_send_length")
    assert any(f"127.0.0.1:{v4.client_port} -> 127.0.0.1:{port} " in line for line in sends), result.lines
    assert any(f"[::1]:{v6.client_port} -> [::1]:{port} " in line for line in sends), result.lines
    assert all("protocol=IPPROTO_UDP" in line for line in result.lines)


def test_port_filter_drops_other_ports(trace) -> None:
    wanted, other = free_port(), free_port()
    tracer = trace("--filter-port", str(wanted))
    tcp_exchange(other)
    tcp_exchange(wanted)
    result = tracer.stop()
    assert any(f":{wanted} " in line for line in result.lines)
    assert not [line for line in result.lines if f":{other} " in line]


def test_address_filter_both_ways(trace) -> None:
    port = free_port()
    tracer = trace("--filter-addr", "127.0.0.2", "--filter-port", str(port))
    tcp_exchange(port, host="127.0.0.1")
    exchange = tcp_exchange(port, host="127.0.0.2")
    result = tracer.stop()
    assert any(f":{exchange.client_port} -> 127.0.0.2:{port} " in line for line in result.lines), result.lines
    assert all("127.0.0.2:" in line for line in result.lines)


def test_protocol_filter_both_ways(trace) -> None:
    port = free_port()
    tracer = trace("--filter-protocol", "tcp", "--filter-port", str(port))
    udp_exchange(port)
    tcp_exchange(port)
    result = tracer.stop()
    assert result.lines
    assert all("protocol=IPPROTO_TCP" in line for line in result.lines)


def test_pid_filter_both_ways(trace) -> None:
    port = free_port()
    tracer = trace("--filter-pid", str(PID), "--filter-port", str(port))
    tcp_exchange_elsewhere(port)
    tcp_exchange(port)
    result = tracer.stop()
    pids = {parse(line)[0] for line in result.lines}
    assert pids == {PID}


def test_mark_filter_both_ways(trace) -> None:
    port = free_port()
    tracer = trace("--filter-mark", "7", "--filter-port", str(port))
    tcp_exchange(port)
    marked = tcp_exchange(port, mark=7)
    result = tracer.stop()
    assert any(f":{marked.client_port} -> 127.0.0.1:{port} " in line for line in result.with_func("sock_send_length"))
    unmarked_sends = [line for line in result.with_func("sock_send_length") if f":{marked.client_port} " not in line]
    assert not unmarked_sends, unmarked_sends


def test_netns_filter_by_name_path_and_inode(trace, netns: str) -> None:
    port = free_port()
    inode = os.stat(f"/run/netns/{netns}").st_ino
    for spec in (netns, f"/run/netns/{netns}", str(inode)):
        tracer = trace("--filter-netns", spec, "--filter-port", str(port))
        tcp_exchange(port)  # the same port in the root namespace: must not show
        client_port = tcp_exchange_elsewhere(port, netns)
        result = tracer.stop()
        assert any(f"127.0.0.1:{client_port} -> 127.0.0.1:{port} " in line for line in result.lines), (
            spec,
            result.lines,
        )
        assert all(f"netns={inode} " in line for line in result.lines), spec


def test_netns_path_of_a_process(trace, netns: str) -> None:
    port = free_port()
    sleeper = subprocess.Popen(["ip", "netns", "exec", netns, "sleep", "30"])
    try:
        tracer = trace("--filter-netns", f"/proc/{sleeper.pid}/ns/net", "--filter-port", str(port))
        tcp_exchange_elsewhere(port, netns)
        tcp_exchange(port)
        result = tracer.stop()
    finally:
        sleeper.kill()
    inode = os.stat(f"/run/netns/{netns}").st_ino
    assert result.lines and all(f"netns={inode} " in line for line in result.lines)


def test_real_tools_nc_and_curl(trace, tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / "index.html").write_text("hello\n")
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        tracer = trace("--filter-port", str(port), "--output-sock-common")
        subprocess.run(
            [
                "sh",
                "-c",
                f"for i in 1 2 3 4 5 6 7 8 9 10; do curl -sf http://127.0.0.1:{port}/ && break; sleep 0.2; done",
            ],
            check=True,
            capture_output=True,
        )
        result = tracer.stop()
    finally:
        server.kill()
    curl_lines = [line for line in result.lines if "(curl)" in line]
    assert curl_lines, result.lines
    assert any("state=ESTABLISHED" in line for line in result.lines)
    server_lines = [line for line in result.lines if parse(line)[0] == server.pid]
    assert server_lines


def test_socket_info_inode_matches_the_file(trace) -> None:
    port = free_port()
    tracer = trace("--filter-port", str(port), "--output-socket-info")
    exchange = tcp_exchange(port)
    result = tracer.stop()
    mine = [line for line in result.with_func("sock_send_length") if f":{exchange.client_port} -> " in line]
    assert mine and all(f"f_ino={exchange.client_inode} sk=0x" in line for line in mine), mine
    assert all(line.endswith(f" ino={exchange.client_inode}") for line in mine)  # the identity on every line
    assert all("state=CONNECTED type=SOCK_STREAM" in line for line in mine)


def test_stack_is_symbolized(trace) -> None:
    port = free_port()
    tracer = trace("--filter-port", str(port), "--filter-funcs", "sock_send_length", "--output-stack")
    tcp_exchange(port)
    result = tracer.stop()
    assert result.with_func("sock_send_length")
    frames = [line for line in result.lines if line.startswith("    ")]
    assert any("sock_sendmsg" in frame or "sys_sendto" in frame or "tcp_sendmsg" in frame for frame in frames), frames


def test_output_file_and_line_limit(trace, tmp_path: Path) -> None:
    port = free_port()
    output = tmp_path / "events.txt"
    tracer = trace("--filter-port", str(port), "--output-file", str(output), "--output-limit-lines", "3")
    tcp_exchange(port)
    result = tracer.wait()  # ends by itself after three events
    assert result.returncode == 0
    lines = output.read_text().splitlines()
    assert lines[0].startswith("CPU PROCESS")
    assert len(lines) == 4
    assert "3 events printed" in result.stderr


def test_sigterm_and_sigkill_leave_nothing_attached(trace) -> None:
    before = socketrace_programs()
    tracer = trace("--filter-port", "9")
    assert len(socketrace_programs()) > len(before)
    result = tracer.stop(signal.SIGTERM)
    assert result.returncode == 0
    assert "Detaching" in result.stderr
    assert programs_settle_to(before)
    tracer = trace("--filter-port", "9")
    tracer.process.kill()
    tracer.process.wait()
    assert programs_settle_to(before)


def test_closed_pipe_ends_cleanly() -> None:
    port = free_port()
    pipeline = subprocess.Popen(
        [
            "bash",
            "-c",
            f"set -o pipefail; {sys.executable} -m socketrace --filter-port {port} | head -n 2; "
            'echo "status=${PIPESTATUS[0]}" >&2',
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while pipeline.poll() is None and time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            tcp_exchange(port)
        time.sleep(0.1)
    stdout, stderr = pipeline.communicate(timeout=60)
    assert len(stdout.splitlines()) == 2
    assert "status=0" in stderr
    assert "Traceback" not in stderr


def test_return_values_need_kprobe_multi() -> None:
    result = subprocess.run([sys.executable, "-m", "socketrace", "--output-return"], capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("socketrace: error: --output-return and --filter-errors")


def test_interrupt_during_start_up_is_clean() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "socketrace", "--filter-port", "9"], stderr=subprocess.PIPE, text=True
    )
    time.sleep(0.2)  # importing or compiling: not tracing yet
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode in (0, 130), stderr  # 0 if it got as far as tracing
    assert "Traceback" not in stderr
