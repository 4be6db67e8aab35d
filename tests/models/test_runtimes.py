"""Compiled runtimes: torch, onnxruntime (CPU) and, on a CUDA machine, cudagraph and tensorrt.

Tolerances (|got - ref| <= atol + rtol * |ref|):

- numpy ``BandPower`` (float64) vs its float32 torch twin: log10 band power rtol 1e-4 (seen:
  ~3e-6), and the same against a float64 reference with ±500 µV offsets (seen: ~4e-5);
  classifier probabilities atol 1e-4 (seen: ~1e-5).
- torch vs onnxruntime, fp32: rtol 1e-4, atol 1e-5 (seen: ~1e-7), the check every runtime
  makes at load (``TOLERANCES["fp32"]``).
- cudagraph / tensorrt vs torch on CPU: fp32 rtol 1e-4, atol 1e-4 (cuDNN/TensorRT pick other
  summation orders); fp16 as ``TOLERANCES["fp16"]``.

ONNX exports take ~1 s each (3 s for the first), so each model is exported once per module.
"""

from __future__ import annotations

import logging
from pathlib import Path

import msgpack
import numpy as np
import pytest

from rtbci.errors import RtbciError

torch = pytest.importorskip("torch", reason="the compiled runtimes need torch "
                                             "(pip install torch==2.13.0)")

from rtbci.models.bandpower import BandPower, BandPowerNet  # noqa: E402
from rtbci.models.runtimes import (  # noqa: E402
    TOLERANCES,
    CompiledDecoder,
    compile_decoder,
    load_runtime,
    measure_latency,
)

CLASSIFIER = Path(__file__).parents[2] / "rtbci" / "demo_bandpower.npz"
SRATE = 1000.0
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA GPU (torch.cuda.is_available() is False)")


class SmallConvNet(torch.nn.Module):
    """Three Conv1d layers on EEG ``(1, 64 channels, 250 samples)`` → 16 features."""

    def __init__(self, n_channels: int = 64):
        super().__init__()
        torch.manual_seed(0)
        self.layers = torch.nn.Sequential(
            torch.nn.Conv1d(n_channels, 32, 7, padding=3), torch.nn.ReLU(),
            torch.nn.Conv1d(32, 32, 7, padding=3), torch.nn.ReLU(),
            torch.nn.Conv1d(32, 16, 7, padding=3))

    def forward(self, x):
        return self.layers(x).mean(dim=-1)


class Counting(torch.nn.Module):
    """Counts its forward calls."""

    def __init__(self):
        super().__init__()
        self.forwards = 0

    def forward(self, x):
        self.forwards += 1
        return x * 2


class Branchy(torch.nn.Module):
    """Branches on the input's values: no static graph can express it."""

    def forward(self, x):
        if x.sum() > 0:
            return x * 2
        return x - 1


def eeg_windows(n_samples: int, n_channels: int, n: int = 3,
                offset: float = 50.0) -> list[np.ndarray]:
    """µV-like windows: noise, a 10 Hz rhythm on some channels and DC offsets up to ``offset``
    (offsets of hundreds of µV test the mean removal: residual DC leaks into the bin next to
    DC; the torch twin stays within 4e-5 of the float64 truth — test_bandpower_net_… .)
    """
    rng = np.random.default_rng(7)
    t = np.arange(n_samples)[:, None] / SRATE
    alpha = 20 * np.sin(2 * np.pi * 10 * t) * (np.arange(n_channels) % 3 == 0)
    return [(10 * rng.standard_normal((n_samples, n_channels)) + alpha
             + rng.uniform(-offset, offset, n_channels)).astype(np.float32) for _ in range(n)]


def exact_band_power(bp: BandPower, window: np.ndarray) -> np.ndarray:
    """``BandPower.features`` computed in float64 throughout."""
    x = window.astype(np.float64)
    power = np.abs(np.fft.rfft((x - x.mean(axis=0)) * bp._taper, axis=0)) ** 2
    return np.log10((bp._band_matrix @ power).T.ravel() + 1e-20)


def close(got, ref, rtol: float, atol: float) -> None:
    np.testing.assert_allclose(got, ref, rtol=rtol, atol=atol)


