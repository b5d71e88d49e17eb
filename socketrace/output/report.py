"""The exit report: what was printed, and where every other probe run went.

Every run of an entry program ends in exactly one of the program's counters
(contract.Counter), so the line adds up: printed (or counted, or not printed
past --output-limit-lines) + dropped + without a socket + filtered out + while
not tracing = the entry programs' runs, the number ``bpftool prog show``
reports as run_cnt when ``kernel.bpf_stats_enabled=1`` (shown too, then).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..contract import Counter

__all__ = ["Delivery", "KernelRuns", "accounting_lines"]

ENTRY_DROPS = {
    Counter.BUFFER_FULL: "buffer full",
    Counter.NESTED: "nested",
    Counter.TAIL_CALL: "tail call failed",
    Counter.CALLS_FULL: "calls table full",
}
RETURN_DROPS = {Counter.RETURN_BUFFER_FULL: "buffer full", Counter.RETURN_NESTED: "nested"}


@dataclass(frozen=True)
class Delivery:
    """What user space did with the events the program sent."""

    printed: int  # lines written (or, with --summary, events counted)
    unprinted: int = 0  # sent, but past --output-limit-lines
    summary: bool = False
    returns: bool = False  # --output-return: events are made at returns


@dataclass(frozen=True)
class KernelRuns:
    """The kernel's own counts for the entry and return programs (bpf_prog_info)."""

    entry_runs: int | None  # None unless kernel.bpf_stats_enabled=1
    return_runs: int | None
    recursion_misses: int  # hits the kernel skipped because a BPF program was already running on that CPU


def _drops(counters: dict[Counter, int], causes: dict[Counter, str]) -> tuple[int, str]:
    total = sum(counters[counter] for counter in causes)
    detail = ", ".join(f"{name}: {counters[counter]}" for counter, name in causes.items() if counters[counter])
    return total, detail or next(iter(causes.values())) + ": 0"


def accounting_lines(counters: dict[Counter, int], delivery: Delivery, kernel: KernelRuns) -> list[str]:
    """One line for the entry runs; with --output-return one more for the returns."""
    dropped, causes = _drops(counters, ENTRY_DROPS if not delivery.returns else {**ENTRY_DROPS, **RETURN_DROPS})
    entry_runs = sum(counters[counter] for counter in Counter if counter <= Counter.CALLS_FULL)
    verb = "counted" if delivery.summary else "printed"
    line = f"{delivery.printed} events {verb}, {dropped} dropped ({causes})"
    if delivery.unprinted:
        line += f", {delivery.unprinted} past --output-limit-lines"
    line += (
        f", {counters[Counter.NO_SOCK]} probe runs without a socket, {counters[Counter.FILTERED]} filtered out,"
        f" {counters[Counter.NOT_TRACING]} before ready or after stop: {entry_runs} probe runs"
    )
    if kernel.entry_runs is not None:
        line += f" (the kernel counted {kernel.entry_runs})"
    lines = [line]
    if delivery.returns:
        return_runs = sum(
            counters[counter] for counter in Counter if Counter.RETURN_EMITTED <= counter <= Counter.RETURN_NESTED
        )
        line = (
            f"{return_runs} returns: {counters[Counter.RETURN_EMITTED]} events,"
            f" {counters[Counter.RETURN_UNMATCHED]} of calls not followed (filtered at entry or entered earlier),"
            f" {counters[Counter.RETURN_NOT_ERROR]} not an error, {counters[Counter.RETURN_NOT_TRACING]} after stop,"
            f" {counters[Counter.RETURN_BUFFER_FULL] + counters[Counter.RETURN_NESTED]} dropped"
        )
        if kernel.return_runs is not None:
            line += f" (the kernel counted {kernel.return_runs})"
        lines.append(line)
    if kernel.recursion_misses:
        lines.append(f"{kernel.recursion_misses} probe hits skipped by the kernel (a BPF program was already running)")
    if counters[Counter.STACK_ERRORS]:
        lines.append(f"{counters[Counter.STACK_ERRORS]} stacks could not be read")
    return lines
