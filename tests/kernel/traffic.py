"""Real socket traffic for the tracing tests: TCP and UDP exchanges over loopback."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

LOOPBACK = {socket.AF_INET: "127.0.0.1", socket.AF_INET6: "::1"}
# Server-side waits are bounded. Clients stay blocking: Python makes a socket with a timeout
# non-blocking, and the kernel leaves a non-blocking connect's socket->state at SS_CONNECTING.
SERVER_TIMEOUT = 120


@dataclass(frozen=True)
class Exchange:
    """What one exchange used: the client's port and its socket's inode."""

    client_port: int
    client_inode: int


def tcp_exchange(port: int, family: int = socket.AF_INET, host: str | None = None, mark: int = 0) -> Exchange:
    """Listen, connect, send a request, echo it back, close both ends."""
    host = host or LOOPBACK[family]
    with socket.socket(family, socket.SOCK_STREAM) as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.settimeout(SERVER_TIMEOUT)
        server.bind((host, port))
        server.listen()

        def serve() -> None:
            conn, _ = server.accept()
            with conn:
                conn.settimeout(SERVER_TIMEOUT)
                conn.sendall(conn.recv(100))

        thread = threading.Thread(target=serve)
        thread.start()
        with socket.socket(family, socket.SOCK_STREAM) as client:
            if mark:
                client.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
            client.connect((host, port))
            client.sendall(b"ping")
            assert client.recv(100) == b"ping"
            exchange = Exchange(client.getsockname()[1], _inode(client))
        thread.join(timeout=10)
    return exchange


def udp_exchange(port: int, family: int = socket.AF_INET, host: str | None = None) -> Exchange:
    """A connected UDP client sends a datagram; the server answers it."""
    host = host or LOOPBACK[family]
    with socket.socket(family, socket.SOCK_DGRAM) as server, socket.socket(family, socket.SOCK_DGRAM) as client:
        server.settimeout(SERVER_TIMEOUT)
        server.bind((host, port))
        client.connect((host, port))
        client.send(b"ping")
        data, peer = server.recvfrom(100)
        server.sendto(data, peer)
        assert client.recv(100) == b"ping"
        return Exchange(client.getsockname()[1], _inode(client))


def _inode(sock: socket.socket) -> int:
    return os.fstat(sock.fileno()).st_ino


def run_python(code: str, netns: str | None = None) -> str:
    """Run Python code in another process (inside a network namespace if given); its stdout."""
    prefix = ["ip", "netns", "exec", netns] if netns else []
    preamble = f"import sys; sys.path[:0] = {sys.path!r}; "
    result = subprocess.run(
        [*prefix, sys.executable, "-c", preamble + code],
        cwd=Path(__file__).parents[2],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result.stdout


def tcp_exchange_elsewhere(port: int, netns: str | None = None) -> int:
    """tcp_exchange() in another process; returns the client's port."""
    code = f"from tests.kernel.traffic import tcp_exchange; print(tcp_exchange({port}).client_port)"
    return int(run_python(code, netns))


def unix_exchange() -> None:
    """A message across a connected pair of AF_UNIX stream sockets."""
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with left, right:
        left.sendall(b"ping")
        assert right.recv(100) == b"ping"


def every_family(port: int) -> dict[str, int]:
    """TCP and UDP over IPv4 and IPv6, a unix socket pair, and a netlink request from `ip`."""
    ports = {
        "tcp4": tcp_exchange(port).client_port,
        "tcp6": tcp_exchange(port, socket.AF_INET6).client_port,
        "udp4": udp_exchange(port).client_port,
        "udp6": udp_exchange(port, socket.AF_INET6).client_port,
    }
    unix_exchange()
    ports["ip_pid"] = subprocess.Popen(["ip", "link", "show"], stdout=subprocess.DEVNULL).pid
    return ports


class WaitingProcess:
    """Python code in another process (and namespace) that runs when told to: its pid is
    known before it makes any traffic, so a tracer can filter on it."""

    def __init__(self, code: str, netns: str | None = None) -> None:
        prefix = ["ip", "netns", "exec", netns] if netns else []
        preamble = f"import sys; sys.path[:0] = {sys.path!r}; sys.stdin.readline(); "
        self.process = subprocess.Popen(
            [*prefix, sys.executable, "-c", preamble + code],
            cwd=Path(__file__).parents[2],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.pid = self.process.pid  # `ip netns exec` execs Python in place

    def run(self, timeout: float = 300) -> str:
        stdout, _ = self.process.communicate("go\n", timeout=timeout)
        assert self.process.returncode == 0
        return stdout


_FLOOD = """
import socket, sys, time
until = float(sys.argv[1])
server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
server.bind(("127.0.0.1", 0))
server.setblocking(False)
client.connect(server.getsockname())
while time.time() < until:
    for _ in range(100):
        client.send(b"x" * 64)
        try:
            server.recv(100)
        except BlockingIOError:
            pass
"""


class UdpFlood:
    """UDP ping-pong loops on loopback in separate processes, as fast as they go, until the block ends;
    ``seconds`` bounds them should the test itself be killed (the caller's share of its wait bounds)."""

    def __init__(self, senders: int, seconds: float) -> None:
        self._args = [str(time.time() + seconds)]
        self._senders = senders
        self._processes: list[subprocess.Popen] = []

    def __enter__(self) -> UdpFlood:
        self._processes = [subprocess.Popen([sys.executable, "-c", _FLOOD, *self._args]) for _ in range(self._senders)]
        return self

    def __exit__(self, *_exc: object) -> None:
        for process in self._processes:
            process.kill()
        for process in self._processes:
            process.wait(timeout=60)


def short_lived_udp_sockets(count: int, port: int) -> None:
    """``count`` UDP sockets that each send one datagram to ``port`` and close: a flood of new socket identities."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind(("127.0.0.1", port))
        server.setblocking(False)
        for index in range(count):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
                client.sendto(b"x", ("127.0.0.1", port))
            if index % 64 == 0:
                with contextlib.suppress(BlockingIOError):
                    while True:
                        server.recv(16)
