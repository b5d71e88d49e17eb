from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from socketrace.btf import Btf, load_btf_file

from ..conftest import require_tool


@pytest.fixture(scope="session")
def clang_btf(tmp_path_factory: pytest.TempPathFactory) -> Btf:
    """BTF of tests/unit/fixture_types.c, compiled by clang and read back from the ELF."""
    clang = require_tool("clang")
    source = Path(__file__).with_name("fixture_types.c")
    obj = tmp_path_factory.mktemp("btf") / "fixture_types.o"
    subprocess.run([clang, "-g", "-O0", "-target", "bpf", "-c", str(source), "-o", str(obj)], check=True, timeout=120)
    return load_btf_file(obj)


# The services the unit tests name, as Debian's netbase lists them: a minimal root (the guests'
# userlands) has no /etc/services, and the tests are about the parser, not the machine's file.
SERVICES = {"ssh": 22, "http": 80, "https": 443, "domain": 53}


@pytest.fixture(autouse=True)
def services(monkeypatch: pytest.MonkeyPatch) -> None:
    """socket.getservbyname answers SERVICES; other names go to the real lookup (and fail, mostly)."""
    lookup = socket.getservbyname

    def getservbyname(name: str, protocol: str | None = None) -> int:
        return SERVICES[name] if name in SERVICES else (lookup(name, protocol) if protocol else lookup(name))

    monkeypatch.setattr(socket, "getservbyname", getservbyname)
