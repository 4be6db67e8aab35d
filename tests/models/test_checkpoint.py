"""Checkpoints: the contract round-trips, the engine binds it to a stream or refuses in one line.

One small motor-gnn checkpoint is trained once per module (simulated task, MNE-written FIF).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from rtbci.config import parse_config
from rtbci.errors import RtbciError

torch = pytest.importorskip("torch", reason="checkpoints need torch")
pytest.importorskip("sklearn", reason="training needs scikit-learn")
pytest.importorskip("onnxruntime", reason="the decoder runs in onnxruntime")

from rtbci.devices.recording import read_recording  # noqa: E402
from rtbci.devices.tasks import save_task  # noqa: E402
from rtbci.engine import Engine  # noqa: E402
from rtbci.models import load_decoder  # noqa: E402
from rtbci.models.checkpoint import load_checkpoint  # noqa: E402
from rtbci.models.options import TrainOptions  # noqa: E402
from rtbci.models.training import train  # noqa: E402
from rtbci.preprocess import PreprocessConfig  # noqa: E402


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(checkpoint, recording file): motor-gnn on 100 simulated trials at SNR 2."""
    root = tmp_path_factory.mktemp("ckpt")
    fif, _ = save_task(root / "motor_raw.fif", "motor-gnn", snr=2.0, seed=1, trials=100)
    out = root / "motor.pt"
    train("motor-gnn", TrainOptions(data=[fif], out=out, epochs=8, progress=False))
    return out, fif


def decoder_config(model: Path, **overrides) -> dict:
    return {"name": "outcome", "model": str(model), "source": "eeg", "on_marker": "outcome",
            "runtime": "onnxruntime", **overrides}


def test_contract_round_trips(trained):
    ckpt_path, fif = trained
    ckpt = load_checkpoint(ckpt_path)
    c = ckpt.contract
    raw_info = read_recording(fif).streams[0].info
    assert c.family == "motor-gnn" and c.output.kind == "classes"
    assert c.output.labels == ["failure", "success"]
    assert c.input.ch_names == list(raw_info.ch_names) and c.input.ch_types == ["eeg"] * 64
    np.testing.assert_allclose(c.input.positions_array(), raw_info.positions, atol=1e-7)
    assert (c.input.srate, c.input.n_samples, c.input.window_start_s) == (250.0, 250, 0.0)
    assert c.input.preprocess["bandpass"] == [1.0, 40.0]
    assert c.input.preprocess["resample_hz"] == 250.0 and "picks" not in c.input.preprocess
    metrics = json.loads(ckpt_path.with_name("motor.pt.metrics.json").read_text())
    assert c.metrics == metrics and set(metrics["val"]) == {"accuracy", "n_val", "chance",
                                                             "chance_uniform", "ci95"}
    model = ckpt.build_model()
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, ckpt.state_dict[name], rtol=0, atol=0)


def test_unsafe_or_foreign_files_are_refused_in_one_line(tmp_path, trained):
    cases = {  # unpickling a Fraction means importing and calling a class: a safe load refuses
        "pickle.pt": {"contract": {"format": 1}, "state_dict": {}, "obj": Fraction(1, 3)},
        "plain.pt": {"weights": torch.zeros(3)},
        "future.pt": {"contract": {"format": 99}, "state_dict": {}},
        "table.pt": {"contract": 5, "state_dict": {}},
        "bank.pt": {**torch.load(trained[0], weights_only=True), "bank": "not a tensor"},
    }
    for name, payload in cases.items():
        torch.save(payload, tmp_path / name)
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "junk.pt").write_bytes(bytes(range(7, 107)))
    (tmp_path / "half.pt").write_bytes(trained[0].read_bytes()[:1000])
    expected = {"pickle.pt": "holds a Python object", "plain.pt": "no contract",
                "future.pt": "checkpoint format 99", "missing.pt": "no checkpoint file",
                "table.pt": "contract and state_dict are not tables",
                "bank.pt": "bank is a str, not a tensor", "empty.pt": "the file is empty",
                "junk.pt": "not a torch file", "half.pt": "is not an rtbci checkpoint"}
    for name, words in expected.items():
        with pytest.raises(RtbciError, match=words) as err:
            load_checkpoint(tmp_path / name, "decoders[0].model")
        assert "\n" not in str(err.value) and str(err.value).startswith("decoders[0].model")


