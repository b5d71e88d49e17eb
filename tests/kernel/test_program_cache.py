"""The compile cache: a repeat run loads what BCC compiled before, and the kernel sees the same program.

Needs root and BPF; no attach (programs are loaded, not attached), so it runs
on every backend this kernel can verify. The oracle is the kernel's own tag of
each loaded program (``bpftool prog show``'s), a hash of its instructions with
map fds left out: a function loaded from the cache must carry the tag the
compiled one had. A change of flags, a damaged entry and one that names maps
the program lacks are each compiled afresh.
"""

from __future__ import annotations

import json
import logging
import subprocess
from pathlib import Path

import pytest

from socketrace import bpfsys
from socketrace.compiled import table_fds
from socketrace.contract import MapName
from socketrace.features import verifiable_kinds
from socketrace.program import ProgramPlan, compile_program

from ..conftest import require_tool
from .conftest import COMMAND, PORT_SETS_EXPRESSION, PREFIX_SETS_EXPRESSION, kernel_ways, narrowed, pace, program_plan

FROM_CACHE = "from the compile cache"
COMPILED = "compiled in"


def _loaded_tags(plan: ProgramPlan, caplog: pytest.LogCaptureFixture) -> tuple[dict[str, str], str]:
    """Each loaded function's kernel tag, and how the program came to be (the debug log's words)."""
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="socketrace"):
        bpf = compile_program(plan)
    try:
        loads = [*plan.entries, *([plan.shared_handler] if plan.shared_handler else [])]
        tags = {entry.name: bpfsys.prog_tag(bpf.funcs[entry.name.encode()].fd) for entry in loads}
    finally:
        bpf.cleanup()
    how = FROM_CACHE if FROM_CACHE in caplog.text else COMPILED if COMPILED in caplog.text else caplog.text
    return tags, how


def _ways() -> list[str]:
    return list(narrowed(verifiable_kinds())) if kernel_ways() else ["tracepoint"]


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SOCKETRACE_CACHE_DIR", str(tmp_path))
    return tmp_path


@pytest.mark.parametrize("way", _ways())
def test_a_repeat_run_loads_the_compiled_program_from_the_cache(
    way: str, cache_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    plan = program_plan(way, ["--filter-port", "22", "--filter-track-sock"])
    compiled, how = _loaded_tags(plan, caplog)
    assert how == COMPILED
    assert len(list(cache_dir.glob("program-*.json"))) == 1
    cached, how = _loaded_tags(plan, caplog)
    print(f"{way}: {len(compiled)} functions, tags {sorted(set(compiled.values()))[:3]}...")
    assert how == FROM_CACHE
    assert cached == compiled  # the kernel holds the same instructions

    other = program_plan(way, ["--filter-port", "23", "--filter-track-sock"])
    changed, how = _loaded_tags(other, caplog)
    assert how == COMPILED  # another macro, another program
    assert changed != compiled
    assert len(list(cache_dir.glob("program-*.json"))) == 2


@pytest.mark.parametrize("way", _ways()[:1])
def test_a_cache_entry_that_does_not_fit_is_compiled_afresh(
    way: str, cache_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    plan = program_plan(way, ["--summary"])
    compiled, _ = _loaded_tags(plan, caplog)
    (entry,) = cache_dir.glob("program-*.json")
    functions = json.loads(entry.read_text())

    renamed = {
        name: {**function, "maps": [[i, "no_such_map"] for i, _ in function["maps"]]}
        for name, function in functions.items()
    }
    assert any(function["maps"] for function in renamed.values())
    entry.write_text(json.dumps(renamed))
    tags, how = _loaded_tags(plan, caplog)
    assert (how, tags) == (COMPILED, compiled)
    assert "does not fit" in caplog.text

    entry.write_text(entry.read_text()[:100])  # cut short, as by a full disk
    tags, how = _loaded_tags(plan, caplog)
    assert (how, tags) == (COMPILED, compiled)
    assert json.loads(entry.read_text()) == functions  # written again whole
    _, how = _loaded_tags(plan, caplog)
    assert how == FROM_CACHE


def test_a_low_memlock_limit_changes_neither_the_features_nor_the_program(cache_dir: Path) -> None:
    """Before 5.11, BPF memory counts against RLIMIT_MEMLOCK summed over the user's processes: right
    after a classic-kprobe run (whose probes are removed in the background) a feature probe failed
    with EPERM, so the next run chose the perf buffer and missed the cache. A soft limit of 0 stands
    in for that (the hard limit is left as it is); socketrace lifts it, as BCC does, and builds the
    program it would have built."""
    prlimit = require_tool("prlimit")
    listing = [*COMMAND, "--ebpf", "--filter-port", "1"]
    unlimited = subprocess.run(listing, capture_output=True, text=True, timeout=pace().seconds(2), check=True)
    limited = subprocess.run(
        [prlimit, "--memlock=0:", *listing], capture_output=True, text=True, timeout=pace().seconds(2)
    )
    assert limited.returncode == 0, limited.stderr
    assert limited.stdout == unlimited.stdout


@pytest.mark.userland
def test_the_maps_the_c_declares_are_the_contracts(monkeypatch: pytest.MonkeyPatch) -> None:
    """The map names Python reads (contract.MapName) are the ones the C declares: BCC's own list of
    the maps it created, over programs that between them declare every map."""
    monkeypatch.setenv("SOCKETRACE_CACHE_DIR", "off")
    ways = _ways()
    configurations = [(ways[0], ["--filter-track-sock", "--summary"]), (ways[0], ["--filter", PORT_SETS_EXPRESSION])]
    configurations += [(ways[0], ["--filter", PREFIX_SETS_EXPRESSION])]
    if "kprobe-multi" in ways:  # returns: calls in flight, and latency with --summary
        configurations += [("kprobe-multi", ["--output-return"]), ("kprobe-multi", ["--output-return", "--summary"])]
    declared: set[str] = set()
    for way, args in configurations:
        bpf = compile_program(program_plan(way, args))
        try:
            names = set(table_fds(bpf).values())
        finally:
            bpf.cleanup()
        print(f"{way} {' '.join(args)[:60] or '(defaults)'}: {', '.join(sorted(names))}")
        assert names <= MapName.all(), names - MapName.all()
        declared |= names
    if "kprobe-multi" in ways and ways[0] != "kprobe-multi":  # every kind of entry: every map
        assert declared == MapName.all()
