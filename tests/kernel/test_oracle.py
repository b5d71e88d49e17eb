"""The oracle tier: independent tools beside socketrace on the same real traffic, agreeing exactly.

bpftrace (the kernel's own tracepoints, its own BPF programs) and ss (inet_diag) watch what
socketrace watches, on real servers and clients (http.server, nginx, curl, ab, netcat, sshd, ssh);
each test asserts the two sides agree event for event or count for count, nothing dropped, and prints
both counts and any difference (``pytest -s`` shows them; a failure's message too). Everything is
filtered on the test's own port or client pid: other traffic on the machine never matters.

On kprobe backends socketrace cannot attach a tracepoint, so the state transitions are compared
through the two kernel functions that fire ``sock:inet_sock_set_state`` (``inet_sk_state_store`` and
``inet_sk_set_state``, net/ipv4/af_inet.c): each call is exactly one event of the tracepoint, and on
entry the socket's sk_state is the old state, the port fields those the tracepoint reads.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from pathlib import Path

import pytest

from .conftest import KPROBE_SET, Backend, TraceResult, free_port
from .oracles import (
    HTTP_CLIENT,
    STATE_FUNCTIONS,
    TCP_CLOSE,
    TCP_LISTEN,
    TCP_SYN_RECV,
    Netcat,
    Sshd,
    SsSocket,
    Transition,
    agree,
    bound,
    bpftrace,
    bpftrace_probe,
    count_script,
    counts,
    curl_and_ab,
    http_server,
    socketrace_counts,
    socketrace_keys,
    ss_sockets,
    state_name,
    state_script,
    wait_all_closed,
)
from .traffic import WaitingProcess

CURLS, AB_REQUESTS = 10, 20  # modest: bpftrace's printf must not overflow its perf buffer
HTTP_REQUESTS = 20


def state_funcs(backend: Backend) -> tuple[str, ...]:
    """What socketrace traces to see each inet_sock_set_state event on this backend (module docstring)."""
    return STATE_FUNCTIONS if backend.is_kprobe else ("inet_sock_set_state",)


def json_events(result: TraceResult) -> list[dict]:
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.lines]


def assert_attached(result: TraceResult, funcs: tuple[str, ...]) -> None:
    """socketrace attached every one of the functions (a missing one would hide its events)."""
    attached = re.search(r"Attached \S+ \(via [^)]*\) to (\d+) ", result.stderr)
    assert attached and int(attached.group(1)) == len(funcs), (funcs, result.stderr)


def assert_nothing_dropped(result: TraceResult) -> None:
    numbers = result.accounting()
    print(f"socketrace accounting: {numbers}")
    assert numbers["dropped"] == 0 and numbers.get("unprinted", 0) == 0, result.stderr
    assert "skipped by the kernel" not in result.stderr, result.stderr  # hits the kernel skipped


def oracle_keys(events: list[Transition]) -> Counter:
    return Counter(event.key() for event in events)


@pytest.mark.parametrize("server", ["http.server", "nginx"])
def test_inet_sock_set_state_per_event_against_bpftrace(trace, backend: Backend, tmp_path: Path, server: str) -> None:
    """Every state transition of every socket on the server's port (listener, accepted children, curl's
    and ab's clients), as bpftrace's tracepoint:sock:inet_sock_set_state prints it: (sk, old state,
    sport, dport), the same multiset on both sides."""
    port = free_port()
    funcs = state_funcs(backend)
    tracer = trace(*backend.args("|".join(funcs)), "--filter-port", str(port), "--output-json")
    with bpftrace(tmp_path, state_script(port), probes=1) as oracle:
        with http_server(server, port, tmp_path):
            connections = curl_and_ab(port, CURLS, AB_REQUESTS)
        # The server is gone, its listener closed: wait until the kernel's tracepoint saw every socket close.
        events = wait_all_closed(oracle, at_least=2 * connections + 1)
        oracle.stop()
    result = tracer.stop()
    mine = json_events(result)
    assert_attached(result, funcs)
    print(f"{server}: {connections} client connections, bpftrace {len(events)} transitions")
    agree(f"inet_sock_set_state on port {port} ({server})", socketrace_keys(mine, funcs), oracle_keys(events))
    assert_nothing_dropped(result)


def count_funcs(backend: Backend) -> tuple[str, ...]:
    """Functions (kprobe backends) or tracepoints whose calls by one process both sides count."""
    if backend.is_kprobe:
        return ("tcp_sendmsg", "tcp_recvmsg", "tcp_close", "inet_release")
    wanted = ("sock_send_length", "sock_recv_length", "inet_sock_set_state", "tcp_probe")
    return tuple(name for name in wanted if name in backend.tracepoints)


def test_counts_per_function_for_one_client_pid(trace, backend: Backend, tmp_path: Path) -> None:
    """One client process (http.client, a connection per request) against http.server: socketrace's
    in-kernel --summary counts per function under --filter-pid equal bpftrace's count() per probe under
    /pid == X/."""
    funcs = count_funcs(backend)
    port = free_port()
    with http_server("http.server", port, tmp_path):
        client = WaitingProcess(HTTP_CLIENT.format(requests=HTTP_REQUESTS, port=port, timeout=bound()))
        try:
            tracer = trace(*backend.args("|".join(funcs)), "--filter-pid", str(client.pid), "--summary")
            probes = [bpftrace_probe(func, backend.is_kprobe) for func in funcs]
            with bpftrace(tmp_path, count_script(probes, client.pid), probes=len(probes)) as oracle:
                client.run(timeout=bound())  # once it has exited, no event can carry its pid any more
                theirs = counts(oracle.stop())
        finally:
            if client.process.poll() is None:
                client.process.kill()
                client.process.wait(timeout=bound())
    result = tracer.stop()
    assert result.returncode == 0, result.stderr
    assert_attached(result, funcs)
    mine = socketrace_counts(tracer.stdout_path.read_text())
    socketrace_side = Counter({func: mine.get(func, 0) for func in funcs})
    oracle_side = Counter({func: theirs.get(probe, 0) for func, probe in zip(funcs, probes)})
    print(f"per function, pid {client.pid}: socketrace {dict(socketrace_side)}, bpftrace {dict(oracle_side)}")
    agree(f"calls per function by pid {client.pid}", socketrace_side, oracle_side)
    # The calls that run in the client itself happened: the sends and receives (kprobes, 6.3+ tracepoints),
    # or its connects' first transitions (older kernels' TCP tracepoints, the others fire in softirq).
    in_client = funcs[:2] if backend.sees_in_sender("tcp") else funcs[:1]
    assert all(oracle_side[func] > 0 for func in in_client), oracle_side
    assert result.accounting()["printed"] == sum(socketrace_side.values()) and result.accounting()["dropped"] == 0


def held_open_sockets(trace, backend: Backend, protocol: str) -> tuple[list[dict], list[SsSocket], int]:
    """netcat's listener and client, a line each way, sockets held open while ss lists them, then a line
    each way again; socketrace traced the port throughout. Returns socketrace's events, ss's sockets on
    the port and the time (CLOCK_MONOTONIC, as the events' ts_ns) ss had answered by."""
    port = free_port()
    tracer = trace(*backend.args(), "--filter-port", str(port), "--output-json")
    netcat = Netcat(protocol, port)
    try:
        netcat.exchange()
        sockets = [s for s in ss_sockets(protocol, port) if s.ino != 0]  # a TIME_WAIT has no file
        asked = time.monotonic_ns()
        netcat.exchange()  # events after ss asked: every cookie is assigned by then
        again = [s for s in ss_sockets(protocol, port) if s.ino != 0]
    finally:
        netcat.close()
    events = json_events(tracer.stop())
    print(f"ss ({protocol}, port {port}): {len(sockets)} sockets; socketrace: {len(events)} events")
    for sock in sockets:
        print(f"  ss: {sock.line}")
    assert len(sockets) >= 2, sockets  # at least the client and the server side
    assert {(s.local, s.peer, s.ino, s.cookie) for s in again} == {(s.local, s.peer, s.ino, s.cookie) for s in sockets}
    return events, sockets, asked


def events_of(events: list[dict], sock: SsSocket, protocol: str) -> list[dict]:
    """socketrace's events of the socket ss shows (by its tuple, which is unique while it is open), with a file."""
    proto = {"tcp": "IPPROTO_TCP", "udp": "IPPROTO_UDP"}[protocol]
    return [
        e
        for e in events
        if (e["saddr"], e["sport"], e["daddr"], e["dport"]) == (*sock.local, *sock.peer)
        and e["protocol"] == proto
        and e["ino"] is not None
    ]


def compare_with_ss(events: list[dict], sockets: list[SsSocket], protocol: str, asked: int) -> list[str]:
    """For every socket ss lists on the port: socketrace saw it, every event's ``ino`` is ss's ino:, and
    every event's ``cookie`` is ss's sk:. The kernel assigns a socket's cookie when something first asks
    for it (here: ss's inet_diag query, or a BPF program's bpf_get_socket_cookie()); until then it is 0.
    So an event from before ss asked may show 0 instead; every one after must show ss's cookie, and
    every connected socket has events after (the second exchange). Returns the failures, after printing."""
    failures = []
    for field in ("ino", "cookie"):
        seen: Counter = Counter()
        expected: Counter = Counter()
        for sock in sockets:
            truth = sock.ino if field == "ino" else sock.cookie
            name = f"{sock.state} {sock.local[0]}:{sock.local[1]} -> {sock.peer[0]}:{sock.peer[1]}"
            mine = events_of(events, sock, protocol)
            after = [e for e in mine if e["ts_ns"] > asked]
            if sock.peer[1] != 0 and not after:
                seen[(name, "no event after ss asked")] += 1
            for event in mine or [{}]:
                value = event.get(field, "<no such field>") if event else "<no event>"
                if field == "cookie" and value == 0 and event["ts_ns"] <= asked:
                    value = truth  # not assigned yet at the time: allowed before ss asked
                seen[(name, field, value)] += 1
                expected[(name, field, truth)] += 1
        print(f"{field}: {sum(seen.values())} socketrace events of {len(sockets)} {protocol} sockets checked")
        try:
            agree(f"{field} of {len(sockets)} {protocol} sockets", seen, expected, oracle_name="ss")
        except AssertionError as err:
            failures.append(str(err))
    return failures


def test_tcp_inode_and_cookie_against_ss(trace, backend: Backend) -> None:
    """The JSON ``ino`` is the inode ss prints as ino:N, ``cookie`` (an integer) the cookie it prints as sk:<hex>."""
    events, sockets, asked = held_open_sockets(trace, backend, "tcp")
    failures = compare_with_ss(events, sockets, "tcp", asked)
    assert not failures, "\n".join(failures)


@pytest.mark.backends(sees=("udp",))
def test_udp_inode_and_cookie_against_ss(trace, backend: Backend) -> None:
    events, sockets, asked = held_open_sockets(trace, backend, "udp")
    failures = compare_with_ss(events, sockets, "udp", asked)
    assert not failures, "\n".join(failures)


def chain(events: list[Transition], start: int) -> list[str]:
    """The states a socket went through, followed from ``start`` (its events may arrive out of order
    from the per-CPU buffers; in one lifetime each state is left at most once)."""
    following = {event.old: event.new for event in events}
    assert len(following) == len(events), events  # no state left twice: one lifetime
    states, state = [start], start
    while state in following:
        state = following.pop(state)
        states.append(state)
        if state == TCP_CLOSE:
            break
    assert not following, (states, events)
    return [state_name(s) for s in states]


def test_sshd_connection_from_syn_to_close(trace, backend: Backend, tmp_path: Path) -> None:
    """Debian's sshd on its own port, a real ssh client running a command: both sides of the connection
    from SYN to close, with the same inet_sock_set_state transitions as bpftrace."""
    port = free_port()
    funcs = state_funcs(backend)
    traced = f"{KPROBE_SET}|{'|'.join(funcs)}" if backend.is_kprobe else None  # tracepoints: all of them
    tracer = trace(*backend.args(traced), "--filter-port", str(port), "--output-json")
    with bpftrace(tmp_path, state_script(port), probes=1) as oracle:
        sshd = Sshd(tmp_path, port)
        try:
            client = sshd.client("echo oracle")
            out, err = client.communicate(timeout=bound())
        finally:
            sshd.stop()
        assert client.returncode == 0 and out == "oracle\n", f"{err}\n{sshd.log.read_text()}"
        events = wait_all_closed(oracle, at_least=3)  # listener, client, accepted child
        oracle.stop()
    mine = json_events(tracer.stop())

    clients = {e.sk for e in events if e.old == TCP_CLOSE and e.dport == port}
    children = {e.sk for e in events if e.old == TCP_LISTEN and e.new == TCP_SYN_RECV}
    assert len(clients) == 1 and len(children) == 1, events
    client_path = chain([e for e in events if e.sk in clients], TCP_CLOSE)
    child_path = chain([e for e in events if e.sk in children], TCP_LISTEN)
    print(f"bpftrace: client {' -> '.join(client_path)}; server {' -> '.join(child_path)}")
    assert client_path[:3] == ["CLOSE", "SYN_SENT", "ESTABLISHED"] and client_path[-1] == "CLOSE", client_path
    assert child_path[:3] == ["LISTEN", "SYN_RECV", "ESTABLISHED"] and child_path[-1] == "CLOSE", child_path
    agree(f"inet_sock_set_state of sshd on port {port}", socketrace_keys(mine, funcs), oracle_keys(events))

    # Both ends' data: the client's sends carry ssh's pid where the backend shows the sender.
    sends = [e for e in mine if e["func"] in backend.sees("tcp")]
    client_sends = [e for e in sends if e["dport"] == port]
    server_sends = [e for e in sends if e["sport"] == port and e["dport"] != 0]
    print(f"socketrace: {len(mine)} events, {len(client_sends)} client sends, {len(server_sends)} server sends")
    assert client_sends and server_sends, mine
    if backend.sees_in_sender("tcp"):
        assert {e["pid"] for e in client_sends} == {client.pid}, client_sends


@pytest.mark.backends(best_only=True)
def test_a_filter_leaves_out_the_ssh_session_and_nothing_else(trace, backend: Backend, tmp_path: Path) -> None:
    """`--filter 'not sport = :P and not dport = :P'` beside a real sshd on P, as a user excludes the
    session they type in: none of the session's events is printed (either end, from SYN to close),
    while other TCP traffic (netcat on another port, during the session) still is."""
    port, other = free_port(), free_port()
    tracer = trace(*backend.args(), "--filter", f"not sport = :{port} and not dport = :{port}", "--output-json")
    sshd = Sshd(tmp_path, port)
    try:
        client = sshd.client("echo oracle")
        netcat = Netcat("tcp", other)
        try:
            netcat.exchange()
        finally:
            netcat.close()
        out, err = client.communicate(timeout=bound())
    finally:
        sshd.stop()
    assert client.returncode == 0 and out == "oracle\n", f"{err}\n{sshd.log.read_text()}"
    events = json_events(tracer.stop())
    session = [e for e in events if port in (e["sport"], e["dport"])]
    others = [e for e in events if other in (e["sport"], e["dport"])]
    print(f"socketrace: {len(events)} events, {len(session)} of the ssh session, {len(others)} of netcat")
    assert not session, session[:5]
    assert {e["sport"] for e in others} >= {other} and {e["dport"] for e in others} >= {other}, others[:10]
