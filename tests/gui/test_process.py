"""The display as its own process: ``python -m rtbci.gui``, next to a real ``rtbci run``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

CONFIG = """\
[engine]
session = "{session}"

[[sources]]
name = "eeg"
kind = "simulate"
profile = "eeg64"
stream_name = "{session}"

[[decoders]]
name = "bp"
model = "builtin:bandpower"
source = "eeg"
window_ms = 500
every_ms = 50
budget_ms = 10

[[sinks]]
kind = "mqtt"
url = "{url}"
"""


def display(args: list[str], log: Path) -> subprocess.Popen:
    """Start ``python -m rtbci.gui ARGS`` offscreen, its output going to ``log``."""
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", "rtbci.gui", *args], env=env,
                                stdout=out, stderr=subprocess.STDOUT)


def wait_for_lines(log: Path, lines: list[str], proc: subprocess.Popen, timeout: float) -> None:
    """Wait until every string of ``lines`` appears in ``log``."""
    deadline = time.monotonic() + timeout
    while not all(line in log.read_text(errors="replace") for line in lines):
        assert proc.poll() is None, f"display exited early:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"display never logged {lines}:\n{log.read_text()}"
        time.sleep(0.05)


def test_engine_keeps_its_latency_when_the_display_stops_and_dies(mosquitto, unique, tmp_path):
    config, stats_json = tmp_path / "engine.toml", tmp_path / "stats.json"
    config.write_text(CONFIG.format(session=unique, url=mosquitto.url))
    engine = subprocess.Popen([sys.executable, "-m", "rtbci", "-q", "run", str(config),
                               "--stats-json", str(stats_json)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    log = tmp_path / "display.log"
    gui = display(["--session", unique, "--broker", mosquitto.url, "--stream", unique], log)
    try:
        wait_for_lines(log, ["MQTT connected", f"LSL stream '{unique}' connected"], gui, 30)
        time.sleep(1.0)  # drawing live
        gui.send_signal(signal.SIGSTOP)  # a frozen display: its sockets fill up
        time.sleep(2.0)
        gui.send_signal(signal.SIGCONT)
        time.sleep(1.0)
        gui.kill()  # a crashed display
        gui.wait(5)
        time.sleep(1.0)
    finally:
        if gui.poll() is None:
            gui.kill()
        engine.send_signal(signal.SIGTERM)
        _, err = engine.communicate(timeout=20)
    assert engine.returncode == 0, err.decode(errors="replace")
    stats = json.loads(stats_json.read_text())
    bp, eeg = stats["decoders"]["bp"], stats["streams"]["eeg"]
    expected = (eeg["samples"] - 500) / 50  # a window every 50 samples once 500 are in
    assert bp["results"] >= 0.95 * expected - 2, (bp, eeg)  # decoding never paused
    assert bp["errors"] == 0 and bp["skipped"] <= 5 and bp["late"] <= 5, bp
    assert bp["latency_ms"]["p99"] < 20.0, bp
    assert eeg["gaps"] == 0 and eeg["overflows"] == 0, eeg


def test_screenshot_option_writes_a_png_and_exits(unique, nobroker, tmp_path, qt):
    png, log = tmp_path / "shot.png", tmp_path / "display.log"
    proc = display(["--session", unique, "--broker", nobroker, "--stream", unique,
                    "--screenshot", str(png), "--quit-after", "1.5", "--size", "900x600"], log)
    assert proc.wait(30) == 0, log.read_text()
    qt.assert_not_blank(png)
    bad = subprocess.run([sys.executable, "-m", "rtbci.gui", "--broker", "http://x"],
                         capture_output=True, text=True, timeout=30,
                         env={**os.environ, "QT_QPA_PLATFORM": "offscreen"})
    assert bad.returncode == 2 and "rtbci: error: --broker:" in bad.stderr


def test_the_engine_does_not_import_the_display():
    code = ("import sys, rtbci.cli, rtbci.engine, rtbci.sinks.mqtt; "
            "print(sorted(m for m in sys.modules if m.startswith(('rtbci.gui', 'PySide6', "
            "'pyqtgraph'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)
    assert out.stdout.strip() == "[]"
