"""``rtbci evaluate`` and ``rtbci train … --ray`` against a real local Ray limited to 2 CPUs
(one Ray session for the module): the Ray report equals the serial ``run --replay --report``,
a corrupt file is one line of the report, training on Ray chooses and writes what a local
run does, and without Ray ``--ray`` names the extra."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from functools import partial
from importlib import resources
from pathlib import Path

import pytest

from rtbci.cli import main
from rtbci.config import load_config
from rtbci.devices.simulate import save_recording
from rtbci.evaluate import pack_config

ray = pytest.importorskip("ray", reason="the Ray tests need rtbci[cluster]")

CONFIG = """
[[sources]]
name = "eeg"
kind = "lsl"
stream = { type = "EEG" }
buffer_seconds = 5

[[decoders]]                 # sliding: compute time only, nothing to score
name = "bandpower"
model = "builtin:bandpower"
source = "eeg"
window_ms = 500
every_ms = 100

[[decoders]]                 # the demo's trial classifier, from a file next to this config
name = "trial"
model = "builtin:bandpower"
source = "eeg"
window_ms = [0, 600]
on_marker = "stim"
options = { bands = [[1, 4], [4, 8], [8, 13]], classifier = "model/trial.npz" }
"""


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module, 2 CPUs like CI's machine; the CLI joins it."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    """A config (classifier in a sub-folder) and 3 simulated 20 s sessions in data/."""
    folder = tmp_path_factory.mktemp("study")
    (folder / "model").mkdir()
    shutil.copy(resources.files("rtbci") / "demo_bandpower.npz", folder / "model" / "trial.npz")
    (folder / "study.toml").write_text(CONFIG)
    (folder / "data").mkdir()
    for seed in (1, 2, 3):
        save_recording(folder / "data" / f"s{seed}_raw.fif", "eeg64", 20.0, seed=seed, snr=0.5)
    return folder


def scores(entry: dict) -> dict:
    """A file's decoder figures as ``run --replay --report`` writes them (scored ones only)."""
    return {name: {k: v for k, v in d.items() if k not in ("results", "compute_ms")}
            for name, d in entry["decoders"].items() if "n" in d}


def test_ray_report_equals_the_serial_replay_report(study, local_ray, tmp_path):
    config = str(study / "study.toml")
    files = sorted((study / "data").glob("*.fif"))
    status = main(["-q", "evaluate", config, "--data", str(study / "data"), "--ray", "local",
                   "--out", str(tmp_path / "ray")])
    assert status == 0
    report = json.loads((tmp_path / "ray" / "report.json").read_text())
    assert [e["file"] for e in report["files"]] == [str(f) for f in files]
    assert report["executor"]["kind"] == "ray" and report["executor"]["workers"] == 2
    assert report["executor"]["serial_s_estimate"] == pytest.approx(
        sum(e["wall_s"] for e in report["files"]), abs=0.01)
    for file, entry in zip(files, report["files"]):
        serial = tmp_path / f"{file.stem}.json"
        assert main(["-q", "run", config, "--replay", str(file), "--report", str(serial)]) == 0
        assert scores(entry) == json.loads(serial.read_text())["decoders"]
        assert scores(entry)["trial"]["n"] >= 10
        for d in entry["decoders"].values():
            assert d["results"] > 0 and 0 < d["compute_ms"]["p50"] <= d["compute_ms"]["p99"]
    accuracies = [e["decoders"]["trial"]["accuracy"] for e in report["files"]]
    trial = report["decoders"]["trial"]
    assert trial["files"] == 3 and trial["failed"] == []
    assert trial["accuracy"]["mean"] == pytest.approx(sum(accuracies) / 3)
    majority = [max(sum(row.values()) for row in d["confusion"].values()) / d["n"]
                for d in (e["decoders"]["trial"] for e in report["files"])]
    assert trial["chance"]["mean"] == pytest.approx(sum(majority) / 3)  # majority class
    assert trial["pooled"]["n"] == sum(e["decoders"]["trial"]["n"] for e in report["files"])
    assert report["decoders"]["bandpower"] == {"files": 0, "failed": []}
    with (tmp_path / "ray" / "report.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["decoder"], r["status"]) for r in rows] == [("bandpower", "ok"),
                                                          ("trial", "ok")] * 3
    assert float(rows[1]["accuracy"]) == accuracies[0]
    assert (tmp_path / "ray" / "report.png").read_bytes()[:4] == b"\x89PNG"
    # serially, in this process: the same figures
    assert main(["-q", "evaluate", config, "--data", str(study / "data" / "*.fif"), "--ray",
                 "off", "--out", str(tmp_path / "off")]) == 0
    serial = json.loads((tmp_path / "off" / "report.json").read_text())
    assert [scores(e) for e in serial["files"]] == [scores(e) for e in report["files"]]
    assert serial["executor"]["kind"] == "serial"


