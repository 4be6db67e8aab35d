"""Reporting: the live statistics lines, and scoring a replay against its markers.

The scoring itself (:class:`Scorer`, :func:`chance_figures`, the labels of a result) lives in
:mod:`rtbci.scoring`, below the sinks and the engine; it is re-exported here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from rtbci.errors import RtbciError
from rtbci.scoring import (  # noqa: F401  (re-exported: rtbci.report.chance_figures works)
    Scorer,
    chance_figures,
    format_accuracy,
    predicted_label,
    true_label,
)

if TYPE_CHECKING:
    from rtbci.config import Config
    from rtbci.devices.recording import Recording
    from rtbci.engine import Engine


def format_stream_line(name: str, stats: dict) -> str:
    lat = stats.get("ingest_latency_ms") or {}
    return (f"{name:<12} {stats.get('state', ''):<9} {stats['samples']:>10} samples "
            f"{stats['rate_hz']:>9.1f} Hz  gaps {stats['gaps']:<3} overflows "
            f"{stats['overflows']:<3} markers {stats.get('markers', 0):<4} "
            f"ingest p50 {lat.get('p50', float('nan')):5.2f} ms "
            f"p99 {lat.get('p99', float('nan')):5.2f} ms")


def print_live_stats(engine) -> None:
    stats = engine.stats()
    for name, entry in stats["streams"].items():
        print(format_stream_line(name, entry), flush=True)
    for name, entry in stats["threads"].items():
        print(format_thread_line(name, entry), flush=True)


def format_thread_line(name: str, entry: dict) -> str:
    """A console line for an engine thread that died or stalled (``threads`` in the
    statistics), e.g. ``thread markers name='eeg-markers'  DEAD (SystemExit: 3)``."""
    state = entry["state"].upper() if entry["state"] != "ok" else "recovered"
    why = f" ({entry['why']})" if entry["why"] else ""
    stalls = f"  stalls {entry['stalls']}" if entry["stalls"] else ""
    return f"thread {name}  {state}{why}{stalls}"


def read_replay(files: list) -> Recording:
    """The recordings ``files`` (paths, or ``bids:ROOT?ENTITIES``) read and merged into one,
    as ``--replay`` takes them."""
    from rtbci.devices.recording import merge_recordings, read_recording
    from rtbci.export import expand_data

    return merge_recordings([read_recording(f) for f in expand_data(files)])


def file_digest(path: Path) -> str | None:
    """The SHA-256 of a file's bytes (hex), None for a directory (a session) or an
    unreadable path: how a checkpoint recognises its training files wherever they are."""
    import hashlib

    path = Path(path)
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def training_files(config: Config) -> dict[str, tuple[set[str], set[str]]]:
    """Per decoder of ``config`` with a checkpoint that lists its training data
    (``contract.training``): the resolved paths and the SHA-256 digests of those files."""
    from rtbci.models import checkpoint_path, is_checkpoint
    from rtbci.models.runtimes.select import importable

    out: dict[str, tuple[set[str], set[str]]] = {}
    if not importable("torch"):
        return out
    from rtbci.models.checkpoint import load_checkpoint

    for dec in config.decoders:
        if not is_checkpoint(dec.model):
            continue
        try:
            ckpt = load_checkpoint(checkpoint_path(dec.model, config.base_dir))
        except RtbciError:
            continue  # the engine names an unreadable checkpoint itself
        training = ckpt.contract.training
        if training.get("data"):
            out[dec.name] = ({str(Path(f).resolve()) for f in training["data"]},
                             {d for d in training.get("data_sha256", []) if d})
    return out


def mark_trained_on(config: Config, files: list[Path], scores: dict) -> list[str]:
    """Set ``trained_on`` in each scored decoder's entry of ``scores`` whose checkpoint lists
    its training files: True when one of the replayed ``files`` is among them (same path or
    same bytes). Returns one warning line per such decoder."""
    known = training_files(config)
    digests: dict[Path, str | None] = {}
    lines = []
    for name, (paths, hashes) in known.items():
        hits = []
        for f in files:
            if str(Path(f).resolve()) in paths or (
                    hashes and digests.setdefault(f, file_digest(f)) in hashes):
                hits.append(Path(f).name)
        if name in scores:
            scores[name]["trained_on"] = bool(hits)
        if hits:
            lines.append(f"decoder {name!r}: {', '.join(hits)} is training data of its "
                         "checkpoint: its scores here are not a test (trained_on: true)")
    return lines


def score_replay(config: Config, recording: Recording, speed: float | None = None,
                 progress: Callable[[float], None] | None = None) -> tuple[Engine, dict, dict]:
    """Run the offline engine on ``recording`` and score its class decoders against the
    markers: ``(engine, stats, scores)`` with the ``--stats-json`` document and
    :meth:`Scorer.report`. The one function behind ``rtbci run --replay --report`` and
    each file of ``rtbci evaluate``."""
    from rtbci.engine import Engine

    scorer = Scorer()
    engine = Engine(config, sinks=[scorer])
    stats = asyncio.run(engine.run_offline(recording, speed, progress))
    return engine, stats, scorer.report()
