"""The kprobe backends on real Debian kernels: boot each under QEMU, run the guest tests there.

6.12 has kprobe-multi and classic kprobes, 6.1 classic kprobes only. Each boot runs
tests/kernel/test_kprobes.py (marker ``guest``) with the host's own Python, BCC and checkout;
one boot uses a Debian 13 (trixie) userland instead, to prove the code on its newer BCC.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from ..conftest import require
from .harness import prepare_kernel, prepare_userland, run_in_vm

pytestmark = pytest.mark.vm

ROOT = Path(__file__).parents[2]
GUEST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# (kernel, --kprobe-way to force or "" for auto, backend that must attach, userland or "" for the host's)
RUNS = [
    ("6.12", "", "kprobe-multi", ""),
    ("6.12", "kprobe", "kprobe", ""),
    ("6.1", "", "kprobe", ""),
    ("6.12", "", "kprobe-multi", "trixie"),
]
# The host's checkout has a venv for the host's Python; another userland uses its own
# Python and Debian's click, tqdm, pyelftools and pytest.
PYTEST = {"": ".venv/bin/pytest", "trixie": "PYTHONPATH=$PWD python3 -m pytest"}


@pytest.mark.parametrize(
    ("kernel", "way", "expect", "userland"), RUNS, ids=[f"{k}-{e}{'-' + u if u else ''}" for k, _, e, u in RUNS]
)
def test_guest_suite(kernel: str, way: str, expect: str, userland: str) -> None:
    require(os.geteuid() == 0, "the VM harness needs root (apt-get download, 9p of /)")
    require(shutil.which("qemu-system-x86_64") is not None, "qemu-system-x86 is not installed")
    guest = prepare_kernel(kernel)
    root = prepare_userland(userland) if userland else Path("/")
    command = (
        f"export PATH={GUEST_PATH} SOCKETRACE_TEST_WAY={way} SOCKETRACE_EXPECT_WAY={expect} "
        "SOCKETRACE_REQUIRE_KERNEL_TESTS=1 PYTHONDONTWRITEBYTECODE=1; python3 -c 'import bcc; print(bcc.__version__)'; "
        f"{PYTEST[userland]} -p no:cacheprovider -m guest -v -rs tests/kernel/test_kprobes.py"
    )
    result = run_in_vm(guest, command, ROOT, timeout=1500, root=root)
    print(f"--- {guest.version}, {expect}, userland {userland or 'host'}: {result.seconds:.0f} s\n{result.output}")
    assert result.returncode == 0, f"{result.output[-6000:]}\n--- console ---\n{result.console[-3000:]}"
    summary = re.search(r"=+ (\d+) passed.* in ", result.output)
    assert summary and int(summary.group(1)) >= 6, result.output[-2000:]
    assert "skipped" not in result.output.splitlines()[-1]
