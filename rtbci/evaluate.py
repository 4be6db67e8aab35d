"""``rtbci evaluate``: a config's decoders scored on many recordings, one Ray task per file.

Each file runs :func:`rtbci.report.score_replay`, the function behind ``rtbci run CONFIG
--replay FILE --report``, so a file's figures are those of the serial command. The config's
own sinks are left out (the report is the output). Checkpoint and classifier files named by
the config are read here, once, and travel with the tasks (through Ray's object store); each
task writes them to a temporary folder of its own, so workers need no shared disk for them.
The recordings themselves are read by the workers at the paths given (on a cluster: a path
every node can read).
"""

from __future__ import annotations

import csv
import glob
import logging
import math
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np

from rtbci.cluster import Session, parallel_map
from rtbci.config import Config
from rtbci.devices.recording import MNE_SUFFIXES
from rtbci.errors import RtbciError
from rtbci.jsonsafe import json_safe
from rtbci.models import checkpoint_path, is_checkpoint

log = logging.getLogger(__name__)

RECORDING_SUFFIXES = (*MNE_SUFFIXES, ".xdf")
SCORE_KEYS = ("accuracy", "top1", "top_k")  # the per-file figures averaged over files


def find_recordings(patterns: list[str]) -> list[Path]:
    """``--data`` values as recordings: a file, a session directory (with session.json), a
    directory (its recordings, sorted), a glob pattern or ``bids:ROOT?ENTITIES``; each file
    once, in given order."""
    from rtbci.export import expand_data, is_bids_spec

    files: list[Path] = []
    for pattern in patterns:
        path = Path(pattern).expanduser()
        if is_bids_spec(pattern):
            found = expand_data([pattern])  # names what it cannot find itself
        elif glob.has_magic(pattern):
            found = [Path(p) for p in sorted(glob.glob(str(path)))]
            if not found:
                raise RtbciError(f"--data: {pattern!r} matches no file")
        elif path.is_dir() and not (path / "session.json").exists():
            found = sorted(p for p in path.iterdir() if _is_recording(p))
            if not found:
                raise RtbciError(f"--data: no recording in {pattern} (expected "
                                 f"{', '.join(RECORDING_SUFFIXES)} or session directories)")
        elif path.exists():
            found = [path]
        else:
            raise RtbciError(f"--data: {pattern}: no such file or directory")
        files += [f for f in found if f not in files]
    return files


def _is_recording(path: Path) -> bool:
    if path.is_dir():
        return (path / "session.json").exists()
    return path.name.lower().endswith(RECORDING_SUFFIXES)


def pack_config(config: Config) -> tuple[Config, dict[str, bytes]]:
    """The config without sinks, its checkpoint and classifier paths replaced by file names,
    and those files' bytes by name (``demo:`` checkpoints come with rtbci on every worker)."""
    config = config.model_copy(update={"sinks": []}, deep=True)
    blobs: dict[str, bytes] = {}
    for i, dec in enumerate(config.decoders):
        if is_checkpoint(dec.model) and not dec.model.startswith("demo:"):
            dec.model = _pack(blobs, checkpoint_path(dec.model, config.base_dir),
                              f"decoders[{i}].model")
        if "classifier" in dec.options:
            dec.options["classifier"] = _pack(blobs, config.resolve(dec.options["classifier"]),
                                              f"decoders[{i}].options.classifier")
    return config, blobs


def _pack(blobs: dict[str, bytes], path: Path, key: str) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RtbciError(f"{key}: cannot read {path} ({exc.strerror or exc})") from None
    name = f"{len(blobs)}-{path.name}"
    blobs[name] = data
    return name


