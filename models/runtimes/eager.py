"""``torch``: the module itself, eager, under ``torch.inference_mode()``, on CPU or CUDA."""

from __future__ import annotations

import contextlib
import gc
import threading
import weakref

from rtbci.errors import RtbciError
from rtbci.models.runtimes.base import Runtime, as_tensors, import_torch, module_on

AUTOCAST = {"fp16": "float16", "bf16": "bfloat16"}


def torch_device(torch, device: str, name: str, backend: str):
    """``torch.device(device)``, checked: a CUDA device needs CUDA and must exist."""
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise RtbciError(f"{name}: unknown device {device!r} (cpu, cuda, cuda:N)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RtbciError(f"{name}: runtime {backend!r} on {device!r} needs CUDA, which is "
                             f"not available (torch {torch.__version__})")
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        if index >= torch.cuda.device_count():
            raise RtbciError(f"{name}: device {device!r} does not exist "
                             f"({torch.cuda.device_count()} CUDA devices)")
        dev = torch.device("cuda", index)
    elif dev.type != "cpu":
        raise RtbciError(f"{name}: runtime {backend!r} runs on cpu or cuda, not {device!r}")
    return dev


_TF32_LOCK = threading.Lock()
_TF32_USERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # runtime → TF32 on?


def claim_tf32(torch, runtime, enabled: bool) -> None:
    """Set cuDNN convolutions and cuBLAS matmuls to TF32 (``enabled``) or strict fp32, for
    the life of ``runtime``, once, under one lock.

    torch lets cuDNN use TF32 by default (``torch.backends.cudnn.allow_tf32``): ~1e-3 relative
    error, which precision ``fp32`` must not have. The flags are process-wide and torch reads
    them when it launches a kernel, so they are never switched around a call (another
    decoder's thread could be launching): every live runtime needs the same mode, and one
    asking for the other is refused (RtbciError naming the runtime holding it).
    """
    def holder():
        return next((r.name for r, on in list(_TF32_USERS.items()) if on != enabled), None)

    with _TF32_LOCK:
        if holder() is not None:
            gc.collect()  # runtimes of an engine that has ended may only wait for collection
        if (other := holder()) is not None:
            mode = "TF32" if enabled else "strict fp32 (TF32 off)"
            raise RtbciError(f"{runtime.name}: precision {runtime.precision!r} needs {mode}, "
                             f"but decoder {other!r} already runs on CUDA with the other mode "
                             "(the TF32 flags are process-wide: use fp32 or tf32 for all)")
        _TF32_USERS[runtime] = enabled
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = enabled


def claim_precision(torch, runtime) -> None:
    """:func:`claim_tf32` for a CUDA runtime's precision: fp32 → off, tf32 → on; fp16 and
    bf16 (autocast) claim nothing, their fp32 ops follow the process's mode."""
    if runtime.precision in ("fp32", "tf32"):
        claim_tf32(torch, runtime, runtime.precision == "tf32")


def autocast(torch, dev, precision: str):
    """An autocast context for fp16/bf16 on CUDA (no weight cache, as CUDA graphs require)."""
    if precision not in AUTOCAST:
        return contextlib.nullcontext()
    return torch.autocast(dev.type, dtype=getattr(torch, AUTOCAST[precision]), cache_enabled=False)


class TorchRuntime(Runtime):
    """torch eager on CPU or CUDA; on CUDA also tf32, and fp16/bf16 by autocast.

    On CPU the input tensor shares memory with the host input array (no extra copy). On CUDA
    the window goes through a pinned host tensor and non-blocking copies on the runtime's own
    CUDA stream (so decoders on one GPU, each on its own thread, do not wait for each other's
    kernels), then that stream is synchronised; the TF32 flags are set once, at load
    (:func:`claim_precision`).
    ``threads`` (default 1 on the CPU) sets torch's intra-op threads, which are
    **process-wide** (``torch.set_num_threads``): every torch decoder in the process shares
    them, and the one loaded last sets them.
    """

    backend = "torch"
    precisions = ("fp32", "tf32", "fp16", "bf16")

    def _load(self, module) -> None:
        torch = self._torch = import_torch(self.name, self.backend)
        dev = self._dev = torch_device(torch, self.device, self.name, self.backend)
        self.device = str(dev)
        cuda = self._cuda = dev.type == "cuda"
        if self.precision != "fp32" and not cuda:
            raise RtbciError(f"{self.name}: precision {self.precision!r} needs a CUDA device "
                             "with runtime 'torch' (CPU runs fp32)")
        if not cuda:  # torch's default is a thread per core, which the sources need
            torch.set_num_threads(self.threads or 1)
        if cuda:
            claim_precision(torch, self)
            self._stream = torch.cuda.Stream(device=dev)
        self._module = module_on(module, dev)
        self._input = torch.zeros(self.input_shape, device=dev)
        self._host_in = torch.zeros(self.input_shape, pin_memory=True) if cuda else self._input
        if cuda:  # the weights and the input were written on the current stream
            self._stream.wait_stream(torch.cuda.current_stream(dev))
        outputs = self._forward()
        self._host_out = [torch.empty(o.shape, pin_memory=cuda) for o in outputs]
        self._host_input = self._host_in.numpy()
        self._host_outputs = [t.numpy() for t in self._host_out]

    def _forward(self):
        torch = self._torch
        stream = torch.cuda.stream(self._stream) if self._cuda else contextlib.nullcontext()
        with torch.inference_mode(), stream, autocast(torch, self._dev, self.precision):
            return [o.float() for o in as_tensors(self._module(self._input), self.name)]

    def _execute(self) -> None:
        cuda = self._cuda
        if not cuda:
            for host, out in zip(self._host_out, self._forward()):
                host.copy_(out)
            return
        with self._torch.cuda.stream(self._stream):
            self._input.copy_(self._host_in, non_blocking=True)
            for host, out in zip(self._host_out, self._forward()):
                host.copy_(out, non_blocking=True)
        self._stream.synchronize()

    def _details(self) -> dict:
        threads = self._torch.get_num_threads() if self._dev.type == "cpu" else None
        return {"threads": threads, "torch": self._torch.__version__}
