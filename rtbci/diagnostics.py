"""What the engine says about a run: the ``--stats-json`` document, a hint when an
event-locked decoder's markers never come, and, at its end, why a source or decoder produced
nothing (the ``rtbci: error:`` lines of exit status 1).

Threads: any (the figures are read without locks: counters with one writer each).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from rtbci.config import DecoderConfig
from rtbci.events import summarize_markers
from rtbci.scheduler import TriggerSpec

if TYPE_CHECKING:
    from rtbci.acquisition import Acquisition
    from rtbci.engine import Engine

log = logging.getLogger("rtbci.engine")

MARKER_HINT_AFTER = 10  # markers on a source before saying an on_marker decoder matched none


def engine_stats(engine: Engine) -> dict:
    """The ``--stats-json`` document: per-stream counters, per-decoder figures, sinks."""
    streams = {}
    for name in engine.markers_received:
        stream, acq = engine._streams.get(name), engine.acquisitions.get(name)
        entry = stream.stats() if stream else {"samples": 0, "gaps": 0, "overflows": 0,
                                                "clock_jumps": 0, "rate_hz": 0.0,
                                                "nonfinite_samples": 0,
                                                "nonfinite_chunks": 0}
        entry["markers"] = engine.markers_received[name]
        entry.update(_peer_counters(engine, name, acq))
        entry["state"] = acq.state if acq else "unmatched" if name in engine.unmatched \
            else "replayed"
        if acq and acq.error:
            entry["error"] = acq.error
        if name in engine.unmatched:
            entry["error"] = engine.unmatched[name]
        streams[name] = entry
    tasks = engine.scheduler.tasks if engine.scheduler else {}
    decoders = {}
    for name in [*engine.decoder_states, *(n for n in tasks if n not in engine.decoder_states)]:
        entry = tasks[name].stats() if name in tasks else {"results": 0}
        entry["state"] = engine.decoder_states.get(name, "running")
        if entry.get("worker", {}).get("state") == "failed":  # its process kept dying
            entry["state"] = "failed"
            entry["error"] = tasks[name].decoder.down_reason()
        if "error" in engine.decoder_status.get(name, {}):
            entry["error"] = engine.decoder_status[name]["error"]
        runtime = engine.decoder_status.get(name, {}).get("runtime")
        if isinstance(runtime, dict) and runtime.get("cpu_fallback"):
            entry["cpu_fallback"] = runtime["cpu_fallback"]
        decoders[name] = entry
    sinks = {f"{s.kind}[{i}]": s.stats() for i, s in enumerate(engine.sinks) if s.stats()}
    return {"streams": streams, "decoders": decoders, "sinks": sinks,
            "threads": engine.health.report()}

def _peer_counters(engine: Engine, name: str, acq: Acquisition | None) -> dict[str, int]:
    """What source ``name``'s peers sent that was cut, replaced or refused: its marker
    reader's counters and other streams matching its query (0 where none applies)."""
    counters = {"markers_truncated": 0, "markers_undecodable": 0, "marker_errors": 0,
                "duplicate_streams": 0}
    for reader, source in zip(engine._marker_readers, engine._marker_sources):
        if source == name:
            counters.update(reader.stats())
    if acq is not None and hasattr(acq.source, "stats"):
        counters.update(acq.source.stats())
    return counters

def problems(engine: Engine, stats: dict) -> list[str]:
    """One line per source that matched no recorded stream and per configured decoder
    that produced no result, with why where it is known (the ``rtbci: error:`` lines of
    a run that ends with exit status 1)."""
    lines = [f"source {name!r} {why}" for name, why in engine.unmatched.items()]
    lines += [f"{entry.label} died ({entry.why})" for entry in engine.health.dead()]
    lines += [f"{sink.kind}[{i}]: {problem}" for i, sink in enumerate(engine.sinks)  # lost
              if (problem := getattr(sink, "problem", lambda: None)())]  # data (record)
    for cfg in engine.config.decoders:
        entry = stats["decoders"].get(cfg.name, {})
        if entry.get("worker", {}).get("state") == "failed":
            lines.append(f"decoder {cfg.name!r}: its {entry['error']}")
        elif entry.get("results", 0) == 0:
            lines.append(f"decoder {cfg.name!r} produced no results ({_why(engine, cfg)})")
    return lines

def _why(engine: Engine, cfg: DecoderConfig) -> str:
    """Why decoder ``cfg`` produced nothing, as far as the engine can tell."""
    source, stream = cfg.source, engine._streams.get(cfg.source)
    error = engine.decoder_status.get(cfg.name, {}).get("error")
    acq = engine.acquisitions.get(source)
    if error:
        return error
    if source in engine.unmatched:
        return f"its source {source!r} matches no recorded stream"
    if acq is not None and acq.error:
        return f"its source {source!r} failed: {acq.error}"
    if stream is None or stream.buffer.count == 0:
        return f"no samples arrived from its source {source!r}"
    if cfg.name not in engine.decoder_status:
        return "it was still starting"
    window = engine.decoder_status[cfg.name]["window"][1]
    if stream.buffer.count < window:
        return (f"its source {source!r} delivered {stream.buffer.count} samples, fewer "
                f"than its window of {window}")
    if cfg.on_marker is None:
        return "no window could be decoded: see its stats"
    received = [text for _, text in engine.markers[source]]
    if not received:
        return f"its source {source!r} received no markers"
    trigger = TriggerSpec(length=window, marker=cfg.on_marker)
    if not any(trigger.label(text) is not None for text in received):
        return (f"none of the {engine.markers_received[source]} markers of source "
                f"{source!r} matched on_marker {cfg.on_marker!r}, e.g. {received[0]!r}")
    return f"no window around its markers on {source!r} could be decoded"


def hint_unmatched(engine: Engine, source: str, text: str) -> None:
    """Warn once per event-locked decoder whose ``on_marker`` matched none of the first
    :data:`MARKER_HINT_AFTER` markers of its source, naming the markers there are."""
    tasks = engine.scheduler.tasks if engine.scheduler else {}
    for name, cfg in list(engine.quiet_decoders.items()):
        if cfg.source != source or name not in tasks:
            continue
        if tasks[name].trigger.label(text) is not None:
            del engine.quiet_decoders[name]
        elif engine.markers_received[source] >= MARKER_HINT_AFTER:
            del engine.quiet_decoders[name]
            i = engine.config.decoders.index(cfg)
            log.warning("decoders[%d] (%r).on_marker %r matched none of the %d markers on "
                        "source %r so far; markers there: %s", i, name, cfg.on_marker,
                        engine.markers_received[source], source,
                        summarize_markers(t for _, t in engine.markers[source]))