def evaluate_file(path: Path, config: Config, blobs: dict[str, bytes]) -> dict:
    """One file's entry of the report: ``file``, ``duration_s``, ``wall_s``, ``decoders``
    (per decoder: :meth:`~rtbci.report.Scorer.report`'s figures, ``results`` and
    ``compute_ms`` p50/p99; ``trained_on``: whether this file trained its checkpoint),
    ``problems`` (the engine's, as ``run --replay`` prints them), ``warnings`` (a file its
    decoder was trained on);
    or ``file`` and ``error`` when it could not be evaluated."""
    from rtbci.report import mark_trained_on, read_replay, score_replay

    started = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="rtbci-evaluate-") as folder:
            for name, data in blobs.items():
                (Path(folder) / name).write_bytes(data)
            local = config.model_copy(deep=True)
            local._base_dir = Path(folder)
            recording = read_replay([path])
            engine, stats, scores = score_replay(local, recording)
            problems = engine.problems(stats)
            warnings = mark_trained_on(local, [path], scores)
    except Exception as exc:  # one file's failure is one line of the report
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return {"file": str(path), "error": text if isinstance(exc, RtbciError)
                else f"{type(exc).__name__}: {text}"}
    decoders = {}
    for name, entry in stats["decoders"].items():
        lat = entry.get("latency_ms") or {}
        decoders[name] = {**scores.get(name, {}), "results": entry.get("results", 0),
                          "compute_ms": {"p50": lat.get("p50"), "p99": lat.get("p99")}}
    duration = max(s.duration for s in recording.streams)
    return {"file": str(path), "duration_s": round(duration, 3),
            "wall_s": round(time.perf_counter() - started, 3), "decoders": decoders,
            "problems": problems, "warnings": warnings}


def evaluate(config: Config, files: list[Path], session: Session | None,
             progress=None) -> dict:
    """Evaluate ``config`` on ``files`` (Ray tasks when ``session`` is open, else serially);
    ``progress(i, entry)`` as each file finishes. Returns the report document."""
    packed, blobs = pack_config(config)
    if session is not None:
        import ray

        blobs = ray.put(blobs)  # once in the object store, read by every task
    started = time.perf_counter()
    task = partial(_evaluate_task, config=packed, blobs=blobs)
    entries = parallel_map(task, files, done=progress,
                           on_lost=lambda i, exc: {"file": str(files[i]), "error":
                                                   f"its worker died twice ({type(exc).__name__})"})
    wall = time.perf_counter() - started
    executor = {"kind": "ray" if session else "serial",
                "address": session.address if session else None,
                "workers": session.workers if session else 1, "wall_s": round(wall, 3),
                "serial_s_estimate": round(sum(e.get("wall_s", 0.0) for e in entries), 3)}
    names = [d.name for d in config.decoders]
    return {"files": entries, "decoders": summarize(entries, names),
            "failed": [{"file": e["file"], "error": e["error"] if "error" in e
                        else "; ".join(e["problems"])} for e in entries if failed(e)],
            "executor": executor}


def _evaluate_task(path: Path, config: Config, blobs) -> dict:
    """:func:`evaluate_file` as a task: ``blobs`` arrives as the bytes or a Ray reference."""
    if not isinstance(blobs, dict):
        import ray

        blobs = ray.get(blobs)
    return evaluate_file(path, config, blobs)


def failed(entry: dict) -> bool:
    """Whether a file's evaluation failed: unreadable, or the engine reported problems (a
    source matched no stream, a decoder produced no results)."""
    return "error" in entry or bool(entry["problems"])


def summarize(entries: list[dict], names: list[str]) -> dict:
    """Per decoder: ``files`` scored, mean and sd over files of ``accuracy`` (classes) or
    ``top1``/``top_k`` (retrieval), mean ``chance``, the ``failed`` files (not evaluated,
    or no results from this decoder), and for classes ``pooled``: every file's events
    together (``n``, ``accuracy`` and :func:`~rtbci.report.chance_figures`)."""
    out = {}
    for name in names:
        per_file = [e["decoders"][name] for e in entries if "decoders" in e
                    and e["decoders"].get(name, {}).get("n")]
        bad = [e["file"] for e in entries if "error" in e
               or not e["decoders"].get(name, {}).get("results")]
        summary: dict = {"files": len(per_file), "failed": bad}
        for key in (*SCORE_KEYS, "chance"):
            values = [d[key] for d in per_file if key in d]
            if values:
                summary[key] = {"mean": float(np.mean(values)), "sd": float(np.std(values))}
        pooled = pool_classes(per_file)
        if pooled:
            summary["pooled"] = pooled
        out[name] = summary
    return out


