"""``rtbci import``: a paper's weights → a checkpoint that decodes like a trained one."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="import needs torch")
pytest.importorskip("onnxruntime", reason="the decoder runs in onnxruntime")

from rtbci.cli import main  # noqa: E402
from rtbci.config import parse_config  # noqa: E402
from rtbci.devices.recording import read_recording  # noqa: E402
from rtbci.devices.tasks import save_task  # noqa: E402
from rtbci.engine import Engine  # noqa: E402
from rtbci.models.checkpoint import load_checkpoint  # noqa: E402

DATA = Path(__file__).parents[1] / "data" / "parity"
DUIN = DATA / "duin_cls_small.npz"
SPEECH = DATA / "brainmagick_simpleconv_small.npz"
WORDS = ["w0", "w1", "w2", "w3", "w4"]
DUIN_ARGS = ["--channels", "A1,A2,A3,A4", "--labels", ",".join(WORDS)]


def rtbci(capsys, *args) -> tuple[int, str, str]:
    status = main(["-q", *map(str, args)])
    out, err = capsys.readouterr()
    return status, out, err


def perturbed(tmp_path: Path, source: Path, key: str) -> Path:
    z = dict(np.load(source))
    z[key] = z[key] + 0.05
    path = tmp_path / f"perturbed-{key.replace('/', '_')}-{source.name}"
    np.savez(path, **z)
    return path


def test_import_checks_a_fixture_and_exits_1_when_it_differs(tmp_path, capsys):
    out = tmp_path / "duin.pt"
    status, stdout, _ = rtbci(capsys, "import", "seeg-words", DUIN, "--out", out, *DUIN_ARGS,
                              "--check", DUIN)
    assert status == 0, stdout
    diff = float(stdout.split("max |rtbci - reference| = ")[1].split()[0])
    assert diff <= 1e-4 and "(ok," in stdout
    bad_weights = perturbed(tmp_path, DUIN, "w/cls_block.cls_head.2.0.weight")
    bad_output = perturbed(tmp_path, DUIN, "output")
    for ref, check in ((bad_weights, DUIN), (DUIN, bad_output)):
        status, stdout, _ = rtbci(capsys, "import", "seeg-words", ref, "--out", out,
                                  *DUIN_ARGS, "--check", check)
        assert status == 1 and "FAILED" in stdout
        assert float(stdout.split("max |rtbci - reference| = ")[1].split()[0]) > 1e-3


def test_a_state_dict_with_its_config_imports_like_the_fixture(tmp_path, capsys):
    z = np.load(SPEECH)
    state = {k[2:]: torch.from_numpy(z[k]) for k in z.files if k.startswith("w/")}
    torch.save(state, tmp_path / "simpleconv.pt")
    (tmp_path / "config.json").write_text(str(z["config_json"]))
    np.save(tmp_path / "layout.npy", z["positions"])
    np.save(tmp_path / "bank.npy", np.random.default_rng(0).standard_normal((6, 8, 60)))
    (tmp_path / "bank.json").write_text(json.dumps([f"s{i}" for i in range(6)]))
    out = tmp_path / "speech.pt"
    status, stdout, err = rtbci(
        capsys, "import", "speech", tmp_path / "simpleconv.pt", "--config",
        tmp_path / "config.json", "--out", out, "--positions", tmp_path / "layout.npy",
        "--channels", ",".join(f"MEG{i:03d}" for i in range(12)), "--targets",
        tmp_path / "bank.npy", "--samples", 60, "--check", SPEECH)
    assert status == 0, err
    assert "(ok," in stdout and "12 ch × 60 samples @ 120 Hz → retrieval (6 labels)" in stdout
    c = load_checkpoint(out).contract
    assert c.hparams["layout"][0] == pytest.approx(z["positions"][0].tolist())
    assert c.output.labels == [f"s{i}" for i in range(6)] and not c.output.pooled


@pytest.mark.parametrize("args, words", [
    (["seeg-words", DUIN, "--labels", "a,b,c,d,e"], "--channels: the reference weights carry "
                                                    "no channel names; give its 4"),
    (["seeg-words", DUIN, "--channels", "A1,A2"], "--channels: 2 names for the reference's 4"),
    (["seeg-words", DUIN, "--channels", "A1,A2,A3,A4"], "--labels: the reference weights carry"),
    (["image-retrieval", DATA / "nice_tsconv.npz", "--channels", "x"],
     "--channels: 1 names for the reference's 63"),
    (["speech", SPEECH, "--channels", ",".join("abcdefghijkl")],
     "--targets: speech retrieves among candidates"),
    (["seeg-words", DATA / "missing.pt"], "REF: no file"),
    (["seeg-words", DUIN, *DUIN_ARGS, "--check", DATA / "nice_tsconv.npz"],
     "--check: nice_tsconv.npz was made with eeyhsong/NICE-EEG, not with the seeg-words reference"),
    (["seeg-words", DUIN, "--config", "{not json"], "--config: '{not json' is neither"),
])
def test_what_the_weights_lack_is_asked_for_in_one_line(tmp_path, capsys, args, words):
    status, _, err = rtbci(capsys, "import", *args, "--out", tmp_path / "x.pt")
    assert status == 2 and words in err, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("rtbci: error: ")


def test_a_state_dict_without_config_or_layout_is_refused(tmp_path, capsys):
    z = np.load(SPEECH)
    torch.save({k[2:]: torch.from_numpy(z[k]) for k in z.files if k.startswith("w/")},
               tmp_path / "sd.pt")
    status, _, err = rtbci(capsys, "import", "speech", tmp_path / "sd.pt", "--out",
                           tmp_path / "x.pt")
    assert status == 2 and "--config: a state-dict REF needs" in err
    (tmp_path / "c.json").write_text(str(z["config_json"]))
    status, _, err = rtbci(capsys, "import", "speech", tmp_path / "sd.pt", "--config",
                           tmp_path / "c.json", "--out", tmp_path / "x.pt")
    assert status == 2 and "--positions: speech needs the 2-D sensor layout" in err


def test_an_imported_checkpoint_decodes_a_simulated_stream_and_compiles(tmp_path, capsys,
                                                                       new_collector,
                                                                       monkeypatch):
    monkeypatch.setenv("RTBCI_CACHE", str(tmp_path / "cache"))
    ckpt = tmp_path / "duin.pt"
    assert rtbci(capsys, "import", "seeg-words", DUIN, "--out", ckpt, *DUIN_ARGS)[0] == 0
    fif, _ = save_task(tmp_path / "words_raw.fif", "seeg-words", seed=3, trials=8)
    collector = new_collector()
    config = {"sources": [{"name": "seeg", "kind": "simulate", "profile": "seeg128",
                           "stream_name": "rtbci-seeg-words"}],
              "decoders": [{"name": "duin", "model": str(ckpt), "source": "seeg",
                            "on_marker": "word", "runtime": "onnxruntime"}]}
    engine = Engine(parse_config(config), sinks=[collector])
    recording = read_recording(fif)
    asyncio.run(engine.run_offline(recording))
    events = [text for _, text in recording.markers if text.startswith("word/")]
    results = collector.results
    assert len(results) >= len(events) - 1 and results
    assert engine.streams["seeg"].info.srate == 1000.0
    for r in results:
        assert r.kind == "classes" and r.labels == WORDS and r.marker.startswith("word/")
        assert r.probabilities.shape == (5,) and abs(r.probabilities.sum() - 1) < 1e-5
    assert len({tuple(np.round(r.probabilities, 4)) for r in results}) > 1  # input-dependent
    status, stdout, err = rtbci(capsys, "compile", ckpt, "--runtime", "onnxruntime", "--out",
                                tmp_path / "duin.onnx")
    assert status == 0, err
    assert "onnxruntime on cpu (fp32), input [1, 400, 4]" in stdout
