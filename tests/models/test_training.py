"""``rtbci train``: every family learns its simulated task far above chance, deterministically.

The multiples of chance asserted here are the documented CI floor (README "Training a
decoder"); the seeds and sizes are small so that the whole file runs in about a minute on
two cores. Validation is held out by trial (classes) or by item (retrieval: zero-shot).
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="training needs torch")
pytest.importorskip("sklearn", reason="training needs scikit-learn")

from rtbci.devices.recording import read_recording  # noqa: E402
from rtbci.devices.tasks import save_task  # noqa: E402
from rtbci.models.checkpoint import load_checkpoint  # noqa: E402
from rtbci.models.options import TrainOptions  # noqa: E402
from rtbci.models.training import train  # noqa: E402

# family: (trials, snr, epochs, extra options, minimum multiple of chance of val top-1/accuracy)
CASES = {
    "motor-gnn": (120, 1.0, 12, {}, 1.5),
    "seeg-words": (200, 1.0, 12, {"channels": ["A*"]}, 3.0),
    "image-retrieval": (300, 1.0, 20, {}, 4.0),
    "speech": (200, 2.0, 20, {"batch_size": 32}, 3.0),
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def simulate(tmp_path, family, trials, snr, seed=0):
    return save_task(tmp_path / f"{family}_raw.fif", family, snr=snr, seed=seed, trials=trials)


@pytest.mark.parametrize("family", list(CASES))
def test_family_learns_its_simulated_task(family, tmp_path):
    trials, snr, epochs, extra, multiple = CASES[family]
    fif, targets = simulate(tmp_path, family, trials, snr)
    out = tmp_path / f"{family}.pt"
    metrics = train(family, TrainOptions(data=[fif], out=out, targets=targets, epochs=epochs,
                                         progress=False, **extra))
    val, linear = metrics["val"], metrics["linear"]
    score = val.get("accuracy", val.get("top1"))
    assert score >= multiple * val["chance"], metrics
    assert set(linear) == set(val) - {"pooled"}
    assert json.loads(out.with_name(out.name + ".metrics.json").read_text()) == metrics
    ckpt = load_checkpoint(out)
    if targets is not None:  # zero-shot: no validation candidate was seen in training
        labels = [text.split("/")[1] for _, text in read_recording(fif).markers]
        assert val["n_candidates"] >= 0.15 * len(set(labels))
        assert ckpt.bank.shape[0] == len(ckpt.contract.output.labels)
    else:
        assert ckpt.bank is None and len(ckpt.contract.output.labels) >= 2


def test_same_seed_same_weights_other_seed_other_split(tmp_path):
    fif, _ = simulate(tmp_path, "motor-gnn", 40, 1.0)

    def weights(seed, name):
        out = tmp_path / name
        train("motor-gnn", TrainOptions(data=[fif], out=out, epochs=2, seed=seed,
                                        progress=False))
        return load_checkpoint(out).state_dict

    a, b, c = weights(3, "a.pt"), weights(3, "b.pt"), weights(4, "c.pt")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0)
    assert any(not torch.equal(a[name], c[name]) for name in a if a[name].is_floating_point())


def test_an_edf_written_by_mne_trains_end_to_end(tmp_path):
    import mne

    fif, _ = simulate(tmp_path, "motor-gnn", 60, 2.0)
    raw = mne.io.read_raw_fif(fif, preload=True, verbose="error")
    edf = tmp_path / "motor.edf"
    mne.export.export_raw(edf, raw, fmt="edf", verbose="error")
    out = tmp_path / "edf.pt"
    metrics = train("motor-gnn", TrainOptions(data=[edf], out=out, epochs=3, progress=False))
    contract = load_checkpoint(out).contract
    assert contract.input.ch_names == raw.ch_names and contract.input.n_samples == 250
    assert metrics["n_train"] + metrics["n_val"] >= 55


def test_pretraining_runs_before_fine_tuning(tmp_path):
    fif, _ = simulate(tmp_path, "seeg-words", 40, 1.0)
    other, _ = save_task(tmp_path / "other_raw.fif", "seeg-words", snr=1.0, seed=9, trials=40)
    metrics = train("seeg-words", TrainOptions(
        data=[fif], out=tmp_path / "w.pt", epochs=2, channels=["A*"], pretrain=[other],
        pretrain_epochs=2, progress=False))
    assert metrics["pretrain"]["windows"] >= 35
    assert 0 < metrics["pretrain"]["code_usage"] <= 1


def rtbci(*args):
    return subprocess.run([sys.executable, "-m", "rtbci", *args], capture_output=True,
                          text=True, timeout=300)


def test_cli_trains_and_reports_against_chance_and_linear(tmp_path):
    fif = tmp_path / "img_raw.fif"
    sim = rtbci("simulate", "--family", "image-retrieval", "--trials", "120", "--save", str(fif))
    assert sim.returncode == 0, sim.stderr
    targets = tmp_path / "img_raw-targets.npy"
    assert targets.exists() and targets.with_suffix(".json").exists()
    assert np.load(targets).shape == (100, 32)
    out = tmp_path / "img.pt"
    run = rtbci("train", "image-retrieval", "--data", str(fif), "--targets", str(targets),
                "--epochs", "2", "--out", str(out))
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].startswith(f"wrote {out}") and "parameters" in lines[0]
    assert lines[1].split()[0] == "val" and "unseen candidates (chance" in lines[1]
    assert lines[2].split()[0] == "linear" and out.exists()
    assert (tmp_path / "img.pt.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_mistakes_are_one_line(tmp_path):
    fif = tmp_path / "m_raw.fif"
    assert rtbci("simulate", "--family", "motor-gnn", "--trials", "10", "--save",
                 str(fif)).returncode == 0
    cases = [
        (["train", "image-retrieval", "--data", str(fif)], "--targets: a retrieval family"),
        (["train", "motor-gnn", "--data", str(fif), "--events", "word"],
         "m_raw.fif: --events: marker pattern 'word' matches no marker; markers seen: "
         "outcome/"),
        (["train", "motor-gnn", "--data", str(fif), "--events", "re:("],
         "--events: marker pattern 're:(': invalid regular expression"),
        (["train", "motor-gnn", "--data", str(fif), "--channels", "Q*"],
         "--channels: 'Q*' matches no channel of m_raw.fif"),
        (["train", "motor-gnn", "--data", str(tmp_path / "nope.fif")], "nope.fif"),
    ]
    for args, words in cases:
        run = rtbci(*args, "--out", str(tmp_path / "x.pt"))
        assert run.returncode == 2 and words in run.stderr, run.stderr
        assert len(run.stderr.strip().splitlines()) == 1 and "Traceback" not in run.stderr


def test_cli_compiles_and_times_a_checkpoint(tmp_path):
    onnx = tmp_path / "words.onnx"
    run = rtbci("compile", "demo:seeg-words", "--runtime", "onnxruntime", "--out", str(onnx))
    assert run.returncode == 0, run.stderr
    assert "onnxruntime on cpu (fp32), input [1, 1000, 16]: p50" in run.stdout
    assert onnx.stat().st_size > 100_000
