"""``torch``: the module itself, eager, under ``torch.inference_mode()``, on CPU or CUDA."""

from __future__ import annotations

import contextlib

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


@contextlib.contextmanager
def tf32_mode(torch, enabled: bool):
    """cuDNN convolutions and cuBLAS matmuls in TF32 (``enabled``) or strict fp32, restored after.

    torch lets cuDNN use TF32 by default (``torch.backends.cudnn.allow_tf32``): ~1e-3 relative
    error, which precision ``fp32`` must not have. The flags are process-wide.
    """
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    before = cudnn.allow_tf32, matmul.allow_tf32
    cudnn.allow_tf32 = matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        cudnn.allow_tf32, matmul.allow_tf32 = before


def autocast(torch, dev, precision: str):
    """An autocast context for fp16/bf16 on CUDA (no weight cache, as CUDA graphs require)."""
    if precision not in AUTOCAST:
        return contextlib.nullcontext()
    return torch.autocast(dev.type, dtype=getattr(torch, AUTOCAST[precision]), cache_enabled=False)


class TorchRuntime(Runtime):
    """torch eager on CPU or CUDA; on CUDA also tf32, and fp16/bf16 by autocast.

    On CPU the input tensor shares memory with the host input array (no extra copy). On CUDA
    the window goes through a pinned host tensor and non-blocking copies, then the current
    stream is synchronised; each call sets the TF32 flags for its precision (:func:`tf32_mode`).
    ``threads`` sets torch's intra-op threads, which are **process-wide**
    (``torch.set_num_threads``): every torch decoder in the process shares them.
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
        if self.threads and not cuda:
            torch.set_num_threads(self.threads)
        self._module = module_on(module, dev)
        self._input = torch.zeros(self.input_shape, device=dev)
        self._host_in = torch.zeros(self.input_shape, pin_memory=True) if cuda else self._input
        outputs = self._forward()
        self._host_out = [torch.empty(o.shape, pin_memory=cuda) for o in outputs]
        self._host_input = self._host_in.numpy()
        self._host_outputs = [t.numpy() for t in self._host_out]

    def _forward(self):
        torch = self._torch
        tf32 = (tf32_mode(torch, self.precision != "fp32") if self._cuda
                else contextlib.nullcontext())
        with torch.inference_mode(), tf32, autocast(torch, self._dev, self.precision):
            return [o.float() for o in as_tensors(self._module(self._input), self.name)]

    def _execute(self) -> None:
        cuda = self._cuda
        if cuda:
            self._input.copy_(self._host_in, non_blocking=True)
        for host, out in zip(self._host_out, self._forward()):
            host.copy_(out, non_blocking=cuda)
        if cuda:  # the worker thread's current stream, where the kernels above went
            self._torch.cuda.current_stream(self._dev).synchronize()

    def _details(self) -> dict:
        threads = self._torch.get_num_threads() if self._dev.type == "cpu" else None
        return {"threads": threads, "torch": self._torch.__version__}