def test_weights_that_do_not_fit_the_network_are_refused_in_one_line(tmp_path, trained):
    raw = torch.load(trained[0], weights_only=True)
    first = next(iter(raw["state_dict"]))
    torch.save({**raw, "state_dict": {**raw["state_dict"], first: torch.zeros(3)}},
               tmp_path / "shape.pt")
    with pytest.raises(RtbciError, match=f"the weights do not fit a motor-gnn network: size "
                                         f"mismatch for {first}") as err:
        load_checkpoint(tmp_path / "shape.pt", "decoders[0].model").build_model()
    assert "\n" not in str(err.value) and str(err.value).startswith("decoders[0].model")


def stream_info(fif: Path):
    """The recorded stream's info after the checkpoint's preprocessing (250 Hz)."""
    return dataclasses.replace(read_recording(fif).streams[0].info, srate=250.0)


def test_channels_are_picked_and_reordered_by_name(trained):
    ckpt_path, fif = trained
    info = stream_info(fif)
    cfg = parse_config({"sources": [{"name": "eeg", "kind": "simulate"}],
                        "decoders": [decoder_config(ckpt_path)]}).decoders[0]
    straight = load_decoder(cfg, info)
    order = np.random.default_rng(0).permutation(info.n_channels + 3)  # shuffled + extras
    names = [*info.ch_names, "EXG1", "EXG2", "EXG3"]
    shuffled_info = dataclasses.replace(
        info, ch_names=tuple(names[i] for i in order), ch_types=("eeg",) * len(order),
        ch_units=("microvolts",) * len(order), positions=None)
    shuffled = load_decoder(cfg, shuffled_info)
    window = np.random.default_rng(1).standard_normal((250, 64)).astype(np.float32) * 10
    extended = np.concatenate([window, np.full((250, 3), 1e3, np.float32)], axis=1)
    a, b = straight(window), shuffled(extended[:, order])
    np.testing.assert_allclose(b.probabilities, a.probabilities, rtol=1e-6)
    assert shuffled.n_channels == 67 and shuffled.describe()["input"] == [250, 67]


def test_stream_mismatches_are_refused_in_one_line(trained):
    ckpt_path, fif = trained
    info = stream_info(fif)
    cfg = parse_config({"sources": [{"name": "eeg", "kind": "simulate"}],
                        "decoders": [decoder_config(ckpt_path)]}).decoders[0]
    missing = dataclasses.replace(info, ch_names=("Fp1x", *info.ch_names[1:]))
    cases = [
        (missing, None, "has no channel 'Fp1' that the checkpoint needs"),
        (dataclasses.replace(info, srate=500.0), None,
         "runs at 500 Hz after preprocessing, the checkpoint expects 250 Hz"),
        (info, PreprocessConfig(bandpass=(1.0, 30.0), resample_hz=250.0),
         r"preprocess.bandpass is \(1.0, 30.0\) but the checkpoint was trained with "
         r"\(1.0, 40.0\)"),
    ]
    for stream, preprocess, words in cases:
        with pytest.raises(RtbciError, match=words) as err:
            load_decoder(cfg, stream, "decoders[0]", preprocess=preprocess)
        assert "\n" not in str(err.value) and str(err.value).startswith("decoders[0]")
    window_cfg = parse_config({"sources": [{"name": "eeg", "kind": "simulate"}],
                               "decoders": [decoder_config(ckpt_path, window_ms=[0, 500])]})
    with pytest.raises(RtbciError, match="does not match the checkpoint's window"):
        load_decoder(window_cfg.decoders[0], info)


def replay(config: dict, fif: Path, new_collector):
    collector = new_collector()
    engine = Engine(parse_config(config), sinks=[collector])
    asyncio.run(engine.run_offline(read_recording(fif)))
    return engine, collector.results