# ---------------------------------------------------------------------------------------------
# fixtures: each model exported once
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def exporter():
    return pytest.importorskip("onnxscript", reason="the ONNX export needs onnxscript "
                                                    "(pip install onnxscript)")


@pytest.fixture(scope="module")
def ort(exporter):
    return pytest.importorskip("onnxruntime", reason="pip install onnxruntime onnx onnxscript")


@pytest.fixture(scope="module")
def bandpowers() -> dict[str, BandPower]:
    return {"embedding": BandPower(500, 64, SRATE),
            "classifier": BandPower(600, 64, SRATE, bands=[(1, 4), (4, 8), (8, 13)],
                                    classifier=CLASSIFIER)}


@pytest.fixture(scope="module")
def bandpower_runtimes(ort, bandpowers) -> dict[str, dict]:
    out = {}
    for variant, bp in bandpowers.items():
        net, shape = bp.to_torch(), (1, bp.n_samples, bp.n_channels)
        out[variant] = {backend: load_runtime(backend, net, shape, name=f"bp-{variant}")
                        for backend in ("torch", "onnxruntime")}
    return out


@pytest.fixture(scope="module")
def conv_runtimes(ort) -> dict:
    net = SmallConvNet()
    return {"net": net, **{b: load_runtime(b, net, (1, 64, 250), name="conv")
                           for b in ("torch", "onnxruntime")}}


# ---------------------------------------------------------------------------------------------
# CPU: same outputs everywhere
# ---------------------------------------------------------------------------------------------

def test_bandpower_net_is_the_numpy_decoder_in_torch(bandpowers):
    for variant, bp in bandpowers.items():
        net = bp.to_torch()
        assert isinstance(net, BandPowerNet)
        for window in eeg_windows(bp.n_samples, bp.n_channels):
            with torch.inference_mode():
                got = net(torch.from_numpy(window)[None]).numpy()[0]
            if variant == "embedding":
                close(got, bp.features(window), rtol=1e-4, atol=0)
            else:
                close(got, bp(window).probabilities, rtol=0, atol=1e-4)
    bp = BandPower(600, 64, SRATE, bands=[(1, 4), (4, 8), (8, 13)])  # 1 Hz: next to DC
    for window in eeg_windows(600, 64, offset=500):
        with torch.inference_mode():
            got = bp.to_torch()(torch.from_numpy(window)[None]).numpy()[0]
        close(got, exact_band_power(bp, window), rtol=1e-4, atol=0)


@pytest.mark.parametrize("variant", ["embedding", "classifier"])
def test_bandpower_numpy_torch_onnxruntime_agree(bandpowers, bandpower_runtimes, variant):
    bp, runtimes = bandpowers[variant], bandpower_runtimes[variant]
    for window in eeg_windows(bp.n_samples, bp.n_channels):
        out = bp(window)
        ref = out.embedding if variant == "embedding" else out.probabilities
        via_torch = runtimes["torch"].run(window)[0].copy()
        via_ort = runtimes["onnxruntime"].run(window)[0].copy()
        close(via_ort, via_torch, *TOLERANCES["fp32"])
        if variant == "embedding":
            close(via_ort, ref, rtol=1e-4, atol=0)
        else:
            close(via_ort, ref, rtol=0, atol=1e-4)


def test_conv_net_torch_and_onnxruntime_agree(conv_runtimes):
    rng = np.random.default_rng(2)
    for _ in range(3):
        x = rng.standard_normal((1, 64, 250), dtype=np.float32)
        with torch.inference_mode():
            ref = conv_runtimes["net"](torch.from_numpy(x)).numpy()
        close(conv_runtimes["torch"].run(x), ref, rtol=1e-4, atol=1e-4)
        close(conv_runtimes["onnxruntime"].run(x), ref, rtol=1e-4, atol=1e-4)


