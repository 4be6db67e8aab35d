"""Thread health: a thread of the engine that dies or stalls is said at once — in the log,
the statistics, the status the sinks get, the console and the exit status."""

import asyncio
import json
import subprocess
import sys
import textwrap
import threading
import time
import uuid

import pytest

from rtbci.config import parse_config
from rtbci.engine import Engine
from rtbci.health import HealthWatch, Heartbeat, Watched, watch_thread
from rtbci.report import format_thread_line
from rtbci.sinks import Sink


def wait_until(condition, timeout=10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def test_a_thread_ended_by_system_exit_is_dead_and_named():
    changes = []
    watch = HealthWatch(on_change=lambda: changes.append(time.monotonic())).start()
    try:
        go = threading.Event()

        def body():
            go.wait()
            sys.exit(3)  # Python's default excepthook says nothing about this one

        thread = threading.Thread(target=body, daemon=True)
        thread.start()
        entry = watch.add(watch_thread("markers", "eeg", thread))
        assert not watch.check() and entry.state == "ok"
        go.set()
        assert wait_until(lambda: changes), "the change was handed on"
        assert entry.state == "dead" and entry.why == "SystemExit: 3"
        assert watch.report() == {"markers eeg": {"state": "dead", "why": "SystemExit: 3",
                                                  "stalls": 0}}
        assert "marker reader of source 'eeg'" in entry.label
    finally:
        watch.stop()


def test_a_silent_heartbeat_is_a_stall_until_it_beats_again():
    watch = HealthWatch()
    beat = Heartbeat()
    entry = watch.add(Watched("loop", "engine", lambda: True, beat, stall_s=0.05))
    beat.at -= 1.0  # last beat a second ago
    assert watch.check() and entry.state == "stalled" and entry.stalls == 1
    assert watch.report()["loop engine"]["state"] == "stalled"
    beat.beat()
    assert watch.check() and entry.state == "ok"
    assert watch.report() == {"loop engine": {"state": "ok", "why": "", "stalls": 1}}
    beat.idle = True  # a declared wait is no stall
    beat.at -= 10.0
    assert not watch.check() and entry.state == "ok"


def test_console_line_names_the_state_and_why():
    line = format_thread_line("worker bp", {"state": "dead", "why": "SystemExit: 3",
                                            "stalls": 0})
    assert line == "thread worker bp  DEAD (SystemExit: 3)"


class _Killer(Sink):
    """Kills the acquisition thread that announces a stream (a broken sink's worst case:
    SystemExit is not an Exception), and records the statuses it is sent."""

    kind = "killer"

    def __init__(self):
        self.statuses = []

    def stream_added(self, name, stream):
        raise SystemExit("killed by a test sink")

    def status_changed(self, status):
        self.statuses.append(status)

    def publish(self, result):
        pass


class _SlowOnce(Sink):
    """Holds the event loop for ``hold_s`` on its first result."""

    kind = "slow"

    def __init__(self, hold_s):
        self.hold_s, self.held = hold_s, False

    def publish(self, result):
        if not self.held:
            self.held = True
            time.sleep(self.hold_s)


def _config(decoders=()):
    return parse_config({
        "engine": {"session": f"health-{uuid.uuid4().hex[:6]}"},
        "sources": [{"name": "eeg", "kind": "simulate",
                     "stream_name": f"health-{uuid.uuid4().hex[:8]}"}],
        "decoders": list(decoders)})


@pytest.mark.slow
def test_a_dead_acquisition_thread_is_in_the_stats_the_status_and_the_problems():
    killer = _Killer()
    engine = Engine(_config(), sinks=[killer])
    seen = {}

    async def main():
        task = asyncio.ensure_future(engine.run(8.0))
        t0 = time.monotonic()
        while not task.done():
            threads = engine.stats()["threads"]
            if "acquisition eeg" in threads and "dead" not in seen:
                seen["dead"] = time.monotonic() - t0
                seen["status"] = [s.get("threads") for s in killer.statuses]
            await asyncio.sleep(0.05)
        return task.result()

    stats = asyncio.run(main())
    assert stats["threads"]["acquisition eeg"] == {
        "state": "dead", "why": "SystemExit: killed by a test sink", "stalls": 0}
    assert any("acquisition eeg" in (s or {}) for s in seen["status"]), \
        "the sinks were told (the MQTT status, the display)"
    assert any("acquisition thread of source 'eeg' died" in line
               for line in engine.problems(stats))


@pytest.mark.slow
def test_a_blocked_event_loop_is_reported_as_stalled_and_recovered():
    slow = _SlowOnce(hold_s=2.0)
    engine = Engine(_config([{"name": "bp", "model": "builtin:bandpower", "source": "eeg",
                              "runtime": "numpy", "window_ms": 200, "every_ms": 100}]),
                    sinks=[slow])
    stats = asyncio.run(engine.run(5.0))
    assert slow.held
    assert stats["threads"]["loop engine"]["stalls"] == 1
    assert stats["threads"]["loop engine"]["state"] == "ok"
    assert not engine.problems(stats)


KILLING_RUN = textwrap.dedent('''
    """`rtbci run` itself, with a sink (added to every engine) whose stream_added raises
    SystemExit: it ends the acquisition thread that announces the stream."""
    import sys

    import rtbci.engine
    from rtbci.cli import main
    from rtbci.sinks import Sink

    class Killer(Sink):
        kind = "killer"

        def stream_added(self, name, stream):
            raise SystemExit("killed by a test sink")

        def publish(self, result):
            pass

    class KillingEngine(rtbci.engine.Engine):
        def __init__(self, config, clock=None, sinks=None):
            super().__init__(config, clock, [Killer(), *(sinks or [])])

    rtbci.engine.Engine = KillingEngine
    sys.exit(main(sys.argv[1:]))
''')


@pytest.mark.slow
def test_rtbci_run_exits_1_and_says_which_thread_died(tmp_path):
    """A thread that dies (here the acquisition thread, ended by a sink raising SystemExit:
    decoders no longer can, their workers survive anything) makes ``rtbci run`` exit 1, and is
    named in the statistics' ``threads``, on stderr and on the console."""
    (tmp_path / "killing_run.py").write_text(KILLING_RUN)
    stream = f"health-{uuid.uuid4().hex[:8]}"
    (tmp_path / "run.toml").write_text(textwrap.dedent(f'''
        [engine]
        session = "health-{uuid.uuid4().hex[:6]}"
        [[sources]]
        name = "eeg"
        kind = "simulate"
        stream_name = "{stream}"
    '''))
    stats_path = tmp_path / "stats.json"
    proc = subprocess.run(
        [sys.executable, str(tmp_path / "killing_run.py"), "run", str(tmp_path / "run.toml"),
         "--duration", "5", "--stats-json", str(stats_path)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr[-2000:]
    stats = json.loads(stats_path.read_text())
    assert stats["threads"]["acquisition eeg"]["state"] == "dead"
    assert "SystemExit: killed by a test sink" in stats["threads"]["acquisition eeg"]["why"]
    assert ("acquisition thread of source 'eeg' died (SystemExit: killed by a test sink)"
            in proc.stderr)
    assert "thread acquisition eeg  DEAD" in proc.stdout


@pytest.mark.slow
def test_an_ended_mqtt_connection_task_is_reported(mosquitto):
    config = parse_config({
        "engine": {"session": f"health-{uuid.uuid4().hex[:6]}"},
        "sources": [{"name": "eeg", "kind": "simulate",
                     "stream_name": f"health-{uuid.uuid4().hex[:8]}"}],
        "sinks": [{"kind": "mqtt", "url": mosquitto.url}]})
    engine = Engine(config)

    async def main():
        run = asyncio.ensure_future(engine.run(6.0))
        sink = engine.sinks[0]
        while engine.health._thread is None or sink._task is None:  # watched from now on
            await asyncio.sleep(0.05)
        sink._task.cancel()  # as if it had raised: it sends nothing from now on
        return await run

    stats = asyncio.run(main())
    assert stats["threads"]["sink mqtt[0] connection"]["state"] == "dead"
    assert any("sink mqtt[0] connection died" in line for line in engine.problems(stats))


class _BlocksIngestOnce(Sink):
    """A raw listener that holds its stream's acquisition thread for ``hold_s``, once."""

    kind = "blocker"

    def __init__(self, hold_s):
        self.hold_s, self.held = hold_s, False

    def stream_added(self, name, stream):
        def listen(data, timestamps):
            if not self.held:
                self.held = True
                time.sleep(self.hold_s)

        stream.add_raw_listener(listen)

    def publish(self, result):
        pass


@pytest.mark.slow
def test_a_held_acquisition_thread_is_reported_as_stalled_and_recovered():
    blocker = _BlocksIngestOnce(hold_s=2.5)
    engine = Engine(_config(), sinks=[blocker])
    stats = asyncio.run(engine.run(6.0))
    assert blocker.held
    assert stats["threads"]["acquisition eeg"] == {"state": "ok", "why": "", "stalls": 1}
    assert stats["streams"]["eeg"]["samples"] > 0


@pytest.mark.slow
def test_a_dead_check_for_other_engines_is_reported(monkeypatch):
    """The session-presence thread (engines with an LSL or MQTT sink) is watched too: if it
    dies, a second engine on the session would go unnoticed, and the run says so."""
    from rtbci.presence import SessionPresence

    def dies(self, resolver):
        raise SystemExit("presence check broke")

    monkeypatch.setattr(SessionPresence, "_check", dies)
    config = parse_config({
        "engine": {"session": f"health-{uuid.uuid4().hex[:6]}"},
        "sources": [{"name": "eeg", "kind": "simulate",
                     "stream_name": f"health-{uuid.uuid4().hex[:8]}"}],
        "sinks": [{"kind": "lsl"}]})
    engine = Engine(config)
    stats = asyncio.run(engine.run(3.0))
    entry = stats["threads"][f"presence {config.engine.session}"]
    assert entry == {"state": "dead", "why": "SystemExit: presence check broke", "stalls": 0}
    assert any("the check for other engines" in line for line in engine.problems(stats))


def test_threads_stopped_at_shutdown_are_not_reported_dead(monkeypatch):
    """Shutdown stops the watch before it stops the presence thread: a presence thread that
    ended on purpose (here with a pause after it, so a watch still running would look) is
    not a death, and the run exits 0 (the CI once saw exit 1 from this race)."""
    from rtbci.presence import SessionPresence

    stop = SessionPresence.stop

    def slow_stop(self):
        stop(self)
        time.sleep(0.6)  # three watch periods with the thread ended

    monkeypatch.setattr(SessionPresence, "stop", slow_stop)
    config = parse_config({
        "engine": {"session": f"health-{uuid.uuid4().hex[:6]}"},
        "sources": [{"name": "eeg", "kind": "simulate",
                     "stream_name": f"health-{uuid.uuid4().hex[:8]}"}],
        "sinks": [{"kind": "lsl"}]})
    engine = Engine(config)
    stats = asyncio.run(engine.run(2.0))
    assert f"presence {config.engine.session}" not in stats["threads"]  # only problems listed
    assert engine.health.dead() == []
