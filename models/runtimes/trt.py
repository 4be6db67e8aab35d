"""``tensorrt``: ONNX → TensorRT engine (cached on disk), run with ``execute_async_v3``.

Written against TensorRT's documented Python API (10.x, and 11.x): ``trt.Builder``,
``builder.create_network``, ``trt.OnnxParser``, ``IBuilderConfig`` (``BuilderFlag.FP16`` /
``BuilderFlag.TF32``, ``set_memory_pool_limit(MemoryPoolType.WORKSPACE, …)``),
``build_serialized_network``, ``trt.Runtime.deserialize_cuda_engine``, the name-based tensor
API (``num_io_tensors``, ``get_tensor_name``, ``get_tensor_mode``) and
``IExecutionContext.set_tensor_address`` + ``execute_async_v3(stream)``. Device buffers are
torch tensors; the runtime has its own CUDA stream (a ``torch.cuda.Stream``).

fp16: TensorRT 10 builds the fp32 graph with ``BuilderFlag.FP16`` (weak typing: TensorRT may
pick fp16 kernels per layer). TensorRT 11 removed the weak-typing flags, so there a float16
copy of the module, cast from and to float32 at its edges, is exported instead.

Serialized engines are cached in ``cache_dir`` (default ``$RTBCI_CACHE`` or
``~/.cache/rtbci``, subfolder ``tensorrt``) under the sha256 of the ONNX bytes, the TensorRT
version, the GPU name and the precision: an engine is only valid for the TensorRT version and
GPU that built it, and building takes seconds to minutes.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from rtbci.errors import RtbciError
from rtbci.models.runtimes.base import Runtime, import_torch
from rtbci.models.runtimes.eager import torch_device
from rtbci.models.runtimes.export import INPUT_NAME, OPSET, cache_root, export_onnx


def default_cache_dir() -> Path:
    """``$RTBCI_CACHE/tensorrt``, or ``~/.cache/rtbci/tensorrt``."""
    return cache_root() / "tensorrt"


def import_tensorrt(name: str):
    """``tensorrt``, or an :class:`RtbciError` naming the decoder when it cannot be imported."""
    try:
        import tensorrt
    except ImportError as exc:
        raise RtbciError(f"{name}: runtime 'tensorrt' needs TensorRT's Python package and "
                         f"libraries (import tensorrt failed: {exc})") from None
    return tensorrt


def engine_key(onnx: bytes, trt_version: str, gpu: str, precision: str) -> str:
    """sha256 (hex) of what a serialized engine depends on."""
    digest = hashlib.sha256(onnx)
    for part in (trt_version, gpu, precision):
        digest.update(b"\0" + part.encode())
    return digest.hexdigest()


def half_precision(torch, module):
    """A float16 copy of ``module`` between float32 casts, for TensorRT >= 11 (strong typing:
    no ``BuilderFlag.FP16``; the precision is whatever the ONNX graph says)."""
    import copy

    class HalfPrecision(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            out = self.inner(x.half())
            if isinstance(out, tuple | list):
                return tuple(o.float() for o in out)
            return out.float()

    return HalfPrecision(copy.deepcopy(module).half()).eval()


class TensorRTRuntime(Runtime):
    """A TensorRT engine built from the module's ONNX export; fp32 (TF32 off), tf32 or fp16.

    Parameters
    ----------
    name, threads, warmup, verify
        As :class:`Runtime` (``threads`` is accepted and not used).
    cache_dir : path | None
        Where serialized engines are kept (see the module docstring).
    workspace_mb : int
        Builder workspace limit (``MemoryPoolType.WORKSPACE``), MiB.
    """

    backend = "tensorrt"
    precisions = ("fp32", "tf32", "fp16")

    def __init__(self, name: str = "model", *, threads: int | None = None, warmup: int = 10,
                 verify: bool = True, cache_dir: str | Path | None = None,
                 workspace_mb: int = 1024):
        super().__init__(name, threads=threads, warmup=warmup, verify=verify)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.workspace_mb = workspace_mb
        self.engine_path: Path | None = None
        self.cached = False

    def _load(self, module) -> None:
        trt = self._trt = import_tensorrt(self.name)
        torch = self._torch = import_torch(self.name, self.backend)
        dev = self._dev = torch_device(torch, self.device, self.name, self.backend)
        if dev.type != "cuda":
            raise RtbciError(f"{self.name}: runtime 'tensorrt' needs a CUDA device, not "
                             f"{self.device!r}")
        self.device = str(dev)
        with torch.cuda.device(dev):
            self._logger = trt.Logger(trt.Logger.WARNING)
            self._weak_fp16 = hasattr(trt.BuilderFlag, "FP16")  # removed in TensorRT 11
            if self.precision == "fp16" and not self._weak_fp16:
                module = half_precision(torch, module)  # strongly typed: fp16 in the graph
            onnx = export_onnx(module, self.input_shape, self.name, OPSET)
            serialized = self._engine_bytes(onnx)
            self._runtime = trt.Runtime(self._logger)
            self._engine = self._runtime.deserialize_cuda_engine(serialized)
            if self._engine is None:
                raise RtbciError(f"{self.engine_path}: TensorRT cannot deserialize this engine; "
                                 "delete it to rebuild")
            self._context = self._engine.create_execution_context()
            self._stream = torch.cuda.Stream(device=dev)
            self._bind_buffers()

    # -- build / cache -----------------------------------------------------------------------

    def _engine_bytes(self, onnx: bytes) -> bytes:
        """The serialized engine for ``onnx``: from the cache, or built and cached."""
        gpu = self._torch.cuda.get_device_name(self._dev)
        key = engine_key(onnx, self._trt.__version__, gpu, self.precision)
        stem = re.sub(r"[^A-Za-z0-9_.-]", "_", self.name)
        self.engine_path = self.cache_dir / f"{stem}-{self.precision}-{key[:16]}.engine"
        if self.engine_path.is_file():
            self.cached = True
            return self.engine_path.read_bytes()
        data = self._build(onnx)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        partial = self.engine_path.with_suffix(f".{os.getpid()}.partial")
        partial.write_bytes(data)
        partial.replace(self.engine_path)  # atomic: a concurrent reader never sees half a file
        return data

    def _build(self, onnx: bytes) -> bytes:
        trt = self._trt
        builder = trt.Builder(self._logger)
        major = int(trt.__version__.split(".")[0])
        flags = 0 if major >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, self._logger)
        if not parser.parse(onnx):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise RtbciError(f"{self.name}: TensorRT cannot parse the ONNX export: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, self.workspace_mb << 20)
        if hasattr(trt.BuilderFlag, "TF32"):  # on by default; fp32 means fp32
            (config.clear_flag if self.precision == "fp32" else config.set_flag)(
                trt.BuilderFlag.TF32)
        if self.precision == "fp16" and self._weak_fp16:
            config.set_flag(trt.BuilderFlag.FP16)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise RtbciError(f"{self.name}: TensorRT failed to build an engine "
                             f"({self.precision}); see the TensorRT messages above")
        return bytes(serialized)

    # -- execution ---------------------------------------------------------------------------

    def _bind_buffers(self) -> None:
        """torch device buffers for every I/O tensor, their addresses set on the context."""
        trt, torch, engine = self._trt, self._torch, self._engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        if inputs != [INPUT_NAME] or tuple(engine.get_tensor_shape(INPUT_NAME)) != \
                self.input_shape:
            raise RtbciError(f"{self.engine_path}: engine inputs {inputs} do not match "
                             f"{INPUT_NAME!r} of shape {self.input_shape}; delete it to rebuild")
        for n in names:
            if engine.get_tensor_dtype(n) != trt.DataType.FLOAT:
                raise RtbciError(f"{self.name}: TensorRT tensor {n!r} is "
                                 f"{engine.get_tensor_dtype(n)}, expected float32 I/O")
        outputs.sort(key=lambda n: int(n.rsplit("_", 1)[-1]) if n[-1].isdigit() else 0)
        self._device_in = torch.zeros(self.input_shape, device=self._dev)
        self._device_out = [torch.zeros(tuple(engine.get_tensor_shape(n)), device=self._dev)
                            for n in outputs]
        for n, t in zip([INPUT_NAME, *outputs], [self._device_in, *self._device_out]):
            self._context.set_tensor_address(n, t.data_ptr())
        self._host_in = torch.zeros(self.input_shape, pin_memory=True)
        self._host_out = [torch.empty(t.shape, pin_memory=True) for t in self._device_out]
        self._host_input = self._host_in.numpy()
        self._host_outputs = [t.numpy() for t in self._host_out]

    def _execute(self) -> None:
        torch = self._torch
        with torch.cuda.stream(self._stream):
            self._device_in.copy_(self._host_in, non_blocking=True)
            if not self._context.execute_async_v3(self._stream.cuda_stream):
                raise RtbciError(f"{self.name}: TensorRT execute_async_v3 failed")
            for host, out in zip(self._host_out, self._device_out):
                host.copy_(out, non_blocking=True)
        self._stream.synchronize()

    def _details(self) -> dict:
        return {"threads": None, "gpu": self._torch.cuda.get_device_name(self._dev),
                "tensorrt": self._trt.__version__, "engine_path": str(self.engine_path),
                "engine_cached": self.cached, "workspace_mb": self.workspace_mb}
