"""Which channels of a recording are a decoder's inputs: the data channels, by default.

The rule (``rtbci train``; docs/decoders.md, "Which channels are inputs"):

- **Stimulus and status channels** (MNE types ``stim``, ``syst``; LSL ``Trigger``) are never
  inputs unless named with ``--channels``, and then with a warning: they may encode the
  labels.
- **Brain-signal channels** (:data:`DATA_TYPES`: EEG, MEG, sEEG, ECoG, DBS, fNIRS …) are.
- **Other channels** (EOG, EMG, ECG, ``misc``, ``resp``, ``bio`` …) are left out unless their
  type is opted in (``--include-types eog,emg``). A recording whose channels have no
  brain-signal type at all (an untyped LSL stream: every channel ``misc``) uses its ``misc``
  channels, with a warning.
- **Flat channels** (constant over the training data) are left out unless ``flat`` is opted
  in.

``--channels`` names the inputs explicitly (globs, in that order): types then choose nothing,
flat channels are still left out. The checkpoint's input contract lists the channels used
(``ch_names``) and those left out with the reason (``left_out``); live, the engine picks the
contract's channels by name.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Sequence

import numpy as np

from rtbci.errors import RtbciError

log = logging.getLogger("rtbci.models.channels")

__all__ = ["DATA_TYPES", "STIMULUS_TYPES", "check_include_types", "data_channels",
           "flat_channels", "summary", "warn_stimulus"]

STIMULUS_TYPES = ("stim", "syst")  # trigger and status channels: never inputs by type
DATA_TYPES = frozenset({"eeg", "mag", "grad", "planar1", "planar2", "seeg", "ecog", "dbs",
                        "csd", "hbo", "hbr"})  # plus every fnirs_* type
UNTYPED = "misc"  # what a stream without channel types reads as
_WARNED: set[tuple] = set()  # warnings given once per process


def is_data_type(kind: str) -> bool:
    """Whether an MNE channel type carries a brain signal (:data:`DATA_TYPES`, ``fnirs_*``)."""
    return kind in DATA_TYPES or kind.startswith("fnirs")


def reason(kind: str) -> str:
    """Why a channel of type ``kind`` is left out by default, with its opt-in."""
    if kind in STIMULUS_TYPES:
        what = "stimulus" if kind == "stim" else "status"
        return f"{what} channel ({kind}): may encode the labels; only --channels uses it"
    return f"{kind or 'untyped'} channel: not brain signal (--include-types {kind or 'misc'})"


FLAT = "flat: constant over the training data (--include-types flat)"


def check_include_types(types: Sequence[str]) -> tuple[str, ...]:
    """``--include-types`` checked: MNE channel types or ``flat``; stimulus and status types
    are refused (only ``--channels`` makes them inputs). One-line :class:`RtbciError`."""
    import mne

    known = set(mne.io.get_channel_type_constants()) | {"flat"}
    for kind in types:
        if kind in STIMULUS_TYPES:
            raise RtbciError(f"--include-types: {kind} channels are never inputs by type "
                             "(they may encode the labels); name them with --channels")
        if kind not in known:
            raise RtbciError(f"--include-types: {kind!r} is not a channel type (e.g. eog, "
                             "emg, ecg, misc, resp, or flat)")
    return tuple(types)


def data_channels(names: Sequence[str], types: Sequence[str],
                  explicit: Sequence[str] | None = None, include: Sequence[str] = (),
                  where: str = "") -> tuple[np.ndarray, dict[str, str]]:
    """The input channels of a stream with channels ``names`` of MNE ``types``.

    Parameters
    ----------
    explicit : ``--channels`` glob patterns (inputs in pattern order; types choose nothing)
    include : channel types opted in (``--include-types``) besides :data:`DATA_TYPES`
    where : the file named in messages

    Returns
    -------
    used : array (n_used,) int, indices into ``names``
    left_out : {name: reason} of the channels not used (recording order)
    """
    if explicit:
        used = _match(names, explicit, where)
        warn_stimulus([names[i] for i in used], [types[i] for i in used])
    else:
        used = _by_type(names, types, include, where)
    chosen = set(used.tolist())
    left_out = {name: "not named by --channels" if explicit else reason(kind)
                for i, (name, kind) in enumerate(zip(names, types)) if i not in chosen}
    return used, left_out


def _match(names: Sequence[str], patterns: Sequence[str], where: str) -> np.ndarray:
    chosen: list[int] = []
    for pattern in patterns:
        hits = [i for i, name in enumerate(names)  # a name as such, or a glob
                if (name == pattern or fnmatch.fnmatchcase(name, pattern)) and i not in chosen]
        if not hits:
            raise RtbciError(f"--channels: {pattern!r} matches no channel of {where}")
        chosen += hits
    return np.array(chosen, dtype=np.intp)


def _by_type(names: Sequence[str], types: Sequence[str], include: Sequence[str],
             where: str) -> np.ndarray:
    wanted = [i for i, kind in enumerate(types) if is_data_type(kind) or kind in include]
    if not any(is_data_type(kind) for kind in types) and UNTYPED not in include:
        untyped = [i for i, kind in enumerate(types) if kind == UNTYPED]
        if untyped and ("untyped", where) not in _WARNED:
            _WARNED.add(("untyped", where))
            log.warning("%s: no channel is typed as brain signal (EEG, MEG, sEEG, ECoG …); "
                        "its %d channels of unknown type (misc) are the inputs (--channels "
                        "chooses)", where, len(untyped))
        wanted = sorted(set(wanted) | set(untyped))
    if not wanted:
        kinds = ", ".join(sorted(set(types)))
        raise RtbciError(f"{where}: no data channel among its channels ({kinds}); "
                         "--include-types or --channels chooses them")
    return np.array(wanted, dtype=np.intp)


def warn_stimulus(names: Sequence[str], types: Sequence[str]) -> None:
    """One warning (once per process) if channels named by ``--channels`` are stimulus or
    status channels: a decoder on them may read the labels, not the brain."""
    stim = [name for name, kind in zip(names, types) if kind in STIMULUS_TYPES]
    key = ("stim", tuple(stim))
    if stim and key not in _WARNED:
        _WARNED.add(key)
        log.warning("--channels: %s %s stimulus/status channel%s: %s encode the labels, so "
                    "scores on %s do not measure decoding", _names(stim),
                    "is a" if len(stim) == 1 else "are", "s" if len(stim) > 1 else "",
                    "it may" if len(stim) == 1 else "they may",
                    "it" if len(stim) == 1 else "them")


def flat_channels(low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Flat channels: ``low``/``high`` (n_files, n_channels), each file's least and greatest
    sample; a channel is flat when one value spans every file (std == 0 over the data).

    Returns a boolean array (n_channels,)."""
    return np.asarray(high).max(0) <= np.asarray(low).min(0)


def summary(used: Sequence[str], left_out: dict[str, str], shown: int = 4) -> str:
    """One line for the training table: ``"channels: 4 used (C0, C1, …); left out: STI 014
    (stimulus channel …), EOG 061 (eog channel …)"``, names grouped by reason."""
    line = f"channels: {len(used)} used ({_names(list(used), shown)})"
    if not left_out:
        return line + "; none left out"
    by_reason: dict[str, list[str]] = {}
    for name, why in left_out.items():
        by_reason.setdefault(why, []).append(name)
    parts = [f"{_names(names, shown)} ({why})" for why, names in by_reason.items()]
    return f"{line}; left out {len(left_out)}: " + "; ".join(parts)


def _names(names: list[str], shown: int = 4) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more