def test_engine_adopts_the_preprocessing_and_decodes_every_event(trained, new_collector):
    ckpt_path, fif = trained
    config = {"sources": [{"name": "eeg", "kind": "simulate", "stream_name": "rtbci-motor-gnn"}],
              "decoders": [decoder_config(ckpt_path, options={"importance": True})]}
    engine, results = replay(config, fif, new_collector)
    assert engine.preprocess["eeg"].bandpass == (1.0, 40.0)
    assert engine.streams["eeg"].info.srate == 250.0
    events = [text for _, text in read_recording(fif).markers]
    assert [r.marker for r in results] == events[:len(results)]
    assert len(results) >= len(events) - 1  # the last window may run past the recording
    for r in results:
        assert r.labels == ["failure", "success"] and abs(r.probabilities.sum() - 1) < 1e-5
    # importance is computed after a result is published and sent with the next one
    assert results[0].importance is None
    for previous, r in zip(results, results[1:]):
        assert r.importance_seq == previous.seq
        assert r.importance.shape == (64,) and abs(r.importance.sum() - 1) < 1e-5
    truth = [r.marker.split("/")[1] for r in results]
    predicted = [r.labels[int(np.argmax(r.probabilities))] for r in results]
    assert np.mean(np.array(truth) == np.array(predicted)) > 0.75  # chance 0.5


def test_a_conflicting_source_preprocess_stops_only_that_decoder(trained, new_collector):
    ckpt_path, fif = trained
    config = {"sources": [{"name": "eeg", "kind": "simulate", "stream_name": "rtbci-motor-gnn",
                           "preprocess": {"bandpass": [1, 30], "resample_hz": 250}}],
              "decoders": [decoder_config(ckpt_path),
                           {"name": "bp", "model": "builtin:bandpower", "source": "eeg",
                            "window_ms": 400, "every_ms": 1000, "runtime": "numpy"}]}
    engine, results = replay(config, fif, new_collector)
    error = engine.decoder_status["outcome"]["error"]
    assert "preprocess.bandpass" in error and "\n" not in error
    assert results and all(r.decoder == "bp" for r in results)


@pytest.mark.slow
def test_demo_checkpoints_decode_live_simulated_tasks(new_collector, tmp_path, monkeypatch):
    """Real LSL: a simulated motor task and image task, decoded live by the demo checkpoints."""
    monkeypatch.setenv("RTBCI_CACHE", str(tmp_path / "cache"))
    tag = tmp_path.name
    config = parse_config({
        "sources": [{"name": "motor", "kind": "simulate", "task": "motor-gnn",
                     "stream_name": f"motor-{tag}"},
                    {"name": "images", "kind": "simulate", "task": "image-retrieval",
                     "stream_name": f"images-{tag}"}],
        "decoders": [{"name": "outcome", "model": "demo:motor-gnn", "source": "motor",
                      "on_marker": "outcome", "options": {"importance": True}},
                     {"name": "image", "model": "demo:image-retrieval", "source": "images",
                      "on_marker": "image", "options": {"top_k": 3}}]})
    collector = new_collector()
    engine = Engine(config, sinks=[collector])
    asyncio.run(engine.run(16.0))  # start-up (exports, warm-up) takes a few seconds
    by_decoder = {name: [r for r in collector.results if r.decoder == name]
                  for name in ("outcome", "image")}
    assert len(by_decoder["outcome"]) >= 2 and len(by_decoder["image"]) >= 2, \
        engine.decoder_status
    for r in by_decoder["outcome"]:
        assert r.kind == "classes" and r.marker.startswith("outcome/")
        assert r.probabilities.shape == (2,)
    for r in by_decoder["outcome"][1:]:  # the importance of the result before
        assert r.importance.shape == (64,) and r.importance_seq < r.seq
    for r in by_decoder["image"]:
        assert r.kind == "retrieval" and len(r.ids) == 3 and len(r.labels) == 3
        assert np.all(np.diff(r.scores) <= 0) and r.marker.startswith("image/")
    status = engine.decoder_status["image"]
    assert status["window"] == [0, 250] and status["runtime"]["input"] == [250, 64]


