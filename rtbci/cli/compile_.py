"""``rtbci compile``: build a decoder's compiled runtime ahead of time and measure it.

(The module's trailing underscore: ``compile`` is a Python builtin.)
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rtbci.cli.arguments import _positive
from rtbci.errors import RtbciError


def add_parser(sub: argparse._SubParsersAction) -> None:
    """``rtbci compile``: its arguments on ``sub``."""
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
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Build and time MODEL's compiled runtime, print its latency; 0."""
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