def test_compiled_decoder_gives_the_bandpower_outputs(bandpowers, bandpower_runtimes):
    for variant, bp in bandpowers.items():
        decoder = CompiledDecoder(bandpower_runtimes[variant]["onnxruntime"], bp.kind, bp.labels)
        window = eeg_windows(bp.n_samples, bp.n_channels, 1)[0]
        out, ref = decoder(window), bp(window)
        assert (decoder.kind, decoder.labels, decoder.output_size) == \
               (bp.kind, bp.labels, bp.output_size)
        if variant == "embedding":
            close(out.embedding, ref.embedding, rtol=1e-4, atol=0)
        else:
            assert out.labels == ref.labels
            close(out.probabilities, ref.probabilities, rtol=0, atol=1e-4)
        described = decoder.describe()
        assert described["input"] == [bp.n_samples, bp.n_channels]
        assert described["output"] == [bp.output_size]
        assert described["backend"] == "onnxruntime"


# ---------------------------------------------------------------------------------------------
# CPU: the runtime contract
# ---------------------------------------------------------------------------------------------

def test_describe_says_what_runs_where(conv_runtimes):
    for backend in ("torch", "onnxruntime"):
        d = conv_runtimes[backend].describe()
        assert d["backend"] == backend and d["device"] == "cpu" and d["precision"] == "fp32"
        assert d["input"] == [1, 64, 250] and d["outputs"] == [[1, 16]]
        assert isinstance(d["threads"], int) and d["threads"] >= 1
        assert d["warmup_calls"] >= 1
        msgpack.packb(d)  # it goes into the status message as is
    d = conv_runtimes["onnxruntime"].describe()
    assert d["providers"] == ["CPUExecutionProvider"] and d["opset"] >= 17
    assert d["graph_optimization"] == "ORT_ENABLE_ALL"


def test_warm_up_happens_at_load_not_on_the_first_window():
    module = Counting()
    rt = load_runtime("torch", module, (1, 8, 4), name="counting", warmup=5)
    assert rt.warmup_calls == 5 and rt.calls >= 5
    assert module.forwards >= 6  # shape probe + 5 warm-up calls (+ verification)
    before = module.forwards
    rt.run(np.ones((8, 4), np.float32))
    assert module.forwards == before + 1


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_outputs_are_preallocated_and_refreshed(conv_runtimes, backend):
    rt, rng = conv_runtimes[backend], np.random.default_rng(3)
    x1, x2 = (rng.standard_normal((64, 250), dtype=np.float32) for _ in range(2))
    first = rt.run(x1)  # without the batch axis: (64, 250) for input (1, 64, 250)
    saved = first.copy()
    second = rt.run(x2[None])
    assert second is first  # the same preallocated array every call…
    assert not np.allclose(second, saved)  # …holding the new window's output
    with torch.inference_mode():
        ref = conv_runtimes["net"](torch.from_numpy(x2[None])).numpy()
    close(second, ref, rtol=1e-4, atol=1e-4)


def test_wrong_input_shape_is_named(conv_runtimes):
    with pytest.raises(RtbciError, match=r"conv: input of shape \(250, 64\), expected "
                                         r"\(1, 64, 250\)"):
        conv_runtimes["onnxruntime"].run(np.zeros((250, 64), np.float32))


def test_control_flow_export_is_rejected_in_one_line(ort):
    with pytest.raises(RtbciError) as info:
        load_runtime("onnxruntime", Branchy(), (1, 4, 3), name="branchy")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("branchy: cannot export to ONNX: data-dependent control flow at "
                              "test_runtimes.py:")
    assert "if x.sum() > 0" in message and "torch.where" in message


def test_export_that_changes_the_outputs_is_rejected(ort):
    class Sneaky(torch.nn.Module):
        def forward(self, x):
            return x + 1 if torch.onnx.is_in_onnx_export() else x

    with pytest.raises(RtbciError, match=r"sneaky: onnxruntime \(fp32\) output 0 differs from "
                                         r"torch eager: max \|diff\| 1 "):
        load_runtime("onnxruntime", Sneaky(), (1, 4, 3), name="sneaky")


