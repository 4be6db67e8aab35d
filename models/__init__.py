"""Decoders, their training, export and compiled runtimes (``rtbci.models``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rtbci.errors import RtbciError
from rtbci.models.base import Decoder, DecoderOutput

if TYPE_CHECKING:
    from rtbci.config import DecoderConfig
    from rtbci.stream import StreamInfo

__all__ = ["Decoder", "DecoderOutput", "load_decoder", "window_samples"]

BUILTINS = ("builtin:bandpower",)


def window_samples(config: DecoderConfig, srate: float) -> tuple[int, int]:
    """``(start, length)`` of the decoder's window in samples (start is marker-relative)."""
    if isinstance(config.window_ms, tuple):
        start, end = (round(ms * 1e-3 * srate) for ms in config.window_ms)
        return start, end - start
    return 0, round(config.window_ms * 1e-3 * srate)


def load_decoder(config: DecoderConfig, info: StreamInfo, where: str = "decoders",
                 base_dir: Path | None = None) -> Decoder:
    """Build the decoder named by ``config.model`` for a stream with ``info`` (after preprocessing).

    Relative file paths resolve against ``base_dir``. Raises :class:`RtbciError` naming
    ``where`` (e.g. ``decoders[0]``) on a bad model or option.
    """
    _, length = window_samples(config, info.srate)
    if length < 2:
        raise RtbciError(f"{where}.window_ms: {config.window_ms} ms is under 2 samples at "
                         f"{info.srate:g} Hz")
    if config.model == "builtin:bandpower":
        from rtbci.models.bandpower import BandPower

        unknown = set(config.options) - {"bands", "classifier"}
        if unknown:
            raise RtbciError(f"{where}.options.{sorted(unknown)[0]}: unknown option for "
                             "builtin:bandpower (options: bands, classifier)")
        options = dict(config.options)
        if "classifier" in options:
            options["classifier"] = (base_dir or Path.cwd()) / options["classifier"]
        return compiled(BandPower(length, info.n_channels, info.srate, **options), config,
                        where)
    if config.model.startswith("python:"):
        return _load_python(config, info, length, where)
    raise RtbciError(f"{where}.model: unknown model {config.model!r}; expected one of "
                     f"{', '.join(BUILTINS)} or python:MODULE:FACTORY")


def _load_python(config: DecoderConfig, info: StreamInfo, length: int, where: str) -> Decoder:
    """``python:MODULE:FACTORY``: ``FACTORY(n_samples, n_channels, srate, **options)``."""
    import importlib

    module_name, _, attr = config.model.removeprefix("python:").partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise RtbciError(f"{where}.model: cannot load {config.model!r}: {exc}") from None
    try:
        decoder = factory(length, info.n_channels, info.srate, **config.options)
    except TypeError as exc:
        raise RtbciError(f"{where}.options: {exc}") from None
    if not isinstance(decoder, Decoder):
        raise RtbciError(f"{where}.model: {config.model!r} returned {type(decoder).__name__}, "
                         "not an rtbci.models.Decoder")
    return decoder


def compiled(decoder, config: DecoderConfig, where: str) -> Decoder:
    """Run a decoder that has a torch twin (``to_torch()``) through ``config.runtime``.

    ``numpy`` — or ``auto`` without torch installed — keeps the numpy implementation.
    """
    from rtbci.models.runtimes.select import importable

    if config.runtime == "numpy" or (config.runtime == "auto" and not importable("torch")):
        return decoder
    if not importable("torch"):
        raise RtbciError(f"{where}.runtime: {config.runtime!r} needs torch "
                         "(pip install 'rtbci[onnx]'), or use runtime = \"numpy\"")
    from rtbci.models.runtimes import CompiledDecoder, load_runtime

    threads = {"threads": config.threads} if config.threads else {}
    runtime = load_runtime(config.runtime, decoder.to_torch(),
                           (1, decoder.n_samples, decoder.n_channels), config.device,
                           config.precision, name=f"{where} ({config.name!r})", **threads)
    return CompiledDecoder(runtime, decoder.kind, decoder.labels)
