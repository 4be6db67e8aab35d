"""The runtime interface: one torch module, compiled for one fixed input shape, run per window.

A :class:`Runtime` owns a preallocated host input array and preallocated host output arrays.
:meth:`Runtime.run` copies a window into the input array, runs the backend
(:meth:`Runtime._execute`) and returns the output arrays — the same objects on every call, so
a caller that keeps a result past the next call must copy it. :meth:`Runtime.load` builds the
backend, warms it up (the first calls, with their allocations, lazy initialisation and kernel
selection, never happen on the live path) and checks its outputs against torch eager.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from rtbci.errors import RtbciError

if TYPE_CHECKING:
    import torch

log = logging.getLogger("rtbci.models.runtimes")

PRECISIONS = ("fp32", "tf32", "fp16", "bf16")

# Allowed error against torch eager in fp32, |got - ref| <= atol + rtol * |ref|, per precision.
# fp32 backends reorder float32 sums (ONNX Runtime's fused kernels, TensorRT tactics): observed
# differences are ~1e-7 relative; 1e-4 leaves room for long reductions.
TOLERANCES = {"fp32": (1e-4, 1e-5), "tf32": (1e-2, 1e-3), "fp16": (2e-2, 1e-2),
              "bf16": (5e-2, 5e-2)}


def import_torch(name: str, backend: str):
    """``torch``, or an :class:`RtbciError` naming the decoder when it is not installed."""
    try:
        import torch
    except ImportError:
        raise RtbciError(f"{name}: runtime {backend!r} needs torch (pip install torch)") from None
    return torch


def as_tensors(out, name: str) -> list[torch.Tensor]:
    """A module's output as a list of tensors: a tensor, or a tuple/list of tensors."""
    items = list(out) if isinstance(out, tuple | list) else [out]
    if not items or not all(hasattr(t, "detach") for t in items):
        raise RtbciError(f"{name}: forward() must return a tensor or a tuple of tensors, "
                         f"not {type(out).__name__}")
    return items


def module_device(module: torch.nn.Module):
    """Device of a module's first parameter or buffer (cpu for a module with neither)."""
    import torch

    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return torch.device("cpu")


def module_on(module: torch.nn.Module, device) -> torch.nn.Module:
    """``module`` on ``device``: itself if already there, else a copy (the caller's is kept)."""
    import copy

    if module_device(module) == device:
        return module
    return copy.deepcopy(module).to(device)


