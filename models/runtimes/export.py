"""Export a torch module to ONNX with static shapes (for ``onnxruntime`` and ``tensorrt``).

``torch.onnx.export(..., dynamo=True)`` (the default since torch 2.9, needs ``onnxscript``)
traces the module with ``torch.export``, which refuses Python control flow that depends on
input values (``if x.sum() > 0``) instead of silently freezing the branch taken by the
example input, as the deprecated TorchScript exporter (``dynamo=False``) does. A refused
export becomes a one-line :class:`RtbciError` naming the decoder and the offending line.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import inspect
import io
import logging
import os
import re
import threading
import warnings
from pathlib import Path

from rtbci.errors import RtbciError
from rtbci.models.runtimes.base import as_tensors, import_torch, module_device

OPSET = 18
_EXPORT_LOCK = threading.Lock()  # decoders are built in parallel worker threads
INPUT_NAME = "input"
QUIET_LOGGERS = ("torch", "onnxscript", "onnx_ir")


def output_names(n: int) -> list[str]:
    """Names given to the exported graph's outputs: ``output_0`` … ``output_{n-1}``."""
    return [f"output_{i}" for i in range(n)]


def export_onnx(module, input_shape: tuple[int, ...], name: str, opset: int = OPSET) -> bytes:
    """Serialized ONNX model of ``module`` for one float32 input of ``input_shape``.

    Parameters
    ----------
    module : torch.nn.Module
        In eval mode; its forward takes one tensor and returns a tensor or a tuple of tensors.
    input_shape : tuple of int
        Static input shape, batch included. The graph's input is ``input``, its outputs
        ``output_0`` … in the order forward returns them.
    name : str
        The decoder's name, for errors.
    opset : int
        ONNX opset (>= 17).

    Returns
    -------
    bytes
        The ``ModelProto``, weights inline (models must stay under protobuf's 2 GB).
    """
    torch = import_torch(name, "onnx export")
    if importlib.util.find_spec("onnxscript") is None:
        raise RtbciError(f"{name}: the ONNX export (torch.onnx.export, dynamo=True) needs "
                         "onnxscript (pip install onnxscript)")
    if opset < 17:
        raise RtbciError(f"{name}: ONNX opset {opset} is too old (use >= 17)")
    example = torch.zeros(input_shape, device=module_device(module))
    with torch.inference_mode():
        n_outputs = len(as_tensors(module(example), name))
    try:
        with _EXPORT_LOCK, _quiet():  # torch.export traces with global state: one at a time
            program = torch.onnx.export(
                module, (example,), dynamo=True, opset_version=opset, external_data=False,
                input_names=[INPUT_NAME], output_names=output_names(n_outputs), verbose=False)
    except Exception as exc:  # the exporter raises many types; each becomes one line
        raise RtbciError(f"{name}: cannot export to ONNX: {_reason(exc)}") from None
    return program.model_proto.SerializeToString()


def cache_root() -> Path:
    """Where compiled artefacts are cached: ``$RTBCI_CACHE`` or ``~/.cache/rtbci``."""
    return Path(os.environ.get("RTBCI_CACHE") or Path.home() / ".cache" / "rtbci")


def cached_export_onnx(module, input_shape: tuple[int, ...], name: str,
                       opset: int = OPSET) -> bytes:
    """:func:`export_onnx`, cached in ``cache_root()/onnx`` under the sha256 of the module's
    class and source, parameters and buffers, input shape, opset and torch version.

    An export takes seconds; a decoder whose weights did not change loads from the cache
    (its outputs are still checked against torch by the runtime). Writes are atomic.
    """
    torch = import_torch(name, "onnx export")
    digest = hashlib.sha256()
    cls = type(module)
    digest.update(f"{cls.__module__}.{cls.__qualname__}|{input_shape}|{opset}|"
                  f"{torch.__version__}".encode())
    with contextlib.suppress(OSError, TypeError):
        digest.update(inspect.getsource(cls).encode())
    for key, tensor in [*module.named_parameters(), *module.named_buffers()]:
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    path = cache_root() / "onnx" / f"{digest.hexdigest()}.onnx"
    if path.exists():
        return path.read_bytes()
    model = export_onnx(module, input_shape, name, opset)
    with contextlib.suppress(OSError):  # a read-only cache only costs the next start time
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(model)
        tmp.replace(path)
    return model


@contextlib.contextmanager
def _quiet():
    """Silence the exporter's progress, warnings, logs and graph dumps (printed to stderr)."""
    loggers = [logging.getLogger(name) for name in QUIET_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with (warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()),
              contextlib.redirect_stderr(io.StringIO())):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _reason(exc: BaseException) -> str:
    """One line saying why an export failed (data-dependent control flow gets advice)."""
    chain, cause = [], exc
    while cause is not None and len(chain) < 10:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    if any("DataDependent" in type(c).__name__ for c in chain):
        where = re.search(r'File "([^"]+)", line (\d+), in \w+\n\s*(.+)', str(exc))
        at = (f" at {where.group(1).rsplit('/', 1)[-1]}:{where.group(2)} "
              f"({where.group(3).strip()})" if where else "")
        return (f"data-dependent control flow{at}: a static graph cannot branch on input "
                "values; use torch.where, or runtime = \"torch\"")
    root = chain[-1]
    first = next((line for line in str(root).splitlines() if line.strip()), "")
    return f"{type(root).__name__}: {first.strip()}"
