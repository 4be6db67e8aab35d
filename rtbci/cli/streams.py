"""``rtbci streams``: list the LSL streams visible on the network."""

from __future__ import annotations

import argparse
import json

from rtbci.cli.arguments import _positive


def add_parser(sub: argparse._SubParsersAction) -> None:
    """``rtbci streams``: its arguments on ``sub``."""
    p = sub.add_parser("streams", help="list the LSL streams on the network",
                       description="List the LSL streams visible on the network.")
    p.add_argument("--timeout", type=_positive, default=2.0,
                   help="seconds to wait for streams (default 2)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the LSL streams found within ``--timeout`` s (a table, or JSON); 0."""
    import pylsl

    infos = pylsl.resolve_streams(wait_time=args.timeout)
    rows = [{"name": i.name(), "type": i.type(), "channels": i.channel_count(),
             "srate": i.nominal_srate(), "source_id": i.source_id(),
             "hostname": i.hostname()} for i in infos]
    rows.sort(key=lambda r: (r["name"], r["source_id"]))
    if args.json:
        print(json.dumps(rows, indent=2))
    elif not rows:
        print(f"no LSL streams found within {args.timeout:g} s")
    else:
        print(f"{'name':<24} {'type':<10} {'ch':>4} {'srate':>8}  {'source_id':<28} host")
        for r in rows:
            print(f"{r['name']:<24} {r['type']:<10} {r['channels']:>4} {r['srate']:>8g}  "
                  f"{r['source_id']:<28} {r['hostname']}")
    return 0
