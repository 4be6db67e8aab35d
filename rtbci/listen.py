"""``rtbci listen``: an MQTT client that prints results live and measures their latency.

End-to-end latency = receive time − ``window_end`` (the window's last sample's acquisition
timestamp); both are on the LSL clock, so the client must run on the engine's machine (or
a machine whose clock is synchronised to it) for that figure to mean anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sys
from pathlib import Path

import pylsl

from rtbci.latency import LatencyWindow
from rtbci.messages import decode
from rtbci.sinks.console import summarize_dict


class LatencyLog:
    """Per-decoder receive statistics; percentiles over each decoder's last ``WINDOW`` results."""

    WINDOW = 100_000

    def __init__(self):
        self.received: dict[str, int] = {}
        self.e2e: dict[str, LatencyWindow] = {}
        self.engine: dict[str, LatencyWindow] = {}
        self.late: dict[str, int] = {}

    def add(self, message: dict, received_at: float) -> None:
        name = message["decoder"]
        if name not in self.received:
            self.received[name], self.late[name] = 0, 0
            self.e2e[name], self.engine[name] = (LatencyWindow(self.WINDOW),
                                                 LatencyWindow(self.WINDOW))
        self.received[name] += 1
        self.late[name] += bool(message["late"])
        self.e2e[name].record(received_at - message["window_end"])
        self.engine[name].record(message["t_published"] - message["t_arrived"])

    def summary(self) -> dict:
        return {name: {"received": n, "late": self.late[name],
                       "end_to_end_ms": self.e2e[name].summary_ms(),
                       "engine_ms": self.engine[name].summary_ms()}
                for name, n in self.received.items()}


async def listen(host: str, port: int, session: str, duration: float | None,
                 stats_json: Path | None, quiet: bool = False) -> dict:
    """Subscribe to ``rtbci/<session>/#`` and print one line per result (unless quiet)."""
    import aiomqtt

    log = LatencyLog()
    nodelay = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
    async with aiomqtt.Client(host, port, socket_options=nodelay) as client:
        await client.subscribe(f"rtbci/{session}/#")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(duration):
                async for msg in client.messages:
                    now = pylsl.local_clock()
                    message = decode(msg.payload)
                    topic = str(msg.topic)
                    if topic.endswith("/status"):
                        if not quiet:
                            print(f"status: {message.get('state')}", flush=True)
                        continue
                    if topic.endswith("/stats"):  # the engine's statistics, once a second
                        continue
                    log.add(message, now)
                    if not quiet:
                        print(f"{message['decoder']:<12} seq {message['seq']:>6}  "
                              f"e2e {(now - message['window_end']) * 1e3:7.2f} ms  "
                              f"{summarize_dict(message)}", flush=True)
    summary = log.summary()
    if stats_json is not None:
        stats_json.write_text(json.dumps(summary, indent=2) + "\n")
    if not quiet:
        print(json.dumps(summary, indent=2), file=sys.stderr)
    return summary
