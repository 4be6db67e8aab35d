"""The ``rtbci`` command line: the top-level parser and ``main``.

Each command is a module of this package with ``add_parser(sub)`` (its arguments and help)
and ``run(args) -> int`` (its exit status); ``COMMANDS`` lists them in ``rtbci --help``'s
order. ``arguments`` holds what several commands share (argument types, option groups,
output checks), ``preflight`` the checks of ``rtbci check``. A command imports its heavy
dependencies (torch, mne, the engine) inside ``run``, so that ``rtbci --help`` stays fast.
``import_`` and ``compile_`` end in an underscore: ``import`` is a keyword, ``compile`` a
builtin. Only ``rtbci/__main__.py`` and the console script import this package.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from rtbci import __version__
from rtbci.cli import (
    bench,
    broker,
    check,
    compile_,
    ctl,
    data,
    demo,
    evaluate,
    export,
    gui,
    import_,
    listen,
    replay,
    run,
    simulate,
    streams,
    train,
)
from rtbci.errors import RtbciError

COMMANDS = (streams, simulate, train, import_, check, run, evaluate, compile_, replay, export,
            listen, broker, gui, data, demo, bench, ctl)


def build_parser() -> argparse.ArgumentParser:
    """The ``rtbci`` parser: global options, then one subcommand per module of COMMANDS."""
    parser = argparse.ArgumentParser(
        prog="rtbci",
        description="Real-time streaming BCI decoding engine: LSL streams in; decoded results "
                    "out to MQTT, LSL and a Qt display.",
        epilog="Run 'rtbci demo' for a first look, 'rtbci COMMAND --help' for details.")
    parser.add_argument("--version", action="version", version=f"rtbci {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``rtbci ARGV``; the exit status: the command's, 2 for a bad argument or an
    RtbciError (one ``rtbci: error:`` line), 130 for Ctrl-C during start-up."""
    args = build_parser().parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    try:
        return args.func(args)
    except RtbciError as exc:
        print(f"rtbci: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C before the engine took over the signal (start-up)
        print("rtbci: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `rtbci … | head`: the reader left; as a shell tool ends
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        return 141
