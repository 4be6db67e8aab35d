"""Run the bench: one sender, every row interleaved, a separate receiver per row.

A *segment* runs one row for ``duration`` seconds against the running sender: it starts the
row's processor process and a receiver process, waits until the receiver listens, lets the
processor warm up, then measures: every result whose window ended inside the measured span
counts; CPU is the processor's (and its children's) CPU time over the span, one core = 100 %.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil
import pylsl

from rtbci.bench import timeflux
from rtbci.bench.peers import EVERY_S

WARMUP_S = 1.0
GRACE_S = 0.5  # the receiver keeps listening this long after the span (later = lost)


@dataclass
class Sender:
    """Settings of the sender process (:mod:`rtbci.bench.sender`)."""

    channels: int = 64
    rate: float = 1000.0
    chunk: int = 10
    streams: int = 1
    name: str = field(default_factory=lambda: f"bench-{uuid.uuid4().hex[:8]}")

    def names(self) -> list[str]:
        return [self.name] if self.streams == 1 else [f"{self.name}-{i}"
                                                      for i in range(self.streams)]

    def start(self, duration: float) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "rtbci.bench.sender", "--name", self.name,
                                 "--channels", str(self.channels), "--rate", str(self.rate),
                                 "--chunk", str(self.chunk), "--streams", str(self.streams),
                                 "--duration", str(duration)])


@dataclass
class Segment:
    """What one row's run measured."""

    rows: np.ndarray  # (n, 4): receive time, result timestamp, outlet index, seq
    t0: float
    t1: float
    cpu_percent: float
    outlets: int
    timing: list | None = None  # rtbci rows: (decoder, seq, window_end, t_arrived … t_published)
    stats: dict | None = None  # rtbci rows: the engine's statistics at the end


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mosquitto_binary() -> str | None:
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.path.exists(p)),
        None)


def start_mosquitto(workdir: Path, port: int) -> subprocess.Popen:
    """A loopback mosquitto with ``set_tcp_nodelay true`` (else Nagle adds ~40 ms)."""
    conf = workdir / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                    "log_dest none\nset_tcp_nodelay true\n")
    proc = subprocess.Popen([mosquitto_binary(), "-c", str(conf)])
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), 0.1).close()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.terminate()
    raise RuntimeError("mosquitto did not start")


def processor_command(row: str, sender: Sender, out: str, workdir: Path, duration: float,
                      decoders: int = 1, mqtt_port: int | None = None,
                      slow_ms: float = 0.0, config: dict | None = None,
                      placement: str = "defaults",
                      decoder: dict | None = None) -> tuple[list[str], dict | None]:
    """The command line (and environment) of ``row``'s processor process; ``config``: an
    engine config for the rtbci row (its LSL sink's prefix is set to ``out``)."""
    if row.startswith("timeflux"):
        return timeflux.command(workdir, sender.names()[0], out, sender.rate,
                                timeflux.GRAPH_RATE if row == "timeflux-rate" else 0)
    cmd = [sys.executable, "-m", "rtbci.bench.peers", row, "--streams", ",".join(sender.names()),
           "--out", out, "--duration", str(duration), "--decoders", str(decoders)]
    if row.startswith("rtbci"):
        import json

        cmd += ["--timing", str(workdir / "timing.json"), "--slow-ms", str(slow_ms),
                "--placement", "source" if row == "rtbci-source" else placement]
        if decoder:
            cmd += ["--decoder", json.dumps(decoder)]
    if mqtt_port:
        cmd += ["--mqtt-port", str(mqtt_port)]
    if config is not None:
        import json

        config = {**config, "sinks": [{"kind": "lsl", "prefix": out}]}
        (workdir / "config.json").write_text(json.dumps(config))
        cmd += ["--config", str(workdir / "config.json")]
    return cmd, None


