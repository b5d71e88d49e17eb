"""Boot a Debian kernel under QEMU and run one command in it, as root, on the host's files.

The kernel packages come from the distribution (`apt-get download`), are unpacked into a
cache directory, and get a small initramfs: a static busybox, the 9p and virtio modules,
and an init that mounts the host's root file system read-only over virtio-9p, puts tmpfs
where the guest must write, and chroots into it. The guest therefore runs the host's own
Python, BCC and checkout. QEMU runs under TCG (software emulation): KVM here cannot boot
stock kernels.

Everything is non-interactive and bounded by timeouts; downloads and builds take a file
lock per kernel, so two runs at once are safe. Usable from tests and from the command
line: ``python -m tests.vm.harness 6.12 -- uname -r``.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import lzma
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

__all__ = ["KERNELS", "GuestKernel", "VmResult", "prepare_kernel", "prepare_userland", "run_in_vm"]

CACHE = Path(os.environ.get("SOCKETRACE_VM_CACHE", "/var/cache/socketrace-vm"))
BUSYBOX = Path("/bin/busybox")
QEMU = "qemu-system-x86_64"

# Which Debian package is which test kernel: the newest version matching the pattern.
KERNELS = {
    "6.1": r"^linux-image-6\.1\.0-[0-9]+-amd64$",  # kprobes, no kprobe-multi (no CONFIG_FPROBE)
    "6.12": r"^linux-image-6\.12\.[0-9]+\+deb12-amd64$",  # kprobes and kprobe-multi
}

# Userlands other than the host's, built with mmdebstrap: suite -> packages the guest tests need.
USERLANDS = {
    "trixie": (
        "python3-bpfcc",
        "python3-click",
        "python3-tqdm",
        "python3-pyelftools",
        "python3-pytest",
        "iproute2",
        "bpftool",
        "kmod",
        "procps",
    ),
}

# Modules the guest needs to reach the host's files, in load order after dependencies.
BOOT_MODULES = ("virtio_pci", "9pnet_virtio", "9p", "overlay")

GUEST_INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for module in $(cat /modules.order); do insmod "/modules/$module" 2>/dev/null; done
mkdir -p /host /out /lower /rw
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,ro,cache=loose hostroot /lower || echo "vm: no host root"
# A writable view of the read-only root: changes go to memory.
mount -t tmpfs tmpfs /rw
mkdir -p /rw/upper /rw/work
mount -t overlay overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work /host || mount --bind /lower /host
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 out /out || echo "vm: no out share"
for dir in tmp run var/tmp root; do
    [ -d "/host/$dir" ] && mount -t tmpfs tmpfs "/host/$dir"
done
checkout=$(cat /out/checkout)
mkdir -p "/host$checkout" 2>/dev/null
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,ro,cache=loose checkout "/host$checkout"
# The kernel's own modules, for modprobe in any userland.
mkdir -p /host/lib/modules
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,ro modules /host/lib/modules
mkdir -p /host/tmp/vm-out
mount --bind /out /host/tmp/vm-out
mount -t proc proc /host/proc
mount -t sysfs sys /host/sys
mount -t devtmpfs dev /host/dev
mkdir -p /host/dev/pts /host/dev/shm
mount -t devpts devpts /host/dev/pts
mount -t tmpfs tmpfs /host/dev/shm
mount -t debugfs debugfs /host/sys/kernel/debug
mount -t tracefs tracefs /host/sys/kernel/tracing
mount -t bpf bpf /host/sys/fs/bpf
chroot /host /bin/sh -c 'ip link set lo up; cd "$(cat /tmp/vm-out/checkout)" && exec /bin/sh /tmp/vm-out/command.sh' \
    > /out/output 2>&1
echo $? > /out/status
sync
echo o > /proc/sysrq-trigger
sleep 30
"""


@dataclass(frozen=True)
class GuestKernel:
    """An unpacked kernel package and the initramfs built for it."""

    name: str
    version: str
    vmlinuz: Path
    initramfs: Path


