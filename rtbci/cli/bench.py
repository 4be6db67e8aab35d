"""``rtbci bench``: measure rtbci against its peers (the command's code is rtbci.bench)."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    """``rtbci bench``: its arguments (rtbci.bench.main's) on ``sub``."""
    p = sub.add_parser("bench", help="measure rtbci against its peers (latency, CPU, loss)")
    from rtbci.bench.main import build_parser

    build_parser(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the bench that the arguments ask for; 0."""
    from rtbci.bench.main import run_args

    return run_args(args)
