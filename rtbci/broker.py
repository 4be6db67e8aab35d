"""An embedded MQTT broker (amqtt) for the demo and for labs without mosquitto.

It runs in its own process (``rtbci broker``) so it never shares the engine's event loop.
For experiments prefer mosquitto with ``set_tcp_nodelay true`` (faster, see docs/mqtt.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import subprocess
import sys
import time

log = logging.getLogger("rtbci.broker")


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    """True if something accepts TCP connections on ``host:port``."""
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout):
        return True
    return False


async def serve(host: str, port: int, stop: asyncio.Event) -> None:
    """Run an anonymous amqtt broker on ``host:port`` until ``stop`` is set."""
    from amqtt.broker import Broker

    if not log.isEnabledFor(logging.DEBUG):  # its per-connection chatter (our port probes)
        logging.getLogger("amqtt").setLevel(logging.CRITICAL)
    broker = Broker({
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin":
                    {"allow_anonymous": True}}})
    await broker.start()
    log.info("MQTT broker (amqtt) listening on %s:%d", host, port)
    try:
        await stop.wait()
    finally:
        await broker.shutdown()


def start_broker_process(host: str, port: int, timeout: float = 15.0) -> subprocess.Popen:
    """Start ``rtbci broker`` in a child process and wait until it accepts connections."""
    # its own session: a Ctrl-C in the terminal reaches the engine, not the broker, which its
    # starter stops after the engine has closed its MQTT sink (cli.cmd_demo)
    proc = subprocess.Popen([sys.executable, "-m", "rtbci", "-q", "broker", "--host", host,
                             "--port", str(port)], stdin=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + timeout
    while not port_open(host, port):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"the embedded MQTT broker did not start on {host}:{port}")
        time.sleep(0.1)
    return proc