def test_auto_picks_onnxruntime_on_cpu_and_says_why(ort, caplog):
    with caplog.at_level(logging.INFO, logger="rtbci.models.runtimes"):
        rt = load_runtime("auto", SmallConvNet(8), (1, 8, 50), device="cpu", name="small")
    assert rt.backend == "onnxruntime" and rt.device == "cpu"
    assert rt.auto_reason.startswith("auto → onnxruntime on cpu: device 'cpu'")
    assert rt.describe()["auto"] == rt.auto_reason
    assert [r.getMessage() for r in caplog.records] == [f"small: runtime {rt.auto_reason}"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_auto_without_cuda_runs_on_cpu_and_says_so(ort, caplog):
    with caplog.at_level(logging.WARNING, logger="rtbci.models.runtimes"):
        rt = load_runtime("auto", SmallConvNet(8), (1, 8, 50), device="cuda", name="small")
    assert (rt.backend, rt.device) == ("onnxruntime", "cpu")
    assert "device 'cuda' but CUDA is not available" in rt.auto_reason
    assert rt.describe()["cpu_fallback"] == "device 'cuda' asked, but CUDA is not available"
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", "small: device 'cuda' asked, but CUDA is not available: it runs on the "
                    "CPU (onnxruntime), at CPU latency")]


def test_auto_on_cpu_is_no_fallback(ort):
    rt = load_runtime("auto", SmallConvNet(8), (1, 8, 50), device="cpu", name="small")
    assert rt.cpu_fallback is None and "cpu_fallback" not in rt.describe()


def test_torch_on_cpu_runs_one_thread_by_default():
    torch.set_num_threads(2)  # what another library (or torch's own default) left behind
    rt = load_runtime("torch", SmallConvNet(8), (1, 8, 50), device="cpu", name="small")
    assert torch.get_num_threads() == 1 and rt.describe()["threads"] == 1
    load_runtime("torch", SmallConvNet(8), (1, 8, 50), device="cpu", name="small", threads=2)
    assert torch.get_num_threads() == 2
    torch.set_num_threads(1)


def test_auto_falls_back_to_torch_when_the_export_is_refused(ort, caplog):
    with caplog.at_level(logging.WARNING, logger="rtbci.models.runtimes"):
        rt = load_runtime("auto", Branchy(), (1, 4, 3), name="branchy")
    assert rt.backend == "torch" and rt.auto_reason.endswith("(onnxruntime failed)")
    assert "branchy: runtime auto: onnxruntime failed, trying torch" in caplog.text


def test_compile_decoder_saves_onnx_and_measures_latency(ort, tmp_path):
    out = tmp_path / "small.onnx"
    rt, artefact, latency = compile_decoder(SmallConvNet(8), (1, 8, 50), "onnxruntime",
                                            out=out, name="small", calls=50)
    assert artefact == out and out.stat().st_size > 1000
    assert rt.describe()["onnx_path"] == str(out)
    assert latency["calls"] == 50 and latency["build_s"] > 0
    assert 0 < latency["p50_ms"] <= latency["p99_ms"] <= latency["max_ms"]
    again = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((1, 8, 50), dtype=np.float32)
    close(again.run(None, {"input": x})[0], rt.run(x), *TOLERANCES["fp32"])
    assert measure_latency(rt, calls=5)["calls"] == 5


def test_bad_requests_are_named():
    net = SmallConvNet(8)
    with pytest.raises(RtbciError, match="small: runtime 'onnxruntime' has no precision 'fp16' "
                                         r"\(choose from fp32\)"):
        load_runtime("onnxruntime", net, (1, 8, 50), precision="fp16", name="small")
    with pytest.raises(RtbciError, match="small: unknown runtime 'tvm'"):
        load_runtime("tvm", net, (1, 8, 50), name="small")
    with pytest.raises(RtbciError, match="small: runtime 'torch': .*unexpected keyword.*"):
        load_runtime("torch", net, (1, 8, 50), name="small", onnx_path="x.onnx")
    with pytest.raises(RtbciError, match="small: precision 'fp16' needs a CUDA device"):
        load_runtime("torch", net, (1, 8, 50), precision="fp16", name="small")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_gpu_runtimes_without_cuda_say_so():
    with pytest.raises(RtbciError, match="small: runtime 'cudagraph' on 'cuda' needs CUDA"):
        load_runtime("cudagraph", SmallConvNet(8), (1, 8, 50), device="cuda", name="small")


def test_tensorrt_without_tensorrt_says_so():
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("tensorrt is importable here")
    with pytest.raises(RtbciError, match="small: runtime 'tensorrt' needs TensorRT"):
        load_runtime("tensorrt", SmallConvNet(8), (1, 8, 50), device="cuda", name="small")


