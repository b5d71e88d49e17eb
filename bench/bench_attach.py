"""Attach and detach of the full function set, per kprobe backend: what the user waits for.

Run as root on a kernel with kprobes (`make bench-vm` boots one). For each backend,
socketrace starts with the full set and --debug (which logs the attach time), then
gets Ctrl+C (SIGINT):

  kprobe-multi            one link: attach, and Ctrl+C to the shell's prompt
  kprobe                  Ctrl+C to the prompt with the removal in the background (the default),
                          and how long that removal goes on; then the same with --wait-detach

    bench/bench_attach.py [--filter-funcs REGEX]
"""

from __future__ import annotations

import argparse
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SOCKETRACE = [sys.executable, "-m", "socketrace"]


def run_once(args: list[str], work: Path) -> dict[str, float | int | str]:
    """Start, wait until ready, Ctrl+C; the times as the user sees them."""
    ready = work / f"ready-{time.monotonic_ns()}"
    log = work / f"log-{time.monotonic_ns()}"
    with open(log, "w") as err:
        process = subprocess.Popen([*SOCKETRACE, *args, "--debug", "--ready-file", str(ready)], stderr=err)
        deadline = time.monotonic() + 1800
        while not ready.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(log.read_text())
            time.sleep(0.05)
        started = time.monotonic()
        process.send_signal(signal.SIGINT)
        process.wait(timeout=1800)
        prompt = time.monotonic() - started
    text = log.read_text()
    attached = re.search(r"Attached kprobes \(via [\w-]+\) to (\d+) functions", text)
    result: dict[str, float | int | str] = {
        "functions": int(attached.group(1)) if attached else 0,
        "attach_s": float(re.search(r"attaching: ([\d.]+) s", text).group(1)),
        "prompt_s": prompt,
    }
    remover = re.search(r"in the background \(pid (\d+)\)", text)
    if remover:
        pid = int(remover.group(1))
        while Path(f"/proc/{pid}").exists():
            time.sleep(0.1)
        result["removal_s"] = time.monotonic() - started
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--filter-funcs", help="limit the set (regex), e.g. for a quick run")
    args = parser.parse_args()
    funcs = ["--filter-funcs", args.filter_funcs] if args.filter_funcs else []
    with tempfile.TemporaryDirectory(prefix="socketrace-bench-") as tmp:
        work = Path(tmp)
        ways = subprocess.run([*SOCKETRACE, "--version"], capture_output=True, text=True, timeout=300).stdout
        if "kprobe-multi" in ways:
            multi = run_once(["--kprobe-way", "kprobe-multi", *funcs], work)
            print(
                f"kprobe-multi, {multi['functions']} functions: attach {multi['attach_s']:.2f} s, "
                f"Ctrl+C to prompt {multi['prompt_s']:.2f} s"
            )
        if "kprobe," in ways or ways.rstrip().endswith("kprobe"):
            background = run_once(["--kprobe-way", "kprobe", *funcs], work)
            foreground = run_once(["--kprobe-way", "kprobe", "--wait-detach", *funcs], work)
            print(
                f"kprobe, {background['functions']} functions: attach {background['attach_s']:.1f} s; "
                f"Ctrl+C to prompt {background['prompt_s']:.2f} s (removal done after {background['removal_s']:.1f} s "
                f"in the background); with --wait-detach {foreground['prompt_s']:.1f} s"
            )
        else:
            print("this kernel has no kprobes")


if __name__ == "__main__":
    main()
