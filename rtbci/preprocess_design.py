"""The streaming preprocessing chain's design: from a :class:`PreprocessConfig` and a
stream's :class:`StreamInfo` to the filters and indices :class:`rtbci.preprocess.Preprocessor`
runs (picks, re-reference, the notch / band-pass second-order sections, the resampling FIR),
the output stream's info and how long the filters take to settle after a restart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Literal

import numpy as np
from scipy import signal

from rtbci.errors import RtbciError
from rtbci.preprocess_config import PreprocessConfig
from rtbci.stream import StreamInfo

STANDARDIZED_UNIT = "z-score"  # ch_units of standardised output channels
SETTLE_TOLERANCE = 1e-3  # filters have settled once their slowest mode decayed to this


def resample_filter(up: int, down: int) -> np.ndarray:
    """Anti-alias FIR of ``scipy.signal.resample_poly`` for a rational factor ``up / down``.

    Returns
    -------
    h : array, shape (20 * max(up, down) + 1,)
        Kaiser-windowed (beta 5) low-pass at ``1 / max(up, down)`` of Nyquist, scaled by
        ``up`` so the zero-inserted signal keeps its amplitude.
    """
    max_rate = max(up, down)
    h = signal.firwin(2 * 10 * max_rate + 1, 1.0 / max_rate, window=("kaiser", 5.0))
    return h * up


@dataclass(frozen=True)
class Design:
    """Everything fixed by (config, input info): channel indices, filters, rates."""

    info_in: StreamInfo
    info_out: StreamInfo
    picks: np.ndarray | None  # input column of each output channel; None = all, in order
    reference: Literal["none", "average", "channels"]
    ref_idx: np.ndarray | None  # input columns averaged for a named reference
    sos: np.ndarray | None  # notch sections then band-pass sections
    up: int
    down: int
    fir: np.ndarray | None  # resampling FIR (None: no resampling)
    std_decay: float | None  # per-sample decay of the running averages (None: off)
    std_eps: float


def _indices(names: list[str], info: StreamInfo, field: str) -> np.ndarray:
    lookup = {name: i for i, name in enumerate(info.ch_names)}
    missing = [name for name in names if name not in lookup]
    if missing:
        raise RtbciError(
            f"{field}: channel(s) {missing} not in stream {info.name!r} "
            f"(channels: {', '.join(info.ch_names)})"
        )
    return np.array([lookup[name] for name in names], dtype=np.intp)


def _design_sos(config: PreprocessConfig, info: StreamInfo) -> np.ndarray | None:
    nyquist = info.srate / 2
    sections = []
    for f0 in config.notch or []:
        if f0 >= nyquist:
            raise RtbciError(
                f"notch: {f0:g} Hz must be below the Nyquist frequency ({nyquist:g} Hz) of "
                f"stream {info.name!r}"
            )
        b, a = signal.iirnotch(f0, config.notch_q, fs=info.srate)
        sections.append(signal.tf2sos(b, a))
    if config.bandpass is not None:
        lo, hi = config.bandpass
        if hi >= nyquist:
            raise RtbciError(
                f"bandpass: high edge {hi:g} Hz must be below the Nyquist frequency "
                f"({nyquist:g} Hz) of stream {info.name!r}"
            )
        sos = signal.butter(
            config.filter_order, [lo, hi], btype="bandpass", output="sos", fs=info.srate
        )
        sections.append(sos)
    return np.vstack(sections) if sections else None


def design(config: PreprocessConfig, info: StreamInfo) -> Design:
    needs_rate = (
        config.notch or config.bandpass or config.resample_hz is not None or config.standardize
    )
    if needs_rate and not info.srate > 0:
        raise RtbciError(
            f"preprocess: stream {info.name!r} has no regular sampling rate; filters, "
            "resampling and standardisation need one"
        )
    picks = _indices(config.picks, info, "picks") if config.picks is not None else None
    ref_idx = None
    reference = config.reference
    if isinstance(reference, list):
        ref_idx = _indices(reference, info, "reference")
        reference = "channels"
    up = down = 1
    fir = None
    if config.resample_hz is not None:
        ratio = Fraction(config.resample_hz / info.srate).limit_denominator(1000)
        if ratio == 0:
            raise RtbciError(
                f"resample_hz: {config.resample_hz:g} Hz is too low for stream {info.name!r} "
                f"at {info.srate:g} Hz (the ratio must be at least 1/1000)"
            )
        up, down = ratio.numerator, ratio.denominator
        fir = resample_filter(up, down) if ratio != 1 else None
    srate_out = info.srate * up / down
    std_decay = None
    if config.standardize:
        std_decay = 0.5 ** (1.0 / (config.standardize_halflife_s * srate_out))
    return Design(
        info_in=info,
        info_out=output_info(info, picks, srate_out, config.standardize),
        picks=picks,
        reference=reference,
        ref_idx=ref_idx,
        sos=_design_sos(config, info),
        up=up,
        down=down,
        fir=fir,
        std_decay=std_decay,
        std_eps=config.standardize_eps,
    )


def output_info(
    info: StreamInfo, picks: np.ndarray | None, srate: float, standardized: bool
) -> StreamInfo:
    idx = range(info.n_channels) if picks is None else picks.tolist()
    units = tuple(STANDARDIZED_UNIT if standardized else info.ch_units[i] for i in idx)
    positions = None if info.positions is None else np.asarray(info.positions)[list(idx)]
    return replace(
        info,
        srate=srate,
        ch_names=tuple(info.ch_names[i] for i in idx),
        ch_types=tuple(info.ch_types[i] for i in idx),
        ch_units=units,
        positions=positions,
    )


def resample_times(
    d: Design, t_in: np.ndarray, first_in: int, j: np.ndarray, out: np.ndarray
) -> np.ndarray:
    """Timestamps of output samples ``j`` (global indices) from input timestamps ``t_in``.

    Output ``j`` sits at input position ``j * down / up``: its time is that of input sample
    ``floor(j * down / up)`` plus the fractional remainder times the input period.
    ``t_in[0]`` is the timestamp of global input sample ``first_in``.
    """
    pos = j * d.down
    i, rem = np.divmod(pos, d.up)
    np.take(t_in, i - first_in, out=out, mode="clip")
    out += rem * (1.0 / (d.up * d.info_in.srate))
    return out


def settle_samples(d: Design) -> int:
    """Output samples after a filter restart that still depend on it (see Preprocessor)."""
    settle_in = 0
    if d.sos is not None:
        radius = float(np.max(np.abs(signal.sos2zpk(d.sos)[1])))
        if 0 < radius < 1:  # stable (always, for the notch and Butterworth designs)
            settle_in += math.ceil(math.log(SETTLE_TOLERANCE) / math.log(radius))
    if d.fir is not None:
        settle_in += -(-len(d.fir) // d.up) - 1  # input samples held in the FIR's history
    return -(-settle_in * d.up // d.down)
