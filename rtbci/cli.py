"""The ``rtbci`` command line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

from rtbci import __version__
from rtbci.errors import RtbciError
from rtbci.jsonsafe import json_safe as _finite
from rtbci.models.families import FAMILIES
from rtbci.models.import_weights import REFERENCES
from rtbci.models.import_weights import TOLERANCE as IMPORT_TOLERANCE
from rtbci.mqtt_connection import add_arguments as add_mqtt_arguments

log = logging.getLogger("rtbci")


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _names(text: str) -> list[str]:
    """A comma-separated list, empty items left out."""
    return [name for name in text.split(",") if name]


def _speed(text: str) -> float | None:
    if text == "max":
        return None
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0 or 'max', got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rtbci",
        description="Real-time streaming BCI decoding engine: LSL streams in; decoded results "
                    "out to MQTT, LSL and a Qt display.",
        epilog="Run 'rtbci demo' for a first look, 'rtbci COMMAND --help' for details.")
    parser.add_argument("--version", action="version", version=f"rtbci {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("streams", help="list the LSL streams on the network",
                       description="List the LSL streams visible on the network.")
    p.add_argument("--timeout", type=_positive, default=2.0,
                   help="seconds to wait for streams (default 2)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_streams)

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
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser(
        "train", help="train a decoder family on recordings",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train a decoder family on event-locked windows of MNE-readable "
                    "recordings (FIF, EDF, BDF, BrainVision, EEGLAB) or XDF, and write one "
                    "checkpoint (weights + input/output contract) plus CKPT.metrics.json "
                    "(validation and linear-baseline scores).\n\nFAMILY auto cross-validates "
                    "every class family that runs at any rate (linear, riemann, eegnet, "
                    "motor-gnn) with the family's own, wide-band and no preprocessing, prints "
                    "the table, and refits the best on all the data.\n\nfamilies:\n"
                    + "\n".join(f"  {f.name:<16} {f.kind:<9} {f.paper}"
                                 for f in FAMILIES.values()))
    p.add_argument("family", choices=["auto", *FAMILIES], metavar="FAMILY",
                   help="auto, " + ", ".join(FAMILIES))
    p.add_argument("--data", type=Path, nargs="+", required=True, metavar="FILE",
                   help="recordings with event annotations/markers; bids:ROOT?sub=01&task=T "
                        "selects a BIDS dataset's recordings (entities sub, ses, task, run, "
                        "acq, datatype)")
    p.add_argument("--events", nargs="+", metavar="PATTERN", default=[],
                   help="train on the markers these patterns select: a name, a prefix of "
                        "PREFIX/<label>, or re:REGEX (label: its first group) (default: the "
                        "family's prefix, e.g. word)")
    p.add_argument("--targets", type=Path, metavar="BANK.npy",
                   help="retrieval families: target embeddings (n_items, dim[, time]); row "
                        "labels in BANK.json (a JSON list) match the events' <label>")
    p.add_argument("--out", type=Path, required=True, metavar="CKPT",
                   help="checkpoint to write (e.g. motor.pt)")
    p.add_argument("--epochs", type=int, default=30, help="training epochs (default 30)")
    p.add_argument("--batch-size", type=int, default=64, help="default 64")
    p.add_argument("--lr", type=float, help="Adam learning rate (default: the family's)")
    p.add_argument("--seed", type=int, default=0, help="seed of split, init and batches")
    p.add_argument("--val-fraction", type=float, default=0.2,
                   help="share of trials (classes) or items (retrieval) held out (default "
                        "0.2); 0 fits on every trial and scores nothing")
    p.add_argument("--channels", type=_names,
                   metavar="NAMES", help="the inputs: comma-separated channel names or globs "
                        "(e.g. 'A*'), in that order (default: the data channels: EEG, MEG, "
                        "sEEG, ECoG …; stimulus/trigger channels only when named here, with a "
                        "warning; flat ones left out)")
    p.add_argument("--include-types", type=lambda s: tuple(t for t in s.split(",") if t),
                   default=(), metavar="T,…",
                   help="also take channels of these types as inputs: eog, emg, ecg, misc, "
                        "resp …, and flat for constant channels (left out by default)")
    p.add_argument("--window", type=float, nargs=2, metavar=("START", "END"),
                   help="seconds around the event (default: the family's)")
    p.add_argument("--size", choices=["small", "paper"], default="small",
                   help="network size: small (default; trains in minutes on a CPU) or the "
                        "paper's")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a hyper-parameter, e.g. --set hidden=64 (JSON values)")
    p.add_argument("--subject-per-file", action="store_true",
                   help="each --data file is another subject (subject layers)")
    p.add_argument("--pretrain", type=Path, nargs="+", default=[], metavar="FILE",
                   help="pre-train first: self-supervised (seeg-words) or on these "
                        "recordings' events (motor-gnn: other conditions), then fine-tune")
    p.add_argument("--pretrain-epochs", type=int, default=10, help="default 10")
    p.add_argument("--pool-bank", action="store_true",
                   help="speech: store time-pooled candidates (dim instead of dim × time: "
                        "smaller and faster on a CPU; the metrics say what it costs)")
    p.add_argument("--stream", help="name of the signal stream in multi-stream files (XDF)")
    p.add_argument("--keep-bad", action="store_true",
                   help="keep windows that touch BAD_* annotations (dropped by default, as "
                        "MNE's reject_by_annotation does)")
    p.add_argument("--folds", type=int, default=5,
                   help="auto: cross-validation folds (default 5; grouped by file when "
                        "several --data files are given)")
    p.add_argument("--families", type=lambda s: tuple(f for f in s.split(",") if f),
                   metavar="F,…", help="auto: compare only these families (named neural "
                   "ones run whatever the trial count; by default eegnet and motor-gnn "
                   "need 40 trials per class)")
    p.add_argument("--budget", default=60.0, metavar="SECONDS|none",
                   type=_budget_seconds,
                   help="auto: seconds for the search and the refit (default 60, for a "
                        "2-core machine): cheap candidates first, successive halving, none "
                        "started once it would overrun; none: no cap")
    p.add_argument("--bandpass", nargs="+", metavar="LO HI|none",
                   help="override the family's band-pass (Hz), or none")
    p.add_argument("--notch", nargs="+", metavar="HZ…|none",
                   help="override the family's notch frequencies (Hz), or none")
    p.add_argument("--resample", nargs=1, metavar="HZ|none",
                   help="override the family's rate (Hz), or none: keep the source's")
    p.add_argument("--baseline", nargs="+", metavar="START END|none",
                   help="subtract each channel's mean over START…END s (marker-relative, "
                        "inside --window) from every window, in training and live")
    _add_ray_options(p, "off")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "import", help="turn a paper's own trained weights into an rtbci checkpoint",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Load a reference implementation's state dict into rtbci's network of "
                    "FAMILY through its key mapping and write a checkpoint with the full "
                    "input/output contract (runs live, offline and through rtbci compile). "
                    "What the weights lack (channel names, speech's 2-D layout, class labels "
                    "or the candidate bank) must be given.\n\nreferences:\n"
                    + "\n".join(f"  {name:<16} {ref}" for name, ref in REFERENCES.items()))
    p.add_argument("family", choices=list(REFERENCES), metavar="FAMILY",
                   help=", ".join(REFERENCES))
    p.add_argument("ref", type=Path, metavar="REF",
                   help="the reference's state dict (torch.save; read with weights_only) or a "
                        "parity fixture .npz (its config_json stands in for --config)")
    p.add_argument("--config", metavar="JSON",
                   help="the reference's constructor arguments: a JSON file or object")
    p.add_argument("--out", type=Path, required=True, metavar="CKPT", help="checkpoint to write")
    p.add_argument("--channels", type=_names,
                   metavar="NAMES", help="the network's input channels, in order, "
                                         "comma-separated (required)")
    p.add_argument("--ch-type", metavar="TYPE",
                   help="channel type (default: mag for speech, seeg, eeg)")
    p.add_argument("--positions", type=Path, metavar="LAYOUT.npy",
                   help="speech: the 2-D sensor layout the reference used, (channels, 2) in "
                        "[0, 1]; (-0.1, -0.1) or NaN rows = no position")
    p.add_argument("--targets", type=Path, metavar="BANK.npy",
                   help="retrieval: candidate bank (n, dim[, time]); row labels in BANK.json")
    p.add_argument("--labels", type=_names, metavar="NAMES",
                   help="seeg-words: the class names in output order, comma-separated")
    p.add_argument("--srate", type=_positive, metavar="HZ",
                   help="the rate the reference ran at (default: the family's: speech 120, "
                        "seeg-words 1000, image-retrieval 250)")
    p.add_argument("--samples", type=int, metavar="N",
                   help="speech: window length in samples (default: the family's window)")
    p.add_argument("--window-start", type=float, metavar="S",
                   help="window start relative to the marker, s (default: the family's)")
    p.add_argument("--events", nargs="+", metavar="PATTERN",
                   help="marker patterns it decodes (default: the family's prefix)")
    p.add_argument("--bandpass", nargs="+", metavar="LO HI|none",
                   help="the source band-pass (Hz) live (default: the family's), or none")
    p.add_argument("--notch", nargs="+", metavar="HZ…|none", help="notch frequencies, or none")
    p.add_argument("--check", type=Path, metavar="FIXTURE.npz",
                   help="run the imported network on the fixture's input; print the max "
                        f"difference to its output; exit 1 above {IMPORT_TOLERANCE:g}")
    p.set_defaults(func=cmd_import, resample=None)

    p = sub.add_parser("check", help="validate a config file",
                       description="Validate a TOML config file and what it refers to (model, "
                                   "checkpoint and classifier files, windows against buffers, "
                                   "buffer memory) and print what it sets up.")
    p.add_argument("config", type=Path, metavar="CONFIG")
    p.add_argument("--probe", type=_positive, metavar="S",
                   help="also look for each LSL source's stream for up to S seconds (its "
                        "channels and rate size the buffer; a missing one lists those there)")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("run", help="run the engine on a config file",
                       description="Run the engine: ingest the configured streams, decode, "
                                   "publish. Ctrl-C stops cleanly.")
    p.add_argument("config", type=Path, metavar="CONFIG")
    _add_run_options(p)
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
    p.set_defaults(func=cmd_run)

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
    _add_ray_options(p, "local")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("compile", help="build a decoder's compiled runtime and time it",
                       description="Build and cache a decoder's compiled form ahead of an "
                                   "experiment (ONNX export + checks, TensorRT engine, CUDA "
                                   "graph) and print its measured latency (batch 1, 200 calls). "
                                   "MODEL is a checkpoint (its own window and channels), "
                                   "demo:FAMILY, or builtin:bandpower (--samples, --channels, "
                                   "--srate).")
    p.add_argument("model", metavar="MODEL",
                   help="a checkpoint (.pt), demo:FAMILY or builtin:bandpower")
    p.add_argument("--runtime", default="auto",
                   choices=["auto", "torch", "onnxruntime", "cudagraph", "tensorrt"])
    p.add_argument("--precision", default="fp32", choices=["fp32", "tf32", "fp16", "bf16"])
    p.add_argument("--device", help="cpu or cuda[:N] (default: cuda if available, for GPU "
                                    "runtimes)")
    p.add_argument("--samples", type=int, default=500, help="window length in samples (500)")
    p.add_argument("--channels", type=int, default=64, help="channels (64)")
    p.add_argument("--srate", type=_positive, default=1000.0, help="sampling rate, Hz (1000)")
    p.add_argument("--classifier", type=Path, help="bandpower classifier .npz")
    p.add_argument("--out", type=Path, help="where to write the artefact (.onnx / engine)")
    p.set_defaults(func=cmd_compile)

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
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("export", help="write a recorded session as a BIDS dataset",
                       description="Write a session directory (the record sink's) into a BIDS "
                                   "dataset with mne-bids: one recording per source (datatype "
                                   "eeg, meg or ieeg from its channels; EEG/iEEG as EEGLAB "
                                   ".set, MEG as FIF, 64-bit samples), its markers in "
                                   "events.tsv, and each decoder's results as TSV under "
                                   "ROOT/derivatives/rtbci/. Needs rtbci[bids].")
    p.add_argument("session_dir", type=Path, metavar="SESSION_DIR")
    p.add_argument("--bids", type=Path, required=True, metavar="ROOT",
                   help="BIDS root (created if needed; recordings already there are kept)")
    p.add_argument("--subject", required=True, metavar="S", help="subject label (e.g. 01)")
    p.add_argument("--session", metavar="SES", help="BIDS session label")
    p.add_argument("--task", default="rtbci", metavar="T", help="task label (default rtbci)")
    p.add_argument("--run", metavar="R", help="run label (e.g. 1)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("listen", help="print results from MQTT with their latency",
                       description="Subscribe to rtbci/SESSION/# and print each result with its "
                                   "end-to-end latency (receive time − the window's last "
                                   "sample's timestamp; run it on the engine's machine). "
                                   "Connects like the MQTT sink: mqtts://, CA file, user "
                                   "name and password (docs/security.md).")
    add_mqtt_arguments(p, "--url")
    p.add_argument("--session", default="demo",
                   help="engine session (default demo; no wildcards)")
    p.add_argument("--duration", type=_positive, help="seconds to listen (default: until Ctrl-C)")
    p.add_argument("--stats-json", type=Path, metavar="PATH",
                   help="write per-decoder latency percentiles to PATH at exit")
    p.add_argument("--summary-only", action="store_true", help="no line per result")
    p.set_defaults(func=cmd_listen)

    p = sub.add_parser("broker", help="run an embedded MQTT broker (amqtt)",
                       description="Run a small MQTT broker (amqtt) for the demo or a lab "
                                   "without one: anonymous, or with --password-file only known "
                                   "users, each limited to rtbci/USER/# (docs/security.md). "
                                   "For experiments prefer mosquitto with "
                                   "'set_tcp_nodelay true'.")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=1883, help="port (default 1883)")
    p.add_argument("--password-file", type=Path, metavar="PATH",
                   help="USER:ARGON2-HASH lines: refuse anonymous clients; user U may use only "
                        "rtbci/U/#")
    p.add_argument("--add-user", metavar="USER",
                   help="add or replace USER in --password-file (password read from stdin) "
                        "and exit")
    p.set_defaults(func=cmd_broker)

    p = sub.add_parser("gui", help="the live display: traces, decoder outputs, timing",
                       description="Open the Qt display of a running session: LSL traces with "
                                   "markers, each decoder's output, latency histograms and "
                                   "engine counters (docs/gui.md). Its own process; needs "
                                   "pip install 'rtbci[gui]'.")
    from rtbci.gui.app import add_arguments as add_gui_arguments  # light: no Qt imported

    add_gui_arguments(p)
    p.set_defaults(func=cmd_gui)

    p = sub.add_parser("data", help="fetch real EEG recordings for development",
                       description="Fetch a real, labelled EEG data set that a package on the "
                                   "Python package index ships, convert it with MNE, and cache "
                                   "it (~/.cache/rtbci/data, or $RTBCI_DATA); print the files. "
                                   "Nothing else in rtbci downloads anything.")
    from rtbci.devices.datasets import DATASETS

    p.add_argument("name", nargs="?", choices=list(DATASETS), metavar="NAME",
                   help="data set: " + "; ".join(f"{d.name}: {d.description}"
                                                 for d in DATASETS.values())
                        + " (default: list them)")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("demo", help="run the built-in demo (simulated amplifier)",
                       description="Run the engine on the built-in demo config: a simulated "
                                   "64-channel EEG amplifier streamed over LSL.")
    p.add_argument("--print-config", action="store_true",
                   help="print the demo config (a starting point for your own) and exit")
    _add_run_options(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("bench", help="measure rtbci against its peers (latency, CPU, loss)")
    _add_bench_options(p)
    _add_ctl_parser(sub)
    return parser


def _add_ctl_parser(sub) -> None:
    p = sub.add_parser(
        "ctl", help="control a running engine: status, reload a decoder",
        description="Control the engine that runs SESSION on this machine, through its control "
                    "socket ($XDG_RUNTIME_DIR/rtbci/SESSION.sock, else "
                    "/tmp/rtbci-UID/SESSION.sock; only the user who runs the engine may use "
                    "it). Exit status: 0 done, 1 refused by the engine (the reason on stderr), "
                    "2 no engine runs SESSION here or a bad argument.",
        epilog="Example: rtbci ctl demo reload bp --set options.bands='[[8, 12], [18, 26]]' "
               "--set budget_ms=20")
    p.add_argument("session", metavar="SESSION", help="the engine's [engine] session")
    p.add_argument("--timeout", type=_positive, default=120.0,
                   help="seconds to wait for the engine's answer (default 120: a reload "
                        "builds and warms up the new decoder first)")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser("status", help="one line per decoder: state, model hash, model, "
                                      "reloads, results")
    r = actions.add_parser(
        "reload", help="swap a decoder's checkpoint or options while the engine runs",
        description="Build DECODER again from its config with --model and --set applied, while "
                    "the old one keeps decoding, then swap it in between two windows: no "
                    "window of the other decoders is lost. The new one must take the same "
                    "windows (window_ms, every_ms, on_marker and channels stay). Each result "
                    "names its model's hash (the 'model' field).")
    r.add_argument("decoder", metavar="DECODER", help="the decoder's name")
    r.add_argument("--model", metavar="CKPT",
                   help="the new model: a checkpoint file (relative to this directory), "
                        "builtin:… or python:MODULE:FACTORY")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a [[decoders]] key (budget_ms=20) or option (options.alpha=0.5); "
                        "VALUE is read as TOML (0.5 a float, [8, 12] a list, a bare word a "
                        "string); repeatable")
    p.set_defaults(func=cmd_ctl)


def cmd_ctl(args: argparse.Namespace) -> int:
    from rtbci.control import parse_settings, request
    from rtbci.models import is_checkpoint

    if args.action == "status":
        reply = request(args.session, {"op": "status"}, args.timeout)
    else:
        model = args.model
        if model and is_checkpoint(model) and not model.startswith("demo:"):
            model = str(Path(model).expanduser().resolve())  # the engine's folder may differ
        reply = request(args.session, {"op": "reload", "decoder": args.decoder, "model": model,
                                       "set": parse_settings(args.set)}, args.timeout)
    if not reply.get("ok"):
        print(f"rtbci: error: {reply.get('error')}", file=sys.stderr)
        return 1
    if args.action == "status":
        for d in reply.get("decoders", []):
            print(f"{d.get('name')}  {d.get('state')}  model {d.get('model') or '-'}  "
                  f"{d.get('spec')}  reloads {d.get('reloads')}  results {d.get('results')}")
    else:
        print(f"decoder {reply['decoder']!r} reloaded: {reply['old']} → {reply['new']} "
              f"({reply['spec']})")
    return 0


def _add_bench_options(p: argparse.ArgumentParser) -> None:
    from rtbci.bench.main import build_parser

    build_parser(p)
    p.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    from rtbci.bench.main import run_args

    return run_args(args)


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--duration", type=_positive, help="seconds to run (default: until Ctrl-C)")
    p.add_argument("--gui", action="store_true",
                   help="also open the display (rtbci gui) on this session, in its own process")
    p.add_argument("--stats-json", type=Path, metavar="PATH",
                   help="write stream and decoder statistics to PATH at exit")


def _add_ray_options(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--ray", default=default, metavar="MODE",
                   help=f"off (serial, in this process), local (a Ray on this machine's "
                        f"cores), auto (the Ray cluster started here with 'ray start') or a "
                        f"cluster ADDRESS (default {default}; needs pip install "
                        f"'rtbci[cluster]'; docs/cluster.md)")
    p.add_argument("--workers", type=int, metavar="N",
                   help="with --ray: at most N tasks at a time (local: N CPUs; default: all)")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from rtbci.cluster import connect, disconnect
    from rtbci.config import load_config
    from rtbci.evaluate import evaluate, find_recordings, write_outputs

    config = load_config(args.config)
    files = find_recordings(args.data)
    if args.out.exists() and not args.out.is_dir():
        raise RtbciError(f"--out: {args.out} is a file; give a folder")
    if not args.out.is_dir():
        _check_output(args.out, "--out")  # its parent must exist
    session = connect(args.ray, args.workers)
    try:
        args.out.mkdir(exist_ok=True)
        _check_output(args.out / "report.json", "--out")
        with tqdm(total=len(files), unit="file", desc="evaluate", disable=args.quiet) as bar:
            report = evaluate(config, files, session, lambda i, entry: bar.update())
    finally:
        disconnect()
    written = write_outputs(report, args.out)
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
    print(f"{len(files)} files in {ex['wall_s']:.1f} s on {ex['workers']} "
          f"{'Ray workers' if ex['kind'] == 'ray' else 'process (serial)'} (serial estimate "
          f"{ex['serial_s_estimate']:.1f} s); wrote {', '.join(str(p) for p in written)}")
    for entry in report["files"]:
        for line in entry.get("warnings", []):
            log.warning("%s: %s", entry["file"], line)
    for entry in report["failed"]:
        print(f"rtbci: error: {entry['file']}: {entry['error']}", file=sys.stderr)
    return 1 if report["failed"] else 0


def cmd_streams(args: argparse.Namespace) -> int:
    import pylsl

    infos = pylsl.resolve_streams(wait_time=args.timeout)
    rows = [{"name": i.name(), "type": i.type(), "channels": i.channel_count(),
             "srate": i.nominal_srate(), "source_id": i.source_id(),
             "hostname": i.hostname()} for i in infos]
    rows.sort(key=lambda r: (r["name"], r["source_id"]))
    if args.json:
        print(json.dumps(rows, indent=2))
    elif not rows:
        print(f"no LSL streams found within {args.timeout:g} s")
    else:
        print(f"{'name':<24} {'type':<10} {'ch':>4} {'srate':>8}  {'source_id':<28} host")
        for r in rows:
            print(f"{r['name']:<24} {r['type']:<10} {r['channels']:>4} {r['srate']:>8g}  "
                  f"{r['source_id']:<28} {r['hostname']}")
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from rtbci.devices.simulate import SimulatedAmplifier

    classes = tuple(c.strip() for c in args.classes.split(",") if c.strip())
    if not classes:
        raise RtbciError("--classes: give at least one class label")
    _check_output(args.save, "--save")
    if args.family is not None and args.save is not None:
        from rtbci.devices.tasks import save_task

        if not args.save.name.endswith((".fif", ".fif.gz")):
            raise RtbciError(f"--save: {args.save} must end in .fif (MNE's naming: *_raw.fif)")
        path, targets = save_task(args.save, args.family, args.snr, args.seed, args.subject,
                                  args.trials)
        print(f"wrote {path}" + (f" and {targets}" if targets else ""))
        return 0
    if args.save is not None:
        from rtbci.devices.simulate import save_recording

        if not args.save.name.endswith((".fif", ".fif.gz")):
            raise RtbciError(f"--save: {args.save} must end in .fif (MNE's naming: *_raw.fif)")
        path = save_recording(args.save, args.profile, args.duration or 60.0, args.seed,
                              args.snr, classes, args.subject, args.name)
        print(f"wrote {path}")
        return 0
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


def _simulate_brainflow(args: argparse.Namespace) -> int:
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


def _budget_seconds(text: str) -> float | None:
    """``train auto --budget``: seconds > 0, or none (no cap)."""
    if text == "none":
        return None
    try:
        return _positive(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"seconds or none, got {text!r}") from None


def cmd_train(args: argparse.Namespace) -> int:
    from rtbci.models.runtimes.select import importable

    if not importable("torch") or not importable("sklearn"):
        raise RtbciError("train needs torch and scikit-learn: pip install 'rtbci[neural]'")
    _check_output(args.out, "--out")  # before minutes of training, not after
    from rtbci.models.channels import check_include_types, summary
    from rtbci.models.training import TrainOptions, train

    hparams = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise RtbciError(f"--set: {item!r} is not KEY=VALUE")
        try:
            hparams[key] = json.loads(value)
        except json.JSONDecodeError:
            hparams[key] = value
    from rtbci.export import expand_data

    opts = TrainOptions(
        data=expand_data(args.data), out=args.out, events=args.events, targets=args.targets,
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
        val_fraction=args.val_fraction, channels=args.channels,
        include_types=check_include_types(args.include_types),
        window=tuple(args.window) if args.window else None, size=args.size, hparams=hparams,
        subject_per_file=args.subject_per_file, pretrain=args.pretrain,
        pretrain_epochs=args.pretrain_epochs, pool_bank=args.pool_bank, stream=args.stream,
        keep_bad=args.keep_bad, preprocess=preprocess_overrides(args),
        baseline=_seconds(args.baseline, "--baseline"))
    from rtbci.cluster import connect, disconnect

    connect(args.ray, args.workers)  # Ray: each file's loading and each candidate a task
    try:
        if args.family == "auto":
            return _train_auto(opts, args)
        metrics = train(args.family, opts)
    finally:
        disconnect()
    print(f"wrote {args.out} ({metrics['parameters']:,} parameters; {metrics['n_train']} "
          f"training / {metrics['n_val']} validation windows)")
    if metrics["val"] is None:
        print(f"  no validation (--val-fraction 0): fitted on all {metrics['n_train']} windows")
    for name in ("val", "linear") if metrics["val"] is not None else ():
        print(f"  {name:<7} {format_score(metrics[name])}")
    print(f"  {summary(metrics['channels']['used'], metrics['channels']['left_out'])}")
    print(f"  metrics in {args.out.name}.metrics.json, plot in {args.out.name}.png")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from rtbci.models.runtimes.select import importable

    if not importable("torch"):
        raise RtbciError("import needs torch: pip install 'rtbci[neural]'")
    _check_output(args.out, "--out")
    from rtbci.models import import_weights as iw
    from rtbci.models.checkpoint import load_checkpoint

    check = iw.read_fixture(args.check) if args.check else None
    if check is not None:
        iw.check_fixture_family(args.family, check)
    opts = iw.ImportOptions(
        config=iw.read_config(args.config) if args.config else None, channels=args.channels,
        ch_type=args.ch_type, positions=args.positions, targets=args.targets,
        labels=args.labels, srate=args.srate, samples=args.samples,
        window_start=args.window_start, events=args.events,
        preprocess=preprocess_overrides(args))
    path, spec, _ = iw.import_checkpoint(args.family, args.ref, args.out, opts)
    ckpt = load_checkpoint(path, "--out")
    c = ckpt.contract
    print(f"wrote {path}: {args.family} from {REFERENCES[args.family]}; "
          f"{len(c.input.ch_names)} ch × {c.input.n_samples} samples @ {c.input.srate:g} Hz "
          f"→ {c.output.kind} ({len(c.output.labels or [])} labels)")
    if check is None:
        return 0
    diff = iw.check_fixture(args.family, ckpt.build_model(), check)
    ok = diff <= IMPORT_TOLERANCE
    print(f"check {args.check.name}: max |rtbci - reference| = {diff:.3g} "
          f"({'ok' if ok else 'FAILED'}, tolerance {IMPORT_TOLERANCE:g})")
    return 0 if ok else 1


def _train_auto(opts, args: argparse.Namespace) -> int:
    from rtbci.models.selection import format_table, select

    if args.folds < 2:
        raise RtbciError(f"--folds: at least 2, got {args.folds}")
    metrics = select(opts, args.families, args.folds, args.budget)
    for line in format_table(metrics["auto"], metrics["channels"]):
        print(line)
    choice = metrics["auto"]["choice"]
    print(f"wrote {args.out}: {choice['family']} with {choice['preprocessing']} preprocessing, "
          f"refitted on all {metrics['n_train']} windows ({metrics['parameters']:,} "
          f"parameters); table in {args.out.name}.metrics.json, plot in {args.out.name}.png")
    return 0


def _numbers(values: list[str], flag: str, n: int | None) -> list[float] | None:
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


def _seconds(values: list[str] | None, flag: str) -> tuple[float, float] | None:
    return None if values is None else (None if (v := _numbers(values, flag, 2)) is None
                                        else (v[0], v[1]))


def preprocess_overrides(args: argparse.Namespace) -> dict:
    """``rtbci train``'s ``--bandpass``/``--notch``/``--resample`` as PreprocessConfig fields
    (only those given; ``none`` turns the step off)."""
    out: dict = {}
    if args.bandpass is not None:
        out["bandpass"] = _seconds(args.bandpass, "--bandpass")
    if args.notch is not None:
        out["notch"] = _numbers(args.notch, "--notch", None)
    if args.resample is not None:
        rate = _numbers(args.resample, "--resample", 1)
        out["resample_hz"] = None if rate is None else rate[0]
    return out


def format_score(m: dict) -> str:
    """One line of a metrics entry: accuracy or top-k, with chance and the multiple of it."""
    if "accuracy" in m:
        from rtbci.report import format_accuracy

        return f"{format_accuracy(m['accuracy'], m)} on {m['n_val']} windows"
    return (f"top-1 {m['top1']:.3f}  top-5 {m['top5']:.3f}  top-10 {m['top10']:.3f} among "
            f"{m['n_candidates']} unseen candidates (chance {m['chance']:.3f}, "
            f"{m['top1'] / m['chance']:.1f}×)")


def cmd_listen(args: argparse.Namespace) -> int:
    from rtbci.listen import listen
    from rtbci.mqtt_connection import from_arguments

    _check_output(args.stats_json, "--stats-json")
    connection = from_arguments(args.url, args, "--url")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(listen(connection, args.session, args.duration, args.stats_json,
                           quiet=args.summary_only))
    return 0


def cmd_broker(args: argparse.Namespace) -> int:
    from rtbci.broker import add_user, port_open, serve

    if args.add_user is not None:
        if args.password_file is None:
            raise RtbciError("--add-user needs --password-file")
        import getpass

        password = (getpass.getpass(f"password of {args.add_user}: ") if sys.stdin.isatty()
                    else sys.stdin.readline().rstrip("\n"))
        add_user(args.password_file, args.add_user, password)
        print(f"{args.add_user} written to {args.password_file}")
        return 0
    if not 1 <= args.port <= 65535:
        raise RtbciError(f"--port: must be 1..65535, got {args.port}")
    if port_open(args.host, args.port):
        raise RtbciError(f"--port: something already listens on {args.host}:{args.port}")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(args.host, args.port, stop, args.password_file)

    print(f"MQTT broker on {args.host}:{args.port} (Ctrl-C to stop)", flush=True)
    asyncio.run(main())
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from rtbci.config import load_config

    config = load_config(args.config)
    infos = _known_infos(config, args.probe, str(args.config))
    problems = _preflight(config, infos)
    from rtbci.sinks.record import path_problems  # a record path that cannot be written

    problems += path_problems(config)
    if problems:
        raise RtbciError("\n".join(f"{args.config}: {p}" for p in problems))
    print(f"{args.config}: OK (session {config.engine.session!r})")
    for src in config.sources:
        print(f"  {_describe_source(src, infos.get(src.name))}")
    for dec in config.decoders:
        print(f"  {_describe_decoder(dec)}")
    return 0


def _describe_source(src, info) -> str:
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


def _describe_decoder(dec) -> str:
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
    from rtbci.config import buffer_bytes

    return buffer_bytes(src.buffer_seconds, info.srate, info.n_channels)


def _known_infos(config, probe: float | None, origin: str) -> dict:
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


def _preflight(config, infos: dict) -> list[str]:
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
        problem = _decoder_problem(config, f"decoders[{i}]", dec, sources[dec.source][1])
        if problem:
            problems.append(problem)
    return problems


def _decoder_problem(config, where: str, dec, src) -> str | None:
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


def cmd_run(args: argparse.Namespace) -> int:
    from rtbci.config import load_config

    config = load_config(args.config)
    _check_output(args.stats_json, "--stats-json")
    _check_output(args.report, "--report")
    if args.replay is None:
        for option in ("speed", "report"):
            if getattr(args, option) is not None:
                raise RtbciError(f"--{option} goes with --replay FILE")
        return _run_engine(config, args)
    return _run_offline(config, args)


def _run_offline(config, args: argparse.Namespace) -> int:
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
        for name, entry in stats["decoders"].items():
            lat = entry.get("latency_ms", {})
            print(f"{name:<12} {entry.get('results', 0):>6} results  compute p50 "
                  f"{lat.get('p50') or 0:.2f} ms p99 {lat.get('p99') or 0:.2f} ms")
        print(f"replayed {duration:.1f} s in {wall:.2f} s ({duration / wall:.0f}× real time)")
    if args.report:
        report = {"replay": stats["replay"], "decoders": scores}
        args.report.write_text(json.dumps(report, indent=2) + "\n")
        for name, entry in report["decoders"].items():
            if "top1" in entry:
                print(f"{name}: top-1 {entry['top1']:.3f}, top-{entry['k']} "
                      f"{entry['top_k']:.3f} on {entry['n']} events")
            else:
                from rtbci.report import format_accuracy

                print(f"{name}: {format_accuracy(entry['accuracy'], entry)} on "
                      f"{entry['n']} events")
    if args.stats_json:
        args.stats_json.write_text(json.dumps(_finite(stats), indent=2) + "\n")
    return _report_problems(engine, stats)


def _report_problems(engine, stats: dict, interrupted: bool = False) -> int:
    """Print a line per source that matched nothing and per decoder without results; the
    exit status: 1 if there is any, unless the user stopped the run (then they are
    warnings)."""
    problems = engine.problems(stats)
    for line in problems:
        print(f"rtbci: {'warning' if interrupted else 'error'}: {line}", file=sys.stderr)
    return 1 if problems and not interrupted else 0


def cmd_compile(args: argparse.Namespace) -> int:
    from rtbci.models import checkpoint_path, is_checkpoint
    from rtbci.models.runtimes.select import importable

    if args.model.startswith("builtin:") and args.model != "builtin:bandpower":
        raise RtbciError(f"MODEL: {args.model!r} is not known; expected a checkpoint, "
                         "demo:FAMILY or builtin:bandpower")
    if not importable("torch"):
        raise RtbciError("compile needs torch: pip install 'rtbci[neural]'")
    from rtbci.models.runtimes import compile_decoder, format_latency

    if is_checkpoint(args.model):
        from rtbci.models.checkpoint import load_checkpoint

        ckpt = load_checkpoint(checkpoint_path(args.model), "MODEL")
        c = ckpt.contract
        module = ckpt.build_model().inference_module(
            None, **({"pool": True} if c.output.pooled else {}))
        shape = (1, c.input.n_samples, len(c.input.ch_names))
    else:
        from rtbci.models.bandpower import BandPower

        module = BandPower(args.samples, args.channels, args.srate,
                           classifier=args.classifier).to_torch()
        shape = (1, args.samples, args.channels)
    runtime, artefact, latency = compile_decoder(
        module, shape, args.runtime, args.precision, args.out, device=args.device,
        name=args.model)
    print(format_latency(runtime, artefact, latency))
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
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


def cmd_export(args: argparse.Namespace) -> int:
    from rtbci.export import export_bids

    written = export_bids(args.session_dir, args.bids, args.subject, args.session, args.task,
                          args.run)
    for path in written:
        print(f"wrote {path}")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from rtbci.devices.datasets import DATASETS, cache_dir, fetch

    if args.name is None:
        for d in DATASETS.values():
            print(f"{d.name:<18} {d.description} [{d.wheel}, {d.license}]")
        print(f"cache: {cache_dir()}")
        return 0
    for path in fetch(args.name):
        print(path)
    return 0


DEMO_CONFIG = "demo.toml"


def cmd_demo(args: argparse.Namespace) -> int:
    from rtbci.config import parse_config

    package = Path(str(resources.files("rtbci")))
    text = (package / DEMO_CONFIG).read_text()
    if args.print_config:
        print(text, end="")
        return 0
    import tomllib

    config = parse_config(tomllib.loads(text), "demo config", base_dir=package)
    _check_output(args.stats_json, "--stats-json")
    broker = _ensure_local_broker(config)
    try:
        return _run_engine(config, args)  # closes the MQTT sink before returning
    finally:
        if broker is not None:  # then the broker (its own process group: Ctrl-C spared it)
            broker.terminate()
            try:
                broker.wait(5)
            except subprocess.TimeoutExpired:
                broker.kill()
                broker.wait()


def _ensure_local_broker(config):
    """Start ``rtbci broker`` for a local MQTT sink with no broker behind it (demo only)."""
    from rtbci.broker import port_open, start_broker_process

    for sink in config.sinks:
        if sink.kind == "mqtt" and sink.host in ("127.0.0.1", "localhost"):
            if port_open(sink.host, sink.port):
                log.info("using the MQTT broker on %s:%d", sink.host, sink.port)
                return None
            log.info("no MQTT broker on %s:%d: starting one (rtbci broker)", sink.host,
                     sink.port)
            proc = start_broker_process(sink.host, sink.port)
            log.info("watch the results: rtbci listen --session %s", config.engine.session)
            return proc
    return None


def cmd_gui(args: argparse.Namespace) -> int:
    from rtbci.gui.app import run

    return run(args)


def _start_display(config) -> subprocess.Popen:
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


def _run_engine(config, args: argparse.Namespace) -> int:
    from rtbci.engine import Engine
    from rtbci.report import print_live_stats

    engine = Engine(config)
    if getattr(args, "gui", False):
        _start_display(config)

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
    status = _report_problems(engine, stats, interrupted=stop.is_set())
    return 1 if failed else status


def _check_output(path: Path | None, option: str) -> None:
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    try:
        return args.func(args)
    except RtbciError as exc:
        print(f"rtbci: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C before the engine took over the signal (start-up)
        print("rtbci: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
