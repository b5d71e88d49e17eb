"""Independent tools beside socketrace, for the oracle tier (test_oracle.py): bpftrace, ss, and real
servers and clients (Python's http.server, nginx, curl, ab, netcat, OpenSSH).

bpftrace runs in a private mount namespace with tracefs (and debugfs, where bpftrace 0.11 reads
tracepoint formats) mounted there, so the machine's mounts stay as they are. Its "Attaching N
probes..." line comes before it attaches (and its BEGIN probe fires before too), so it counts as ready
only once ``bpftool perf show`` lists every one of its kernel attach points on its pid. Every wait is
on a condition, bounded by a timeout.
"""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..conftest import require, require_tool
from .conftest import pace, require_ss

# Every bound is a number of tracer starts (conftest.Pace: a slower machine stretches them all alike),
# never under a generous floor; no wait is a fixed sleep.
WAIT_STARTS = 30
WAIT_FLOOR = 300


def bound() -> float:
    """The bound of one wait of this tier, in seconds."""
    return max(WAIT_FLOOR, pace().seconds(WAIT_STARTS))


# The kernel's numbering of sk_state (include/net/tcp_states.h), which the tracepoint prints as numbers.
TCP_STATES = (
    "UNKNOWN ESTABLISHED SYN_SENT SYN_RECV FIN_WAIT1 FIN_WAIT2 TIME_WAIT CLOSE CLOSE_WAIT "
    "LAST_ACK LISTEN CLOSING NEW_SYN_RECV BOUND_INACTIVE"
).split()
TCP_CLOSE, TCP_LISTEN, TCP_SYN_RECV = 7, 10, 3
# The category of each tracepoint the oracles use (bpftrace names tracepoints by category:name).
TRACEPOINT_CATEGORY = {
    "inet_sock_set_state": "sock",
    "sock_send_length": "sock",
    "sock_recv_length": "sock",
    "tcp_probe": "tcp",
    "tcp_destroy_sock": "tcp",
}
# The kernel functions that fire tracepoint:sock:inet_sock_set_state (net/ipv4/af_inet.c), each on entry
# with the socket and its old state in sk_state: what a kprobe backend sees of each transition.
STATE_FUNCTIONS = ("inet_sk_state_store", "inet_sk_set_state")


def wait_until(condition: Callable[[], bool], timeout: float | None = None, what: str = "a condition") -> None:
    timeout = timeout or bound()
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


