"""Boot a Debian kernel under QEMU and run one command in it, as root, on a Debian root file system.

The kernel packages come from the distribution (`apt-get download` with a private apt
configuration per suites and architecture, so the host's own sources stay as they are), are
unpacked into a cache directory, and get a small initramfs: a static busybox of the kernel's
architecture, the 9p and virtio modules, and an init that mounts a root file system read-only
over virtio-9p, puts tmpfs where the guest must write, and chroots into it. That root is the
host's own by default, so the guest runs the host's Python, BCC and checkout; other Debian
releases and architectures get a userland built with mmdebstrap, holding a venv with the
test dependencies and a wheelhouse, since the guest has no network. QEMU runs under TCG
(software emulation): KVM here cannot boot stock kernels, and arm64 needs emulation anyway.

Everything is non-interactive and bounded by timeouts; downloads and builds take a file
lock each, so two runs at once are safe. Usable from tests and from the command line:
``python -m tests.vm.harness 6.12 -- uname -r``,
``python -m tests.vm.harness 6.12-arm64 -- uname -m`` (boots the arm64 userland).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import lzma
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

__all__ = ["KERNELS", "USERLANDS", "GuestKernel", "VmResult", "prepare_kernel", "prepare_userland", "run_in_vm"]

CACHE = Path(os.environ.get("SOCKETRACE_VM_CACHE", "/var/cache/socketrace-vm"))
MIRROR = "http://deb.debian.org"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
HOST_CA = "/etc/ssl/certs/ca-certificates.crt"


@dataclass(frozen=True)
class Arch:
    """How QEMU emulates one Debian architecture, and how the host runs its programs."""

    qemu: str  # the system emulator
    machine: tuple[str, ...]  # its machine and CPU options
    console: str  # the serial console's device in the guest
    binfmt: str  # the qemu-user binfmt_misc entry that runs its programs on another host


ARCHES = {
    "amd64": Arch("qemu-system-x86_64", ("-machine", "pc", "-cpu", "max"), "ttyS0", "qemu-x86_64"),
    # pauth-impdef: the architected pointer-authentication hash is slow to emulate (boot + BCC compile 14.5 s, not 7).
    "arm64": Arch(
        "qemu-system-aarch64", ("-machine", "virt", "-cpu", "max,pauth-impdef=on"), "ttyAMA0", "qemu-aarch64"
    ),
}
HOST_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}[platform.machine()]


# Debian suites (a release and its updates) that packages come from; "-security" ones live elsewhere.
BULLSEYE = ("bullseye", "bullseye-updates", "bullseye-security")
BOOKWORM = ("bookworm", "bookworm-updates", "bookworm-security")
TRIXIE = ("trixie", "trixie-updates", "trixie-security")


def _sources(suites: Sequence[str], arch: str) -> list[str]:
    """apt source lines (one-line format) for the suites, for one architecture."""
    options = f"[arch={arch} signed-by={KEYRING}]"
    return [
        f"deb {options} {MIRROR}/{'debian-security' if suite.endswith('-security') else 'debian'} {suite} main"
        for suite in suites
    ]


@dataclass(frozen=True)
class KernelSpec:
    """Which Debian package is a test kernel: the newest whose name matches, from these suites."""

    pattern: str
    suites: tuple[str, ...]
    arch: str
    userland: str  # the default root file system: "" for the host's own, else a key of USERLANDS


KERNELS = {
    # kprobes, no kprobe-multi (no CONFIG_FPROBE)
    "6.1": KernelSpec(r"^linux-image-6\.1\.0-[0-9]+-amd64$", BOOKWORM, "amd64", ""),
    # kprobes and kprobe-multi
    "6.12": KernelSpec(r"^linux-image-6\.12\.[0-9]+\+deb12-amd64$", BOOKWORM, "amd64", ""),
    # Debian 11: kprobes, no kprobe-multi (no CONFIG_FPROBE)
    "5.10": KernelSpec(r"^linux-image-5\.10\.0-[0-9]+-amd64$", BULLSEYE, "amd64", "bullseye"),
    # kprobes, no kprobe-multi: arm64 kernels have CONFIG_FPROBE only after 6.12 (fprobe on fgraph; 6.16 has it)
    "6.12-arm64": KernelSpec(r"^linux-image-6\.12\.[0-9]+\+deb12-arm64$", BOOKWORM, "arm64", "bookworm-arm64"),
    # kprobes and kprobe-multi on arm64
    "6.18-arm64": KernelSpec(
        r"^linux-image-6\.18\.[0-9]+\+deb13-arm64$", ("trixie", "trixie-backports"), "arm64", "bookworm-arm64"
    ),
}


@dataclass(frozen=True)
class UserlandSpec:
    """A Debian root file system built with mmdebstrap: suites, architecture, packages."""

    suites: tuple[str, ...]
    arch: str
    packages: tuple[str, ...]


# What every built userland holds for the guest tests; /opt/socketrace-venv adds PIP_PACKAGES.
GUEST_PACKAGES = (
    "clang",  # the unit tests compile their BTF fixtures and the C<->Python contract header
    "python3-bpfcc",
    "python3-venv",
    "python3-pip",
    "iproute2",
    "bpftool",
    "kmod",
    "mount",  # and util-linux (setpriv): not essential in every suite's minimal root
    "util-linux",
    "procps",
    "curl",
    "netcat-openbsd",
)
# The oracles of tests/kernel/test_oracle.py, in the userlands of guests that run it (the host's has them too).
ORACLE_PACKAGES = ("bpftrace", "openssh-server", "openssh-client", "apache2-utils", "nginx-light")
PIP_PACKAGES = ("click", "tqdm", "pyelftools", "pytest")
USERLANDS = {
    # Debian's own click, tqdm, pyelftools and pytest too, for `python3 -m pytest` with the system Python.
    "trixie": UserlandSpec(
        TRIXIE, "amd64", (*GUEST_PACKAGES, "python3-click", "python3-tqdm", "python3-pyelftools", "python3-pytest")
    ),
    # Not bullseye-security: its index lists a bpftool (5.10.262) that its pool does not hold.
    "bullseye": UserlandSpec(("bullseye",), "amd64", (*GUEST_PACKAGES, *ORACLE_PACKAGES)),
    "bookworm-arm64": UserlandSpec(BOOKWORM, "arm64", GUEST_PACKAGES),
}
VENV = "/opt/socketrace-venv"
WHEELS = "/opt/socketrace-wheels"

# Modules the guest needs to reach its files, in load order after dependencies.
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
    modules: Path  # lib/modules, shared with the guest for modprobe
    arch: str


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


def _run(command: Sequence[str], what: str, timeout: float, **kwargs: object) -> str:
    """Run a command to completion; a failure or a timeout is a RuntimeError that says what failed."""
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False, **kwargs
        )
    except subprocess.TimeoutExpired as error:
        raise RuntimeError(f"{what}: timed out after {timeout:.0f} s: {shlex.join(command)}") from error
    except OSError as error:
        raise RuntimeError(f"{what}: cannot run {command[0]}: {error}") from error
    if done.returncode != 0:
        raise RuntimeError(f"{what}: {shlex.join(command)} exited {done.returncode}:\n{done.stderr[-4000:]}")
    return done.stdout


class _Apt:
    """apt with its own sources, lists and cache for some suites and one architecture, under CACHE.

    The host's apt configuration lists one release for one architecture; this one reaches any.
    """

    def __init__(self, suites: Sequence[str], arch: str) -> None:
        self.suites = suites
        self.arch = arch
        self.home = CACHE / "apt" / f"{'+'.join(suites)}-{arch}"
        self.lock = self.home.with_name(f"{self.home.name}.lock")

    def _options(self) -> list[str]:
        home = self.home
        settings = {
            "Dir::Etc::SourceList": home / "sources.list",
            "Dir::Etc::SourceParts": home / "empty",
            "Dir::Etc::Preferences": home / "empty/preferences",
            "Dir::Etc::PreferencesParts": home / "empty",
            "Dir::State::Lists": home / "lists",
            "Dir::State::Status": home / "status",
            "Dir::Cache": home / "cache",
            "APT::Architecture": self.arch,
            "APT::Architectures": self.arch,
            "APT::Sandbox::User": "root",  # downloads go to directories that _apt cannot write
        }
        return [option for name, value in settings.items() for option in ("-o", f"{name}={value}")]

    def _update(self) -> None:
        for directory in ("lists/partial", "cache/archives/partial", "empty"):
            (self.home / directory).mkdir(parents=True, exist_ok=True)
        (self.home / "status").touch()
        (self.home / "sources.list").write_text("\n".join(_sources(self.suites, self.arch)) + "\n")
        _run(["apt-get", *self._options(), "update", "-qq"], f"apt-get update for {self.home.name}", 600)

    def newest(self, pattern: str) -> str:
        """The newest package whose name matches; refreshes the lists once if none does."""
        with _locked(self.lock):
            for refresh in (not (self.home / "lists").is_dir(), True):
                if refresh:
                    self._update()
                search = _run(
                    ["apt-cache", *self._options(), "search", "--names-only", pattern], "apt-cache search", 120
                )
                names = [line.split()[0] for line in search.splitlines() if re.match(pattern, line.split()[0])]
                if names:
                    return max(names, key=lambda name: [int(part) for part in re.findall(r"\d+", name)])
        raise RuntimeError(f"no package of {self.home.name} matches {pattern}")

    def unpack(self, packages: Sequence[str], tree: Path) -> None:
        """Download packages and unpack them into tree (no maintainer scripts run)."""
        with _locked(self.lock), tempfile.TemporaryDirectory(dir=CACHE) as download:
            fetch = ["apt-get", *self._options(), "download", "-q", *packages]
            try:
                _run(fetch, "apt-get download", 900, cwd=download)
            except RuntimeError:  # a package superseded since the last update is gone from the mirror
                self._update()
                _run(fetch, "apt-get download", 900, cwd=download)
            for deb in Path(download).glob("*.deb"):
                _run(["dpkg-deb", "-x", str(deb), str(tree)], f"unpacking {deb.name}", 600)


def prepare_kernel(name: str) -> GuestKernel:
    """Download, unpack and build the initramfs for a kernel of KERNELS (cached)."""
    spec = KERNELS[name]
    apt = _Apt(spec.suites, spec.arch)
    package = apt.newest(spec.pattern)
    root = CACHE / package
    tree = root / "tree"
    with _locked(CACHE / f"{package}.lock"):
        if not (root / ".ready").exists() or _in_tree(tree, "bin/busybox") is None:
            shutil.rmtree(root, ignore_errors=True)
            tree.mkdir(parents=True)
            # busybox-static of the kernel's own release and architecture runs the initramfs.
            apt.unpack([package, "busybox-static"], tree)
            modules = _in_tree(tree, "lib/modules")
            if modules is None or _in_tree(tree, "bin/busybox") is None:
                raise RuntimeError(f"{package} or busybox-static unpacked without lib/modules or bin/busybox")
            _run(["depmod", "-b", str(modules.parents[1]), _version(modules)], f"depmod for {package}", 600)
            (root / ".ready").touch()
        modules = _in_tree(tree, "lib/modules")
        busybox = _in_tree(tree, "bin/busybox")
        assert modules is not None and busybox is not None  # checked when unpacked
        version = _version(modules)
        # The initramfs is named by what goes into it, so a changed init is never stale.
        recipe = hashlib.sha256(GUEST_INIT.encode() + " ".join(BOOT_MODULES).encode() + busybox.read_bytes())
        initramfs = root / f"initramfs-{recipe.hexdigest()[:12]}.cpio"
        if not initramfs.exists():
            _build_initramfs(modules / version, busybox, initramfs)
    return GuestKernel(name, version, tree / f"boot/vmlinuz-{version}", initramfs, modules, spec.arch)


def _in_tree(tree: Path, relative: str) -> Path | None:
    """A path of unpacked packages, under usr/ in packages built for merged /usr (trixie on)."""
    return next((path for path in (tree / relative, tree / "usr" / relative) if path.exists()), None)


def _version(modules: Path) -> str:
    return next(modules.iterdir()).name


def _enable_binfmt(arch: str) -> None:
    """Let this host run arch's programs through qemu-user (for mmdebstrap's maintainer scripts).

    Mounts binfmt_misc if nobody has, and registers qemu-user-static's entry from its
    systemd binfmt.d file; its F flag opens the emulator now, so it also works in chroots.
    """
    entry = ARCHES[arch].binfmt
    config = Path(f"/usr/lib/binfmt.d/{entry}.conf")
    binfmt_misc = Path("/proc/sys/fs/binfmt_misc")
    with _locked(CACHE / "binfmt.lock"):
        if not (binfmt_misc / "register").exists():
            _run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(binfmt_misc)], "mounting binfmt_misc", 60)
        if not (binfmt_misc / entry).exists():
            if not config.exists():
                raise RuntimeError(f"{config} is missing: install qemu-user-static to build {arch} userlands")
            (binfmt_misc / "register").write_text(config.read_text().strip())
        if (binfmt_misc / entry).read_text().splitlines()[0] != "enabled":
            raise RuntimeError(f"binfmt_misc entry {entry} is disabled: {arch} programs cannot run here")


def _venv_hook() -> str:
    """mmdebstrap customize hook: the venv and the wheelhouse, made in the chroot while it has network.

    The chroot's own pip resolves for the chroot's Python (markers such as python_version<"3.11"),
    which the host's pip, run for another version, does not. It trusts the host's certificates,
    which may include a proxy's.
    """
    pip = f"{VENV}/bin/python -m pip --disable-pip-version-check --no-cache-dir --timeout 60"
    packages = " ".join(PIP_PACKAGES)
    script = (
        f"python3 -m venv --system-site-packages {VENV}\n"
        f"{pip} download -q --cert /tmp/host-ca.crt --only-binary=:all: -d {WHEELS} {packages}\n"
        f"{pip} install -q --no-index --find-links {WHEELS} {packages}\n"
        f"chmod -R a+rX {WHEELS}\n"
    )
    return (
        f'set -e; cp {HOST_CA} "$1/tmp/host-ca.crt"; '
        f'chroot "$1" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root sh -euc {shlex.quote(script)}; '
        'rm "$1/tmp/host-ca.crt"'
    )


def prepare_userland(suite: str) -> Path:
    """A Debian root file system of another release or architecture for the guest (cached)."""
    spec = USERLANDS[suite]
    hook = _venv_hook()
    # Named by its recipe, so a changed package list or venv is built anew rather than reused stale.
    recipe = hashlib.sha256(repr((spec, hook)).encode()).hexdigest()[:12]
    root = CACHE / f"userland-{suite}-{recipe}"
    with _locked(CACHE / f"userland-{suite}.lock"):
        if not (root / ".ready").exists():
            if spec.arch != HOST_ARCH:
                _enable_binfmt(spec.arch)
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir(parents=True)
            _run(
                [
                    "mmdebstrap",
                    "--variant=apt",
                    f"--architectures={spec.arch}",
                    f"--include={','.join(spec.packages)}",
                    "--skip=check/qemu",  # _enable_binfmt has made sure; mmdebstrap would need arch-test
                    f"--customize-hook={hook}",
                    spec.suites[0],
                    str(root / "tree"),
                    *_sources(spec.suites, spec.arch),
                ],
                f"mmdebstrap of the {suite} userland",
                3600,
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


def _build_initramfs(modules_dir: Path, busybox: Path, target: Path) -> None:
    files: dict[str, tuple[bytes, int]] = {
        "init": (GUEST_INIT.encode(), 0o100755),
        "bin/busybox": (busybox.read_bytes(), 0o100755),
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

    ``root`` is the guest's root file system: the host's own by default, which only a kernel
    of the host's architecture can run; prepare_userland makes the others.
    """
    arch = ARCHES[kernel.arch]
    if root.resolve() == Path("/") and kernel.arch != HOST_ARCH:
        raise RuntimeError(
            f"kernel {kernel.name} ({kernel.arch}) cannot run the host's {HOST_ARCH} root: pass a userland"
        )
    if shutil.which(arch.qemu) is None:
        raise RuntimeError(f"{arch.qemu} is not installed")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="socketrace-vm-") as out_dir:
        out = Path(out_dir)
        (out / "command.sh").write_text(command + "\n")
        (out / "checkout").write_text(str(checkout.resolve()))
        console = out / "console.log"
        qemu = [
            arch.qemu,
            *arch.machine,
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
            "-append", f"console={arch.console} panic=-1 quiet loglevel=4 {cmdline}".strip(),
            "-virtfs", f"local,path={root},mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
            "-virtfs", f"local,path={checkout.resolve()},mount_tag=checkout,security_model=none,readonly=on",
            "-virtfs", f"local,path={out},mount_tag=out,security_model=none",
            "-virtfs", f"local,path={kernel.modules},mount_tag=modules,security_model=none,readonly=on",
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
    parser.add_argument(
        "--userland",
        choices=["host", *sorted(USERLANDS)],
        help="the root file system: the host's or a Debian release's (default: the kernel's own, see KERNELS)",
    )
    parser.add_argument("command", nargs="+")
    args = parser.parse_args()
    kernel = prepare_kernel(args.kernel)
    userland = KERNELS[args.kernel].userland if args.userland is None else args.userland
    root = Path("/")
    if userland not in ("", "host"):
        if USERLANDS[userland].arch != kernel.arch:
            parser.error(f"userland {userland} is {USERLANDS[userland].arch}, kernel {args.kernel} is {kernel.arch}")
        root = prepare_userland(userland)
    result = run_in_vm(kernel, shlex.join(args.command), Path.cwd(), args.timeout, args.cpus, root=root)
    sys.stdout.write(result.output)
    if result.returncode < 0:
        sys.stderr.write(result.console)
    print(f"vm: {kernel.version}: status {result.returncode} in {result.seconds:.1f} s", file=sys.stderr)
    return result.returncode if result.returncode >= 0 else 1


if __name__ == "__main__":
    sys.exit(main())
