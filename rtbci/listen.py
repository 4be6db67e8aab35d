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

import numpy as np
import pylsl

from rtbci.messages import decode
from rtbci.sinks.console import summarize_dict


class LatencyLog:
    """Per-decoder receive statistics."""

    def __init__(self):
        self.received: dict[str, int] = {}
        self.e2e: dict[str, list[float]] = {}
        self.engine: dict[str, list[float]] = {}
        self.late: dict[str, int] = {}

    def add(self, message: dict, received_at: float) -> None:
        name = message["decoder"]
        self.received[name] = self.received.get(name, 0) + 1
        self.late[name] = self.late.get(name, 0) + bool(message["late"])
        self.e2e.setdefault(name, []).append((received_at - message["window_end"]) * 1e3)
        self.engine.setdefault(name, []).append(
            (message["t_published"] - message["t_arrived"]) * 1e3)

    def summary(self) -> dict:
        def figures(values):
            v = np.asarray(values)
            return {"p50": float(np.percentile(v, 50)), "p99": float(np.percentile(v, 99)),
                    "max": float(v.max())}

        return {name: {"received": n, "late": self.late[name],
                       "end_to_end_ms": figures(self.e2e[name]),
                       "engine_ms": figures(self.engine[name])}
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
