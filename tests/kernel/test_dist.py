"""The single-file build (`make dist`) traces with the system Python, like the Go binary did."""

from __future__ import annotations

import subprocess
from pathlib import Path

from .conftest import free_port
from .traffic import tcp_exchange

ROOT = Path(__file__).parents[2]
SYSTEM_PYTHON = "/usr/bin/python3"


def test_zipapp_traces_with_system_python(trace) -> None:
    subprocess.run(["make", "-C", str(ROOT), "dist"], check=True, capture_output=True)
    port = free_port()
    tracer = trace("--filter-port", str(port), command=[SYSTEM_PYTHON, str(ROOT / "dist" / "socketrace")])
    exchange = tcp_exchange(port)
    result = tracer.stop()
    assert result.returncode == 0, result.stderr
    assert any(f"127.0.0.1:{exchange.client_port} -> 127.0.0.1:{port} " in line for line in result.lines)
