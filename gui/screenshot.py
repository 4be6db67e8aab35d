"""``python -m rtbci.gui.screenshot PATH``: a PNG of the display on a live run of the demo.

Runs the demo config (``rtbci/demo.toml``: simulated amplifiers, every decoder) in this
process with its MQTT sink on a private port, an embedded broker (``rtbci broker``) there,
and the display at its default size rendered offscreen; once every decoder has drawn
results (or after ``--timeout`` seconds) and ``--settle`` seconds more, saves the window.
docs/gui.png is made this way: ``python -m rtbci.gui.screenshot docs/gui.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
import threading
import time
import tomllib
from importlib import resources
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def demo_config(url: str):
    """The demo config with its only sink the MQTT broker at ``url``."""
    from rtbci.config import parse_config

    package = Path(str(resources.files("rtbci")))
    data = tomllib.loads((package / "demo.toml").read_text())
    data["sinks"] = [{"kind": "mqtt", "url": url}]
    return parse_config(data, "demo config", base_dir=package)


class EngineThread:
    """The engine on its own asyncio loop in a background thread."""

    def __init__(self, config):
        from rtbci.engine import Engine

        self.engine = Engine(config)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self.thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        await self.engine.run(None, self._stop)

    def start(self) -> EngineThread:
        self.thread.start()
        return self

    def stop(self, timeout: float = 20.0) -> None:
        while self._loop is None and self.thread.is_alive():
            time.sleep(0.05)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(timeout)


def _all_drawn(window) -> bool:
    """Every decoder the engine announced has drawn a result and has its timing."""
    status = window.mqtt.status or {}
    names = [n for n, e in (status.get("decoders") or {}).items() if "error" not in e]
    return bool(names) and all(
        window.states.get(n) is not None and window.states[n].received for n in names
    ) and window.mqtt.stats is not None


def take(path: Path, timeout: float = 90.0, settle: float = 3.0) -> bool:
    """Run the demo, show the display and save it to ``path``; whether every decoder drew."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from rtbci.broker import start_broker_process
    from rtbci.gui.app import DEFAULT_SIZE
    from rtbci.gui.window import MainWindow, ensure_app

    port = _free_port()
    url = f"mqtt://127.0.0.1:{port}"
    broker = start_broker_process("127.0.0.1", port)
    engine = None
    try:
        config = demo_config(url)
        engine = EngineThread(config).start()
        app = ensure_app(["rtbci-screenshot"])
        window = MainWindow(config.engine.session, url)
        window.resize(*DEFAULT_SIZE)
        window.show()
        deadline = time.monotonic() + timeout
        while not _all_drawn(window) and time.monotonic() < deadline:
            app.processEvents()
            time.sleep(0.01)
        complete = _all_drawn(window)
        until = time.monotonic() + settle
        while time.monotonic() < until:
            app.processEvents()
            time.sleep(0.01)
        path.parent.mkdir(parents=True, exist_ok=True)
        if not window.screenshot(str(path)):
            raise OSError(f"cannot write {path}")
        window.close_feeds()
        return complete
    finally:
        if engine is not None:
            engine.stop()
        broker.terminate()
        broker.wait(10)


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m rtbci.gui.screenshot PATH [--timeout S] [--settle S]``."""
    parser = argparse.ArgumentParser(prog="python -m rtbci.gui.screenshot",
                                     description="Save a PNG of the display on a live run of "
                                                 "the demo config (offscreen).")
    parser.add_argument("path", type=Path, help="PNG file to write")
    parser.add_argument("--timeout", type=float, default=90.0,
                        help="seconds to wait for every decoder's first result (default 90)")
    parser.add_argument("--settle", type=float, default=3.0,
                        help="seconds to run after that before the picture (default 3)")
    args = parser.parse_args(argv)
    try:
        complete = take(args.path, args.timeout, args.settle)
    except (OSError, RuntimeError) as exc:
        print(f"rtbci: error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.path} written" + ("" if complete else
                                    f" (not every decoder had a result after {args.timeout} s)"))
    return 0 if complete else 1


if __name__ == "__main__":
    sys.exit(main())
