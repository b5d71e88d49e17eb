"""socketrace installed as users install it: a wheel in a fresh venv, pipx, the single-file zipapp.

The wheel must carry the C program and its stand-in headers; the venv sees the
distribution's BCC through --system-site-packages; without BCC the command says
so in one line. These need PyPI (for click, tqdm, pyelftools) and a writable
checkout, so they run on the host, not in the guests (which test the wheel
built here, installed into each guest's own Python: see tests/vm).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

import socketrace

from ..conftest import require, require_tool
from .conftest import ROOT, SYSTEM_PYTHON, Tracer, free_port
from .traffic import tcp_exchange


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel `pip wheel .` builds from this checkout, and what it holds."""
    require(os.access(ROOT, os.W_OK), "the checkout is read-only (building a wheel writes into it)")
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [SYSTEM_PYTHON, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    (built,) = out.glob("socketrace-*.whl")
    return built


def _traces(command: list[str], tmp_path: Path) -> None:
    port = free_port()
    tracer = Tracer(tmp_path, "--filter-port", str(port), command=command)
    tracer.wait_ready()
    exchange = tcp_exchange(port)
    result = tracer.stop()
    assert result.returncode == 0, result.stderr
    assert any(f"127.0.0.1:{exchange.client_port} -> 127.0.0.1:{port} " in line for line in result.lines)


def test_wheel_carries_the_bpf_program(wheel: Path) -> None:
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    for needed in ("socketrace/bpf/socketrace.c", "socketrace/bpf/socketrace.h", "socketrace/bpf/include/asm/page.h"):
        assert needed in names, names


def test_wheel_in_a_fresh_venv_traces(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([SYSTEM_PYTHON, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=300)
    subprocess.run([venv / "bin/pip", "install", "-q", str(wheel)], check=True, capture_output=True, timeout=600)
    version = subprocess.run([venv / "bin/socketrace", "--version"], capture_output=True, text=True, timeout=300)
    assert version.returncode == 0 and "BCC 0." in version.stdout and "backends: " in version.stdout, version
    assert version.stdout.startswith(f"socketrace {socketrace.__version__}\n"), version
    _traces([str(venv / "bin/socketrace")], tmp_path)


def test_pipx_install_traces(wheel: Path, tmp_path: Path) -> None:
    pipx = require_tool("pipx")
    env = dict(os.environ, PIPX_HOME=str(tmp_path / "pipx"), PIPX_BIN_DIR=str(tmp_path / "bin"))
    subprocess.run(
        [pipx, "install", "--system-site-packages", "--python", SYSTEM_PYTHON, str(wheel)],
        check=True,
        capture_output=True,
        env=env,
        timeout=600,
    )
    _traces([str(tmp_path / "bin/socketrace")], tmp_path)


def test_without_bcc_one_line_names_the_package(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([SYSTEM_PYTHON, "-m", "venv", str(venv)], check=True, timeout=300)  # sees no system packages
    subprocess.run([venv / "bin/pip", "install", "-q", str(wheel)], check=True, capture_output=True, timeout=600)
    result = subprocess.run(
        [venv / "bin/socketrace", "--filter-port", "9"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("socketrace: error: BCC's Python module is not importable")
    assert "python3-bpfcc" in result.stderr and "Traceback" not in result.stderr
    version = subprocess.run([venv / "bin/socketrace", "--version"], capture_output=True, text=True, timeout=300)
    assert "BCC not importable: install python3-bpfcc" in version.stdout
