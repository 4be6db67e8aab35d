"""``rtbci ctl``: control a running engine through its control socket (status, reload)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rtbci.cli.arguments import _positive


def add_parser(sub: argparse._SubParsersAction) -> None:
    """``rtbci ctl``: its arguments and actions on ``sub``."""
    p = sub.add_parser(
        "ctl", help="control a running engine: status, reload a decoder",
        description="Control the engine that runs SESSION on this machine, through its control "
                    "socket ($XDG_RUNTIME_DIR/rtbci/SESSION.sock, else "
                    "/tmp/rtbci-UID/SESSION.sock; only the user who runs the engine may use "
                    "it). Exit status: 0 done, 1 refused by the engine (the reason on stderr), "
                    "2 no engine runs SESSION here or a bad argument.",
        epilog="Example: rtbci ctl demo reload bp --set options.bands='[[8, 12], [18, 26]]' "
               "--set budget_ms=20")
    p.add_argument("session", metavar="SESSION", help="the engine's [engine] session")
    p.add_argument("--timeout", type=_positive, default=120.0,
                   help="seconds to wait for the engine's answer (default 120: a reload "
                        "builds and warms up the new decoder first)")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser("status", help="one line per decoder: state, model hash, model, "
                                      "reloads, results")
    r = actions.add_parser(
        "reload", help="swap a decoder's checkpoint or options while the engine runs",
        description="Build DECODER again from its config with --model and --set applied, while "
                    "the old one keeps decoding, then swap it in between two windows: no "
                    "window of the other decoders is lost. The new one must take the same "
                    "windows (window_ms, every_ms, on_marker and channels stay). Each result "
                    "names its model's hash (the 'model' field).")
    r.add_argument("decoder", metavar="DECODER", help="the decoder's name")
    r.add_argument("--model", metavar="CKPT",
                   help="the new model: a checkpoint file (relative to this directory), "
                        "builtin:… or python:MODULE:FACTORY")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a [[decoders]] key (budget_ms=20) or option (options.alpha=0.5); "
                        "VALUE is read as TOML (0.5 a float, [8, 12] a list, a bare word a "
                        "string); repeatable")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Send the action to the engine of SESSION, print its answer; 1 if the engine refused."""
    from rtbci.control import parse_settings, request
    from rtbci.models import is_checkpoint

    if args.action == "status":
        reply = request(args.session, {"op": "status"}, args.timeout)
    else:
        model = args.model
        if model and is_checkpoint(model) and not model.startswith("demo:"):
            model = str(Path(model).expanduser().resolve())  # the engine's folder may differ
        reply = request(args.session, {"op": "reload", "decoder": args.decoder, "model": model,
                                       "set": parse_settings(args.set)}, args.timeout)
    if not reply.get("ok"):
        print(f"rtbci: error: {reply.get('error')}", file=sys.stderr)
        return 1
    if args.action == "status":
        for d in reply.get("decoders", []):
            print(f"{d.get('name')}  {d.get('state')}  model {d.get('model') or '-'}  "
                  f"{d.get('spec')}  reloads {d.get('reloads')}  results {d.get('results')}")
    else:
        print(f"decoder {reply['decoder']!r} reloaded: {reply['old']} → {reply['new']} "
              f"({reply['spec']})")
    return 0
