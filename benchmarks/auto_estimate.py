"""How well ``rtbci train auto``'s progress line estimates the time left.

Simulates the 6-channel left/right recording of ``tests/models/test_auto_budget.py``
(:func:`rtbci.devices.simulate.save_recording`, ``eeg64`` picked to 6 motor channels at
250 Hz), runs :func:`rtbci.models.selection.select` as ``rtbci train auto`` does (every
family, 5 folds, the default budget) and records, at every progress update, the time so far
and the time left the line states (:meth:`~rtbci.models.selection._Search.remaining`; none
until each live family has run a fit: the line then states the budget left as a bound).
Prints each estimate's planned total (so far + left) against the wall clock it took.

Run: ``python benchmarks/auto_estimate.py --seconds 180 --snr 3 --seed 6`` (the test's
``easy`` recording; ``--snr 0 --seed 7``: its ``noise`` one; ``--seconds 412 --snr 1
--window 3.5``: ~270 trials of 3.5 s, as in issue 22).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import mne

from rtbci.devices.simulate import save_recording
from rtbci.models import selection
from rtbci.models.options import TrainOptions

SIX = ["C3", "Cz", "C4", "FC3", "FC4", "CPz"]


def recording(folder: Path, seconds: float, snr: float, seed: int) -> Path:
    """The test's simulated recording: 6 motor channels of ``eeg64`` at 250 Hz, as FIF."""
    path = save_recording(folder / "full_raw.fif", "eeg64", seconds, seed=seed, snr=snr)
    raw = mne.io.read_raw_fif(path, preload=True, verbose="error").pick(SIX)
    raw.resample(250.0, verbose="error")
    out = folder / "six_raw.fif"
    raw.save(out, verbose="error")
    return out


def measure(fif: Path, window: float, out: Path) -> tuple[float, list, dict]:
    """(seconds select took, [(elapsed s, stated time left s or None)], its metrics)."""
    stated = []
    real = selection._Search.remaining

    def remaining(search):
        left = real(search)
        stated.append((search.elapsed(), left))
        return left

    selection._Search.remaining = remaining
    try:
        opts = TrainOptions(data=[fif], out=out, events=["stim"], window=(0.0, window),
                            progress=False)
        started = time.perf_counter()
        metrics = selection.select(opts, None, 5, selection.DEFAULT_BUDGET)
        return time.perf_counter() - started, stated, metrics
    finally:
        selection._Search.remaining = real


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=180.0, help="recording length")
    parser.add_argument("--snr", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=6)
    parser.add_argument("--window", type=float, default=0.5, help="window 0 … W s")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        fif = recording(Path(folder), args.seconds, args.snr, args.seed)
        took, stated, metrics = measure(fif, args.window, Path(folder) / "auto.pt")
    print(f"{metrics['n_train']} windows; select took {took:.1f} s "
          f"(budget {selection.DEFAULT_BUDGET:g} s, {metrics['auto']['threads']} thread(s))")
    known = [(at, left) for at, left in stated if left is not None]
    if not known:
        print("no estimate stated (a family never ran a fit): the line gave the budget left")
    for at, left in known[:1] + known[len(known) // 2:len(known) // 2 + 1]:
        total = at + left
        print(f"at {at:5.1f} s: {left:5.1f} s left, planned total {total:5.1f} s "
              f"({100 * (total - took) / took:+.0f} % of the time taken)")
    worst = max(known, key=lambda s: abs(s[0] + s[1] - took), default=None)
    if worst is not None:
        print(f"worst: at {worst[0]:.1f} s, planned {worst[0] + worst[1]:.1f} s "
              f"({100 * (worst[0] + worst[1] - took) / took:+.0f} %)")


if __name__ == "__main__":
    main()