def test_files_travel_with_the_config_not_through_a_shared_disk(study):
    shutil.copy(resources.files("rtbci.models") / "checkpoints" / "motor-gnn.pt",
                study / "model" / "motor.pt")
    with_sink = study / "with_sink.toml"
    with_sink.write_text(CONFIG + '[[decoders]]\nname = "outcome"\nmodel = "model/motor.pt"\n'
                         'source = "eeg"\non_marker = "outcome"\n[[decoders]]\nname = "demo"\n'
                         'model = "demo:motor-gnn"\nsource = "eeg"\non_marker = "outcome"\n'
                         '[[sinks]]\nkind = "mqtt"\nurl = "mqtt://127.0.0.1:9"\n')
    config, blobs = pack_config(load_config(with_sink))
    assert config.sinks == []  # the report is evaluate's output
    classifier, checkpoint = config.decoders[1].options["classifier"], config.decoders[2].model
    assert "/" not in classifier + checkpoint  # bare names: each task writes them in its folder
    assert blobs == {classifier: (study / "model" / "trial.npz").read_bytes(),
                     checkpoint: (study / "model" / "motor.pt").read_bytes()}
    assert config.decoders[3].model == "demo:motor-gnn"  # installed with rtbci on every node


def test_a_corrupt_file_is_one_line_and_the_rest_are_evaluated(study, local_ray, tmp_path,
                                                                capsys):
    bad = tmp_path / "broken_raw.fif"
    bad.write_bytes(b"not a FIF file" * 100)
    good = sorted((study / "data").glob("*.fif"))[:2]
    status = main(["-q", "evaluate", str(study / "study.toml"), "--data", str(good[0]),
                   str(bad), str(good[1]), "--out", str(tmp_path)])
    assert status == 1
    report = json.loads((tmp_path / "report.json").read_text())
    assert [e["file"] for e in report["failed"]] == [str(bad)]
    assert "cannot read" in report["failed"][0]["error"]
    assert [scores(e)["trial"]["n"] >= 10 for e in report["files"] if e["file"] != str(bad)] \
        == [True, True]
    assert report["decoders"]["trial"]["files"] == 2
    assert report["decoders"]["trial"]["failed"] == [str(bad)]
    err = capsys.readouterr().err.splitlines()
    assert [line for line in err if line.startswith("rtbci: error:")] == [
        f"rtbci: error: {bad}: {report['failed'][0]['error']}"]


def test_a_decoder_that_produces_nothing_fails_its_file(study, local_ray, tmp_path):
    config = tmp_path / "wrong.toml"  # its markers are never "go": no trial is decoded
    config.write_text((study / "study.toml").read_text().replace('"stim"', '"go"').replace(
        "model/trial.npz", str(study / "model" / "trial.npz")))
    file = sorted((study / "data").glob("*.fif"))[0]
    assert main(["-q", "evaluate", str(config), "--data", str(file), "--out",
                 str(tmp_path)]) == 1
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["decoders"]["trial"] == {"files": 0, "failed": [str(file)]}
    assert "decoder 'trial' produced no results" in report["failed"][0]["error"]


BLOCK_RAY = ("import sys; sys.modules['ray'] = None; import rtbci.cli, rtbci.evaluate; "
             "from rtbci.cli import main; sys.exit(main(sys.argv[1:]))")


def test_without_ray_the_extra_is_named_and_off_runs_serially(study, tmp_path):
    file = str(sorted((study / "data").glob("*.fif"))[0])
    config = str(study / "study.toml")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    local = subprocess.run([sys.executable, "-c", BLOCK_RAY, "evaluate", config, "--data",
                            file, "--ray", "local", "--out", str(tmp_path)],
                           capture_output=True, text=True, env=env, timeout=120)
    assert local.returncode == 2
    assert local.stderr.strip().splitlines() == [
        "rtbci: error: --ray: Ray is not installed; pip install 'rtbci[cluster]' "
        "(or use --ray off)"]
    off = subprocess.run([sys.executable, "-c", BLOCK_RAY, "-q", "evaluate", config, "--data",
                          file, "--ray", "off", "--out", str(tmp_path)],
                         capture_output=True, text=True, env=env, timeout=120)
    assert off.returncode == 0, off.stderr
    assert json.loads((tmp_path / "report.json").read_text())["executor"]["kind"] == "serial"


@pytest.fixture(scope="module")
def subjects(tmp_path_factory) -> list[Path]:
    """Two simulated subjects' 60 s sessions, for training."""
    folder = tmp_path_factory.mktemp("subjects")
    return [save_recording(folder / f"sub{k}_raw.fif", "eeg64", 60.0, seed=10 + k, snr=0.5,
                           subject=k) for k in (0, 1)]


def checkpoint(path: Path) -> tuple:
    from rtbci.models.checkpoint import load_checkpoint

    ckpt = load_checkpoint(path)
    return ckpt.contract.family, {k: v.numpy().tolist() for k, v in ckpt.state_dict.items()}