def stop_process(process: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    """Signal a process we started, wait for it; kill it if it does not end in time."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=bound())
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=bound())


# ---------------------------------------------------------------------------------------------- bpftrace

_MOUNTS = (
    'grep -q " /sys/kernel/tracing tracefs " /proc/mounts || mount -t tracefs nodev /sys/kernel/tracing; '
    'grep -q " /sys/kernel/debug debugfs " /proc/mounts || mount -t debugfs nodev /sys/kernel/debug; '
    'exec "$@"'
)
_ATTACH_TYPES = {"tracepoint", "kprobe", "kretprobe", "raw_tracepoint"}


class Bpftrace:
    """bpftrace with a script, its output in files; ``probes`` is its number of kernel attach points."""

    def __init__(self, tmp_path: Path, script: str, probes: int) -> None:
        self.bpftrace = require_tool("bpftrace")
        self.bpftool = require_tool("bpftool")
        unshare = require_tool("unshare")
        self.probes = probes
        name = uuid.uuid4().hex
        self.script_path = tmp_path / f"oracle-{name}.bt"
        self.script_path.write_text(script)
        self.stdout_path = tmp_path / f"bpftrace-{name}.out"
        self.stderr_path = tmp_path / f"bpftrace-{name}.err"
        with open(self.stdout_path, "w") as out, open(self.stderr_path, "w") as err:
            # unshare -m execs sh, which execs bpftrace: the pid is bpftrace's. -B line: live printf output.
            self.process = subprocess.Popen(
                [unshare, "-m", "sh", "-c", _MOUNTS, "sh", self.bpftrace, "-B", "line", str(self.script_path)],
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
            )

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text()

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def _perf_entries(self) -> list[dict]:
        listing = subprocess.run(
            [self.bpftool, "-j", "perf", "show"], capture_output=True, text=True, timeout=bound(), check=True
        ).stdout
        entries = json.loads(listing or "[]")
        return [e for e in entries if e.get("pid") == self.process.pid and e.get("fd_type") in _ATTACH_TYPES]

    def _attached(self) -> int:
        return len(self._perf_entries())

    def recursion_misses(self) -> int:
        """Runs the kernel skipped because another BPF program was running on that CPU (a perf-event
        program's recursion guard): each one is an event bpftrace never saw. 0 where bpftool does not say."""
        misses = 0
        for prog_id in {e["prog_id"] for e in self._perf_entries()}:
            shown = subprocess.run(
                [self.bpftool, "-j", "prog", "show", "id", str(prog_id)],
                capture_output=True,
                text=True,
                timeout=bound(),
            )
            if shown.returncode == 0 and shown.stdout.strip():
                misses += int(json.loads(shown.stdout).get("recursion_misses", 0))
        return misses

    def wait_ready(self, timeout: float | None = None) -> Bpftrace:
        timeout = timeout or bound()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"bpftrace exited early ({self.process.returncode}): {self.stderr}\n{self.stdout}\n"
                    f"script:\n{self.script_path.read_text()}"
                )
            if "Attaching" in self.stdout and self._attached() >= self.probes:
                return self
            time.sleep(0.1)
        stop_process(self.process, signal.SIGKILL)
        raise AssertionError(f"bpftrace not attached to {self.probes} probes after {timeout}s: {self.stderr}")

    def stop(self, timeout: float | None = None) -> str:
        """SIGINT (bpftrace prints its maps then), wait; its stdout. Fails if it lost events."""
        timeout = timeout or bound()
        misses = self.recursion_misses() if self.process.poll() is None else 0
        assert misses == 0, f"the kernel skipped {misses} runs of bpftrace's programs (recursion): no oracle"
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop_process(self.process, signal.SIGKILL)
            raise AssertionError(f"bpftrace did not end within {timeout}s: {self.stderr}") from None
        out, err = self.stdout, self.stderr
        lost = re.search(r"Lost (\d+) events", out + err)
        assert not lost, f"bpftrace lost {lost.group(1)} events: its output is incomplete, no oracle"
        return out


@contextmanager
def bpftrace(tmp_path: Path, script: str, probes: int) -> Iterator[Bpftrace]:
    """A started and attached bpftrace, killed on the way out if the test did not stop it."""
    tracer = Bpftrace(tmp_path, script, probes)
    try:
        yield tracer.wait_ready()
    finally:
        stop_process(tracer.process, signal.SIGKILL)


@dataclass(frozen=True)
class Transition:
    """One tracepoint:sock:inet_sock_set_state event."""

    sk: int
    old: int
    new: int
    sport: int
    dport: int

    def key(self) -> tuple[int, str, int, int]:
        """What socketrace's event of the same transition must show: sk, state (the old one), sport, dport."""
        return (self.sk, state_name(self.old), self.sport, self.dport)


def state_name(state: int) -> str:
    return TCP_STATES[state] if 0 <= state < len(TCP_STATES) else str(state)


def state_script(port: int) -> str:
    """Every transition of a socket with local or remote port ``port``: one probe."""
    return (
        f"tracepoint:sock:inet_sock_set_state /args->sport == {port} || args->dport == {port}/\n"
        '{ printf("STATE %p %d %d %d %d\\n", args->skaddr, args->oldstate, args->newstate, '
        "args->sport, args->dport); }\n"
    )


_STATE_LINE = re.compile(r"^STATE (0x[0-9a-f]+|\d+) (\d+) (\d+) (\d+) (\d+)$", re.M)


def transitions(text: str) -> list[Transition]:
    return [
        Transition(int(sk, 0), int(old), int(new), int(sport), int(dport))
        for sk, old, new, sport, dport in _STATE_LINE.findall(text)
    ]


def lifecycles(events: Iterable[Transition]) -> tuple[int, int]:
    """(sockets begun, sockets not yet closed): a socket begins at CLOSE->(SYN_SENT|LISTEN) or, accepted,
    at LISTEN->SYN_RECV (the new child), and ends at ->CLOSE. Counted per address, whatever the order
    the per-CPU buffers delivered the events in (an address is reused once its socket is freed)."""
    open_per_sk: Counter[int] = Counter()
    begun = 0
    for event in events:
        if event.old == TCP_CLOSE or (event.old == TCP_LISTEN and event.new == TCP_SYN_RECV):
            open_per_sk[event.sk] += 1
            begun += 1
        if event.new == TCP_CLOSE:
            open_per_sk[event.sk] -= 1
    return begun, sum(1 for count in open_per_sk.values() if count != 0)


def wait_all_closed(oracle: Bpftrace, at_least: int, timeout: float | None = None) -> list[Transition]:
    """Wait until bpftrace saw ``at_least`` sockets begin and every one of them close."""
    timeout = timeout or bound()

    def done() -> bool:
        begun, still_open = lifecycles(transitions(oracle.stdout))
        return begun >= at_least and still_open == 0

    try:
        wait_until(done, timeout, f"{at_least} sockets to open and close")
    except AssertionError as err:
        begun, still_open = lifecycles(transitions(oracle.stdout))
        raise AssertionError(f"{err}: bpftrace saw {begun} begin, {still_open} still open:\n{oracle.stdout}") from None
    return transitions(oracle.stdout)


def count_script(probes: Iterable[str], pid: int) -> str:
    """One counting block per probe (``kprobe:tcp_sendmsg``, ``tracepoint:sock:sock_send_length``)."""
    return "".join(f"{probe} /pid == {pid}/ {{ @[probe] = count(); }}\n" for probe in probes)


def counts(text: str) -> dict[str, int]:
    """bpftrace's map printout at exit: ``@[kprobe:tcp_sendmsg]: 12``."""
    return {probe: int(count) for probe, count in re.findall(r"^@\[(.+?)\]: (\d+)$", text, re.M)}


def bpftrace_probe(func: str, is_kprobe: bool) -> str:
    return f"kprobe:{func}" if is_kprobe else f"tracepoint:{TRACEPOINT_CATEGORY[func]}:{func}"


# ------------------------------------------------------------------------------------------ socketrace


def socketrace_counts(summary_text: str) -> dict[str, int]:
    """The FUNCTION table of ``--summary``'s last (on-exit) report."""
    report = summary_text.rsplit("=== ", 1)[-1]
    table = report.split("\nFUNCTION", 1)[1].split("\n\n", 1)[0]
    return {name: int(count) for name, count in re.findall(r"^(\S+)\s+(\d+)$", table, re.M)}


def socketrace_keys(events: Iterable[dict], funcs: Iterable[str]) -> Counter:
    """(sk, state, sport, dport) of socketrace's JSON events of the given functions."""
    wanted = set(funcs)
    return Counter((int(e["sk"], 16), e["state"], e["sport"], e["dport"]) for e in events if e["func"] in wanted)


def describe_key(key: tuple) -> str:
    sk, state, sport, dport = key
    return f"sk=0x{sk:x} state={state} sport={sport} dport={dport}"


def agree(what: str, socketrace: Counter, oracle: Counter, oracle_name: str = "bpftrace") -> None:
    """Exactly equal multisets, or a failure that shows both counts and the differences (printed too, for -s)."""
    only_socketrace = socketrace - oracle
    only_oracle = oracle - socketrace
    lines = [
        f"{what}: socketrace {sum(socketrace.values())} ({len(socketrace)} distinct), "
        f"{oracle_name} {sum(oracle.values())} ({len(oracle)} distinct); "
        f"{sum(only_socketrace.values())} only in socketrace, {sum(only_oracle.values())} only in {oracle_name}"
    ]
    for label, diff in (("only in socketrace", only_socketrace), (f"only in {oracle_name}", only_oracle)):
        for key, count in sorted(diff.items(), key=str)[:40]:
            lines.append(
                f"  {label}: {describe_key(key) if isinstance(key, tuple) and len(key) == 4 else key} x{count}"
            )
        if len(diff) > 40:
            lines.append(f"  {label}: ... {len(diff) - 40} more")
    report = "\n".join(lines)
    print(report)
    assert not only_socketrace and not only_oracle, report


# ------------------------------------------------------------------------------------------------- ss


@dataclass(frozen=True)
class SsSocket:
    state: str
    local: tuple[str, int]
    peer: tuple[str, int]
    ino: int
    cookie: int
    line: str


def _endpoint(text: str) -> tuple[str, int]:
    address, _, port = text.rpartition(":")
    return address.strip("[]"), 0 if port == "*" else int(port)


def ss_sockets(protocol: str, port: int) -> list[SsSocket]:
    """ss -tanHe / -uanHe for sockets with local or remote port ``port`` (ss's filter, evaluated by the kernel)."""
    ss = require_ss()
    flag = {"tcp": "-tanHe", "udp": "-uanHe"}[protocol]
    text = subprocess.run(
        [ss, flag, f"( sport = :{port} or dport = :{port} )"],
        capture_output=True,
        text=True,
        timeout=bound(),
        check=True,
    ).stdout
    found = []
    for line in text.splitlines():
        fields = line.split()
        ino, cookie = re.search(r"\bino:(\d+)", line), re.search(r"\bsk:([0-9a-f]+)", line)
        if len(fields) < 5 or not ino or not cookie:
            continue
        found.append(
            SsSocket(fields[0], _endpoint(fields[3]), _endpoint(fields[4]), int(ino[1]), int(cookie[1], 16), line)
        )
    return found


def wait_listening(protocol: str, port: int, timeout: float | None = None) -> None:
    """Wait until a socket is bound to ``port`` (asked of ss: probing with a connection would be traffic)."""
    timeout = timeout or bound()
    state = "LISTEN" if protocol == "tcp" else "UNCONN"
    wait_until(
        lambda: any(s.state == state and s.local[1] == port for s in ss_sockets(protocol, port)),
        timeout,
        f"a {protocol} socket bound to port {port}",
    )


# -------------------------------------------------------------------------------------- servers, clients


@contextmanager
def http_server(kind: str, port: int, tmp_path: Path) -> Iterator[subprocess.Popen]:
    """Python's http.server or Debian's nginx on 127.0.0.1:port, serving a small index.html; stopped (so
    its listener closed) on the way out."""
    root = tmp_path / f"www-{port}"
    root.mkdir(exist_ok=True)
    (root / "index.html").write_text("hello\n")
    if kind == "http.server":
        command = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]
        sig = signal.SIGTERM
    else:
        nginx = require_tool("nginx")
        conf = tmp_path / f"nginx-{port}.conf"
        temp = tmp_path / f"nginx-{port}-temp"
        temp.mkdir(exist_ok=True)
        conf.write_text(
            "daemon off;\nmaster_process on;\nworker_processes 1;\nuser root;\n"
            f"pid {tmp_path}/nginx-{port}.pid;\nerror_log stderr;\n"
            "events { worker_connections 128; }\n"
            "http {\n  access_log off;\n"
            f"  client_body_temp_path {temp}/body;\n  proxy_temp_path {temp}/proxy;\n"
            f"  fastcgi_temp_path {temp}/fastcgi;\n  scgi_temp_path {temp}/scgi;\n  uwsgi_temp_path {temp}/uwsgi;\n"
            f"  server {{ listen 127.0.0.1:{port}; root {root}; }}\n}}\n"
        )
        command = [nginx, "-p", str(tmp_path), "-c", str(conf)]
        sig = signal.SIGQUIT  # graceful: the master waits for its worker
    server = subprocess.Popen(command, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        try:
            wait_listening("tcp", port)
        except AssertionError:
            stop_process(server, signal.SIGKILL)
            raise AssertionError(f"{kind} did not listen on {port}: {server.stderr.read().decode()}") from None
        yield server
    finally:
        stop_process(server, sig)
        server.stderr.close()


def curl_and_ab(port: int, curls: int, requests: int) -> int:
    """``curls`` curl processes, then ``ab -n requests -c 4``; each request on a connection of its own
    (curl one per process, ab without -k). Returns the number of client connections."""
    curl, ab = require_tool("curl"), require_tool("ab")
    url = f"http://127.0.0.1:{port}/index.html"
    for _ in range(curls):
        subprocess.run([curl, "-sf", "-o", "/dev/null", url], check=True, timeout=bound())
    done = subprocess.run(
        [ab, "-q", "-n", str(requests), "-c", "4", url], capture_output=True, text=True, timeout=bound()
    )
    assert done.returncode == 0 and re.search(rf"Complete requests:\s+{requests}\b", done.stdout), done.stdout
    assert re.search(r"Failed requests:\s+0\b", done.stdout), done.stdout
    return curls + requests


HTTP_CLIENT = """
import http.client, sys
for _ in range({requests}):
    connection = http.client.HTTPConnection("127.0.0.1", {port}, timeout={timeout})
    connection.request("GET", "/index.html")
    assert connection.getresponse().read() == b"hello\\n"
    connection.close()
"""


def read_line(stream, timeout: float | None = None) -> bytes:
    """One line from a subprocess pipe (unbuffered), within a timeout, however it arrives in pieces."""
    timeout = timeout or bound()
    deadline = time.monotonic() + timeout
    line = b""
    while not line.endswith(b"\n"):
        ready, _, _ = select.select([stream], [], [], max(0.0, deadline - time.monotonic()))
        assert ready, f"no whole line within {timeout:.0f} s (got {line!r})"
        chunk = os.read(stream.fileno(), 4096)
        assert chunk, f"end of output before a whole line (got {line!r})"
        line += chunk
    return line


class Netcat:
    """netcat-openbsd: a listener on 127.0.0.1:port and a client connected to it (TCP or UDP), pipes
    held open so their sockets stay until close()."""

    def __init__(self, protocol: str, port: int) -> None:
        nc = require_tool("nc")
        udp = ["-u"] if protocol == "udp" else []
        pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "stderr": subprocess.DEVNULL, "bufsize": 0}
        self.server = subprocess.Popen([nc, *udp, "-l", "127.0.0.1", str(port)], **pipes)
        self.client: subprocess.Popen | None = None
        try:
            wait_listening(protocol, port)
            self.client = subprocess.Popen([nc, *udp, "127.0.0.1", str(port)], **pipes)
        except BaseException:
            self.close()
            raise

    def exchange(self) -> None:
        """A line each way: both sockets send and receive."""
        assert self.client is not None
        self.client.stdin.write(b"from the client\n")
        assert read_line(self.server.stdout) == b"from the client\n"
        self.server.stdin.write(b"from the server\n")
        assert read_line(self.client.stdout) == b"from the server\n"

    def close(self) -> None:
        for process in (self.client, self.server):
            if process is not None:
                stop_process(process)
                for pipe in (process.stdin, process.stdout):
                    pipe.close()


