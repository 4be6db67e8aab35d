"""Compiled runtimes for decoders' networks: torch, onnxruntime, cudagraph, tensorrt, auto.

One interface (:class:`Runtime`): ``load(module, example_shape, device, precision)`` builds,
warms up and checks a backend for one fixed input shape; ``run(window)`` fills a preallocated
input and returns preallocated outputs; ``describe()`` says what runs where. torch is
imported lazily, by the backends, so ``rtbci.models`` works without it.

>>> rt = load_runtime("auto", net, (1, 500, 64), device="cpu", name="bp")  # doctest: +SKIP
>>> probabilities = rt.run(window)                                          # doctest: +SKIP
"""

from rtbci.models.runtimes.base import PRECISIONS, TOLERANCES, Runtime
from rtbci.models.runtimes.compile import compile_decoder, format_latency, measure_latency
from rtbci.models.runtimes.cudagraph import CUDAGraphRuntime
from rtbci.models.runtimes.decoder import CompiledDecoder
from rtbci.models.runtimes.eager import TorchRuntime
from rtbci.models.runtimes.export import export_onnx
from rtbci.models.runtimes.ort import OnnxRuntime
from rtbci.models.runtimes.select import RUNTIMES, auto_candidates, cuda_available, load_runtime
from rtbci.models.runtimes.trt import TensorRTRuntime

__all__ = ["PRECISIONS", "RUNTIMES", "TOLERANCES", "CUDAGraphRuntime", "CompiledDecoder",
           "OnnxRuntime", "Runtime", "TensorRTRuntime", "TorchRuntime", "auto_candidates",
           "compile_decoder", "cuda_available", "export_onnx", "format_latency",
           "load_runtime", "measure_latency"]
