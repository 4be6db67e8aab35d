"""``rtbci listen``: print the results published on MQTT with their end-to-end latency."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from pathlib import Path

from rtbci.cli.arguments import _positive, check_output
from rtbci.mqtt_connection import add_arguments as add_mqtt_arguments


def add_parser(sub: argparse._SubParsersAction) -> None:
    """``rtbci listen``: its arguments on ``sub``."""
    p = sub.add_parser("listen", help="print results from MQTT with their latency",
                       description="Subscribe to rtbci/SESSION/# and print each result with its "
                                   "end-to-end latency (receive time − the window's last "
                                   "sample's timestamp; run it on the engine's machine). "
                                   "Connects like the MQTT sink: mqtts://, CA file, user "
                                   "name and password (docs/security.md).")
    add_mqtt_arguments(p, "--url")
    p.add_argument("--session", default="demo",
                   help="engine session (default demo; no wildcards)")
    p.add_argument("--duration", type=_positive, help="seconds to listen (default: until Ctrl-C)")
    p.add_argument("--stats-json", type=Path, metavar="PATH",
                   help="write per-decoder latency percentiles to PATH at exit")
    p.add_argument("--summary-only", action="store_true", help="no line per result")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the session's results and their latency until ``--duration`` or Ctrl-C; 0."""
    from rtbci.listen import listen
    from rtbci.mqtt_connection import from_arguments

    check_output(args.stats_json, "--stats-json")
    connection = from_arguments(args.url, args, "--url")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(listen(connection, args.session, args.duration, args.stats_json,
                           quiet=args.summary_only))
    return 0
