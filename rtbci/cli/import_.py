"""``rtbci import``: turn a paper's own trained weights into an rtbci checkpoint.

(The module's trailing underscore: ``import`` is a Python keyword.)
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rtbci.cli.arguments import _names, _positive, check_output, preprocess_overrides
from rtbci.errors import RtbciError
from rtbci.models.import_weights import TOLERANCE as IMPORT_TOLERANCE
from rtbci.models.reference_maps import REFERENCES


def add_parser(sub: argparse._SubParsersAction) -> None:
    """``rtbci import``: its arguments on ``sub``."""
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
    p.set_defaults(func=run, resample=None)


def run(args: argparse.Namespace) -> int:
    """Write the checkpoint of the reference's weights; with ``--check`` 1 when the outputs
    differ beyond the tolerance, else 0."""
    from rtbci.models.runtimes.select import importable

    if not importable("torch"):
        raise RtbciError("import needs torch: pip install 'rtbci[neural]'")
    check_output(args.out, "--out")
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