def test_tensorrt_engine_key_covers_what_an_engine_depends_on():
    from rtbci.models.runtimes.trt import engine_key

    base = ("onnx", "10.13.0", "NVIDIA H100 80GB HBM3", "fp16")
    key = engine_key(base[0].encode(), *base[1:])
    assert len(key) == 64 and key == engine_key(base[0].encode(), *base[1:])
    for i, other in enumerate(("onnx2", "10.13.1", "NVIDIA A100", "fp32")):
        changed = list(base)
        changed[i] = other
        assert engine_key(changed[0].encode(), *changed[1:]) != key


# ---------------------------------------------------------------------------------------------
# GPU (CUDA machine): cudagraph, torch on CUDA, tensorrt
# ---------------------------------------------------------------------------------------------

def gpu_models() -> list[tuple[str, torch.nn.Module, tuple[int, ...]]]:
    return [("conv", SmallConvNet(), (1, 64, 250)),
            ("bandpower", BandPower(500, 64, SRATE).to_torch(), (1, 500, 64))]


def reference(module, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return module(torch.from_numpy(x)).numpy()


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("backend", ["cudagraph", "torch"])
def test_cuda_runtimes_match_torch_on_cpu(backend):
    rng = np.random.default_rng(4)
    for name, module, shape in gpu_models():
        rt = load_runtime(backend, module, shape, device="cuda", name=name)
        assert rt.describe()["device"].startswith("cuda")
        for _ in range(3):
            x = rng.standard_normal(shape, dtype=np.float32)
            close(rt.run(x), reference(module, x), rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
@needs_cuda
def test_cudagraph_replay_sees_new_input():
    module = SmallConvNet()
    rt = load_runtime("cudagraph", module, (1, 64, 250), device="cuda", name="conv")
    rng = np.random.default_rng(5)
    x1, x2 = (rng.standard_normal((1, 64, 250), dtype=np.float32) for _ in range(2))
    first = rt.run(x1).copy()
    second = rt.run(x2)
    assert not np.allclose(first, second)  # no stale static buffers
    close(second, reference(module, x2), rtol=1e-4, atol=1e-4)
    close(rt.run(x1), first, rtol=0, atol=0)  # replays are deterministic


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_cudagraph_autocast(precision):
    module = SmallConvNet()
    rt = load_runtime("cudagraph", module, (1, 64, 250), device="cuda", precision=precision,
                      name="conv")
    x = np.random.default_rng(6).standard_normal((1, 64, 250), dtype=np.float32)
    close(rt.run(x), reference(module, x), *TOLERANCES[precision])
    assert rt.describe()["precision"] == precision


@pytest.mark.gpu
@needs_cuda
def test_auto_on_cuda_picks_a_gpu_backend(exporter):
    rt = load_runtime("auto", SmallConvNet(), (1, 64, 250), device="cuda", name="conv")
    assert rt.backend in ("tensorrt", "cudagraph") and rt.device.startswith("cuda")
    assert "CUDA available" in rt.auto_reason


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_tensorrt_matches_torch_and_caches_its_engine(exporter, tmp_path, precision):
    trt = pytest.importorskip("tensorrt", reason="TensorRT's Python package and libraries "
                                                 "are not installed")
    module = SmallConvNet()
    rt = load_runtime("tensorrt", module, (1, 64, 250), device="cuda", precision=precision,
                      name="conv", cache_dir=tmp_path)
    described = rt.describe()
    assert described["tensorrt"] == trt.__version__ and described["engine_cached"] is False
    assert Path(described["engine_path"]).is_file()
    x = np.random.default_rng(8).standard_normal((1, 64, 250), dtype=np.float32)
    rtol, atol = (1e-4, 1e-4) if precision == "fp32" else TOLERANCES[precision]
    close(rt.run(x), reference(module, x), rtol=rtol, atol=atol)
    again = load_runtime("tensorrt", module, (1, 64, 250), device="cuda", precision=precision,
                         name="conv", cache_dir=tmp_path)
    assert again.cached and again.engine_path == rt.engine_path
    close(again.run(x), rt.run(x).copy(), rtol=0, atol=0)
