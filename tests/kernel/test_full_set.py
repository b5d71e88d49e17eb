"""The full set of socket functions, once per kprobe backend, with every family of traffic in a namespace."""

from __future__ import annotations

import json
import os
import re

import pytest

from .conftest import Backend, free_port, parse
from .traffic import WaitingProcess, tcp_exchange


@pytest.mark.backends("kprobe", "kprobe-multi")
def test_full_set_every_family_in_a_namespace(trace, backend: Backend, netns: str) -> None:
    port = free_port()
    inode = os.stat(f"/run/netns/{netns}").st_ino
    traffic = WaitingProcess(
        f"import json; from tests.kernel.traffic import every_family; print(json.dumps(every_family({port})))", netns
    )
    tracer = trace("--kprobe-way", backend.way, "--wait-detach", "--filter-netns", netns)
    attached = re.search(rf"Attached kprobes \(via {backend.way}\) to (\d+) functions", tracer.stderr)
    assert attached and int(attached.group(1)) > 1000, tracer.stderr
    tcp_exchange(port)  # the root namespace: filtered out
    ports = json.loads(traffic.run())
    result = tracer.stop()  # once the output has caught up with the traffic
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
    assert not any(re.match(r"^\S+\s+\S+\s+(0x|unknown)", line) for line in result.lines)  # names, never addresses
