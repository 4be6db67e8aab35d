"""``rtbci broker``: run the embedded MQTT broker (amqtt), or add a user to its password
file."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

from rtbci.errors import RtbciError


def add_parser(sub: argparse._SubParsersAction) -> None:
    """``rtbci broker``: its arguments on ``sub``."""
    p = sub.add_parser("broker", help="run an embedded MQTT broker (amqtt)",
                       description="Run a small MQTT broker (amqtt) for the demo or a lab "
                                   "without one: anonymous, or with --password-file only known "
                                   "users, each limited to rtbci/USER/# (docs/security.md). "
                                   "For experiments prefer mosquitto with "
                                   "'set_tcp_nodelay true'.")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=1883, help="port (default 1883)")
    p.add_argument("--password-file", type=Path, metavar="PATH",
                   help="USER:ARGON2-HASH lines: refuse anonymous clients; user U may use only "
                        "rtbci/U/#")
    p.add_argument("--add-user", metavar="USER",
                   help="add or replace USER in --password-file (password read from stdin) "
                        "and exit")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Serve MQTT until Ctrl-C, or with ``--add-user`` write the user's hash and exit; 0."""
    from rtbci.broker import add_user, port_open, serve

    if args.add_user is not None:
        if args.password_file is None:
            raise RtbciError("--add-user needs --password-file")
        import getpass

        password = (getpass.getpass(f"password of {args.add_user}: ") if sys.stdin.isatty()
                    else sys.stdin.readline().rstrip("\n"))
        add_user(args.password_file, args.add_user, password)
        print(f"{args.add_user} written to {args.password_file}")
        return 0
    if not 1 <= args.port <= 65535:
        raise RtbciError(f"--port: must be 1..65535, got {args.port}")
    if port_open(args.host, args.port):
        raise RtbciError(f"--port: something already listens on {args.host}:{args.port}")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(args.host, args.port, stop, args.password_file)

    print(f"MQTT broker on {args.host}:{args.port} (Ctrl-C to stop)", flush=True)
    asyncio.run(main())
    return 0
