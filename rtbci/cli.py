"""The ``rtbci`` command line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import signal
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

from rtbci import __version__
from rtbci.errors import RtbciError
from rtbci.models.families import FAMILIES

log = logging.getLogger("rtbci")


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


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
                    "(validation and linear-baseline scores).\n\nfamilies:\n" + "\n".join(
                        f"  {f.name:<16} {f.kind:<9} {f.paper}" for f in FAMILIES.values()))
    p.add_argument("family", choices=list(FAMILIES), metavar="FAMILY",
                   help=", ".join(FAMILIES))
    p.add_argument("--data", type=Path, nargs="+", required=True, metavar="FILE",
                   help="recordings with event annotations/markers")
    p.add_argument("--events", nargs="+", metavar="PREFIX", default=[],
                   help="train on markers PREFIX/<label> (default: the family's, e.g. word)")
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
                   help="share of trials (classes) or items (retrieval) held out (default 0.2)")
    p.add_argument("--channels", type=lambda s: [c for c in s.split(",") if c],
                   metavar="NAMES", help="comma-separated channel names or globs (e.g. 'A*')")
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
    p.add_argument("--bandpass", nargs="+", metavar="LO HI|none",
                   help="override the family's band-pass (Hz), or none")
    p.add_argument("--notch", nargs="+", metavar="HZ…|none",
                   help="override the family's notch frequencies (Hz), or none")
    p.add_argument("--resample", nargs=1, metavar="HZ|none",
                   help="override the family's rate (Hz), or none: keep the source's")
    p.add_argument("--baseline", nargs="+", metavar="START END|none",
                   help="subtract each channel's mean over START…END s (marker-relative, "
                        "inside --window) from every window, in training and live")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("check", help="validate a config file",
                       description="Validate a TOML config file and print what it sets up.")
    p.add_argument("config", type=Path, metavar="CONFIG")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("run", help="run the engine on a config file",
                       description="Run the engine: ingest the configured streams, decode, "
                                   "publish. Ctrl-C stops cleanly.")
    p.add_argument("config", type=Path, metavar="CONFIG")
    _add_run_options(p)
    p.add_argument("--replay", type=Path, metavar="FILE",
                   help="offline: run the pipeline straight from a recording (FIF, EDF, BDF, "
                        "BrainVision, EEGLAB, XDF or a session directory) on a virtual clock")
    p.add_argument("--speed", type=_speed, default=None, metavar="X|max",
                   help="with --replay: pace at X × real time (default: max, as fast as "
                        "possible)")
    p.add_argument("--report", type=Path, metavar="PATH",
                   help="with --replay: write per-decoder accuracy against the recording's "
                        "markers (JSON)")
    p.set_defaults(func=cmd_run)

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
                                   "EEGLAB .set, XDF, or an rtbci session directory) as real "
                                   "LSL outlets with full channel metadata, and their "
                                   "annotations / marker streams as NAME-markers.")
    p.add_argument("files", type=Path, nargs="+", metavar="FILE")
    p.add_argument("--speed", type=_speed, default=1.0, metavar="X|max",
                   help="X × real time (default 1); max: as fast as possible")
    p.add_argument("--loop", action="store_true", help="start again at the end")
    p.add_argument("--name", help="LSL name of the (single) signal stream (default: the "
                                  "file's stem or the recorded stream's name)")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("listen", help="print results from MQTT with their latency",
                       description="Subscribe to rtbci/SESSION/# and print each result with its "
                                   "end-to-end latency (receive time − the window's last "
                                   "sample's timestamp; run it on the engine's machine).")
    p.add_argument("--url", default="mqtt://127.0.0.1:1883",
                   help="broker (default mqtt://127.0.0.1:1883)")
    p.add_argument("--session", default="demo", help="engine session (default demo)")
    p.add_argument("--duration", type=_positive, help="seconds to listen (default: until Ctrl-C)")
    p.add_argument("--stats-json", type=Path, metavar="PATH",
                   help="write per-decoder latency percentiles to PATH at exit")
    p.add_argument("--summary-only", action="store_true", help="no line per result")
    p.set_defaults(func=cmd_listen)

    p = sub.add_parser("broker", help="run an embedded MQTT broker (amqtt)",
                       description="Run a small MQTT broker (amqtt, anonymous) for the demo or "
                                   "a lab without one. For experiments prefer mosquitto with "
                                   "'set_tcp_nodelay true'.")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=1883, help="port (default 1883)")
    p.set_defaults(func=cmd_broker)

    p = sub.add_parser("gui", help="the live display: traces, decoder outputs, timing",
                       description="Open the Qt display of a running session: LSL traces with "
                                   "markers, each decoder's output, latency histograms and "
                                   "engine counters (docs/gui.md). Its own process; needs "
                                   "pip install 'rtbci[gui]'.")
    from rtbci.gui.app import add_arguments as add_gui_arguments  # light: no Qt imported

    add_gui_arguments(p)
    p.set_defaults(func=cmd_gui)

    p = sub.add_parser("demo", help="run the built-in demo (simulated amplifier)",
                       description="Run the engine on the built-in demo config: a simulated "
                                   "64-channel EEG amplifier streamed over LSL.")
    p.add_argument("--print-config", action="store_true",
                   help="print the demo config (a starting point for your own) and exit")
    _add_run_options(p)
    p.set_defaults(func=cmd_demo)
    return parser


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--duration", type=_positive, help="seconds to run (default: until Ctrl-C)")
    p.add_argument("--gui", action="store_true",
                   help="also open the display (rtbci gui) on this session, in its own process")
    p.add_argument("--stats-json", type=Path, metavar="PATH",
                   help="write stream and decoder statistics to PATH at exit")


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


def cmd_train(args: argparse.Namespace) -> int:
    from rtbci.models.runtimes.select import importable

    if not importable("torch") or not importable("sklearn"):
        raise RtbciError("train needs torch and scikit-learn: pip install 'rtbci[neural]'")
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
    opts = TrainOptions(
        data=args.data, out=args.out, events=args.events, targets=args.targets,
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
        val_fraction=args.val_fraction, channels=args.channels,
        window=tuple(args.window) if args.window else None, size=args.size, hparams=hparams,
        subject_per_file=args.subject_per_file, pretrain=args.pretrain,
        pretrain_epochs=args.pretrain_epochs, pool_bank=args.pool_bank, stream=args.stream,
        preprocess=preprocess_overrides(args), baseline=_seconds(args.baseline, "--baseline"))
    metrics = train(args.family, opts)
    print(f"wrote {args.out} ({metrics['parameters']:,} parameters; {metrics['n_train']} "
          f"training / {metrics['n_val']} validation windows)")
    for name in ("val", "linear"):
        print(f"  {name:<7} {format_score(metrics[name])}")
    print(f"  metrics in {args.out.name}.metrics.json, plot in {args.out.name}.png")
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
        return (f"accuracy {m['accuracy']:.3f} (chance {m['chance']:.3f}, "
                f"{m['accuracy'] / m['chance']:.1f}×) on {m['n_val']} windows")
    return (f"top-1 {m['top1']:.3f}  top-5 {m['top5']:.3f}  top-10 {m['top10']:.3f} among "
            f"{m['n_candidates']} unseen candidates (chance {m['chance']:.3f}, "
            f"{m['top1'] / m['chance']:.1f}×)")


def cmd_listen(args: argparse.Namespace) -> int:
    from rtbci.listen import listen
    from rtbci.sinks.mqtt import parse_url

    try:
        _, host, port = parse_url(args.url)
    except ValueError as exc:
        raise RtbciError(f"--url: {exc}") from None
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(listen(host, port, args.session, args.duration, args.stats_json,
                           quiet=args.summary_only))
    return 0


def cmd_broker(args: argparse.Namespace) -> int:
    from rtbci.broker import port_open, serve

    if port_open(args.host, args.port):
        raise RtbciError(f"--port: something already listens on {args.host}:{args.port}")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(args.host, args.port, stop)

    print(f"MQTT broker on {args.host}:{args.port} (Ctrl-C to stop)", flush=True)
    asyncio.run(main())
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from rtbci.config import load_config

    config = load_config(args.config)
    print(f"{args.config}: OK (session {config.engine.session!r})")
    for src in config.sources:
        what = src.stream.as_dict() if src.kind == "lsl" else {"profile": src.profile}
        print(f"  source {src.name!r}: {src.kind} {what}, {src.buffer_seconds:g} s buffer")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from rtbci.config import load_config

    config = load_config(args.config)
    if args.replay is None:
        for option in ("speed", "report"):
            if getattr(args, option) is not None:
                raise RtbciError(f"--{option} goes with --replay FILE")
        return _run_engine(config, args)
    return _run_offline(config, args)


def _run_offline(config, args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from rtbci.devices.recording import read_recording
    from rtbci.engine import Engine
    from rtbci.report import Scorer

    recording = read_recording(args.replay)
    scorer = Scorer()
    engine = Engine(config, sinks=[scorer])
    duration = max(s.duration for s in recording.streams)
    started = time.perf_counter()
    with tqdm(total=round(duration, 1), unit="s", desc=f"replaying {args.replay.name}",
              disable=args.quiet, bar_format="{l_bar}{bar}| {n:.1f}/{total} s "
                                             "[{elapsed}<{remaining}]") as bar:
        stats = asyncio.run(engine.run_offline(recording, args.speed, bar.update))
    wall = time.perf_counter() - started
    stats["replay"] = {"file": str(args.replay), "duration_s": round(duration, 3),
                       "wall_s": round(wall, 3), "speed": round(duration / wall, 1)}
    if not args.quiet:
        for name, entry in stats["decoders"].items():
            lat = entry.get("latency_ms", {})
            print(f"{name:<12} {entry.get('results', 0):>6} results  compute p50 "
                  f"{lat.get('p50') or 0:.2f} ms p99 {lat.get('p99') or 0:.2f} ms")
        print(f"replayed {duration:.1f} s in {wall:.2f} s ({duration / wall:.0f}× real time)")
    if args.report:
        report = {"replay": stats["replay"], "decoders": scorer.report()}
        args.report.write_text(json.dumps(report, indent=2) + "\n")
        for name, entry in report["decoders"].items():
            if "top1" in entry:
                print(f"{name}: top-1 {entry['top1']:.3f}, top-{entry['k']} "
                      f"{entry['top_k']:.3f} on {entry['n']} events")
            else:
                print(f"{name}: accuracy {entry['accuracy']:.3f} on {entry['n']} events "
                      f"(chance {entry['chance']:.3f})")
    if args.stats_json:
        args.stats_json.write_text(json.dumps(_finite(stats), indent=2) + "\n")
    return 0


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

    recording = merge_recordings([read_recording(f) for f in args.files])
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
    broker = _ensure_local_broker(config)
    try:
        return _run_engine(config, args)
    finally:
        if broker is not None:
            broker.terminate()
            broker.wait(5)


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
    url = next((sink.url for sink in config.sinks if sink.kind == "mqtt"), None)
    if url is None:
        raise RtbciError('--gui: the display reads the results from MQTT; add a [[sinks]] '
                         'with kind = "mqtt"')
    cmd = [sys.executable, "-m", "rtbci.gui", "--session", config.engine.session,
           "--broker", url]
    log.info("starting the display: %s", " ".join(cmd[1:]))
    return subprocess.Popen(cmd)  # not waited for: it outlives the engine until closed


def _run_engine(config, args: argparse.Namespace) -> int:
    from rtbci.engine import Engine
    from rtbci.report import print_live_stats

    engine = Engine(config)
    if getattr(args, "gui", False):
        _start_display(config)

    async def main() -> dict:
        stop = asyncio.Event()
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
    return 1 if failed else 0


def _finite(obj):
    """Replace NaN/inf (invalid JSON) with None, recursively."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


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
