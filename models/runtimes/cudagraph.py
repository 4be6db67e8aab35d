"""``cudagraph``: the module captured once in a CUDA graph, replayed for every window.

Follows the PyTorch CUDA Graphs recipe (``torch.cuda.graph``): a few eager iterations on a
side stream first (lazy initialisation, cuDNN/cuBLAS workspace and algorithm selection, the
caching allocator's blocks), then one capture into static input/output tensors. A call copies
the window into a pinned host tensor, and on the runtime's own stream: a non-blocking
host→device copy into the static input, one graph replay, non-blocking device→host copies of
the static outputs into pinned host tensors, then a synchronisation of that stream only.
The kernel launches of a whole forward become one launch, which is what makes the latency
deterministic (p99 close to p50, where eager's launches spread it).
"""

from __future__ import annotations

from rtbci.errors import RtbciError
from rtbci.models.runtimes.base import Runtime, as_tensors, import_torch, module_on
from rtbci.models.runtimes.eager import autocast, claim_precision, torch_device

EAGER_ITERATIONS = 3  # before capture, on the side stream (the docs' recipe)


class CUDAGraphRuntime(Runtime):
    """A CUDA graph of the module's forward, replayed on a dedicated stream.

    ``fp32`` is strict fp32 (TF32 off for the process, set at load by
    :func:`~rtbci.models.runtimes.eager.claim_precision`), ``tf32`` allows TF32, ``fp16`` /
    ``bf16`` autocast. ``threads`` is not used (the CPU only copies the
    window and launches the graph).
    """

    backend = "cudagraph"
    precisions = ("fp32", "tf32", "fp16", "bf16")

    def _load(self, module) -> None:
        torch = self._torch = import_torch(self.name, self.backend)
        dev = self._dev = torch_device(torch, self.device, self.name, self.backend)
        if dev.type != "cuda":
            raise RtbciError(f"{self.name}: runtime 'cudagraph' needs a CUDA device, not "
                             f"{self.device!r}")
        self.device = str(dev)
        claim_precision(torch, self)
        self._module = module_on(module, dev)
        self._stream = torch.cuda.Stream(device=dev)
        self._static_in = torch.zeros(self.input_shape, device=dev)
        self._host_in = torch.zeros(self.input_shape, pin_memory=True)
        self._graph, self._static_out = self._capture()
        self._host_out = [torch.empty(o.shape, pin_memory=True) for o in self._static_out]
        self._host_input = self._host_in.numpy()
        self._host_outputs = [t.numpy() for t in self._host_out]

    def _forward(self):
        torch = self._torch
        with autocast(torch, self._dev, self.precision):
            return [o.float() for o in as_tensors(self._module(self._static_in), self.name)]

    def _capture(self):
        """Warm up on the side stream, then capture one forward into a graph."""
        torch = self._torch
        stream = self._stream
        stream.wait_stream(torch.cuda.current_stream(self._dev))
        with torch.inference_mode():
            with torch.cuda.stream(stream):
                for _ in range(EAGER_ITERATIONS):
                    self._forward()
            torch.cuda.current_stream(self._dev).wait_stream(stream)
            torch.cuda.synchronize(self._dev)
            graph = torch.cuda.CUDAGraph()
            try:
                # thread_local: other threads (decoders already running on this GPU) may keep
                # calling CUDA while this one captures.
                with torch.cuda.graph(graph, stream=stream, capture_error_mode="thread_local"):
                    static_out = self._forward()
            except RuntimeError as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                raise RtbciError(f"{self.name}: cannot capture a CUDA graph (a host sync or a "
                                 f"data-dependent shape in forward?): {first}") from None
        return graph, static_out

    def _execute(self) -> None:
        torch = self._torch
        with torch.cuda.stream(self._stream):
            self._static_in.copy_(self._host_in, non_blocking=True)
            self._graph.replay()
            for host, out in zip(self._host_out, self._static_out):
                host.copy_(out, non_blocking=True)
        self._stream.synchronize()

    def _details(self) -> dict:
        torch = self._torch
        return {"threads": None, "gpu": torch.cuda.get_device_name(self._dev),
                "torch": torch.__version__, "cuda": torch.version.cuda}
