"""The exit report: what was printed, and where every other probe run went.

Every run of an entry program ends in exactly one of the program's counters
(contract.Counter), so the first line adds up: printed (or counted, or not
printed: past --output-limit-lines, after the output went away, or still in the
buffer when the drain after a stop ran out of time) + dropped +
without a socket + filtered out + while not tracing = the entry programs' runs,
the number ``bpftool prog show`` reports as run_cnt when
``kernel.bpf_stats_enabled=1`` (shown too, then). With --output-return, events
are made at the returns: the entries that passed are the calls remembered, and
a second line accounts for the return program's runs the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..contract import ENTRY_OUTCOMES, RETURN_OUTCOMES, Counter

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
    unprinted: int = 0  # sent, but past --output-limit-lines or after the output went away
    summary: bool = False
    returns: bool = False  # --output-return: events are made at returns
    output_gone: bool = False  # the output failed, or its reader left or stalled: why ``unprinted`` were not printed
    left: int = 0  # sent, still in the buffer when the drain after the stop ran out of time


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
    dropped, causes = _drops(counters, ENTRY_DROPS)
    entry_runs = sum(counters[counter] for counter in ENTRY_OUTCOMES)
    verb = "counted" if delivery.summary else "printed"
    line = f"{delivery.printed} events {verb}, {dropped} dropped ({causes})"
    why = "the output stopped taking them" if delivery.output_gone else "past --output-limit-lines"
    reasons = [(why, delivery.unprinted), ("left in the buffer at the stop", delivery.left)]
    reasons = [(reason, count) for reason, count in reasons if count]
    if reasons:
        detail = reasons[0][0] if len(reasons) == 1 else ", ".join(f"{reason}: {count}" for reason, count in reasons)
        line += f", {delivery.unprinted + delivery.left} not printed ({detail})"
    line += (
        f", {counters[Counter.NO_SOCK]} probe runs without a socket, {counters[Counter.FILTERED]} filtered out,"
        f" {counters[Counter.NOT_TRACING]} before ready or after stop: {entry_runs} probe runs"
    )
    if kernel.entry_runs is not None:
        line += f" (the kernel counted {kernel.entry_runs})"
    lines = [line]
    if delivery.returns:
        return_runs = sum(counters[counter] for counter in RETURN_OUTCOMES)
        return_dropped, return_causes = _drops(counters, RETURN_DROPS)
        line = (
            f"{return_runs} returns: {counters[Counter.RETURN_EMITTED]} events,"
            f" {counters[Counter.RETURN_UNMATCHED]} of calls not followed (filtered at entry or entered earlier),"
            f" {counters[Counter.RETURN_NOT_ERROR]} not an error, {counters[Counter.RETURN_NOT_TRACING]} after stop,"
            f" {return_dropped} dropped ({return_causes})"
        )
        if kernel.return_runs is not None:
            line += f" (the kernel counted {kernel.return_runs})"
        lines.append(line)
    if kernel.recursion_misses:
        lines.append(f"{kernel.recursion_misses} probe hits skipped by the kernel (a BPF program was already running)")
    if counters[Counter.STACK_ERRORS]:
        lines.append(f"{counters[Counter.STACK_ERRORS]} stacks could not be read")
    return lines
