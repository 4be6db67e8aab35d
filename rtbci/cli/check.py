"""``rtbci check``: validate a config file and what it refers to; print what it sets up."""

from __future__ import annotations

import argparse
from pathlib import Path

from rtbci.cli.arguments import _positive
from rtbci.cli.preflight import describe_decoder, describe_source, known_infos, preflight
from rtbci.errors import RtbciError


def add_parser(sub: argparse._SubParsersAction) -> None:
    """``rtbci check``: its arguments on ``sub``."""
    p = sub.add_parser("check", help="validate a config file",
                       description="Validate a TOML config file and what it refers to (model, "
                                   "checkpoint and classifier files, windows against buffers, "
                                   "buffer memory) and print what it sets up.")
    p.add_argument("config", type=Path, metavar="CONFIG")
    p.add_argument("--probe", type=_positive, metavar="S",
                   help="also look for each LSL source's stream for up to S seconds (its "
                        "channels and rate size the buffer; a missing one lists those there)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Validate CONFIG and print what it sets up; 0, or an RtbciError listing every problem."""
    from rtbci.config import load_config

    config = load_config(args.config)
    infos = known_infos(config, args.probe, str(args.config))
    problems = preflight(config, infos)
    from rtbci.sinks.record import path_problems  # a record path that cannot be written

    problems += path_problems(config)
    if problems:
        raise RtbciError("\n".join(f"{args.config}: {p}" for p in problems))
    print(f"{args.config}: OK (session {config.engine.session!r})")
    for src in config.sources:
        print(f"  {describe_source(src, infos.get(src.name))}")
    for dec in config.decoders:
        print(f"  {describe_decoder(dec)}")
    return 0
