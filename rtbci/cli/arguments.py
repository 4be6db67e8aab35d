"""What several commands share: argument types, option groups and output checks.

The type functions keep their leading underscore: argparse names them in its messages
(``invalid _positive value: 'abc'``), which users and tests see.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from rtbci.errors import RtbciError


def _positive(text: str) -> float:
    """A number > 0."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _names(text: str) -> list[str]:
    """A comma-separated list, empty items left out."""
    return [name for name in text.split(",") if name]


def _speed(text: str) -> float | None:
    """A pace, × real time: a number > 0, or ``max`` (None: as fast as possible)."""
    if text == "max":
        return None
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0 or 'max', got {text!r}")
    return value


def numbers(values: list[str], flag: str, n: int | None) -> list[float] | None:
    """``none`` → None; else ``n`` numbers (any number ≥ 1 if ``n`` is None)."""
    if values == ["none"]:
        return None
    try:
        numbers = [float(v) for v in values]
    except ValueError:
        numbers = []
    if not numbers or (n is not None and len(numbers) != n):
        want = f"{n} numbers" if n and n > 1 else "a number" if n else "numbers"
        raise RtbciError(f"{flag}: expected {want} or none, got {' '.join(values)!r}")
    return numbers


def seconds(values: list[str] | None, flag: str) -> tuple[float, float] | None:
    """``START END`` (s) or ``none`` (None); None when the option was not given."""
    return None if values is None else (None if (v := numbers(values, flag, 2)) is None
                                        else (v[0], v[1]))


def preprocess_overrides(args: argparse.Namespace) -> dict:
    """``rtbci train``'s ``--bandpass``/``--notch``/``--resample`` as PreprocessConfig fields
    (only those given; ``none`` turns the step off)."""
    out: dict = {}
    if args.bandpass is not None:
        out["bandpass"] = seconds(args.bandpass, "--bandpass")
    if args.notch is not None:
        out["notch"] = numbers(args.notch, "--notch", None)
    if args.resample is not None:
        rate = numbers(args.resample, "--resample", 1)
        out["resample_hz"] = None if rate is None else rate[0]
    return out



def check_output(path: Path | None, option: str) -> None:
    """Refuse, before anything runs, an output file that could not be written at the end."""
    if path is None:
        return
    folder = path.parent
    if path.is_dir():
        raise RtbciError(f"{option}: {path} is a directory; give a file name")
    if not folder.is_dir():
        raise RtbciError(f"{option}: no folder {str(folder)!r} to write {path.name} in")
    if not os.access(folder, os.W_OK):
        raise RtbciError(f"{option}: not allowed to write in {str(folder)!r}")


def add_run_options(p: argparse.ArgumentParser) -> None:
    """The options of a live run (``rtbci run``, ``rtbci demo``)."""
    p.add_argument("--duration", type=_positive, help="seconds to run (default: until Ctrl-C)")
    p.add_argument("--gui", action="store_true",
                   help="also open the display (rtbci gui) on this session, in its own process")
    p.add_argument("--stats-json", type=Path, metavar="PATH",
                   help="write stream and decoder statistics to PATH at exit")


def add_ray_options(p: argparse.ArgumentParser, default: str) -> None:
    """``--ray MODE`` (``default`` when not given) and ``--workers N``."""
    p.add_argument("--ray", default=default, metavar="MODE",
                   help=f"off (serial, in this process), local (a Ray on this machine's "
                        f"cores), auto (the Ray cluster started here with 'ray start') or a "
                        f"cluster ADDRESS (default {default}; needs pip install "
                        f"'rtbci[cluster]'; docs/cluster.md)")
    p.add_argument("--workers", type=int, metavar="N",
                   help="with --ray: at most N tasks at a time (local: N CPUs; default: all)")