@dataclass(frozen=True)
class VmResult:
    returncode: int  # the command's exit status; -1 if the guest never reported one
    output: str  # the command's stdout and stderr
    console: str  # the guest kernel's console
    seconds: float


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _newest_package(pattern: str) -> str:
    """The newest package whose name matches; refreshes apt's lists once if none does."""
    for refresh in (False, True):
        if refresh:
            subprocess.run(["apt-get", "update", "-qq"], check=True, capture_output=True, timeout=600)
        search = subprocess.run(
            ["apt-cache", "search", "--names-only", pattern], check=True, capture_output=True, text=True, timeout=120
        ).stdout
        names = [line.split()[0] for line in search.splitlines() if re.match(pattern, line.split()[0])]
        if names:
            return max(names, key=lambda name: [int(part) for part in re.findall(r"\d+", name)])
    raise RuntimeError(f"no package matches {pattern}")


def prepare_kernel(name: str) -> GuestKernel:
    """Download, unpack and build the initramfs for a kernel of KERNELS (cached)."""
    package = _newest_package(KERNELS[name])
    root = CACHE / package
    with _locked(CACHE / f"{package}.lock"):
        if not (root / ".ready").exists():
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir(parents=True)
            subprocess.run(
                ["apt-get", "download", "-q", package], cwd=root, check=True, capture_output=True, timeout=600
            )
            deb = next(root.glob("*.deb"))
            subprocess.run(["dpkg-deb", "-x", str(deb), str(root / "tree")], check=True, timeout=600)
            deb.unlink()
            version = next((root / "tree/lib/modules").iterdir()).name
            subprocess.run(["depmod", "-b", str(root / "tree"), version], check=True, timeout=600)
            (root / ".ready").touch()
        version = next((root / "tree/lib/modules").iterdir()).name
        # The initramfs is named by what goes into it, so a changed init is never stale.
        recipe = hashlib.sha256(GUEST_INIT.encode() + " ".join(BOOT_MODULES).encode() + BUSYBOX.read_bytes())
        initramfs = root / f"initramfs-{recipe.hexdigest()[:12]}.cpio"
        if not initramfs.exists():
            _build_initramfs(root / "tree", version, initramfs)
    return GuestKernel(name, version, root / f"tree/boot/vmlinuz-{version}", initramfs)


def prepare_userland(suite: str) -> Path:
    """A Debian root file system of another release for the guest (cached), e.g. newer BCC."""
    root = CACHE / f"userland-{suite}"
    with _locked(CACHE / f"userland-{suite}.lock"):
        if not (root / ".ready").exists():
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir(parents=True)
            subprocess.run(
                ["mmdebstrap", "--variant=apt", f"--include={','.join(USERLANDS[suite])}", suite, str(root / "tree")],
                check=True,
                capture_output=True,
                timeout=1800,
            )
            (root / ".ready").touch()
    return root / "tree"


def _module_closure(modules_dir: Path) -> list[str]:
    """Relative paths of BOOT_MODULES and their dependencies, dependencies first."""
    deps: dict[str, list[str]] = {}
    for line in (modules_dir / "modules.dep").read_text().splitlines():
        module, _, needs = line.partition(":")
        deps[module] = needs.split()
    by_name = {re.sub(r"\.ko(\.xz|\.zst|\.gz)?$", "", Path(path).name).replace("-", "_"): path for path in deps}
    order: list[str] = []

    def visit(path: str) -> None:
        for dependency in reversed(deps[path]):
            visit(dependency)
        if path not in order:
            order.append(path)

    for name in BOOT_MODULES:
        if name in by_name:  # built into some kernels
            visit(by_name[name])
    return order


def _build_initramfs(tree: Path, version: str, target: Path) -> None:
    modules_dir = tree / "lib/modules" / version
    files: dict[str, tuple[bytes, int]] = {
        "init": (GUEST_INIT.encode(), 0o100755),
        "bin/busybox": (BUSYBOX.read_bytes(), 0o100755),
    }
    order = []
    for path in _module_closure(modules_dir):
        data = (modules_dir / path).read_bytes()
        if path.endswith(".xz"):
            data = lzma.decompress(data)  # busybox insmod reads plain ELF only
        flat = Path(path).name.removesuffix(".xz")
        files[f"modules/{flat}"] = (data, 0o100644)
        order.append(flat)
    files["modules.order"] = ("\n".join(order).encode() + b"\n", 0o100644)
    directories = ["bin", "dev", "proc", "sys", "modules", "host", "out", "lower", "rw"]
    target.write_bytes(_newc_archive(directories, files))


