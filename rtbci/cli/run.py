"""``rtbci run``: run the engine on a config file, live or (``--replay``) offline; the live
run is shared with ``rtbci demo``."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

from rtbci.cli.arguments import _speed, add_run_options, check_output
from rtbci.errors import RtbciError
from rtbci.jsonsafe import json_safe as _finite

log = logging.getLogger("rtbci")


def add_parser(sub: argparse._SubParsersAction) -> None:
    """``rtbci run``: its arguments on ``sub``."""
    p = sub.add_parser("run", help="run the engine on a config file",
                       description="Run the engine: ingest the configured streams, decode, "
                                   "publish. Ctrl-C stops cleanly.")
    p.add_argument("config", type=Path, metavar="CONFIG")
    add_run_options(p)
    p.add_argument("--replay", type=Path, nargs="+", metavar="FILE",
                   help="offline: run the pipeline straight from recordings (FIF, EDF, BDF, "
                        "BrainVision, EEGLAB, XDF, a session directory or "
                        "bids:ROOT?sub=01&task=T; several are replayed together) on a "
                        "virtual clock")
    p.add_argument("--speed", type=_speed, default=None, metavar="X|max",
                   help="with --replay: pace at X × real time (default: max, as fast as "
                        "possible)")
    p.add_argument("--report", type=Path, metavar="PATH",
                   help="with --replay: write per-decoder accuracy against the recording's "
                        "markers (JSON)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the engine on CONFIG live, or offline with ``--replay``; 1 if a source, stream or
    decoder failed or produced nothing, else 0."""
    from rtbci.config import load_config

    config = load_config(args.config)
    check_output(args.stats_json, "--stats-json")
    check_output(args.report, "--report")
    if args.replay is None:
        for option in ("speed", "report"):
            if getattr(args, option) is not None:
                raise RtbciError(f"--{option} goes with --replay FILE")
        return run_engine(config, args)
    return _run_offline(config, args)


def _run_offline(config, args: argparse.Namespace) -> int:
    """Replay ``--replay`` through the engine on a virtual clock; print and write what it
    measured and scored; the status of report_problems."""
    from tqdm import tqdm

    from rtbci.report import read_replay, score_replay

    recording = read_replay(args.replay)
    duration = max(s.duration for s in recording.streams)
    started = time.perf_counter()
    files = " ".join(f.name for f in args.replay)
    with tqdm(total=round(duration, 1), unit="s", desc=f"replaying {files}",
              disable=args.quiet, bar_format="{l_bar}{bar}| {n:.1f}/{total} s "
                                             "[{elapsed}<{remaining}]") as bar:
        engine, stats, scores = score_replay(config, recording, args.speed, bar.update)
    wall = time.perf_counter() - started
    from rtbci.report import mark_trained_on

    for line in mark_trained_on(config, args.replay, scores):
        log.warning(line)
    stats["replay"] = {"file": " ".join(map(str, args.replay)), "duration_s": round(duration, 3),
                       "wall_s": round(wall, 3), "speed": round(duration / wall, 1)}
    if not args.quiet:
        _print_timing(stats, duration, wall)
    if args.report:
        _write_report(args.report, stats["replay"], scores)
    if args.stats_json:
        args.stats_json.write_text(json.dumps(_finite(stats), indent=2) + "\n")
    return report_problems(engine, stats)


def _print_timing(stats: dict, duration: float, wall: float) -> None:
    """Per decoder its results and compute percentiles (ms), then the replay's speed."""
    for name, entry in stats["decoders"].items():
        lat = entry.get("latency_ms", {})
        print(f"{name:<12} {entry.get('results', 0):>6} results  compute p50 "
              f"{lat.get('p50') or 0:.2f} ms p99 {lat.get('p99') or 0:.2f} ms")
    print(f"replayed {duration:.1f} s in {wall:.2f} s ({duration / wall:.0f}× real time)")


def _write_report(path: Path, replay: dict, scores: dict) -> None:
    """``--report``: write the scores against the recording's markers as JSON; print a line
    per decoder."""
    report = {"replay": replay, "decoders": scores}
    path.write_text(json.dumps(report, indent=2) + "\n")
    for name, entry in report["decoders"].items():
        if "top1" in entry:
            print(f"{name}: top-1 {entry['top1']:.3f}, top-{entry['k']} "
                  f"{entry['top_k']:.3f} on {entry['n']} events")
        else:
            from rtbci.report import format_accuracy

            print(f"{name}: {format_accuracy(entry['accuracy'], entry)} on "
                  f"{entry['n']} events")


def report_problems(engine, stats: dict, interrupted: bool = False) -> int:
    """Print a line per source that matched nothing and per decoder without results; the
    exit status: 1 if there is any, unless the user stopped the run (then they are
    warnings)."""
    problems = engine.problems(stats)
    for line in problems:
        print(f"rtbci: {'warning' if interrupted else 'error'}: {line}", file=sys.stderr)
    return 1 if problems and not interrupted else 0


def run_engine(config, args: argparse.Namespace) -> int:
    """Run the engine live until ``--duration`` or Ctrl-C/SIGTERM; 1 if a stream or
    thread failed, else the status of report_problems."""
    from rtbci.engine import Engine
    from rtbci.report import print_live_stats

    engine = Engine(config)
    if getattr(args, "gui", False):
        start_display(config)

    stop = asyncio.Event()

    async def main() -> dict:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        return await engine.run(args.duration, stop,
                                on_tick=None if args.quiet else print_live_stats)

    stats = asyncio.run(main())
    if args.stats_json:
        args.stats_json.write_text(json.dumps(_finite(stats), indent=2) + "\n")
        log.info("statistics written to %s", args.stats_json)
    failed = [n for n, s in stats["streams"].items() if s.get("state") == "failed"]
    failed += [n for n, t in stats["threads"].items() if t["state"] == "dead"]
    status = report_problems(engine, stats, interrupted=stop.is_set())
    return 1 if failed else status


def start_display(config) -> subprocess.Popen:
    """``rtbci gui`` on the config's session and first MQTT sink, as its own process."""
    from rtbci.mqtt_connection import child_environment

    sink = next((sink for sink in config.sinks if sink.kind == "mqtt"), None)
    if sink is None:
        raise RtbciError('--gui: the display reads the results from MQTT; add a [[sinks]] '
                         'with kind = "mqtt"')
    login, env = child_environment(sink)  # the password travels in the environment only
    cmd = [sys.executable, "-m", "rtbci.gui", "--session", config.engine.session,
           "--broker", sink.url, *login]
    log.info("starting the display: %s", " ".join(cmd[1:]))
    return subprocess.Popen(cmd, env=env)  # not waited for: it outlives the engine
