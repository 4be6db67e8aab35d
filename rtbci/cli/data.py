"""``rtbci data``: fetch and cache a real, labelled EEG data set for development."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    """``rtbci data``: its arguments on ``sub``."""
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
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """List the data sets, or fetch NAME and print its files; 0."""
    from rtbci.devices.datasets import DATASETS, cache_dir, fetch

    if args.name is None:
        for d in DATASETS.values():
            print(f"{d.name:<18} {d.description} [{d.wheel}, {d.license}]")
        print(f"cache: {cache_dir()}")
        return 0
    for path in fetch(args.name):
        print(path)
    return 0