def _newc_archive(directories: list[str], files: dict[str, tuple[bytes, int]]) -> bytes:
    """A cpio archive in the kernel's initramfs ("newc") format."""
    out = bytearray()
    inode = 1

    def entry(name: str, mode: int, data: bytes) -> None:
        nonlocal inode
        encoded = name.encode() + b"\0"
        fields = [inode, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(encoded), 0]
        out.extend(b"070701" + b"".join(b"%08X" % value for value in fields) + encoded)
        out.extend(b"\0" * (-len(out) % 4))
        out.extend(data)
        out.extend(b"\0" * (-len(out) % 4))
        inode += 1

    for directory in directories:
        entry(directory, 0o040755, b"")
    for name, (data, mode) in files.items():
        entry(name, mode, data)
    entry("TRAILER!!!", 0, b"")
    return bytes(out)


def run_in_vm(
    kernel: GuestKernel,
    command: str,
    checkout: Path,
    timeout: float = 1200,
    cpus: int = 1,
    memory_mb: int = 2048,
    cmdline: str = "",
    root: Path = Path("/"),
) -> VmResult:
    """Boot the kernel, run ``command`` with sh in ``checkout`` as root, power off.

    ``root`` is the guest's root file system: the host's own by default.
    """
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="socketrace-vm-") as out_dir:
        out = Path(out_dir)
        (out / "command.sh").write_text(command + "\n")
        (out / "checkout").write_text(str(checkout.resolve()))
        console = out / "console.log"
        modules = kernel.vmlinuz.parents[1] / "lib/modules"
        qemu = [
            QEMU,
            "-machine", "pc",
            "-cpu", "max",
            "-accel", "tcg",
            "-smp", str(cpus),
            "-m", str(memory_mb),
            "-display", "none",
            "-monitor", "none",
            "-no-reboot",
            "-nic", "none",
            "-serial", f"file:{console}",
            "-kernel", str(kernel.vmlinuz),
            "-initrd", str(kernel.initramfs),
            "-append", f"console=ttyS0 panic=-1 quiet loglevel=4 {cmdline}".strip(),
            "-virtfs", f"local,path={root},mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
            "-virtfs", f"local,path={checkout.resolve()},mount_tag=checkout,security_model=none,readonly=on",
            "-virtfs", f"local,path={out},mount_tag=out,security_model=none",
            "-virtfs", f"local,path={modules},mount_tag=modules,security_model=none,readonly=on",
        ]  # fmt: skip
        with contextlib.suppress(subprocess.TimeoutExpired):  # reported below as a missing status
            subprocess.run(qemu, check=False, timeout=timeout, stdin=subprocess.DEVNULL, capture_output=True)
        status = out / "status"
        returncode = int(status.read_text()) if status.exists() and status.read_text().strip() else -1
        output = (out / "output").read_text(errors="replace") if (out / "output").exists() else ""
        console_text = console.read_text(errors="replace") if console.exists() else ""
    return VmResult(returncode, output, console_text, time.monotonic() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description="Run a command as root in a Debian kernel under QEMU.")
    parser.add_argument("kernel", choices=sorted(KERNELS))
    parser.add_argument("--cpus", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=1200)
    parser.add_argument("--userland", choices=sorted(USERLANDS), help="boot into this Debian release, not the host's")
    parser.add_argument("command", nargs="+")
    args = parser.parse_args()
    kernel = prepare_kernel(args.kernel)
    root = prepare_userland(args.userland) if args.userland else Path("/")
    result = run_in_vm(kernel, shlex.join(args.command), Path.cwd(), args.timeout, args.cpus, root=root)
    sys.stdout.write(result.output)
    if result.returncode < 0:
        sys.stderr.write(result.console)
    print(f"vm: {kernel.version}: status {result.returncode} in {result.seconds:.1f} s", file=sys.stderr)
    return result.returncode if result.returncode >= 0 else 1


if __name__ == "__main__":
    sys.exit(main())
