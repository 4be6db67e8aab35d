"""``rtbci evaluate``: score a config's decoders on many recordings, one Ray task per file."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from rtbci.cli.arguments import add_ray_options, check_output
from rtbci.errors import RtbciError

log = logging.getLogger("rtbci")


def add_parser(sub: argparse._SubParsersAction) -> None:
    """``rtbci evaluate``: its arguments on ``sub``."""
    p = sub.add_parser("evaluate", help="score a config's decoders on many recordings (Ray)",
                       description="Run the offline engine of 'rtbci run CONFIG --replay FILE "
                                   "--report' on each recording, one Ray task per file, and "
                                   "write OUT/report.json, report.csv and report.png: per file "
                                   "and decoder the score against the markers and the compute "
                                   "time, per decoder the mean ± sd over files and the failed "
                                   "files. Exit status 1 when a file failed. The config's "
                                   "sinks are left out.")
    p.add_argument("config", type=Path, metavar="CONFIG")
    p.add_argument("--data", nargs="+", required=True, metavar="FILE|DIR|GLOB",
                   help="recordings: files, session directories, directories of recordings, "
                        "or glob patterns (quote them)")
    p.add_argument("--out", type=Path, default=Path("."), metavar="DIR",
                   help="folder for report.json, report.csv, report.png (default: here)")
    add_ray_options(p, "local")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Score CONFIG on every recording of ``--data``, write the reports; 1 if a file failed."""
    from tqdm import tqdm

    from rtbci.cluster import connect, disconnect
    from rtbci.config import load_config
    from rtbci.evaluate import evaluate, find_recordings, write_outputs

    config = load_config(args.config)
    files = find_recordings(args.data)
    if args.out.exists() and not args.out.is_dir():
        raise RtbciError(f"--out: {args.out} is a file; give a folder")
    if not args.out.is_dir():
        check_output(args.out, "--out")  # its parent must exist
    session = connect(args.ray, args.workers)
    try:
        args.out.mkdir(exist_ok=True)
        check_output(args.out / "report.json", "--out")
        with tqdm(total=len(files), unit="file", desc="evaluate", disable=args.quiet) as bar:
            report = evaluate(config, files, session, lambda i, entry: bar.update())
    finally:
        disconnect()
    written = write_outputs(report, args.out)
    _print_report(report, len(files), written)
    return 1 if report["failed"] else 0


def _print_report(report: dict, n_files: int, written: list[Path]) -> None:
    """Per decoder its mean scores over files, the run's time and outputs, then each file's
    warnings and errors."""
    for name, summary in report["decoders"].items():
        scores = "  ".join(f"{key} {summary[key]['mean']:.3f} ± {summary[key]['sd']:.3f}"
                           for key in ("accuracy", "top1", "top_k") if key in summary)
        pooled = summary.get("pooled")
        if pooled:
            from rtbci.report import format_accuracy

            scores += f"  pooled {format_accuracy(pooled['accuracy'], pooled)}"
        print(f"{name:<12} {summary['files']:>4} files  {scores or 'no scored events'}"
              + (f"  failed {len(summary['failed'])}" if summary["failed"] else ""))
    ex = report["executor"]
    print(f"{n_files} files in {ex['wall_s']:.1f} s on {ex['workers']} "
          f"{'Ray workers' if ex['kind'] == 'ray' else 'process (serial)'} (serial estimate "
          f"{ex['serial_s_estimate']:.1f} s); wrote {', '.join(str(p) for p in written)}")
    for entry in report["files"]:
        for line in entry.get("warnings", []):
            log.warning("%s: %s", entry["file"], line)
    for entry in report["failed"]:
        print(f"rtbci: error: {entry['file']}: {entry['error']}", file=sys.stderr)
