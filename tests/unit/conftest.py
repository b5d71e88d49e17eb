from __future__ import annotations

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
