"""The command line as a user runs it (subprocesses, real LSL)."""

import json
import subprocess
import sys

import pytest

from rtbci.cli import build_parser


def rtbci(*args, timeout=60, **kw):
    return subprocess.run([sys.executable, "-m", "rtbci", *args], capture_output=True,
                          text=True, timeout=timeout, **kw)


def test_every_subcommand_has_help():
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert {"streams", "simulate", "check", "run", "demo"} <= set(commands)
    for name in commands:
        out = rtbci(name, "--help")
        assert out.returncode == 0 and "usage: rtbci " + name in out.stdout


@pytest.mark.slow
def test_run_ingests_a_simulate_process_and_writes_stats(tmp_path):
    name = f"rtbci-cli-{tmp_path.name}"
    config = tmp_path / "c.toml"
    config.write_text(f'[[sources]]\nname = "eeg"\nkind = "lsl"\nstream = {{ name = "{name}" }}\n'
                      f'markers = {{ name = "{name}-markers" }}\n')
    sim = subprocess.Popen([sys.executable, "-m", "rtbci", "simulate", "--name", name,
                            "--duration", "60"], stdout=subprocess.PIPE, text=True)
    try:
        assert sim.stdout.readline().startswith("publishing"), "the simulator did not start"
        listed = json.loads(rtbci("streams", "--json", "--timeout", "2").stdout)
        assert any(s["name"] == name and s["channels"] == 64 for s in listed)
        stats_path = tmp_path / "stats.json"
        run = rtbci("run", str(config), "--duration", "5", "--stats-json", str(stats_path))
        samples_sent_during_run = 5000
    finally:
        sim.kill()
        sim.wait()
    assert run.returncode == 0, run.stderr
    assert "eeg" in run.stdout and "samples" in run.stdout  # live stats lines
    stats = json.loads(stats_path.read_text())
    eeg = stats["streams"]["eeg"]
    assert {"streams", "decoders"} <= set(stats)
    assert {"samples", "gaps", "overflows", "rate_hz"} <= set(eeg)
    assert 1500 < eeg["samples"] <= samples_sent_during_run + 100  # minus start-up time
    assert eeg["gaps"] == 0 and eeg["overflows"] == 0
    assert eeg["rate_hz"] == pytest.approx(1000, rel=0.01)
    assert eeg["markers"] >= 2  # one every 1.25–1.75 s


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_still_writes_stats(tmp_path):
    import signal
    import time

    stats_path = tmp_path / "stats.json"
    proc = subprocess.Popen([sys.executable, "-m", "rtbci", "demo", "--stats-json",
                             str(stats_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # running: the first stats line with samples
        line = proc.stdout.readline()
        if "streaming" in line and " 0 samples" not in line:
            break
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert json.loads(stats_path.read_text())["streams"]["eeg"]["samples"] > 100


def test_demo_config_is_printed_and_valid(tmp_path):
    out = rtbci("demo", "--print-config")
    assert out.returncode == 0 and 'kind = "simulate"' in out.stdout
    path = tmp_path / "demo.toml"
    path.write_text(out.stdout)
    check = rtbci("check", str(path))
    assert check.returncode == 0 and "OK" in check.stdout


def test_bad_cli_value_is_one_line():
    out = rtbci("simulate", "--duration", "-3")
    assert out.returncode == 2 and "--duration: must be > 0" in out.stderr


@pytest.mark.slow
def test_a_live_run_whose_decoder_produced_nothing_says_so_and_exits_1(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('[[sources]]\nname = "eeg"\nkind = "simulate"\n'
                      f'stream_name = "rtbci-cli-{tmp_path.name}"\n'
                      '[[decoders]]\nname = "bp"\nmodel = "builtin:bandpower"\nsource = "eeg"\n'
                      'window_ms = 200\nevery_ms = 100\nruntime = "numpy"\n'
                      '[[decoders]]\nname = "never"\nmodel = "builtin:bandpower"\n'
                      'source = "eeg"\nwindow_ms = [0, 200]\non_marker = "nothing"\n'
                      'runtime = "numpy"\n')
    run = rtbci("-q", "run", str(config), "--duration", "4")
    assert run.returncode == 1, run.stderr
    assert run.stderr.count("rtbci: error:") == 1, run.stderr  # bp has results
    assert ("rtbci: error: decoder 'never' produced no results (none of the "
            in run.stderr and "matched on_marker 'nothing', e.g. 'stim/" in run.stderr) or (
        "rtbci: error: decoder 'never' produced no results (its source 'eeg' received no "
        "markers)" in run.stderr)
