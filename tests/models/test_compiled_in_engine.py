"""A compiled decoder inside the engine: same outputs as numpy, export cached."""

import asyncio

import numpy as np
import pytest

from rtbci.config import parse_config
from rtbci.devices.recording import read_recording
from rtbci.devices.simulate import save_recording
from rtbci.engine import Engine

pytest.importorskip("onnxruntime", reason="the onnxruntime runtime needs onnxruntime")
pytest.importorskip("torch", reason="compiled runtimes need torch")


def run(recording, runtime: str, new_collector):
    decoders = [{"name": "bp", "model": "builtin:bandpower", "source": "eeg", "window_ms": 500,
                 "every_ms": 100, "runtime": runtime}]
    collector = new_collector()
    engine = Engine(parse_config({"sources": [{"name": "eeg", "kind": "simulate",
                                               "stream_name": "rtbci-eeg64"}],
                                  "decoders": decoders}), sinks=[collector])
    asyncio.run(engine.run_offline(recording))
    return engine, collector.results


def test_onnxruntime_decoder_gives_the_numpy_outputs(tmp_path, monkeypatch, new_collector):
    monkeypatch.setenv("RTBCI_CACHE", str(tmp_path / "cache"))
    recording = read_recording(save_recording(tmp_path / "sim_raw.fif", duration=6.0, seed=2))
    _, reference = run(recording, "numpy", new_collector)
    engine, compiled = run(recording, "onnxruntime", new_collector)
    assert engine.decoder_status["bp"]["runtime"]["backend"] == "onnxruntime"
    assert [r.seq for r in compiled] == [r.seq for r in reference] and len(compiled) == 56
    for a, b in zip(compiled, reference, strict=True):
        np.testing.assert_allclose(a.embedding, b.embedding, rtol=1e-4, atol=1e-4)
    assert len(list((tmp_path / "cache" / "onnx").glob("*.onnx"))) == 1  # exported once …
    engine, again = run(recording, "onnxruntime", new_collector)  # … and loaded next time
    assert len(list((tmp_path / "cache" / "onnx").glob("*.onnx"))) == 1
    np.testing.assert_array_equal(again[0].embedding, compiled[0].embedding)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")
def test_a_gpu_decoder_on_the_cpu_says_so_in_its_stats(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("RTBCI_CACHE", str(tmp_path / "cache"))
    recording = read_recording(save_recording(tmp_path / "sim_raw.fif", duration=2.0, seed=2))
    decoders = [{"name": "gpu", "model": "builtin:bandpower", "source": "eeg",
                 "window_ms": 500, "every_ms": 100, "device": "cuda"},
                {"name": "cpu", "model": "builtin:bandpower", "source": "eeg",
                 "window_ms": 500, "every_ms": 100}]
    engine = Engine(parse_config({"sources": [{"name": "eeg", "kind": "simulate",
                                               "stream_name": "rtbci-eeg64"}],
                                  "decoders": decoders}))
    with caplog.at_level("WARNING"):
        stats = asyncio.run(engine.run_offline(recording))
    assert stats["decoders"]["gpu"]["cpu_fallback"] == ("device 'cuda' asked, but CUDA is not "
                                                        "available")
    assert stats["decoders"]["gpu"]["results"] > 0
    assert "cpu_fallback" not in stats["decoders"]["cpu"]
    assert any(r.levelname == "WARNING" and "it runs on the CPU" in r.getMessage()
               for r in caplog.records)


def test_python_decoders_are_told_of_the_blas_cap(caplog):
    config = parse_config({
        "sources": [{"name": "eeg", "kind": "simulate", "stream_name": "rtbci-eeg64"}],
        "decoders": [{"name": "mine", "model": "python:somewhere:Make", "source": "eeg",
                      "window_ms": 500, "every_ms": 100},
                     {"name": "pinned", "model": "python:somewhere:Make", "source": "eeg",
                      "window_ms": 500, "every_ms": 100, "compute_threads": 1}]})
    from threadpoolctl import threadpool_info

    with caplog.at_level("WARNING", logger="rtbci.engine"):
        Engine(config)._limit_blas()
    assert [r.getMessage() for r in caplog.records] == [
        "numpy's BLAS is capped at 1 thread(s) for the whole engine, the python: decoder(s) "
        "'mine' included; set a decoder's compute_threads to raise it"]
    assert all(p["num_threads"] == 1 for p in threadpool_info() if p["user_api"] == "blas")
