"""``rtbci export``: write a recorded session directory as a BIDS dataset."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    """``rtbci export``: its arguments on ``sub``."""
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
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Write SESSION_DIR into the BIDS dataset ``--bids`` and print the files written; 0."""
    from rtbci.export import export_bids

    written = export_bids(args.session_dir, args.bids, args.subject, args.session, args.task,
                          args.run)
    for path in written:
        print(f"wrote {path}")
    return 0
