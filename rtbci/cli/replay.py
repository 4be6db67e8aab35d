"""``rtbci replay``: publish recordings as LSL streams, markers included."""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

from rtbci.cli.arguments import _speed
from rtbci.errors import RtbciError


def add_parser(sub: argparse._SubParsersAction) -> None:
    """``rtbci replay``: its arguments on ``sub``."""
    p = sub.add_parser("replay", help="publish recordings as LSL streams",
                       description="Publish recordings (FIF, EDF, BDF, BrainVision .vhdr, "
                                   "EEGLAB .set, XDF, an rtbci session directory, or "
                                   "bids:ROOT?sub=01&task=T: a BIDS dataset's recordings) as "
                                   "real "
                                   "LSL outlets with full channel metadata, and their "
                                   "annotations / marker streams as NAME-markers.")
    p.add_argument("files", type=Path, nargs="+", metavar="FILE")
    p.add_argument("--speed", type=_speed, default=1.0, metavar="X|max",
                   help="X × real time (default 1); max: as fast as possible")
    p.add_argument("--loop", action="store_true", help="start again at the end")
    p.add_argument("--name", help="LSL name of the (single) signal stream (default: the "
                                  "file's stem or the recorded stream's name)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Publish FILEs on LSL at ``--speed`` until their end (or Ctrl-C with ``--loop``); 0."""
    from tqdm import tqdm

    from rtbci.devices.recording import merge_recordings, read_recording
    from rtbci.devices.replay import ReplayPublisher
    from rtbci.export import expand_data

    recording = merge_recordings([read_recording(f) for f in expand_data(args.files)])
    try:
        publisher = ReplayPublisher(recording, args.speed, args.loop, args.name)
    except ValueError as exc:
        raise RtbciError(f"--name: {exc}") from None
    for info in publisher.infos:
        print(f"publishing {info.name!r} ({info.type}, {info.n_channels} ch @ {info.srate:g} Hz,"
              f" source_id {info.source_id!r})", flush=True)
    print(f"publishing {len(recording.markers)} markers on {publisher.marker_name!r}", flush=True)
    duration = max(s.duration for s in recording.streams)
    with tqdm(total=round(duration, 1), unit="s", desc="replay", disable=args.quiet,
              bar_format="{l_bar}{bar}| {n:.1f}/{total} s [{elapsed}<{remaining}]") as bar:
        def progress(seconds: float) -> None:
            if not args.loop:
                bar.update(seconds)

        with contextlib.suppress(KeyboardInterrupt):
            publisher.run(progress)
    print(f"pushed {publisher.samples_pushed} samples and {publisher.markers_pushed} markers",
          flush=True)
    return 0
