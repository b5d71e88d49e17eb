"""The ``socketrace`` command's first instructions.

Signal handlers are installed before anything heavy is imported (click, BCC
and LLVM take a while to load), so a Ctrl+C or SIGTERM at any moment ends the
run cleanly: one line, status 130 (143 for SIGTERM), no traceback, nothing
left attached.
"""

from __future__ import annotations

import sys

from . import signals

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    try:
        signals.install()
        from .cli import main as cli_main

        return cli_main(argv)
    except signals.StopRequested as stop:
        signals.ignore_from_now()
        print("socketrace: interrupted", file=sys.stderr)
        return stop.exit_status
    finally:
        signals.ignore_from_now()
