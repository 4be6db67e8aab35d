"""``rtbci simulate``: publish a simulated amplifier or a BrainFlow board on LSL, or save a
labelled recording."""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

from rtbci.cli.arguments import _positive, check_output
from rtbci.errors import RtbciError
from rtbci.models.families import FAMILIES


def add_parser(sub: argparse._SubParsersAction) -> None:
    """``rtbci simulate``: its arguments on ``sub``."""
    p = sub.add_parser("simulate", help="publish a simulated amplifier on LSL",
                       description="Publish a simulated amplifier (signal + marker streams) as "
                                   "real LSL outlets. The generative model is in "
                                   "docs/simulator.md.")
    p.add_argument("--profile", choices=["eeg64", "meg306", "seeg128"], default="eeg64",
                   help="device profile (default eeg64: 64 ch @ 1 kHz)")
    p.add_argument("--name", help="LSL stream name (default rtbci-PROFILE); markers go to "
                                  "NAME-markers")
    p.add_argument("--duration", type=_positive, help="seconds to run (default: until Ctrl-C)")
    p.add_argument("--seed", type=int, default=0,
                   help="session seed: noise and trial sequence (default 0)")
    p.add_argument("--subject", type=int, default=0,
                   help="subject seed: the class patterns (default 0)")
    p.add_argument("--snr", type=float, default=1.0,
                   help="evoked response RMS / background RMS (default 1)")
    p.add_argument("--classes", default="left,right",
                   help="comma-separated class labels (default left,right)")
    p.add_argument("--chunk-ms", type=_positive, default=10.0,
                   help="push period in ms (default 10)")
    p.add_argument("--family", choices=list(FAMILIES),
                   help="simulate a decoder family's task instead of class patterns: its "
                        "profile, items with latent embeddings, markers <prefix>/<item> "
                        "(docs/simulator.md)")
    p.add_argument("--trials", type=int,
                   help="with --family --save: number of trials (default: the family's)")
    p.add_argument("--brainflow", metavar="BOARD",
                   help="publish a BrainFlow board instead (e.g. SYNTHETIC_BOARD; needs "
                        "rtbci[brainflow]): its ExG channels in µV on LSL as NAME (default: "
                        "the board name), its marker row on NAME-markers (docs/devices.md)")
    p.add_argument("--board-param", action="append", default=[], metavar="KEY=VALUE",
                   help="with --brainflow: a connection parameter (serial_port, ip_address, "
                        "ip_port, mac_address, serial_number, other_info, file); repeatable")
    p.add_argument("--save", type=Path, metavar="FILE",
                   help="instead of streaming, write a labelled recording (FIF, trials as "
                        "annotations): --duration seconds (default 60), or with --family "
                        "--trials trials plus, for retrieval families, the targets "
                        "FILE-targets.npy and their labels FILE-targets.json")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Stream the simulated amplifier (or a BrainFlow board) until ``--duration`` or Ctrl-C, or
    write a recording with ``--save``; 0."""
    from rtbci.devices.simulate import SimulatedAmplifier

    classes = tuple(c.strip() for c in args.classes.split(",") if c.strip())
    if not classes:
        raise RtbciError("--classes: give at least one class label")
    check_output(args.save, "--save")
    if args.save is not None:
        return _save(args, classes)
    if args.brainflow is not None:
        return _simulate_brainflow(args)
    amp = SimulatedAmplifier(args.profile, name=args.name, seed=args.seed, snr=args.snr,
                             classes=classes, subject=args.subject, chunk_ms=args.chunk_ms,
                             task=args.family)
    info = amp.info
    print(f"publishing {info.name!r} ({info.type}, {info.n_channels} ch @ {info.srate:g} Hz, "
          f"source_id {info.source_id!r}) and markers {amp.marker_name!r}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        amp.run(args.duration)
    print(f"pushed {amp.samples_pushed} samples and {len(amp.events)} markers", flush=True)
    return 0


def _save(args: argparse.Namespace, classes: tuple[str, ...]) -> int:
    """``--save FILE``: write a family's task (``--family``) or a class-pattern recording."""
    if not args.save.name.endswith((".fif", ".fif.gz")):
        raise RtbciError(f"--save: {args.save} must end in .fif (MNE's naming: *_raw.fif)")
    if args.family is not None:
        from rtbci.devices.tasks import save_task

        path, targets = save_task(args.save, args.family, args.snr, args.seed, args.subject,
                                  args.trials)
        print(f"wrote {path}" + (f" and {targets}" if targets else ""))
        return 0
    from rtbci.devices.simulate import save_recording

    path = save_recording(args.save, args.profile, args.duration or 60.0, args.seed,
                          args.snr, classes, args.subject, args.name)
    print(f"wrote {path}")
    return 0


def _simulate_brainflow(args: argparse.Namespace) -> int:
    """``--brainflow BOARD``: publish the board's ExG and marker rows on LSL; 0."""
    from rtbci.devices.brainflow import CONNECTION_KEYS, BoardPublisher, Connection

    params = {}
    for item in args.board_param:
        key, sep, value = item.partition("=")
        if not sep or key not in CONNECTION_KEYS:
            raise RtbciError(f"--board-param: {item!r} is not KEY=VALUE with KEY one of "
                             + ", ".join(CONNECTION_KEYS))
        if key == "ip_port" and not value.isdigit():
            raise RtbciError(f"--board-param: ip_port must be a number, got {value!r}")
        params[key] = int(value) if key == "ip_port" else value
    publisher = BoardPublisher(args.brainflow, args.name or str(args.brainflow).lower(),
                               Connection(**params))
    info = publisher.info
    print(f"publishing BrainFlow board {args.brainflow} as {info.name!r} ({info.type}, "
          f"{info.n_channels} ch @ {info.srate:g} Hz, source_id {info.source_id!r}) and "
          f"markers {publisher.marker_name!r}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        publisher.run(args.duration)
    print(f"pushed {publisher.samples_pushed} samples and {publisher.markers_pushed} markers",
          flush=True)
    return 0