class Runtime(ABC):
    """One backend running one ``torch.nn.Module`` on a fixed input shape.

    Parameters
    ----------
    name : str
        What errors and logs call it (the decoder's name).
    threads : int | None
        CPU threads for one inference (backends that use CPU threads; None: the default).
    warmup : int
        Calls made at load, before any live window.
    verify : bool
        Compare the outputs with torch eager (fp32) on random inputs at load.

    Attributes
    ----------
    input_shape : tuple of int
        The one input shape, batch included, e.g. ``(1, n_samples, n_channels)``.
    output_shapes : list of tuple of int
        One shape per output.
    calls, warmup_calls : int
        Calls to :meth:`run` so far (warm-up and verification included), and those made
        by the warm-up at load.
    """

    backend: ClassVar[str]
    precisions: ClassVar[tuple[str, ...]] = ("fp32",)

    def __init__(self, name: str = "model", *, threads: int | None = None, warmup: int = 10,
                 verify: bool = True):
        if warmup < 1:
            raise RtbciError(f"{name}: warmup must be >= 1 (the first call is never live)")
        if threads is not None and threads < 1:
            raise RtbciError(f"{name}: threads must be >= 1, got {threads}")
        self.name, self.threads, self.warmup, self.verify = name, threads, warmup, verify
        self.device, self.precision = "cpu", "fp32"
        self.input_shape: tuple[int, ...] = ()
        self.output_shapes: list[tuple[int, ...]] = []
        self.calls = self.warmup_calls = 0
        self.auto_reason: str | None = None  # set by load_runtime("auto", …)
        self.cpu_fallback: str | None = None  # why a GPU decoder runs on the CPU (auto)
        self._unbatched: tuple[int, ...] = ()
        self._host_input: np.ndarray | None = None
        self._host_outputs: list[np.ndarray] = []
        self._result: np.ndarray | tuple[np.ndarray, ...] | None = None

    def __repr__(self) -> str:
        state = "loaded" if self._result is not None else "not loaded"
        return (f"<{type(self).__name__}: {self.name} | {state} | {self.device} {self.precision} "
                f"input {list(self.input_shape)}>")

    # -- lifecycle ---------------------------------------------------------------------------

    def load(self, module: torch.nn.Module, example_shape: tuple[int, ...], device: str = "cpu",
             precision: str = "fp32") -> Runtime:
        """Build the backend for ``module`` on inputs of ``example_shape``, warm it up, check it.

        Parameters
        ----------
        module : torch.nn.Module
            Put in eval mode. Its forward takes one float32 tensor of ``example_shape`` and
            returns a tensor or a tuple of tensors. Backends on another device use a copy.
        example_shape : tuple of int
            The fixed input shape, batch included (batch 1 for live decoding).
        device : str
            ``cpu``, ``cuda`` or ``cuda:N``.
        precision : str
            ``fp32`` or, where the backend has it, ``tf32``, ``fp16``, ``bf16``.

        Returns
        -------
        self
        """
        import_torch(self.name, self.backend)
        if precision not in self.precisions:
            raise RtbciError(f"{self.name}: runtime {self.backend!r} has no precision "
                             f"{precision!r} (choose from {', '.join(self.precisions)})")
        self.input_shape = tuple(int(n) for n in example_shape)
        if not self.input_shape or min(self.input_shape) < 1:
            raise RtbciError(f"{self.name}: bad example shape {example_shape}")
        self._unbatched = self.input_shape[1:] if self.input_shape[0] == 1 else self.input_shape
        self.device, self.precision = str(device), precision
        module.eval()
        self._load(module)
        self.output_shapes = [tuple(a.shape) for a in self._host_outputs]
        self._result = (self._host_outputs[0] if len(self._host_outputs) == 1
                        else tuple(self._host_outputs))
        self._warm_up()
        if self.verify:
            self._verify(module)
        log.debug("%s: loaded %s", self.name, self.describe())
        return self

    @abstractmethod
    def _load(self, module: torch.nn.Module) -> None:
        """Build the backend; set ``_host_input`` and ``_host_outputs`` (float32 arrays)."""

    @abstractmethod
    def _execute(self) -> None:
        """One inference: ``_host_input`` → backend → ``_host_outputs``, finished on return."""

    # -- the live path -----------------------------------------------------------------------

    def run(self, window: np.ndarray) -> np.ndarray | tuple[np.ndarray, ...]:
        """Run one input; returns the preallocated output array(s), overwritten by the next call.

        Parameters
        ----------
        window : array, shape ``input_shape`` or, for batch 1, ``input_shape[1:]``
            Copied (cast to float32) into the preallocated input.

        Returns
        -------
        array or tuple of arrays, float32, shapes ``output_shapes``
        """
        if window.shape != self._unbatched and window.shape != self.input_shape:
            raise RtbciError(f"{self.name}: input of shape {tuple(window.shape)}, expected "
                             f"{self.input_shape} (or {self._unbatched})")
        np.copyto(self._host_input, window, casting="same_kind")
        self._execute()
        self.calls += 1
        return self._result

    # -- reporting ---------------------------------------------------------------------------

    def describe(self) -> dict:
        """Backend, device, precision, shapes, threads and backend details (plain types)."""
        return {"backend": self.backend, "device": self.device, "precision": self.precision,
                "input": list(self.input_shape),
                "outputs": [list(s) for s in self.output_shapes],
                "threads": self.threads, "warmup_calls": self.warmup_calls, **self._details(),
                **({"auto": self.auto_reason} if self.auto_reason else {}),
                **({"cpu_fallback": self.cpu_fallback} if self.cpu_fallback else {})}

    def _details(self) -> dict:
        """Backend-specific entries of :meth:`describe`."""
        return {}

    # -- load-time helpers -------------------------------------------------------------------

    def _random_inputs(self, n: int, seed: int) -> list[np.ndarray]:
        rng = np.random.default_rng(seed)
        return [rng.standard_normal(self.input_shape, dtype=np.float32) for _ in range(n)]

    def _warm_up(self) -> None:
        inputs = self._random_inputs(2, seed=0)
        for i in range(self.warmup):
            self.run(inputs[i % 2])
        self.warmup_calls = self.warmup

    def _verify(self, module: torch.nn.Module) -> None:
        """Raise when outputs differ from torch eager fp32 beyond ``TOLERANCES[precision]``."""
        import torch

        rtol, atol = TOLERANCES[self.precision]
        device = module_device(module)
        for x in self._random_inputs(2, seed=1):
            with torch.inference_mode():
                ref = [t.float().cpu().numpy() for t in
                       as_tensors(module(torch.from_numpy(x).to(device)), self.name)]
            got = self.run(x)
            got = list(got) if isinstance(got, tuple) else [got]
            for i, (g, r) in enumerate(zip(got, ref)):
                excess = np.abs(g - r) - (atol + rtol * np.abs(r))
                if g.shape != r.shape or not np.all(excess <= 0):
                    worst = float(np.nanmax(np.abs(g - r))) if g.shape == r.shape else np.nan
                    raise RtbciError(
                        f"{self.name}: {self.backend} ({self.precision}) output {i} differs from "
                        f"torch eager: max |diff| {worst:.3g} beyond rtol {rtol:g}, atol {atol:g}")
