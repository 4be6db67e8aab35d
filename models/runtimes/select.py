"""Choosing and loading a runtime by name, ``auto`` included."""

from __future__ import annotations

import importlib
import inspect
import logging

from rtbci.errors import RtbciError
from rtbci.models.runtimes.base import Runtime
from rtbci.models.runtimes.cudagraph import CUDAGraphRuntime
from rtbci.models.runtimes.eager import TorchRuntime
from rtbci.models.runtimes.ort import OnnxRuntime
from rtbci.models.runtimes.trt import TensorRTRuntime

log = logging.getLogger("rtbci.models.runtimes")

RUNTIMES: dict[str, type[Runtime]] = {
    "torch": TorchRuntime, "onnxruntime": OnnxRuntime, "cudagraph": CUDAGraphRuntime,
    "tensorrt": TensorRTRuntime}


def importable(name: str) -> bool:
    """Whether ``import name`` works (a package present but broken counts as not importable)."""
    try:
        importlib.import_module(name)
    except Exception:  # ImportError, or a binding whose native libraries are missing
        return False
    return True


def cuda_available() -> bool:
    """Whether torch is installed and sees a CUDA device (False without torch)."""
    if not importable("torch"):
        return False
    import torch

    return torch.cuda.is_available()


def auto_candidates(device: str = "cpu") -> tuple[list[tuple[str, str]], str]:
    """What ``auto`` tries, best first, as ``(backend, device)`` pairs, and why.

    On a CUDA device (when CUDA is available): tensorrt (if importable) → cudagraph → torch
    eager on that device. Otherwise, on the CPU: onnxruntime (if importable) → torch eager.
    ONNX Runtime is only used with its CPU provider, so it is not a GPU candidate.
    """
    ort = importable("onnxruntime")
    cpu = [(b, "cpu") for b in (["onnxruntime"] if ort else []) + ["torch"]]
    cpu_why = "onnxruntime importable" if ort else "onnxruntime not importable"
    if str(device).startswith("cuda"):
        if cuda_available():
            trt = importable("tensorrt")
            gpu = [(b, device) for b in (["tensorrt"] if trt else []) + ["cudagraph", "torch"]]
            trt_why = "tensorrt importable" if trt else "tensorrt not importable"
            return gpu, f"CUDA available for {device!r}, {trt_why}"
        return cpu, f"device {device!r} but CUDA is not available, so cpu; {cpu_why}"
    if device != "cpu":
        raise RtbciError(f"unknown device {device!r} (cpu, cuda, cuda:N)")
    return cpu, f"device 'cpu' (GPU backends need device 'cuda'); {cpu_why}"


def load_runtime(runtime: str, module, example_shape: tuple[int, ...], device: str = "cpu",
                 precision: str = "fp32", *, name: str = "model", **options) -> Runtime:
    """Build, warm up and check ``runtime`` for ``module`` (see :meth:`Runtime.load`).

    Parameters
    ----------
    runtime : str
        ``auto``, ``torch``, ``onnxruntime``, ``cudagraph`` or ``tensorrt``.
    module : torch.nn.Module
    example_shape : tuple of int
        The fixed input shape, batch included.
    device, precision : str
        As :meth:`Runtime.load`.
    name : str
        The decoder's name, for errors and logs.
    **options
        Keyword options of the backend's class (``threads``, ``warmup``, ``verify``,
        ``onnx_path``, ``cache_dir``, …). Under ``auto`` each candidate gets the ones it takes.

    Returns
    -------
    Runtime
        Loaded. Under ``auto``, ``runtime.auto_reason`` says why this backend was chosen; a
        candidate that fails to load (e.g. an export refused for control flow) is logged
        and the next one tried.
    """
    if runtime != "auto":
        if runtime not in RUNTIMES:
            raise RtbciError(f"{name}: unknown runtime {runtime!r} (auto, "
                             f"{', '.join(RUNTIMES)})")
        return _make(runtime, name, options).load(module, example_shape, device, precision)
    candidates, why = auto_candidates(device)
    failures = []
    for i, (backend, dev) in enumerate(candidates):
        cls = RUNTIMES[backend]
        if precision not in cls.precisions:
            failures.append(f"{backend} has no {precision}")
            continue
        taken = {k: v for k, v in options.items() if k in inspect.signature(cls).parameters}
        try:
            rt = _make(backend, name, taken).load(module, example_shape, dev, precision)
        except RtbciError as exc:
            if i == len(candidates) - 1:
                raise
            log.warning("%s: runtime auto: %s failed, trying %s: %s", name, backend,
                        candidates[i + 1][0], exc)
            failures.append(f"{backend} failed")
            continue
        rt.auto_reason = f"auto → {backend} on {rt.device}: {why}" + (
            f" ({', '.join(failures)})" if failures else "")
        log.info("%s: runtime %s", name, rt.auto_reason)
        if str(device).startswith("cuda") and rt.device == "cpu":
            rt.cpu_fallback = f"device {device!r} asked, but CUDA is not available"
            log.warning("%s: %s: it runs on the CPU (%s), at CPU latency", name,
                        rt.cpu_fallback, backend)
        return rt
    raise RtbciError(f"{name}: runtime auto: no backend takes precision {precision!r} on "
                     f"{device!r} ({', '.join(failures)})")


def _make(backend: str, name: str, options: dict) -> Runtime:
    try:
        return RUNTIMES[backend](name, **options)
    except TypeError as exc:
        raise RtbciError(f"{name}: runtime {backend!r}: {exc}") from None
