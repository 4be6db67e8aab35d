"""Ahead-of-time builds (``rtbci compile``) and latency measurement of a loaded runtime."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import numpy as np

from rtbci.errors import RtbciError
from rtbci.latency import percentiles
from rtbci.models.runtimes.base import Runtime
from rtbci.models.runtimes.select import cuda_available, load_runtime

log = logging.getLogger("rtbci.models.runtimes")

LATENCY_CALLS = 200


def measure_latency(runtime: Runtime, calls: int = LATENCY_CALLS, seed: int = 0) -> dict:
    """Wall time of ``runtime.run`` on a loaded runtime, per call, in milliseconds.

    Inputs are 4 random float32 arrays of the runtime's input shape taken in turn (so the
    data changes between calls, as live windows do); the runtime was warmed up at load.

    Returns
    -------
    dict
        ``p50_ms``, ``p99_ms``, ``max_ms``, ``mean_ms`` and ``calls``.
    """
    if calls < 1:
        raise RtbciError(f"{runtime.name}: latency needs calls >= 1, got {calls}")
    rng = np.random.default_rng(seed)
    inputs = [rng.standard_normal(runtime.input_shape, dtype=np.float32) for _ in range(4)]
    times = np.empty(calls)
    clock = time.perf_counter_ns
    for i in range(calls):
        t0 = clock()
        runtime.run(inputs[i % 4])
        times[i] = clock() - t0
    times *= 1e-6
    p50, p99 = percentiles(times)
    return {"p50_ms": float(p50), "p99_ms": float(p99), "max_ms": float(times.max()),
            "mean_ms": float(times.mean()), "calls": calls}


def compile_decoder(module, example_shape: tuple[int, ...], runtime: str = "auto",
                    precision: str = "fp32", out: str | Path | None = None, *,
                    device: str | None = None, name: str = "model",
                    calls: int = LATENCY_CALLS, **options) -> tuple[Runtime, Path | None, dict]:
    """Build a runtime ahead of an experiment, save its artefact, measure its latency.

    Parameters
    ----------
    module : torch.nn.Module
    example_shape : tuple of int
        The fixed input shape, batch included, e.g. ``(1, n_samples, n_channels)``.
    runtime, precision : str
        As :func:`load_runtime`.
    out : path | None
        Where to write the artefact: the ``.onnx`` model (onnxruntime) or a copy of the
        serialized engine (tensorrt; it is also cached). torch and cudagraph build nothing
        that can be saved (a CUDA graph is captured at load); ``out`` is then ignored (logged).
    device : str | None
        Default: ``cuda`` for cudagraph and tensorrt, and for auto when CUDA is available;
        else ``cpu``.
    name : str
        For errors, logs and the cached engine's file name.
    calls : int
        Timed calls after the warm-up.
    **options
        Backend options (see :func:`load_runtime`).

    Returns
    -------
    runtime : Runtime
        Loaded and warmed up.
    artefact : Path | None
        The file written (or, for tensorrt without ``out``, the cached engine).
    latency : dict
        :func:`measure_latency` of ``runtime``, plus ``build_s`` (load time, seconds).
    """
    out = Path(out) if out is not None else None
    if device is None:
        gpu = runtime in ("cudagraph", "tensorrt") or (runtime == "auto" and cuda_available())
        device = "cuda" if gpu else "cpu"
    if out is not None and runtime in ("auto", "onnxruntime"):
        options.setdefault("onnx_path", out)  # auto: only onnxruntime takes it
    t0 = time.perf_counter()
    rt = load_runtime(runtime, module, example_shape, device, precision, name=name, **options)
    build_s = time.perf_counter() - t0
    artefact = _artefact(rt, out)
    latency = {**measure_latency(rt, calls), "build_s": build_s}
    return rt, artefact, latency


def _artefact(rt: Runtime, out: Path | None) -> Path | None:
    """The artefact of a loaded runtime, copied to ``out`` where that is needed."""
    if rt.backend == "onnxruntime":
        return rt.onnx_path
    if rt.backend == "tensorrt":
        if out is None:
            return rt.engine_path
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(rt.engine_path, out)
        return out
    if out is not None:
        log.warning("%s: runtime %s has no artefact to save; %s not written", rt.name,
                    rt.backend, out)
    return None


def format_latency(rt: Runtime, artefact: Path | None, latency: dict) -> str:
    """One line for ``rtbci compile``: backend, device, precision, latency, artefact."""
    saved = f" → {artefact}" if artefact else ""
    return (f"{rt.name}: {rt.backend} on {rt.device} ({rt.precision}), input "
            f"{list(rt.input_shape)}: p50 {latency['p50_ms']:.3f} ms, p99 "
            f"{latency['p99_ms']:.3f} ms, max {latency['max_ms']:.3f} ms over "
            f"{latency['calls']} calls; built in {latency['build_s']:.1f} s{saved}")
