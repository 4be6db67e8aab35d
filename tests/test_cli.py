"""The command line as a user runs it (subprocesses, real LSL)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import rtbci as rtbci_package
from rtbci.cli import build_parser, main


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
    check = rtbci("check", str(path))  # the band-power classifier file is not there
    assert check.returncode == 2 and check.stderr == (
        f"rtbci: error: {path}: decoders[1].options.classifier: no file "
        f"'{tmp_path / 'demo_bandpower.npz'}'\n")
    shutil.copy(Path(rtbci_package.__file__).parent / "demo_bandpower.npz", tmp_path)
    check = rtbci("check", str(path))
    assert check.returncode == 0 and "OK" in check.stdout
    lines = check.stdout.splitlines()[1:]
    # issue 21: each source's true shape (not its profile's default), and every decoder
    assert lines[:5] == [
        "  source 'eeg': simulate profile 'eeg64', 64 ch × 1000 Hz, 30 s buffer (~15 MiB)",
        "  source 'motor': simulate task 'motor-gnn', 64 ch × 500 Hz, 30 s buffer (~7 MiB)",
        "  source 'words': simulate task 'seeg-words', 128 ch × 1000 Hz, 30 s buffer (~29 MiB)",
        "  source 'images': simulate task 'image-retrieval', 64 ch × 500 Hz, 30 s buffer "
        "(~7 MiB)",
        "  source 'speech': simulate task 'speech', 306 ch × 240 Hz, 30 s buffer (~17 MiB)"]
    assert lines[5:] == [
        "  decoder 'bandpower': source 'eeg', builtin:bandpower, every 50 ms, window 500 ms, "
        "budget 10 ms",
        "  decoder 'trial': source 'eeg', builtin:bandpower, on marker 'stim', window [0, 600] "
        "ms, budget 10 ms",
        "  decoder 'outcome': source 'motor', demo:motor-gnn, on marker 'outcome', the "
        "checkpoint's window, budget 50 ms",
        "  decoder 'word': source 'words', demo:seeg-words, on marker 'word', the checkpoint's "
        "window, budget 50 ms",
        "  decoder 'image': source 'images', demo:image-retrieval, on marker 'image', the "
        "checkpoint's window, budget 50 ms",
        "  decoder 'segment': source 'speech', demo:speech, on marker 'segment', the "
        "checkpoint's window, budget 100 ms"]


def test_check_says_an_lsl_source_shape_comes_from_its_stream(tmp_path, capsys):
    path = tmp_path / "c.toml"
    path.write_text('[[sources]]\nname = "amp"\nkind = "lsl"\nstream = { type = "EEG" }\n'
                    'buffer_seconds = 10\n')
    assert main(["check", str(path)]) == 0
    assert capsys.readouterr().out.splitlines()[1] == (
        "  source 'amp': lsl {'type': 'EEG'}, 10 s buffer (channels and rate: from the "
        "stream; --probe S looks for it)")


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


SOURCE = '[[sources]]\nname = "eeg"\nkind = "simulate"\n'


def bandpower(**extra) -> str:
    """TOML of ``decoders = [...]`` (before any table); None leaves a key out."""
    import tomli_w

    entry = {"name": "bp", "model": "builtin:bandpower", "source": "eeg", "window_ms": 500,
             "every_ms": 100, **extra}
    return tomli_w.dumps({"decoders": [{k: v for k, v in entry.items() if v is not None}]})


@pytest.mark.parametrize(("text", "expected"), [
    (bandpower(model="python:no_such_module_here:make") + SOURCE,
     "decoders[0].model: no Python module 'no_such_module_here'"),
    (bandpower(options={"classifier": "gone.npz"}) + SOURCE,
     "decoders[0].options.classifier: no file '{dir}/gone.npz'"),
    (bandpower(model="gone.pt", window_ms=None, every_ms=None, on_marker="stim") + SOURCE,
     "decoders[0].model: no checkpoint file '{dir}/gone.pt'"),
    (bandpower(model="empty.pt", window_ms=None, every_ms=None, on_marker="stim") + SOURCE,
     "decoders[0].model: '{dir}/empty.pt' is not an rtbci checkpoint: the file is empty"),
    (SOURCE + 'profile = "meg306"\nbuffer_seconds = 3600\n',
     "sources[0].buffer_seconds: 3600 s of 306 ch @ 1000 Hz needs ~8.2 GiB, over the 2 GiB limit"),
])
def test_check_finds_what_would_stop_a_session(tmp_path, capsys, text, expected):
    (tmp_path / "empty.pt").write_bytes(b"")
    path = tmp_path / "c.toml"
    path.write_text(text)
    assert main(["check", str(path)]) == 2
    assert capsys.readouterr().err == (f"rtbci: error: {path}: "
                                       f"{expected.format(dir=tmp_path)}\n")


def test_check_with_probe_lists_the_streams_there(tmp_path, capsys):
    import pylsl

    name = f"rtbci-probe-{tmp_path.name}"
    outlet = pylsl.StreamOutlet(pylsl.StreamInfo(name, "EEG", 4, 100, pylsl.cf_float32, name))
    wanted = name.upper()  # a case-insensitive match: listed first
    path = tmp_path / "c.toml"
    path.write_text(f'[[sources]]\nname = "eeg"\nkind = "lsl"\nstream = {{ name = "{wanted}" }}\n')
    assert main(["check", str(path), "--probe", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"rtbci: error: {path}: sources[0].stream: no LSL stream name="
                          f"{wanted!r} within 1 s; streams there: {name!r} (EEG)")
    del outlet


@pytest.mark.parametrize("option", ["--stats-json", "--report"])
def test_an_output_into_a_missing_folder_is_refused_before_the_run(tmp_path, capsys, option):
    config = tmp_path / "c.toml"
    config.write_text(SOURCE)
    out = tmp_path / "missing" / "stats.json"
    extra = ["--replay", str(tmp_path / "never-read.fif")] if option == "--report" else []
    assert main(["run", str(config), "--duration", "30", option, str(out), *extra]) == 2
    assert capsys.readouterr().err == (f"rtbci: error: {option}: no folder "
                                       f"'{tmp_path / 'missing'}' to write stats.json in\n")


def test_demo_and_simulate_refuse_a_missing_folder_before_starting(tmp_path, capsys):
    out = tmp_path / "missing" / "x_raw.fif"
    assert main(["demo", "--duration", "30", "--stats-json", str(out)]) == 2
    assert main(["simulate", "--save", str(out)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [f"rtbci: error: {o}: no folder '{tmp_path / 'missing'}' to write "
                   "x_raw.fif in" for o in ("--stats-json", "--save")]


def test_compile_refuses_a_bad_checkpoint_in_one_line(tmp_path, capsys):
    pytest.importorskip("torch")
    (tmp_path / "empty.pt").write_bytes(b"")
    assert main(["compile", str(tmp_path / "empty.pt"), "--runtime", "torch"]) == 2
    assert capsys.readouterr().err == (f"rtbci: error: MODEL: '{tmp_path / 'empty.pt'}' is not "
                                       "an rtbci checkpoint: the file is empty\n")


def test_the_two_readme_installs_get_one_torch():
    """[test] takes torch from [neural]: one spec, so `pip install -e .[neural]` then
    `.[test]` never swaps one torch build for another."""
    import tomllib

    extras = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())[
        "project"]["optional-dependencies"]
    torch_specs = [(extra, spec) for extra, specs in extras.items() for spec in specs
                   if spec.startswith("torch")]
    assert torch_specs == [("neural", "torch==2.13.0")]
    assert "rtbci[neural,gui]" in extras["test"]


def test_ci_runs_the_readme_test_command_verbatim():
    root = Path(__file__).parents[1]
    readme = [line for line in (root / "README.md").read_text().splitlines()
              if line.startswith("pip install -e '.[test]'")]
    ci = [line for line in (root / ".ci" / "run").read_text().splitlines()
          if line.startswith("pip install")]
    assert len(readme) == 1 and ci == readme


@pytest.mark.slow
def test_ctrl_c_in_a_terminal_stops_the_demo_and_its_broker_cleanly(tmp_path):
    """Ctrl-C reaches the terminal's whole process group: the demo must close its MQTT sink
    before the broker it started goes away (no traceback, nothing dropped), then stop it."""
    import os
    import signal
    import time

    from rtbci.broker import port_open

    if port_open("127.0.0.1", 1883):
        pytest.skip("a broker already runs on 127.0.0.1:1883: the demo would not start one")
    stats_path = tmp_path / "stats.json"
    proc = subprocess.Popen([sys.executable, "-m", "rtbci", "demo", "--stats-json",
                             str(stats_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)  # its own group, as a shell's job
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:  # running: the first stats line with samples
        line = proc.stdout.readline()
        if "streaming" in line and " 0 samples" not in line:
            break
    os.killpg(proc.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "unreachable" not in err and "undelivered" not in err, err
    stats = json.loads(stats_path.read_text())
    mqtt = next(v for k, v in stats["sinks"].items() if k.startswith("mqtt"))
    assert mqtt["dropped"] == 0 and mqtt["queued"] == 0
    assert not port_open("127.0.0.1", 1883)  # the demo's broker is gone too


def test_a_source_waiting_for_its_stream_lists_the_streams_there(tmp_path, caplog):
    import pylsl

    from rtbci.devices.lsl import LSLSource

    name = f"rtbci-wait-{tmp_path.name}"
    outlet = pylsl.StreamOutlet(pylsl.StreamInfo(name, "EEG", 4, 100, pylsl.cf_float32, name))
    source = LSLSource("eeg", {"name": name[:-1]})  # a close match, not the name
    with caplog.at_level("WARNING", logger="rtbci.devices.lsl"):
        assert source.open(0.2) is None
    assert caplog.records[0].getMessage().startswith(
        f"no LSL stream name={name[:-1]!r} (source 'eeg') yet; streams there: {name!r} (EEG)")
    del outlet


SLOW_BUILD = '''
import pathlib
import time

from rtbci.models.bandpower import BandPower


def make(n_samples, n_channels, srate, flag="", seconds=8.0):
    """A decoder whose construction takes seconds (a checkpoint compiling, in effect)."""
    pathlib.Path(flag).touch()
    time.sleep(seconds)
    return BandPower(n_samples, n_channels, srate)
'''


@pytest.mark.slow
def test_sigterm_while_decoders_build_cancels_the_queued_builds_and_exits_at_once(tmp_path):
    """Issue 21 point 10: SIGTERM during a slow compile exits within seconds; the builds not
    started never start, and the stats say they were cancelled."""
    import signal
    import time

    import tomli_w

    (tmp_path / "slow_build.py").write_text(SLOW_BUILD)
    names = [f"slow{i}" for i in range(4)]
    config = tmp_path / "c.toml"
    config.write_text(tomli_w.dumps({
        "sources": [{"name": "eeg", "kind": "simulate", "stream_name": f"rtbci-{tmp_path.name}"}],
        "decoders": [{"name": name, "model": "python:slow_build:make", "source": "eeg",
                      "window_ms": 200, "every_ms": 100,
                      "options": {"flag": str(tmp_path / f"{name}.started")}}
                     for name in names]}))
    stats = tmp_path / "stats.json"
    env = {**__import__("os").environ, "PYTHONPATH": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-m", "rtbci", "-q", "run", str(config),
                             "--stats-json", str(stats)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "slow0.started").exists():
            assert time.monotonic() < deadline and proc.poll() is None, "no build started"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        out, err = proc.communicate(timeout=60)
        took = time.monotonic() - sent
    finally:
        proc.kill()
    assert took < 5.0, f"exit {took:.1f} s after SIGTERM (the running build takes 8 s)"
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert sorted(p.stem for p in tmp_path.glob("*.started")) == ["slow0"]  # none after stop
    decoders = json.loads(stats.read_text())["decoders"]
    assert {name: d["state"] for name, d in decoders.items()} == dict.fromkeys(names,
                                                                               "cancelled")


@pytest.mark.parametrize("where", ["dir", "missing"])
def test_train_refuses_an_out_it_could_not_write_before_training(tmp_path, capsys, where):
    """Issue 21: ``--out DIR`` was a traceback after training had finished."""
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    out = tmp_path if where == "dir" else tmp_path / "missing" / "m.pt"
    data = tmp_path / "never_read_raw.fif"  # refused before any data is read
    assert main(["train", "linear", "--data", str(data), "--out", str(out)]) == 2
    assert capsys.readouterr().err == ("rtbci: error: --out: " + (
        f"{tmp_path} is a directory; give a file name\n" if where == "dir"
        else f"no folder '{tmp_path / 'missing'}' to write m.pt in\n"))


def test_a_reader_that_leaves_early_ends_the_command_quietly():
    """``rtbci data | head -1``: when the pipe's reader leaves, the command ends with 141, as a
    shell tool killed by SIGPIPE does, and no BrokenPipeError traceback."""
    import subprocess
    import sys

    script = ("import sys, rtbci.cli\n"  # the listing, again and again: past the pipe's buffer
              "codes = {rtbci.cli.main(['data']) for _ in range(3000)}\n"
              "sys.exit(max(codes))")
    done = subprocess.run(["bash", "-c", f'"{sys.executable}" -c "$0" | head -1; '
                           'echo "rc=${PIPESTATUS[0]}"', script],
                          capture_output=True, text=True, timeout=300)
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr
    assert done.stdout.splitlines()[-1] == "rc=141"
