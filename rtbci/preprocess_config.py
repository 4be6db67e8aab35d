"""The ``[preprocess]`` options' schema, apart from the filters that apply it.

:mod:`rtbci.config` validates a configuration with it without importing
:mod:`rtbci.preprocess` (and scipy.signal); ``from rtbci.preprocess import PreprocessConfig``
works as before.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, field_validator

__all__ = ["PreprocessConfig"]


class PreprocessConfig(BaseModel):
    """Streaming preprocessing options; every default is "off".

    Attributes
    ----------
    picks : list of str | None
        Channels to keep, in this order (output channel order). ``None`` keeps all.
    reference : ``"none"`` | ``"average"`` | list of str
        ``"average"`` subtracts, at each sample, the mean over the *picked* channels.
        A list of names subtracts the mean of those channels, looked up in the *input* stream
        (so a reference such as mastoids need not be picked). Applied after picks.
    notch : float | list of float | None
        Notch frequencies in Hz (``scipy.signal.iirnotch``, quality ``notch_q``).
    notch_q : float
        Quality factor of each notch (centre frequency / −3 dB bandwidth), ``> 0``.
    bandpass : (float, float) | None
        Pass band ``(low, high)`` in Hz, ``0 < low < high < srate / 2``: a Butterworth
        band-pass of order ``filter_order`` (``2 * filter_order`` poles), as SOS.
    filter_order : int
        Butterworth order, ``>= 1``.
    resample_hz : float | None
        Output sampling rate in Hz, ``> 0``, realised as ``srate * up / down`` with
        ``up / down = Fraction(resample_hz / srate).limit_denominator(1000)``.
    standardize : bool
        Running per-channel standardisation ``(x - mean) / sqrt(var + standardize_eps)``,
        with exponentially weighted mean and variance (of the deviations from the running
        mean) of half-life ``standardize_halflife_s`` seconds. Both averages start empty and
        are normalised by the total weight of the samples seen so far (bias-corrected), so the
        first outputs are already on the right scale.
    standardize_halflife_s : float
        Half-life of the running mean and variance in seconds, ``> 0``.
    standardize_eps : float
        Added to the running variance, in squared signal units, ``>= 0``. The default only
        avoids a division by zero; raise it (e.g. ``1e-6`` for µV) so flat channels give 0.
    """

    model_config = ConfigDict(extra="forbid")

    picks: list[str] | None = None
    reference: Literal["none", "average"] | list[str] = "none"
    notch: list[float] | float | None = None
    notch_q: float = 30.0
    bandpass: tuple[float, float] | None = None
    filter_order: int = 4
    resample_hz: float | None = None
    standardize: bool = False
    standardize_halflife_s: float = 10.0
    standardize_eps: float = 1e-30

    @field_validator("picks")
    @classmethod
    def _check_picks(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        if not v:
            raise ValueError("expected a non-empty list of channel names, or None for all")
        dup = sorted({name for name in v if v.count(name) > 1})
        if dup:
            raise ValueError(f"expected each channel once, got {dup} more than once")
        return v

    @field_validator("reference", mode="before")
    @classmethod
    def _check_reference(cls, v: object) -> object:
        if isinstance(v, str) and v not in ("none", "average"):
            raise ValueError(f"expected 'none', 'average' or a list of channel names, got {v!r}")
        if isinstance(v, list | tuple) and not v:
            raise ValueError("expected at least one reference channel name")
        return v

    @field_validator("notch")
    @classmethod
    def _check_notch(cls, v: list[float] | float | None) -> list[float] | None:
        if v is None:
            return v
        freqs = [float(v)] if isinstance(v, int | float) else [float(f) for f in v]
        bad = [f for f in freqs if not (math.isfinite(f) and f > 0)]
        if bad:
            raise ValueError(f"expected notch frequencies > 0 Hz, got {bad}")
        return freqs or None

    @field_validator("bandpass", mode="before")
    @classmethod
    def _check_bandpass_pair(cls, v: object) -> object:
        if v is not None and (isinstance(v, str) or not hasattr(v, "__len__") or len(v) != 2):
            raise ValueError(f"expected (low, high) in Hz, got {v!r}")
        return v

    @field_validator("bandpass")
    @classmethod
    def _check_bandpass(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not (math.isfinite(v[1]) and 0 < v[0] < v[1]):
            raise ValueError(f"expected (low, high) in Hz with 0 < low < high, got {v}")
        return v

    @field_validator("notch_q", "standardize_halflife_s", "resample_hz")
    @classmethod
    def _check_positive(cls, v: float | None) -> float | None:
        if v is not None and not (math.isfinite(v) and v > 0):
            raise ValueError(f"expected a finite number > 0, got {v}")
        return v

    @field_validator("filter_order")
    @classmethod
    def _check_order(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"expected an integer >= 1, got {v}")
        return v

    @field_validator("standardize_eps")
    @classmethod
    def _check_eps(cls, v: float) -> float:
        if not (math.isfinite(v) and v >= 0):
            raise ValueError(f"expected a finite number >= 0, got {v}")
        return v
