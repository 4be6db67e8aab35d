"""Decoders, their training, export and compiled runtimes (``rtbci.models``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rtbci.errors import RtbciError
from rtbci.models.base import Decoder, DecoderOutput

if TYPE_CHECKING:
    from rtbci.config import Config, DecoderConfig, SourceConfig
    from rtbci.preprocess import PreprocessConfig
    from rtbci.stream import StreamInfo

__all__ = ["Decoder", "DecoderOutput", "load_decoder", "window_samples"]

BUILTINS = ("builtin:bandpower",)
# each decoder kind's ``options`` keys: what load_decoder passes on (and rtbci check checks)
BUILTIN_OPTIONS = {"builtin:bandpower": ("bands", "classifier")}  # BandPower(**options)
CHECKPOINT_OPTIONS = ("subject", "top_k", "importance")  # load_checkpoint_decoder


def known_options(model: str) -> tuple[str, ...] | None:
    """The ``options`` keys decoder ``model`` takes; None where its own code decides (a
    ``python:`` factory's keyword arguments) or the model is unknown."""
    if model.startswith("python:"):
        return None
    if is_checkpoint(model):
        return CHECKPOINT_OPTIONS
    return BUILTIN_OPTIONS.get(model)


def option_problem(model: str, options: dict, where: str) -> str | None:
    """``'<where>.options.KEY: unknown option …'`` for the first key ``model`` does not take
    (with the closest known key, if one is close), else None."""
    import difflib

    known = known_options(model)
    unknown = sorted(set(options) - set(known or options))
    if not unknown:
        return None
    key = unknown[0]
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    what = "a checkpoint" if is_checkpoint(model) else model
    return (f"{where}.options.{key}: unknown option for {what}{hint} (options: "
            f"{', '.join(known)})")


def window_samples(config: DecoderConfig, srate: float) -> tuple[int, int]:
    """``(start, length)`` of the decoder's window in samples (start is marker-relative)."""
    if config.window_ms is None:
        raise RtbciError(f"decoder {config.name!r}: window_ms is needed for {config.model!r}")
    if isinstance(config.window_ms, tuple):
        start, end = (round(ms * 1e-3 * srate) for ms in config.window_ms)
        return start, end - start
    return 0, round(config.window_ms * 1e-3 * srate)


def load_decoder(config: DecoderConfig, info: StreamInfo, where: str = "decoders",
                 base_dir: Path | None = None,
                 preprocess: PreprocessConfig | None = None) -> Decoder:
    """Build the decoder named by ``config.model`` for a stream with ``info`` (after preprocessing).

    Relative file paths resolve against ``base_dir``. ``preprocess`` is the stream's
    preprocessing, which a checkpoint's must equal (None: not checked). Raises
    :class:`RtbciError` naming ``where`` (e.g. ``decoders[0]``) on a bad model or option.
    """
    if is_checkpoint(config.model):
        return load_checkpoint_decoder(config, info, where, base_dir, preprocess)
    start, length = window_samples(config, info.srate)
    if length < 2:
        raise RtbciError(f"{where}.window_ms: {config.window_ms} ms is under 2 samples at "
                         f"{info.srate:g} Hz")
    if config.model == "builtin:bandpower":
        from rtbci.models.bandpower import BandPower

        problem = option_problem(config.model, config.options, where)
        if problem:
            raise RtbciError(problem)
        options = dict(config.options)
        if "classifier" in options:
            options["classifier"] = (base_dir or Path.cwd()) / options["classifier"]
        decoder = compiled(BandPower(length, info.n_channels, info.srate, **options), config,
                           where)
    elif config.model.startswith("python:"):
        decoder = _load_python(config, info, length, where)
    else:
        raise RtbciError(f"{where}.model: unknown model {config.model!r}; expected a "
                         f"checkpoint (.pt), {', '.join(BUILTINS)} or python:MODULE:FACTORY")
    decoder.window_start = start
    return decoder


def is_checkpoint(model: str) -> bool:
    """Whether a ``model`` value names a checkpoint file (anything but ``builtin:``/``python:``)."""
    return not model.startswith(("builtin:", "python:"))


def checkpoint_path(model: str, base_dir: Path | None = None) -> Path:
    """The file a checkpoint ``model`` names: ``demo:FAMILY`` is the packaged demo checkpoint
    of that family (``models/checkpoints/FAMILY.pt``); a relative path is relative to
    ``base_dir`` (default: the working directory)."""
    if model.startswith("demo:"):
        from importlib import resources

        name = model.removeprefix("demo:")
        return Path(str(resources.files("rtbci.models"))) / "checkpoints" / f"{name}.pt"
    return (base_dir or Path.cwd()) / model


def load_checkpoint_decoder(config: DecoderConfig, info: StreamInfo, where: str,
                            base_dir: Path | None = None,
                            preprocess: PreprocessConfig | None = None) -> Decoder:
    """A checkpoint's network compiled with ``config.runtime``, bound to a stream with ``info``.

    Options: ``subject`` (int; default: the mean subject), ``top_k`` (retrieval; default the
    checkpoint's ``output.top_k``, 5),
    ``importance`` (bool: send per-channel gradient × input with each result, for families
    that define it).
    """
    from rtbci.models.checkpoint import load_checkpoint

    problem = option_problem(config.model, config.options, where)
    if problem:
        raise RtbciError(problem)
    ckpt = load_checkpoint(checkpoint_path(config.model, base_dir), f"{where}.model")
    contract = ckpt.contract
    picks = contract.input.channel_indices(info, f"{where} ({config.name!r})")
    if preprocess is not None:
        contract.input.check_preprocess(preprocess, f"{where} ({config.name!r})")
    length = contract.input.n_samples
    start = round(contract.input.window_start_s * contract.input.srate)
    if config.window_ms is not None and window_samples(config, info.srate) != (start, length):
        raise RtbciError(f"{where}.window_ms: {config.window_ms} does not match the "
                         f"checkpoint's window ({start} + {length} samples at "
                         f"{contract.input.srate:g} Hz); leave window_ms out to use it")
    if config.runtime == "numpy":
        raise RtbciError(f"{where}.runtime: a checkpoint runs in torch, onnxruntime, "
                         "cudagraph or tensorrt (or auto), not numpy")
    from rtbci.models.runtimes import CompiledDecoder, load_runtime

    model = ckpt.build_model()
    subject = config.options.get("subject")
    pooled = {"pool": True} if contract.output.pooled else {}
    threads = {"threads": config.compute_threads} if config.compute_threads else {}
    backend, reason = _family_runtime(contract.family, config.runtime, where)
    runtime = load_runtime(backend, model.inference_module(subject, **pooled),
                           (1, length, len(picks)), config.device, config.precision,
                           name=f"{where} ({config.name!r})", **threads)
    if reason:
        runtime.auto_reason = reason
    explain = None
    if config.options.get("importance"):
        explain = _explainer(contract.family, model, f"{where}.options.importance")
    decoder = CompiledDecoder(runtime, contract.output.kind, contract.output.labels,
                              picks=picks, n_channels=info.n_channels, bank=ckpt.bank,
                              top_k=int(config.options.get("top_k", contract.output.top_k)),
                              explain=explain, channel_names=list(contract.input.ch_names))
    decoder.window_start = start
    baseline = contract.input.baseline_samples()
    if baseline is not None:
        from rtbci.models.checkpoint import BaselinedDecoder

        decoder = BaselinedDecoder(decoder, baseline)
    return decoder


def _family_runtime(family: str, runtime: str, where: str) -> tuple[str, str | None]:
    """The runtime to load and why (None: ``runtime`` as asked): ``torch`` under ``auto`` for
    a family whose module says it runs only in torch eager (``EAGER_ONLY``: why; logged, and
    reported as the runtime's ``auto`` reason); other runtimes are refused for it."""
    import logging

    from rtbci.models.families import get_family

    why = getattr(get_family(family).load(), "EAGER_ONLY", None)
    if why is None or runtime == "torch":
        return runtime, None
    if runtime == "auto":
        reason = f"auto → torch: family {family!r}: {why}"
        logging.getLogger("rtbci.models").info("%s: runtime %s", where, reason)
        return "torch", reason
    raise RtbciError(f"{where}.runtime: family {family!r} runs in torch only ({why}); "
                     f"use runtime = \"torch\" or \"auto\", not {runtime!r}")


def _explainer(family: str, model, where: str):
    from rtbci.models.families import get_family

    module = get_family(family).load()
    if not hasattr(module, "channel_importance"):
        raise RtbciError(f"{where}: family {family!r} has no per-channel importance")
    return lambda window: module.channel_importance(model, window)[1]


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

    ``numpy`` — or ``auto`` on the CPU or without torch — keeps the numpy implementation: on
    the CPU it is the faster (measured against ONNX Runtime: benchmarks/README.md, "`rtbci
    bench`").
    """
    from rtbci.models.runtimes.select import importable

    if config.runtime == "numpy" or (config.runtime == "auto" and (
            config.device == "cpu" or not importable("torch"))):
        return decoder
    if not importable("torch"):
        raise RtbciError(f"{where}.runtime: {config.runtime!r} needs torch "
                         "(pip install 'rtbci[neural]'), or use runtime = \"numpy\"")
    from rtbci.models.runtimes import CompiledDecoder, load_runtime

    threads = {"threads": config.compute_threads} if config.compute_threads else {}
    runtime = load_runtime(config.runtime, decoder.to_torch(),
                           (1, decoder.n_samples, decoder.n_channels), config.device,
                           config.precision, name=f"{where} ({config.name!r})", **threads)
    return CompiledDecoder(runtime, decoder.kind, decoder.labels)


def source_preprocess(source: SourceConfig, config: Config) -> PreprocessConfig:
    """A source's preprocessing: its ``preprocess`` table if the config sets one, else the
    preprocessing its first checkpoint decoder was trained with (the default: none).

    A checkpoint that cannot be read here is skipped; its decoder reports why when it starts.
    """
    import logging

    from rtbci.models.checkpoint import load_checkpoint

    if "preprocess" in source.model_fields_set:
        return source.preprocess
    for dec in config.decoders:
        if dec.source == source.name and is_checkpoint(dec.model):
            try:
                contract = load_checkpoint(checkpoint_path(dec.model, config.base_dir)).contract
            except RtbciError:
                continue
            logging.getLogger("rtbci.engine").info(
                "source %r: preprocessing from %s: %s", source.name, dec.model,
                contract.input.preprocess)
            return contract.input.preprocess_config()
    return source.preprocess
