"""The checks of ``rtbci check`` before a session starts, and what it prints of a config."""

from __future__ import annotations

from rtbci.errors import RtbciError


def known_infos(config, probe: float | None, origin: str) -> dict:
    """Source name → StreamInfo where it is known before a session: a simulated source's
    profile, and with ``probe`` seconds an LSL source's stream found on the network."""
    from rtbci.devices.simulate import SimulatedAmplifier

    infos = {}
    for i, src in enumerate(config.sources):
        if src.kind == "simulate":
            infos[src.name] = SimulatedAmplifier(src.profile, name=src.stream_name or src.name,
                                                 task=src.task).info
        elif src.kind == "brainflow":  # BrainFlow's board description: no hardware needed
            from rtbci.devices.brainflow import board_info

            infos[src.name] = board_info(src.board, src.stream_name or src.name,
                                         src.master_board)[0]
        elif probe is not None:
            from rtbci.devices.lsl import describe_query, info_from_lsl, resolve, streams_there

            query = src.stream.as_dict()
            found = resolve(query, probe)
            if not found:
                raise RtbciError(f"{origin}: sources[{i}].stream: no LSL stream "
                                 f"{describe_query(query)} within {probe:g} s; "
                                 f"{streams_there(query)}")
            infos[src.name] = info_from_lsl(found[0])
    return infos


def preflight(config, infos: dict) -> list[str]:
    """What would stop a session that a config file cannot show: files a decoder needs,
    checkpoint windows longer than the buffer, buffers too large for memory (one line each)."""
    from rtbci.config import MAX_BUFFER_BYTES

    problems = []
    sources = {src.name: (i, src) for i, src in enumerate(config.sources)}
    for name, info in infos.items():
        i, src = sources[name]
        size = _buffer_bytes(src, info)
        if size > MAX_BUFFER_BYTES:
            problems.append(f"sources[{i}].buffer_seconds: {src.buffer_seconds:g} s of "
                            f"{info.n_channels} ch @ {info.srate:g} Hz needs ~{size / 2**30:.1f} "
                            f"GiB, over the {MAX_BUFFER_BYTES / 2**30:g} GiB limit")
    for i, dec in enumerate(config.decoders):
        problem = decoder_problem(config, f"decoders[{i}]", dec, sources[dec.source][1])
        if problem:
            problems.append(problem)
    return problems


def decoder_problem(config, where: str, dec, src) -> str | None:
    """The first thing missing for one decoder: its module, checkpoint or classifier file,
    or a checkpoint window longer than its source's buffer."""
    import importlib.util

    from rtbci.models import checkpoint_path, is_checkpoint
    from rtbci.models.runtimes.select import importable

    if dec.model.startswith("python:"):
        module = dec.model.removeprefix("python:").partition(":")[0]
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        return None if found else f"{where}.model: no Python module {module!r}"
    if not is_checkpoint(dec.model):
        classifier = dec.options.get("classifier")
        if classifier and not config.resolve(classifier).is_file():
            return f"{where}.options.classifier: no file {str(config.resolve(classifier))!r}"
        return None
    path = checkpoint_path(dec.model, config.base_dir)
    if not importable("torch"):
        return None if path.is_file() else f"{where}.model: no checkpoint file {str(path)!r}"
    from rtbci.models.checkpoint import load_checkpoint

    try:
        contract = load_checkpoint(path, f"{where}.model").contract
    except RtbciError as exc:
        return str(exc)
    seconds = contract.input.n_samples / contract.input.srate
    if seconds > src.buffer_seconds:
        return (f"{where}: the checkpoint's window ({seconds:g} s) is longer than the buffer "
                f"of source {src.name!r} (buffer_seconds = {src.buffer_seconds:g})")
    return None


def describe_source(src, info) -> str:
    """``source 'eeg': simulate task 'seeg-words', 128 ch × 1000 Hz, 30 s buffer (~29 MiB)``:
    the shape from ``info`` (the profile, task or board actually used), or why it is not
    known before the stream is found."""
    what = (f"lsl {src.stream.as_dict()}" if src.kind == "lsl"
            else f"simulate task {src.task!r}" if src.kind == "simulate" and src.task
            else f"simulate profile {src.profile!r}" if src.kind == "simulate"
            else f"brainflow board {src.board!r}")
    if info is None:
        return (f"source {src.name!r}: {what}, {src.buffer_seconds:g} s buffer (channels and "
                "rate: from the stream; --probe S looks for it)")
    return (f"source {src.name!r}: {what}, {info.n_channels} ch × {info.srate:g} Hz, "
            f"{src.buffer_seconds:g} s buffer (~{_buffer_bytes(src, info) / 2**20:,.0f} MiB)")


def describe_decoder(dec) -> str:
    """``decoder 'bp': source 'eeg', builtin:bandpower, every 50 ms, window 500 ms, budget
    10 ms``: what a decoder runs, on which source, when, and how fast it must be."""
    if dec.on_marker is not None:
        trigger = f"on marker {dec.on_marker!r}"
        window = ("the checkpoint's window" if dec.window_ms is None
                  else f"window [{dec.window_ms[0]:g}, {dec.window_ms[1]:g}] ms")
    else:
        trigger = f"every {dec.every_ms:g} ms"
        window = ("the checkpoint's window" if dec.window_ms is None
                  else f"window {dec.window_ms:g} ms")
    return (f"decoder {dec.name!r}: source {dec.source!r}, {dec.model}, {trigger}, {window}, "
            f"budget {dec.budget_ms:g} ms")


def _buffer_bytes(src, info) -> int:
    """The bytes of ``src``'s ring buffer for the stream ``info``."""
    from rtbci.config import buffer_bytes

    return buffer_bytes(src.buffer_seconds, info.srate, info.n_channels)