def test_retrieval_returns_the_best_candidates_by_cosine():
    from rtbci.models import checkpoint_path
    from rtbci.stream import StreamInfo

    ckpt = load_checkpoint(checkpoint_path("demo:image-retrieval"))
    inp = ckpt.contract.input
    info = StreamInfo(name="x", type="EEG", source_id="x", srate=inp.srate,
                      ch_names=tuple(inp.ch_names), ch_types=tuple(inp.ch_types),
                      ch_units=("microvolts",) * len(inp.ch_names))
    cfg = parse_config({"sources": [{"name": "s", "kind": "simulate"}], "decoders": [
        {"name": "d", "model": "demo:image-retrieval", "source": "s", "on_marker": "image",
         "runtime": "onnxruntime", "options": {"top_k": 4}}]}).decoders[0]
    decoder = load_decoder(cfg, info)
    window = np.random.default_rng(0).standard_normal((inp.n_samples, 64)).astype(np.float32)
    out = decoder(window)
    with torch.inference_mode():
        embedding = ckpt.build_model().inference_module(None)(
            torch.from_numpy(window[None])).numpy()[0]
    bank = ckpt.bank / np.linalg.norm(ckpt.bank, axis=1, keepdims=True)
    cosine = bank @ (embedding / np.linalg.norm(embedding))
    order = np.argsort(-cosine)[:4]
    assert list(out.ids) == list(order)
    assert out.labels == [ckpt.contract.output.labels[i] for i in order]
    np.testing.assert_allclose(out.scores, cosine[order], atol=1e-4)
    assert decoder.output_size == 8 and decoder.describe()["output"] == [8]


SLOW_DECODER = """
import threading
from rtbci.models.bandpower import BandPower

release = threading.Event()

def make(n_samples, n_channels, srate):
    release.wait(30)  # compiling, until the test lets it finish
    return BandPower(n_samples, n_channels, srate)
"""


def test_a_bad_checkpoint_fails_alone_and_stats_list_every_decoder_state(tmp_path, monkeypatch):
    """Live: an empty .pt fails in one line, a decoder still compiling shows as loading and
    the others run; every configured decoder is in the stats with its state."""
    import importlib
    import uuid

    module = f"slow_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(SLOW_DECODER)
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "empty.pt").write_bytes(b"")
    sliding = {"source": "eeg", "window_ms": 200, "every_ms": 100, "runtime": "numpy"}
    config = parse_config({
        "engine": {"session": "states", "stats_interval_s": 0.3},
        "sources": [{"name": "eeg", "kind": "simulate", "stream_name": module}],
        "decoders": [{"name": "bad", "model": "empty.pt", "source": "eeg", "on_marker": "stim"},
                     {"name": "bp", "model": "builtin:bandpower", **sliding},
                     {"name": "slow", "model": f"python:{module}:make", **sliding}]},
        base_dir=tmp_path)
    engine, seen = Engine(config), []

    def tick(engine):
        decoders = engine.stats()["decoders"]
        seen.append({name: entry["state"] for name, entry in decoders.items()})
        if decoders["bp"]["results"] > 5:
            importlib.import_module(module).release.set()

    stats = asyncio.run(engine.run(6.0, on_tick=tick))
    assert {"bad": "failed", "slow": "loading", "bp": "running"} in seen
    assert {n: d["state"] for n, d in stats["decoders"].items()} == {
        "bad": "failed", "bp": "running", "slow": "running"}
    error = stats["decoders"]["bad"]["error"]
    assert "\n" not in error and error.endswith("empty.pt' is not an rtbci checkpoint: the file "
                                                "is empty")
    assert stats["decoders"]["slow"]["results"] > 0 and stats["decoders"]["bp"]["results"] > 20


def test_an_on_marker_matching_nothing_names_the_markers_there(tmp_path, caplog):
    from rtbci.devices.simulate import save_recording

    fif = save_recording(tmp_path / "sim_raw.fif", "eeg64", 30.0, 0, 1.0, ("left", "right"))
    config = parse_config({
        "sources": [{"name": "eeg", "kind": "simulate"}],
        "decoders": [{"name": "trial", "model": "builtin:bandpower", "source": "eeg",
                      "on_marker": "stimulus", "window_ms": [0, 500], "runtime": "numpy"}]})
    with caplog.at_level("WARNING", logger="rtbci.engine"):
        asyncio.run(Engine(config).run_offline(read_recording(fif)))
    hints = [r.getMessage() for r in caplog.records if "matched none" in r.getMessage()]
    assert len(hints) == 1
    assert re.fullmatch(r"decoders\[0\] \('trial'\)\.on_marker 'stimulus' matched none of the 10 "
                        r"markers on source 'eeg' so far; markers there: "
                        r"stim/(left|right) ×\d+, stim/(left|right) ×\d+", hints[0]), hints[0]
