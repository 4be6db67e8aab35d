"""``rtbci gui``: open the live display (its options and code live in rtbci.gui)."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    """``rtbci gui``: its arguments (rtbci.gui.app's) on ``sub``."""
    p = sub.add_parser("gui", help="the live display: traces, decoder outputs, timing",
                       description="Open the Qt display of a running session: LSL traces with "
                                   "markers, each decoder's output, latency histograms and "
                                   "engine counters (docs/gui.md). Its own process; needs "
                                   "pip install 'rtbci[gui]'.")
    from rtbci.gui.app import add_arguments as add_gui_arguments  # light: no Qt imported

    add_gui_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the display until its window closes; its exit status."""
    from rtbci.gui.app import run as run_display

    return run_display(args)
