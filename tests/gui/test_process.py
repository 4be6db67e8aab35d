"""The display as its own process: ``python -m rtbci.gui``, next to a real ``rtbci run``."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pylsl
import pytest

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("PySide6") is None
                                 or importlib.util.find_spec("pyqtgraph") is None,
                                 reason="the display needs PySide6 and pyqtgraph "
                                        "(pip install 'rtbci[gui]')")]

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


def test_engine_keeps_its_latency_when_the_display_stops_and_dies(mosquitto, subscribe, unique,
                                                                  tmp_path):
    config, stats_json = tmp_path / "engine.toml", tmp_path / "stats.json"
    config.write_text(CONFIG.format(session=unique, url=mosquitto.url))
    with subscribe(mosquitto.port, f"rtbci/{unique}/bp") as results:
        engine = subprocess.Popen([sys.executable, "-m", "rtbci", "-q", "run", str(config),
                                   "--stats-json", str(stats_json)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        log = tmp_path / "display.log"
        gui = display(["--session", unique, "--broker", mosquitto.url, "--stream", unique], log)
        try:
            wait_for_lines(log, ["MQTT connected", f"LSL stream '{unique}' connected"], gui, 30)
            _wait_for(lambda: len(results.results("bp")) >= 10, 30, "the engine's results")
            moments = _stop_then_kill(gui)
        finally:
            if gui.poll() is None:
                gui.kill()
            engine.send_signal(signal.SIGTERM)
            _, err = engine.communicate(timeout=20)
    assert engine.returncode == 0, err.decode(errors="replace")
    _assert_decoding_never_paused(results.results("bp"), moments)
    bp = json.loads(stats_json.read_text())["decoders"]["bp"]
    assert bp["errors"] == 0 and bp["skipped"] <= 5 and bp["late"] <= 5, bp
    assert bp["latency_ms"]["p99"] < 20.0, bp


def _wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


FREEZE_S = 2.0  # how long the display is frozen
# A display that blocked the engine would pause decoding for the whole freeze; a loaded
# 2-core machine can delay a few windows by ~0.1–0.3 s. A quarter of the freeze tells them apart.
PAUSE_LIMIT_S = FREEZE_S / 4


def _stop_then_kill(gui: subprocess.Popen) -> dict[str, float]:
    """Run live 1 s, freeze FREEZE_S (SIGSTOP), resume 1 s, kill, wait 1 s; LSL clock times."""
    moments = {}
    time.sleep(1.0)
    moments["stop"] = pylsl.local_clock()
    gui.send_signal(signal.SIGSTOP)  # a frozen display: its sockets fill up
    time.sleep(FREEZE_S)
    gui.send_signal(signal.SIGCONT)
    moments["cont"] = pylsl.local_clock()
    time.sleep(1.0)
    gui.kill()  # a crashed display
    gui.wait(5)
    moments["kill"] = pylsl.local_clock()
    time.sleep(1.0)
    moments["end"] = pylsl.local_clock()
    return moments


def _assert_decoding_never_paused(results: list[dict], moments: dict[str, float]) -> None:
    """A result every 50 ms of signal, published without a pause, while the display was
    frozen and after it died (pauses up to PAUSE_LIMIT_S are the machine's, not the display's)."""
    ends = np.array(sorted(m["window_end"] for m in results))
    assert np.diff(ends).max() < PAUSE_LIMIT_S, f"decoding paused for {np.diff(ends).max():.3f} s"
    published = np.array(sorted(m["t_published"] for m in results))
    during = published[(published > moments["stop"]) & (published <= moments["end"])]
    gap = np.diff(np.concatenate([[moments["stop"]], during, [moments["end"]]])).max()
    assert gap < PAUSE_LIMIT_S, f"publishing paused for {gap:.3f} s"
    for start, stop in (("stop", "cont"), ("kill", "end")):
        n = np.count_nonzero((ends > moments[start]) & (ends <= moments[stop] - 0.1))
        expected = (moments[stop] - 0.1 - moments[start]) / 0.05
        assert n >= 0.9 * expected, f"{n} results between {start} and {stop}, not {expected}"
    latency = np.array([m["t_published"] - m["t_arrived"] for m in results]) * 1e3
    assert np.percentile(latency, 99) < 20.0, np.percentile(latency, 99)


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