def test_train_auto_on_ray_chooses_and_writes_what_a_local_run_does(subjects, local_ray,
                                                                    tmp_path):
    pytest.importorskip("pyriemann", reason="the riemann family needs pyriemann")
    runs = {}
    for mode in ("off", "local"):
        out = tmp_path / f"{mode}.pt"
        assert main(["-q", "train", "auto", "--data", *map(str, subjects), "--events", "stim",
                     "--window", "0", "0.5", "--families", "linear,riemann", "--seed", "4",
                     "--ray", mode, "--out", str(out)]) == 0
        auto = json.loads(out.with_name(out.name + ".metrics.json").read_text())["auto"]
        runs[mode] = ([{k: v for k, v in row.items() if k != "seconds"}
                       for row in auto["table"]], auto["choice"], checkpoint(out))
    assert runs["local"] == runs["off"]
    assert len(runs["off"][0]) >= 4 and all("accuracy" in row for row in runs["off"][0])


def test_train_shards_loading_per_subject_file_on_ray(subjects, local_ray, tmp_path):
    for mode in ("off", "local"):
        assert main(["-q", "train", "linear", "--data", *map(str, subjects), "--events",
                     "stim", "--window", "0", "0.5", "--subject-per-file", "--epochs", "3",
                     "--ray", mode, "--out", str(tmp_path / f"{mode}.pt")]) == 0
    assert checkpoint(tmp_path / "local.pt") == checkpoint(tmp_path / "off.pt")
    metrics = [json.loads((tmp_path / f"{m}.pt.metrics.json").read_text())
               for m in ("off", "local")]
    assert metrics[0]["val"] == metrics[1]["val"] and metrics[0]["n_train"] > 40


def test_a_task_whose_worker_dies_is_retried_once(local_ray, tmp_path):
    from rtbci.cluster import connect, disconnect, parallel_map

    def die_first(tries: int, item: int) -> int:
        """The worker process exits (as if killed) on the first ``tries`` attempts."""
        count = tmp_path / f"attempts-{item}"
        count.write_text(count.read_text() + "x" if count.exists() else "x")
        if len(count.read_text()) <= tries:
            os._exit(1)
        return item * 10

    connect("local")
    try:
        assert parallel_map(partial(die_first, 1), [1, 2]) == [10, 20]
        lost = parallel_map(partial(die_first, 5), [3],
                            on_lost=lambda i, exc: f"lost {i}: {type(exc).__name__}")
    finally:
        disconnect()
    assert lost == ["lost 0: WorkerCrashedError"]
    assert (tmp_path / "attempts-3").read_text() == "xx"  # the first try and one retry


@pytest.mark.parametrize(("args", "message"), [
    (["--data", "missing/*.fif"], "--data: 'missing/*.fif' matches no file"),
    (["--data", "nowhere_raw.fif"], "--data: nowhere_raw.fif: no such file or directory"),
    (["--data", "data", "--workers", "0"], "--workers: at least 1, got 0"),
    (["--data", "data", "--ray", "127.0.0.1:1"], "--ray 127.0.0.1:1: no Ray cluster answers "
                                                  "there"),
])
def test_command_mistakes_are_one_line_before_anything_runs(study, monkeypatch, capsys, args,
                                                            message):
    monkeypatch.chdir(study)
    assert main(["evaluate", "study.toml", "--out", "nothing", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"rtbci: error: {message}"), err
    assert not (study / "nothing").exists()


def test_a_classifier_that_knows_nothing_scores_chance(study, tmp_path):
    """The per-file accuracy can fail: the demo classifier with its weights zeroed (a
    constant output) names one class every time and scores no more than that class's share
    of the trials, where the trained one is well above it."""
    import numpy as np

    shutil.copytree(study, tmp_path / "study")
    path = tmp_path / "study" / "model" / "trial.npz"
    with np.load(path) as f:
        trained = dict(f)
    np.savez(path, **{**trained, "coef": np.zeros_like(trained["coef"]),
                      "intercept": np.zeros_like(trained["intercept"])})
    runs = {}
    for name, weights in (("zeroed", None), ("trained", trained)):
        if weights is not None:
            np.savez(path, **weights)
        assert main(["-q", "evaluate", str(tmp_path / "study" / "study.toml"), "--data",
                     str(tmp_path / "study" / "data"), "--ray", "off", "--out",
                     str(tmp_path / name)]) == 0
        runs[name] = json.loads((tmp_path / name / "report.json").read_text())
    for entry in runs["zeroed"]["files"]:
        trial = entry["decoders"]["trial"]  # confusion: true label → {predicted: count}
        predicted = {p for row in trial["confusion"].values() for p in row}
        majority = max(sum(row.values()) for row in trial["confusion"].values()) / trial["n"]
        assert trial["n"] >= 10 and len(predicted) == 1 and trial["accuracy"] <= majority
    assert runs["trained"]["decoders"]["trial"]["accuracy"]["mean"] >= 0.7