class Sshd:
    """Debian's OpenSSH server on 127.0.0.1:port with its own config and host key in tmp, and a client
    key authorized for root (so ``ssh root@127.0.0.1 cmd`` runs cmd)."""

    def __init__(self, tmp_path: Path, port: int) -> None:
        self.sshd = "/usr/sbin/sshd"  # sshd refuses to re-exec itself from a relative path
        require(os.access(self.sshd, os.X_OK), "openssh-server is not installed (/usr/sbin/sshd)")
        self.ssh = require_tool("ssh")
        keygen = require_tool("ssh-keygen")
        self.dir = tmp_path / f"sshd-{port}"
        self.dir.mkdir()
        self.port = port
        for key in ("host", "client"):
            subprocess.run(
                [keygen, "-q", "-N", "", "-t", "ed25519", "-f", str(self.dir / key)], check=True, timeout=bound()
            )
        shutil.copy(self.dir / "client.pub", self.dir / "authorized_keys")
        config = self.dir / "sshd_config"
        config.write_text(
            "ListenAddress 127.0.0.1\nPidFile none\nUsePAM no\nStrictModes no\n"
            f"AuthorizedKeysFile {self.dir}/authorized_keys\nPasswordAuthentication no\n"
            "PermitRootLogin prohibit-password\n"
        )
        try:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # the privilege-separation directory
        except OSError as err:
            require(False, f"cannot make sshd's privilege-separation directory /run/sshd: {err}")
        self.log = self.dir / "sshd.log"
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(
                [self.sshd, "-D", "-e", "-f", str(config), "-p", str(port), "-h", str(self.dir / "host")],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        try:
            wait_listening("tcp", port)
        except AssertionError:
            self.stop()
            raise AssertionError(f"sshd did not listen: {self.log.read_text()}") from None

    def client(self, command: str) -> subprocess.Popen:
        return subprocess.Popen(
            [
                self.ssh, "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
                "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=120", "-i", str(self.dir / "client"),
                "-p", str(self.port), "root@127.0.0.1", command,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )  # fmt: skip

    def stop(self) -> None:
        stop_process(self.process)
