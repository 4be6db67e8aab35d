"""``onnxruntime``: the module exported to ONNX, run by ONNX Runtime's CPU provider."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rtbci.errors import RtbciError
from rtbci.models.runtimes.base import Runtime
from rtbci.models.runtimes.export import INPUT_NAME, OPSET, cached_export_onnx


def import_onnxruntime(name: str):
    """``onnxruntime``, or an :class:`RtbciError` naming the decoder when it is missing."""
    try:
        import onnxruntime
    except ImportError:
        raise RtbciError(f"{name}: runtime 'onnxruntime' needs onnxruntime, onnx and onnxscript "
                         "(pip install onnxruntime onnx onnxscript)") from None
    return onnxruntime


class OnnxRuntime(Runtime):
    """ONNX Runtime (CPU provider), all graph optimisations, I/O bound to preallocated arrays.

    Parameters
    ----------
    name, warmup, verify
        As :class:`Runtime`.
    threads : int
        Intra-op threads of this session (default 1: the graph runs on the calling worker
        thread, without a spinning thread pool competing with acquisition and the event loop).
    onnx_path : path | None
        Also write the exported model there.
    opset : int
        ONNX opset of the export (>= 17).
    """

    backend = "onnxruntime"

    def __init__(self, name: str = "model", *, threads: int | None = 1, warmup: int = 10,
                 verify: bool = True, onnx_path: str | Path | None = None, opset: int = OPSET):
        super().__init__(name, threads=threads or 1, warmup=warmup, verify=verify)
        self.onnx_path = Path(onnx_path) if onnx_path is not None else None
        self.opset = opset

    def _load(self, module) -> None:
        ort = import_onnxruntime(self.name)
        if self.device != "cpu":
            raise RtbciError(f"{self.name}: runtime 'onnxruntime' runs on cpu here (CPU "
                             f"provider), not {self.device!r}; use cudagraph or tensorrt on GPU")
        model = cached_export_onnx(module, self.input_shape, self.name, self.opset)
        if self.onnx_path is not None:
            self.onnx_path.parent.mkdir(parents=True, exist_ok=True)
            self.onnx_path.write_bytes(model)
        self._session = ort.InferenceSession(model, self._options(ort),
                                             providers=["CPUExecutionProvider"])
        self._host_input = np.zeros(self.input_shape, np.float32)
        self._host_outputs = [np.zeros(self._static_shape(o), np.float32)
                              for o in self._session.get_outputs()]
        self._binding = self._bind()

    def _options(self, ort):
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only
        return options

    def _static_shape(self, node) -> tuple[int, ...]:
        if not all(isinstance(n, int) for n in node.shape):
            raise RtbciError(f"{self.name}: exported output {node.name} has a dynamic shape "
                             f"{node.shape}; the runtime needs static shapes")
        return tuple(node.shape)

    def _bind(self):
        """Bind the input and outputs to the preallocated arrays' memory (no copies by ORT)."""
        binding = self._session.io_binding()
        arrays = [(INPUT_NAME, self._host_input, binding.bind_input)]
        arrays += [(node.name, array, binding.bind_output)
                   for node, array in zip(self._session.get_outputs(), self._host_outputs)]
        for node_name, array, bind in arrays:
            bind(node_name, "cpu", 0, np.float32, list(array.shape), array.ctypes.data)
        return binding

    def _execute(self) -> None:
        self._session.run_with_iobinding(self._binding)

    def _details(self) -> dict:
        import onnxruntime

        return {"providers": self._session.get_providers(), "opset": self.opset,
                "graph_optimization": "ORT_ENABLE_ALL", "onnxruntime": onnxruntime.__version__,
                "onnx_path": str(self.onnx_path) if self.onnx_path else None}