def cpu_seconds(proc: psutil.Process) -> float:
    """CPU time (user + system) of ``proc`` and its children, in seconds."""
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def run_segment(row: str, sender: Sender, duration: float, decoders: int = 1,
                mqtt_port: int | None = None, slow_ms: float = 0.0,
                config: dict | None = None, placement: str = "defaults",
                decoder: dict | None = None) -> Segment:
    """Run ``row`` against the running ``sender`` for ``duration`` s of measurement
    (``config``: an engine config with one decoder, which brings its own source; ``placement``:
    where the rtbci rows' band-power decoders run, see ``rtbci.bench.peers.PLACEMENTS``;
    ``decoder``: band-power keys replaced)."""
    import json

    outlets = 1 if config else sender.streams * decoders + (1 if slow_ms else 0)
    with tempfile.TemporaryDirectory(prefix="rtbci-bench-") as tmp:
        workdir = Path(tmp)
        out = f"r{uuid.uuid4().hex[:6]}"
        lifetime = duration + WARMUP_S + 60
        cmd, env = processor_command(row, sender, out, workdir, lifetime, decoders, mqtt_port,
                                     slow_ms, config, placement, decoder)
        # its own session: Timeflux runs its graph in child processes, stopped with it
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, start_new_session=True)
        listen = ["--mqtt", str(mqtt_port)] if mqtt_port else ["--lsl", out, "--outlets",
                                                                 str(outlets)]
        receiver = subprocess.Popen([sys.executable, "-m", "rtbci.bench.receiver", *listen,
                                     "--save", str(workdir / "rx.npy")],
                                    stdout=subprocess.PIPE, text=True)
        try:
            receiver.stdout.readline()  # "ready" (or "none": no outlet appeared)
            time.sleep(WARMUP_S)
            ps = psutil.Process(proc.pid)
            t0, c0 = pylsl.local_clock(), cpu_seconds(ps)
            time.sleep(duration)
            t1, c1 = pylsl.local_clock(), cpu_seconds(ps)
            time.sleep(GRACE_S)
        finally:
            stop(proc, receiver)
        rows = np.load(workdir / "rx.npy") if (workdir / "rx.npy").exists() else np.zeros((0, 4))
        timing_file = workdir / "timing.json"
        timing = json.loads(timing_file.read_text()) if timing_file.exists() else None
        stats_file = timing_file.with_suffix(".stats.json")
        stats = json.loads(stats_file.read_text()) if stats_file.exists() else None
    return Segment(rows, t0, t1, 100.0 * (c1 - c0) / (t1 - t0), outlets, timing, stats)


def stop(proc: subprocess.Popen, receiver: subprocess.Popen) -> None:
    """Stop the receiver, then the processor and its child processes; kill after 20 s."""
    children = psutil.Process(proc.pid).children(recursive=True) if proc.poll() is None else []
    for p in (receiver, proc):  # the receiver first: its inlets would log the broken link
        p.terminate()
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    for child in children:  # e.g. Timeflux's graph workers
        try:
            child.terminate()
            child.wait(5)
        except psutil.NoSuchProcess:
            pass
        except psutil.TimeoutExpired:
            child.kill()


def latencies(segments: list[Segment], outlets: list[int] | None = None,
              every_s: float = EVERY_S) -> dict:
    """Pooled figures of ``segments``: latencies (ms) of results whose window ended in the
    measured span, results/s, expected (one per ``every_s`` per outlet) and lost results,
    CPU %."""
    lat, received, expected, cpu = [], 0, 0, []
    for seg in segments:
        rows = seg.rows
        keep = (rows[:, 1] >= seg.t0) & (rows[:, 1] < seg.t1)
        counted = outlets if outlets is not None else range(seg.outlets)
        keep &= np.isin(rows[:, 2], list(counted))
        unique = np.unique(rows[keep][:, 1:3], axis=0)  # one result per (timestamp, outlet)
        lat.append((rows[keep, 0] - rows[keep, 1]) * 1e3)
        received += len(unique)
        expected += len(counted) * int((seg.t1 - seg.t0) / every_s)
        cpu.append(seg.cpu_percent)
    ms = np.concatenate(lat) if lat else np.zeros(0)
    span = sum(s.t1 - s.t0 for s in segments)
    return {"latencies": ms, "received": received, "expected": expected,
            "lost": max(0, expected - received), "results_per_s": received / span,
            "cpu_percent": float(np.mean(cpu))}


STAGES = ["LSL transport", "ring + wake", "queue wait", "inference", "hand-off", "sink hop"]


def stages(segments: list[Segment]) -> dict[str, np.ndarray] | None:
    """Per-result stage durations (ms) of rtbci segments, from the results' ``t_*`` fields,
    the sender's stamps (``window_end``) and the receiver's stamps, joined on ``seq``."""
    per: list[np.ndarray] = []
    for seg in segments:
        if not seg.timing:
            continue
        timing = {int(r[1]): r[2:] for r in seg.timing if r[0] == "bp0x0"}
        for recv, stamp, index, seq in seg.rows:
            t = timing.get(int(seq))
            if index != 0 or t is None or not seg.t0 <= stamp < seg.t1:
                continue
            window_end, arrived, queued, started, finished, published = t
            per.append(np.array([arrived - window_end, queued - arrived, started - queued,
                                 finished - started, published - finished, recv - published]))
    if not per:
        return None
    table = np.array(per) * 1e3
    return {name: table[:, i] for i, name in enumerate(STAGES)}
