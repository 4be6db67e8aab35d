"""``rtbci bench``: a real quick run (real LSL, mosquitto, the installed peers) and its parts."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rtbci.bench import gpu, loopback, main, timeflux
from rtbci.bench.peers import Windows
from rtbci.bench.run import STAGES


def rtbci(*args: str, timeout: float = 200) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rtbci", *args], capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> tuple[dict, Path]:
    """One ``rtbci bench --quick`` with every row installed here, plus the ``null`` row."""
    out = tmp_path_factory.mktemp("bench")
    proc = rtbci("bench", "--quick", "--out", str(out), "--duration", "3",
                 "--peers", ",".join([*main.ROWS, "null"]))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "bench.json").read_text()), out


@pytest.mark.slow
def test_quick_run_schema_and_plausible_figures(quick):
    doc, out = quick
    assert {"cpu", "cores", "platform", "versions"} <= set(doc["machine"])
    rows = {r["system"]: r for r in doc["rows"]}
    assert list(rows) == [*main.ROWS, "null"]
    for name, row in rows.items():
        assert {"system", "settings", "results_per_s", "latency_ms", "cpu_percent",
                "lost"} <= set(row)
        if row.get("status"):  # a peer that is not installed here
            assert row["status"].startswith("not installed") and main.missing(name)
            continue
        assert main.missing(name) is None
        assert row["lost"] == max(0, row["expected"] - row["received"])
        assert 0 < row["cpu_percent"] < 200
        if name == "null":
            continue
        lat = row["latency_ms"]
        assert 0 < lat["p50"] <= lat["p99"] <= lat["max"] < 1000
        # 500 ms windows every 50 ms: 20 results/s when none is lost
        assert row["results_per_s"] == pytest.approx(20, rel=0.25)
        assert row["lost"] <= 0.2 * row["expected"]
    for name in ("rtbci", "pylsl-naive"):  # always installed
        assert "status" not in rows[name]
    assert "defaults" in rows["rtbci"]["settings"]  # the headline row: the engine's defaults
    assert "placement = source" in rows["rtbci-source"]["settings"]  # a tuned row, named


@pytest.mark.slow
def test_quick_run_reports_a_silent_processor_as_lost(quick):
    null = next(r for r in quick[0]["rows"] if r["system"] == "null")
    assert null["results_per_s"] == 0 and null["received"] == 0
    assert null["lost"] == null["expected"] > 40  # 3 s × 20/s
    assert null["latency_ms"] == {"p50": None, "p99": None, "max": None}


@pytest.mark.slow
def test_quick_run_stage_breakdown_and_outputs(quick):
    doc, out = quick
    stages = doc["stages_ms"]["rtbci"]
    assert set(STAGES) <= set(stages) and stages["n"] > 20
    e2e = next(r for r in doc["rows"] if r["system"] == "rtbci")["latency_ms"]
    total = sum(stages[s]["p50"] for s in STAGES)
    assert all(stages[s]["p50"] > -0.5 for s in STAGES)  # clock offset estimate only
    assert total == pytest.approx(e2e["p50"], abs=max(1.0, e2e["p50"]))
    if shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists():
        assert "rtbci-mqtt" in doc["stages_ms"]
    md = (out / "bench.md").read_text()
    assert "| system | results/s |" in md and "## Stage breakdown" in md
    for row in doc["rows"]:
        assert f"| {row['system']} |" in md
    for png in ("bench_latency.png", "bench_stages.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    assert "sweeps" not in doc  # full run only
    if not gpu.cuda_available():
        assert doc["gpu"] == gpu.status_line() and doc["gpu_rows"] == []
        assert doc["gpu"] in md


def test_without_cuda_one_line_says_so(monkeypatch):
    monkeypatch.setattr(gpu, "cuda_available", lambda: False)
    line = gpu.status_line()
    assert "\n" not in line and line.startswith("GPU: no CUDA device")
    monkeypatch.setattr(gpu, "cuda_available", lambda: True)
    assert gpu.status_line() is None


def test_missing_timeflux_is_a_not_installed_row(monkeypatch, tmp_path):
    monkeypatch.setenv("RTBCI_TIMEFLUX_VENV", str(tmp_path / "nowhere"))
    assert timeflux.python() is None
    assert main.missing("timeflux").startswith("not installed (rtbci bench --setup-timeflux")
    (tmp_path / "nowhere" / "bin").mkdir(parents=True)
    (tmp_path / "nowhere" / "bin" / "python").touch()
    assert main.missing("timeflux") is None


@pytest.mark.parametrize(("args", "message"), [
    (["--peers", "rtbci,bogus"], "rtbci: error: --peers: unknown row 'bogus' (known: rtbci, "
                                 "rtbci-source, rtbci-mqtt, pylsl-naive, mne-lsl, timeflux, "
                                 "timeflux-rate, null)"),
    (["--duration", "-1"], "rtbci: error: --duration: give a number of seconds > 0"),
    (["--out", "{file}"], "rtbci: error: --out: {file} is a file; give a folder"),
])
def test_bad_options_are_one_line_errors(args, message, tmp_path):
    file = tmp_path / "taken"
    file.write_text("")
    proc = rtbci("bench", *[a.format(file=file) for a in args], timeout=60)
    message = message.format(file=file)
    assert proc.returncode == 2
    assert proc.stderr.strip() == message


def test_naive_windows_fire_on_sample_counts_and_the_freshest_wins():
    w = Windows(2, length=50, every=10)
    ends = []
    for k in range(10):  # 10 chunks of 7 samples; channel 0 is the sample index
        idx = np.arange(7 * k, 7 * k + 7)
        due = w.add(np.stack([idx, -idx], 1).astype(np.float32), idx * 1e-3)
        if due is not None:
            window, last = due
            n = round(last * 1e3)  # the index of the window's last sample
            assert window.shape == (50, 2) and window[-1, 0] == n
            assert np.array_equal(window[:, 0], np.arange(n - 49, n + 1))
            ends.append(int(window[-1, 0]) + 1)
    # due at counts 50, 60, 70: at count 56 → 50; 63 → 60; 70 → 70
    assert ends == [50, 60, 70]
    w = Windows(1, length=4, every=2)
    _, last = w.add(np.arange(9, dtype=np.float32)[:, None], np.arange(9.0))
    assert last == 7.0  # windows ending at 4, 6, 8 samples are due: the freshest (…7) wins


def test_loopback_measures_in_amplifier_samples():
    stamps = 100 + np.arange(1000) / 1000.0  # 1 kHz
    ttl = np.zeros(1000, np.float32)
    results, backs = [], []
    for seq in range(10):  # result seq: window ending at sample `end`, TTL `back` samples on
        end, back = 50 + 90 * seq, 3 + seq
        ttl[end + back] = seq + 1
        results.append((stamps[end] + (back - 0.5) * 1e-3, stamps[end], seq))
        backs.append(back)
    out = loopback.analyse({"stamps": stamps, "ttl": ttl, "results": np.array(results)})
    kept = backs[1:]  # the first 10 % is warm-up
    assert out["loop_in_samples_ms"]["p50"] == pytest.approx(np.percentile(kept, 50))
    assert out["loop_in_samples_ms"]["max"] == pytest.approx(12.0)
    assert out["result_received_ms"]["max"] == pytest.approx(11.5)
    assert out["ttl_pulses"] == 10 and out["results"] == 10


def test_setup_timeflux_builds_only_what_is_missing(monkeypatch, tmp_path):
    assert not timeflux.built(tmp_path / "none") and not timeflux.built(tmp_path)
    monkeypatch.setattr(timeflux, "built", lambda path: True)
    monkeypatch.setattr(timeflux.subprocess, "run", lambda *a, **k: pytest.fail("rebuilt"))
    assert timeflux.setup(tmp_path) == tmp_path / "bin" / "python"


def test_engines_share_leaves_out_inference_lsl_and_the_slow_decoder():
    """``engine_p99``: t_arrived → t_published minus inference, over every fast decoder's
    results in the measured span; the slow decoder and windows outside the span left out."""
    from rtbci.bench.run import Segment
    from rtbci.bench.sweeps import engine_p99

    # (decoder, seq, window_end, arrived, queued, started, finished, published), seconds
    timing = [("bp0x0", 0, 10.0, 10.001, 10.0011, 10.0012, 10.0052, 10.0053),  # share 0.3 ms
              ("bp0x1", 0, 10.0, 10.001, 10.0011, 10.0052, 10.0062, 10.0063),  # 5.3 − 1 ms
              ("slow", 0, 10.0, 10.001, 10.001, 10.001, 10.040, 10.090),
              ("bp0x0", 1, 99.0, 99.0, 99.0, 99.0, 99.0, 99.1)]  # outside the span
    seg = Segment(np.zeros((0, 4)), 9.0, 11.0, 1.0, 2, timing)
    assert engine_p99(seg) == pytest.approx(0.3 + 0.99 * (4.3 - 0.3), abs=1e-3)  # p99 of 0.3, 4.3
    assert engine_p99(Segment(np.zeros((0, 4)), 9.0, 11.0, 1.0, 1, None)) is None
