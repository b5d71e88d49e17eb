"""End to end, per backend: real traffic through the running kernel, checked in the printed lines.

Each filter is proven both ways: what matches it is printed, what does not is
not. Each test runs once per backend the kernel offers (see conftest.Backend).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import socketrace

from ..conftest import require
from .conftest import ROOT, Backend, free_port, parse
from .traffic import (
    WaitingProcess,
    tcp_exchange,
    tcp_exchange_elsewhere,
    udp_exchange,
)

PID = os.getpid()


def test_tcp_ipv4_exact_tuple_port_and_protocol_filters_and_inode(trace, backend: Backend) -> None:
    port, other = free_port(), free_port()
    tracer = trace(*backend.args(), "--filter-port", str(port), "--filter-protocol", "tcp", "--output-socket-info")
    tcp_exchange(other)  # another port: must not show
    udp_exchange(port)  # another protocol: must not show
    exchange = tcp_exchange(port)
    result = tracer.stop()
    assert result.returncode == 0, result.stderr
    client_tuple = f"127.0.0.1:{exchange.client_port} -> 127.0.0.1:{port} "
    seen = [parse(line) for line in result.with_func(*backend.sees("tcp")) if client_tuple in line]
    in_sender = [pid == PID for pid, _, _ in seen]
    assert seen and (all(in_sender) if backend.sees_in_sender("tcp") else any(in_sender)), result.lines
    for line in result.lines:
        _, _, rest = parse(line)
        assert f":{port} " in rest and f":{other} " not in rest, line
        assert "family=AF_INET protocol=IPPROTO_TCP" in rest
    counts = result.accounting()
    assert counts["printed"] == len(result.lines) and counts["dropped"] == 0
    assert counts["runs"] == counts["printed"] + counts["no_sock"] + counts["filtered"] + counts["not_tracing"]
    # The identity on every line: the inode is the client socket file's, as `ss -e` shows it.
    connected = [line for line in result.lines if client_tuple in line and "state=CONNECTED" in line]
    assert connected and all(f"f_ino={exchange.client_inode} sk=0x" in line for line in connected), result.lines
    assert all(re.search(rf" ino={exchange.client_inode} cookie=[0-9a-f]+$", line) for line in connected)


def test_tcp_ipv6_with_address_filter(trace, backend: Backend) -> None:
    port = free_port(socket.AF_INET6)
    tracer = trace(*backend.args(), "--filter-addr", "::1", "--filter-port", str(port))
    tcp_exchange(port)  # IPv4: another address
    exchange = tcp_exchange(port, socket.AF_INET6)
    result = tracer.stop()
    client_tuple = f"[::1]:{exchange.client_port} -> [::1]:{port} "
    assert any(client_tuple in line for line in result.with_func(*backend.sees("tcp"))), result.lines
    assert result.lines and all("[::1]:" in line and "family=AF_INET6" in line for line in result.lines)


@pytest.mark.backends(sees=("udp", "udp6"))
def test_udp_both_families(trace, backend: Backend) -> None:
    port = free_port()
    tracer = trace(*backend.args(), "--filter-port", str(port), "--filter-protocol", "udp")
    v4 = udp_exchange(port)
    v6 = udp_exchange(port, socket.AF_INET6)
    tcp_exchange(port)  # TCP: another protocol
    result = tracer.stop()
    assert any(
        f"127.0.0.1:{v4.client_port} -> 127.0.0.1:{port} " in line for line in result.with_func(*backend.sees("udp"))
    )
    v6_sends = result.with_func(*backend.sees("udp6"))
    assert any(f"[::1]:{v6.client_port} -> [::1]:{port} " in line for line in v6_sends), result.lines
    assert result.lines and all("protocol=IPPROTO_UDP" in line for line in result.lines)


def test_address_and_mark_filters_both_ways(trace, backend: Backend) -> None:
    port = free_port()
    tracer = trace(*backend.args(), "--filter-addr", "127.0.0.2", "--filter-mark", "7", "--filter-port", str(port))
    other_address = tcp_exchange(port, host="127.0.0.1", mark=7)
    unmarked = tcp_exchange(port, host="127.0.0.2")
    wanted = tcp_exchange(port, host="127.0.0.2", mark=7)
    result = tracer.stop()
    client = f":{wanted.client_port} -> 127.0.0.2:{port} "
    assert any(client in line for line in result.with_func(*backend.sees("tcp"))), result.lines
    assert all("127.0.0.2:" in line for line in result.lines)
    assert not [line for line in result.lines if f":{other_address.client_port} " in line]
    assert not [line for line in result.lines if f":{unmarked.client_port} " in line]


def test_pid_filter_both_ways(trace, backend: Backend) -> None:
    port = free_port()
    other = WaitingProcess(f"from tests.kernel.traffic import tcp_exchange; tcp_exchange({port})")
    tracer = trace(*backend.args(), "--filter-pid", str(other.pid), "--filter-port", str(port))
    tcp_exchange(port)  # this process: another pid
    other.run()
    result = tracer.stop()
    assert result.with_func(*backend.sees("tcp")), result.lines
    assert {parse(line)[0] for line in result.lines} == {other.pid}


def test_netns_filter(trace, backend: Backend, netns: str) -> None:
    port = free_port()
    inode = os.stat(f"/run/netns/{netns}").st_ino
    tracer = trace(*backend.args(), "--filter-netns", netns, "--filter-port", str(port))
    tcp_exchange(port)  # the same port in the root namespace: must not show
    client_port = tcp_exchange_elsewhere(port, netns)
    result = tracer.stop()
    assert any(f"127.0.0.1:{client_port} -> 127.0.0.1:{port} " in line for line in result.lines), result.lines
    assert all(f"netns={inode} " in line for line in result.lines)


@pytest.mark.userland
@pytest.mark.backends(best_only=True)
def test_netns_by_path_of_a_process_and_by_inode(trace, backend: Backend, netns: str) -> None:
    """The namespace's spellings all become its inode in options.py: one backend proves them."""
    port = free_port()
    inode = os.stat(f"/run/netns/{netns}").st_ino
    sleeper = subprocess.Popen(["ip", "netns", "exec", netns, "sleep", "120"])
    try:
        for spec in (f"/proc/{sleeper.pid}/ns/net", f"/run/netns/{netns}", str(inode)):
            tracer = trace(*backend.args(), "--filter-netns", spec, "--filter-port", str(port))
            tcp_exchange_elsewhere(port, netns)
            tcp_exchange(port)
            result = tracer.stop()
            assert result.lines and all(f"netns={inode} " in line for line in result.lines), spec
    finally:
        sleeper.kill()
        sleeper.wait(timeout=60)