def pool_classes(per_file: list[dict]) -> dict | None:
    """The class scores of several files as one set: ``n``, ``accuracy``, ``chance``
    (majority class of all the events), ``chance_uniform`` and ``ci95``; None without
    class scores."""
    from rtbci.report import chance_figures

    scored = [d for d in per_file if "confusion" in d]
    if not scored:
        return None
    counts: dict[str, int] = {}
    correct = 0
    for d in scored:
        for truth, row in d["confusion"].items():
            counts[truth] = counts.get(truth, 0) + sum(row.values())
            correct += row.get(truth, 0)
    n = sum(counts.values())
    labels = {label for d in scored for label in d["labels"]}
    return {"n": n, "accuracy": correct / n,
            **chance_figures(correct, list(counts.values()), len(labels))}


def write_outputs(report: dict, folder: Path) -> list[Path]:
    """``report.json``, ``report.csv`` (one row per file × decoder) and ``report.png`` in
    ``folder``; returns the paths written (no PNG without matplotlib)."""
    import json


    json_path, csv_path = folder / "report.json", folder / "report.csv"
    json_path.write_text(json.dumps(json_safe(report), indent=2) + "\n")
    with csv_path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "decoder", "status", "n", "accuracy", "top1", "top_k",
                         "chance", "compute_p50_ms", "compute_p99_ms", "error",
                         "ci95_low", "ci95_high", "chance_uniform"])
        for row in csv_rows(report):
            writer.writerow(row)
    written = [json_path, csv_path]
    try:
        plot_report(folder / "report.png", report)
        written.append(folder / "report.png")
    except ImportError:
        log.warning("report.png: matplotlib is not installed (pip install 'rtbci[neural]')")
    return written


def csv_rows(report: dict):
    """The rows of ``report.csv``: a failed file is one row with its error."""
    for e in report["files"]:
        if "error" in e:
            yield [e["file"], "", "failed", "", "", "", "", "", "", "", e["error"], "", "", ""]
            continue
        for name, d in e["decoders"].items():
            status = "ok" if d.get("results") else "failed"
            lat = d["compute_ms"]
            yield [e["file"], name, status, d.get("n", ""),
                   *(_number(d.get(k)) for k in ("accuracy", "top1", "top_k", "chance")),
                   _number(lat.get("p50")), _number(lat.get("p99")),
                   "" if d.get("results") else "; ".join(p for p in e["problems"]
                                                         if repr(name) in p),
                   *(_number(v) for v in d.get("ci95", ("", ""))),
                   _number(d.get("chance_uniform"))]


def _number(value) -> str:
    return "" if value is None or (isinstance(value, float) and not math.isfinite(value)) \
        else str(value)  # the shortest text that reads back as the same number


def plot_report(path: Path, report: dict) -> None:
    """``report.png``: each scored decoder's accuracy (top-1) per file, its mean ± sd and
    chance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n, s in report["decoders"].items() if s["files"]]
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(names) + 1.5))
    for row, name in enumerate(names):
        values = [e["decoders"][name].get("accuracy", e["decoders"][name].get("top1"))
                  for e in report["files"] if e.get("decoders", {}).get(name, {}).get("n")]
        summary = report["decoders"][name]
        mean = summary.get("accuracy", summary.get("top1"))
        ax.scatter(values, np.full(len(values), row), color="C0", alpha=0.5, s=14)
        ax.errorbar(mean["mean"], row, xerr=mean["sd"], fmt="o", color="C1", capsize=4)
        if "chance" in summary:
            ax.plot([summary["chance"]["mean"]] * 2, [row - 0.35, row + 0.35], "k--", lw=1)
    ax.set(yticks=range(len(names)), yticklabels=names, xlim=(0, 1),
           xlabel="accuracy (top-1) per file; orange: mean ± sd; dashed: chance",
           title=f"rtbci evaluate: {len(report['files'])} files, {len(report['failed'])} failed")
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