def test_real_tools_curl_and_nc(trace, backend: Backend, tmp_path: Path) -> None:
    port, nc_port = free_port(), free_port()
    (tmp_path / "index.html").write_text("hello\n")
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    listener = subprocess.Popen(["nc", "-l", "127.0.0.1", str(nc_port)], stdout=subprocess.DEVNULL)
    try:
        tracer = trace(*backend.args(), "--filter-protocol", "tcp", "--output-sock-common")
        subprocess.run(
            ["sh", "-c", f"for i in $(seq 50); do curl -sf http://127.0.0.1:{port}/ && break; sleep 0.2; done"],
            check=True,
            capture_output=True,
            timeout=120,
        )
        subprocess.run(["nc", "-N", "127.0.0.1", str(nc_port)], input=b"hello\n", check=True, timeout=60)
        listener.wait(timeout=60)
        result = tracer.stop()
    finally:
        server.kill()
        listener.kill()
        server.wait(timeout=60)
    assert [line for line in result.lines if "(curl)" in line and f":{port} " in line], result.lines[:20]
    assert [line for line in result.lines if parse(line)[0] == server.pid]
    assert [line for line in result.lines if "(nc)" in line and f":{nc_port} " in line]
    assert any("state=ESTABLISHED" in line for line in result.lines)


def test_stack_is_symbolized(trace, backend: Backend) -> None:
    port = free_port()
    func = backend.sees("tcp")[0]
    tracer = trace(*backend.args(func), "--filter-port", str(port), "--output-stack")
    tcp_exchange(port)
    result = tracer.stop()
    assert result.with_func(func)
    frames = [line.strip() for line in result.lines if line.startswith("    ")]
    assert frames and all(not frame.startswith("0x") for frame in frames), frames  # names, not addresses
    assert any(name in "".join(frames) for name in ("tcp_", "inet_", "sock_", "__sys_")), frames


@pytest.mark.userland
def test_output_file_and_line_limit(trace, backend: Backend, tmp_path: Path) -> None:
    port = free_port()
    output = tmp_path / "events.txt"
    tracer = trace(
        *backend.args(), "--filter-port", str(port), "--output-file", str(output), "--output-limit-lines", "3"
    )
    tcp_exchange(port)
    tcp_exchange(port)
    result = tracer.wait()  # ends by itself after three events
    assert result.returncode == 0, result.stderr
    lines = output.read_text().splitlines()
    assert lines[0].startswith("CPU PROCESS") and len(lines) == 4
    counts = result.accounting()
    assert counts["printed"] == 3
    assert (
        counts["runs"]
        == 3 + counts.get("unprinted", 0) + counts["no_sock"] + counts["filtered"] + counts["not_tracing"]
    )


@pytest.mark.backends(best_only=True)
def test_perf_buffer_path(trace, backend: Backend) -> None:
    """Kernels before 5.8 have no ring buffer; the perf buffer path is forced here to keep it honest."""
    port = free_port()
    tracer = trace(*backend.args(), "--perf-buffer", "--filter-port", str(port))
    exchange = tcp_exchange(port)
    result = tracer.stop()
    assert any(
        f":{exchange.client_port} -> 127.0.0.1:{port} " in line for line in result.with_func(*backend.sees("tcp"))
    )
    counts = result.accounting()
    assert counts["printed"] == len(result.lines) and counts["dropped"] == 0


@pytest.mark.userland
@pytest.mark.backends(best_only=True)
def test_zipapp_traces_with_system_python(trace, backend: Backend) -> None:
    """`make dist`'s single file runs with the distribution's own python3 and BCC, like the Go binary did."""
    zipapp = ROOT / "dist" / "socketrace"
    require(zipapp.exists(), "dist/socketrace is not built (make dist; make test builds it first)")
    port = free_port()
    command = ["/usr/bin/python3", str(zipapp)]
    tracer = trace(*backend.args(), "--filter-port", str(port), command=command)
    exchange = tcp_exchange(port)
    result = tracer.stop()
    assert result.returncode == 0, result.stderr
    assert any(f"127.0.0.1:{exchange.client_port} -> 127.0.0.1:{port} " in line for line in result.lines)
    version = subprocess.run([*command, "--version"], capture_output=True, text=True, timeout=300)
    assert version.stdout.startswith(f"socketrace {socketrace.__version__}\n"), version
