"""Causal, stateful streaming preprocessing, applied once per chunk on ingest.

The chain, in this order (each step is skipped when its option is off)::

    picks → reference → notch → bandpass → resample → standardize

Every step is causal and carries its state across chunks, so :meth:`Preprocessor.process`
returns the same samples whatever the chunking, and the same as the one-shot reference
:func:`preprocess_offline` (up to float rounding).

Initial state: the notch/band-pass cascade and the resampling FIR start in steady state for
the *first sample of the first chunk* (as if that value had been held forever before it,
``sosfilt_zi(sos) * x0`` per channel, as mne-lsl does), so there is no onset transient.
The running standardisation starts empty and averages over the samples seen so far (see
:class:`PreprocessConfig`).

Non-finite input (NaN, ±Inf in a used channel, after picks and reference) is never fed to
the filters: the samples from the first to the last non-finite one of a chunk come out NaN
in every channel, the notch/band-pass cascade and the resampler restart in steady state on the
next finite sample (as at the start), and the running standardisation skips them (it keeps
its mean and variance). :attr:`Preprocessor.nonfinite` tells which output samples are
affected, the filters' settling after the restart (:attr:`Preprocessor.settle_s`) included.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy import signal

from rtbci.preprocess_config import PreprocessConfig
from rtbci.preprocess_design import (
    Design,
    design,
    resample_times,
    settle_samples,
)
from rtbci.stream import NonFinite, StreamInfo, find_nonfinite

__all__ = ["PreprocessConfig", "Preprocessor", "preprocess_offline"]



def _check_chunk(info: StreamInfo, data: np.ndarray, timestamps: np.ndarray) -> None:
    if data.ndim != 2 or data.shape[1] != info.n_channels:
        raise ValueError(
            f"stream {info.name!r}: expected data of shape (n_samples, {info.n_channels}), "
            f"got {data.shape}"
        )
    if timestamps.shape != (data.shape[0],):
        raise ValueError(
            f"stream {info.name!r}: expected timestamps of shape ({data.shape[0]},), "
            f"got {timestamps.shape}"
        )


class Preprocessor:
    """Streaming preprocessing of one stream's chunks, state carried across chunks.

    Steps, in order: picks → reference → notch → bandpass → resample → standardize (see
    :class:`PreprocessConfig`). Computed in float64, returned as float32.

    The notch/band-pass cascade (one SOS) and the resampling FIR start in steady state for the
    first sample of the first non-empty chunk (``sosfilt_zi(sos) * x0`` per channel; the FIR
    history is filled with ``x0``), so a signal that starts at an offset has no onset
    transient. The first samples of standardised output are estimates from few samples.

    Resampling: the zero-inserted signal (factor ``up``) is filtered by :attr:`fir` and every
    ``down``-th sample kept, the phase carried across chunks; computed in polyphase form (only
    the kept samples, one matrix product per FIR branch) over the chunk plus the last
    ``ceil(len(fir) / up) - 1`` input samples. Equal to ``scipy.signal.upfirdn(fir, x, up,
    down)`` on the whole signal (preceded by copies of its first sample). After ``N`` input samples,
    ``ceil(N * up / down)`` output samples have been returned (each output needs no future
    input). Output sample ``j`` sits at input position ``j * down / up``; its timestamp is the
    timestamp of input sample ``floor(j * down / up)`` plus the fractional part times the input
    period, so output times follow the input clock (drift and jitter included). The FIR's
    group delay, ``10 * max(up, down) / up`` input samples = :attr:`delay_s`, is *not*
    compensated: output ``j`` reflects the input around ``delay_s`` before its timestamp.

    Parameters
    ----------
    config : PreprocessConfig
    info : StreamInfo
        The input stream.
    max_chunk : int
        Largest chunk, in input samples, processed in one go; work buffers are preallocated
        for it and larger chunks are processed in slices of this size.

    Attributes
    ----------
    info : StreamInfo
        The output stream: picked channels (in pick order), output sampling rate, and units
        ``"z-score"`` when standardising.
    sos : array, shape (n_sections, 6) | None
        Notch then band-pass sections, at the input rate.
    up, down : int
        Resampling factor ``up / down`` (both 1 without resampling).
    fir : array, shape (n_taps,) | None
        Resampling FIR (:func:`rtbci.preprocess_design.resample_filter`).
    delay_s : float
        Group delay of the resampling FIR in seconds (0 without resampling). The IIR filters
        have frequency-dependent delay and are not counted.
    settle_samples : int
        Output samples after a restart (on non-finite input) that still depend on it: until
        the slowest pole of the notch/band-pass has decayed to 0.1 %, plus the resampling
        FIR's history (0 without filters or resampling).
    settle_s : float
        The same in seconds, at the output rate.
    nonfinite : NonFinite | None
        After each :meth:`process`: None if the chunk was finite, else its non-finite input
        samples and the output samples they affect (relative to the returned chunk).
    """

    def __init__(self, config: PreprocessConfig, info: StreamInfo, max_chunk: int = 4096):
        if max_chunk < 1:
            raise ValueError(f"max_chunk must be >= 1, got {max_chunk}")
        self.config = config
        self.max_chunk = int(max_chunk)
        self._d = d = design(config, info)
        self.info = d.info_out
        self.sos, self.up, self.down, self.fir = d.sos, d.up, d.down, d.fir
        self.delay_s = 0.0 if d.fir is None else (len(d.fir) - 1) / 2 / (d.up * info.srate)
        self.settle_samples = settle_samples(d)
        self.settle_s = self.settle_samples / self.info.srate if self.settle_samples else 0.0
        self.nonfinite: NonFinite | None = None
        n_in, n_out = info.n_channels, self.info.n_channels
        max_out = -(-self.max_chunk * d.up // d.down) + 1
        self._in = np.empty((self.max_chunk, n_in))  # float64 copy of the input chunk
        self._work = np.empty((self.max_chunk, n_out)) if d.picks is not None else self._in
        n_ref = 0 if d.ref_idx is None else len(d.ref_idx)
        self._ref_cols = np.empty((self.max_chunk, n_ref))
        self._ref = np.empty(self.max_chunk)
        self._out = np.empty((max_out, n_out), dtype=np.float32)
        self._t_out = np.empty(max_out)
        self._count = np.arange(max_out, dtype=np.int64)
        self._weight = np.empty(max_out)  # bias correction of the running averages
        if d.fir is not None:
            # Polyphase form: branch p holds h[p], h[p + up], …, reversed to match windows
            # of input samples ordered oldest first.
            n_taps = -(-len(d.fir) // d.up)
            padded = np.zeros(n_taps * d.up)
            padded[: len(d.fir)] = d.fir
            self._branches = np.ascontiguousarray(padded.reshape(n_taps, d.up).T[:, ::-1])
            self._hist = np.empty((n_taps - 1 + self.max_chunk, n_out))  # history + chunk
            self._resampled = np.empty((max_out, n_out))
        self.reset()

    def __repr__(self) -> str:
        c, i = self.config, self._d.info_in
        steps = []
        if c.picks is not None:
            steps.append(f"picks ({len(c.picks)} ch)")
        if c.reference != "none":
            steps.append(f"reference {c.reference}")
        if c.notch:
            steps.append(f"notch {', '.join(f'{f:g}' for f in c.notch)} Hz")
        if c.bandpass:
            steps.append(f"bandpass {c.bandpass[0]:g}–{c.bandpass[1]:g} Hz")
        if self.fir is not None:
            steps.append(f"resample {i.srate:g}→{self.info.srate:g} Hz")
        if c.standardize:
            steps.append(f"standardize ({c.standardize_halflife_s:g} s)")
        return f"<Preprocessor: {i.name} | {' → '.join(steps) or 'identity'}>"

    @property
    def is_identity(self) -> bool:
        """True when every step is off: the output equals the input (as float32)."""
        d = self._d
        n_in = d.info_in.n_channels
        return (
            (d.picks is None or np.array_equal(d.picks, np.arange(n_in)))
            and d.reference == "none"
            and d.sos is None
            and d.fir is None
            and d.std_decay is None
        )

    def reset(self) -> None:
        """Forget all state: the next chunk starts afresh, in steady state on its first sample."""
        n = self.info.n_channels
        self._zi_sos: np.ndarray | None = None  # None: start in steady state on the next sample
        self._fir_fresh = True  # fill the resampler's history with the next sample
        self._n_resample_in = 0  # input samples that reached the resampler
        self._n_std = 0  # samples that reached the standardisation
        self._z_mean = np.zeros((1, n))
        self._z_var = np.zeros((1, n))

    def process(self, data: np.ndarray, timestamps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Preprocess one chunk.

        Parameters
        ----------
        data : array, shape (n_samples, n_channels_in)
            Samples of the input stream (float32; any real dtype is converted).
        timestamps : array, shape (n_samples,)
            Their timestamps in seconds.

        Returns
        -------
        data_out : array, shape (n_out, n_channels_out), float32
        timestamps_out : array, shape (n_out,), float64 seconds
            ``n_out == n_samples`` without resampling. For chunks up to ``max_chunk`` samples
            these are views of internal buffers, valid until the next call.
        """
        data = np.asarray(data)
        timestamps = np.asarray(timestamps, dtype=np.float64)
        _check_chunk(self._d.info_in, data, timestamps)
        n = len(data)
        if n <= self.max_chunk:
            y, t, self.nonfinite = self._process_chunk(data, timestamps)
            return y, t
        step = self.max_chunk
        parts, nonfinite, n_out = [], None, 0
        for i in range(0, n, step):
            y, t, bad = self._process_chunk(data[i : i + step], timestamps[i : i + step])
            if bad is not None:
                nonfinite = _merge(nonfinite, NonFinite(bad.samples, n_out + bad.start,
                                                        n_out + bad.stop))
            parts.append((y.copy(), t.copy()))
            n_out += len(y)
        self.nonfinite = nonfinite
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def _process_chunk(
        self, data: np.ndarray, ts: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, NonFinite | None]:
        n = len(data)
        if n == 0:
            return self._out[:0], self._t_out[:0], None
        x_in = self._in[:n]
        x_in[...] = data
        x = self._select(x_in)
        bad = find_nonfinite(x)
        if bad is None:
            return *self._chain(x, ts), None
        return self._chain_around(x, ts, bad)

    def _chain(self, x: np.ndarray, ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Filters, resampling, standardisation of finite selected samples ``x`` (scratch)."""
        d, n = self._d, len(x)
        if d.sos is not None:
            x = self._filter(x)
        if d.fir is not None:
            x, t_out = self._resample(x, ts)  # t_out: a view of self._t_out
        else:
            t_out = self._t_out[:n]
            t_out[...] = ts
        n_out = len(x)
        if d.std_decay is not None and n_out:
            x = self._standardize(x)
        out = self._out[:n_out]
        out[...] = x
        return out, t_out

    def _chain_around(
        self, x: np.ndarray, ts: np.ndarray, bad: NonFinite
    ) -> tuple[np.ndarray, np.ndarray, NonFinite]:
        """Process the finite rows before and after ``bad``'s span, NaN for the span."""
        parts = []  # (data, timestamps) copies: each step reuses the output buffers
        for rows, run in ((slice(0, bad.start), self._chain),
                          (slice(bad.start, bad.stop), self._skip),
                          (slice(bad.stop, len(x)), self._chain)):
            y, t = run(x[rows], ts[rows]) if rows.start < rows.stop else (self._out[:0], ts[:0])
            parts.append((y.copy(), t.copy()))
        start = len(parts[0][1])
        stop = start + len(parts[1][1])
        n_out = stop + len(parts[2][1])
        out, t_out = self._out[:n_out], self._t_out[:n_out]
        np.concatenate([p[0] for p in parts], out=out)
        np.concatenate([p[1] for p in parts], out=t_out)
        return out, t_out, NonFinite(bad.samples, start, stop + self.settle_samples)

    def _skip(self, x: np.ndarray, ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Non-finite rows: NaN output at the output rate; filters restart after them."""
        d, n = self._d, len(x)
        self._zi_sos = None
        if d.fir is None:
            t_out = self._t_out[:n]
            t_out[...] = ts
        else:
            first, last = self._n_resample_in, self._n_resample_in + n
            j0, j1 = -(-first * d.up // d.down), -(-last * d.up // d.down)
            t_out = resample_times(d, ts, first, self._count[: j1 - j0] + j0,
                                    self._t_out[: j1 - j0])
            self._n_resample_in = last
            self._fir_fresh = True
        out = self._out[: len(t_out)]
        out.fill(np.nan)
        return out, t_out

    def _select(self, x_in: np.ndarray) -> np.ndarray:
        """Picks then reference, into the float64 work buffer."""
        d, n = self._d, len(x_in)
        x = x_in
        if d.picks is not None:
            x = np.take(x_in, d.picks, axis=1, out=self._work[:n], mode="clip")
        if d.reference == "average":
            ref = np.mean(x, axis=1, out=self._ref[:n])
        elif d.reference == "channels":
            cols = np.take(x_in, d.ref_idx, axis=1, out=self._ref_cols[:n], mode="clip")
            ref = np.mean(cols, axis=1, out=self._ref[:n])
        else:
            return x
        x -= ref[:, None]
        return x

    def _filter(self, x: np.ndarray) -> np.ndarray:
        if self._zi_sos is None:
            self._zi_sos = signal.sosfilt_zi(self._d.sos)[:, :, None] * x[0]
        y, self._zi_sos = signal.sosfilt(self._d.sos, x, axis=0, zi=self._zi_sos)
        return y

    def _resample(self, x: np.ndarray, ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Polyphase FIR: output j = branch (j*down % up) · the inputs up to j*down // up."""
        d, n, buf = self._d, len(x), self._hist
        n_taps = self._branches.shape[1]
        keep = n_taps - 1  # history rows carried between chunks
        if self._fir_fresh:
            buf[:keep] = x[0]  # steady state: the first sample held forever before it
            self._fir_fresh = False
        buf[keep : keep + n] = x
        first, last = self._n_resample_in, self._n_resample_in + n
        j0, j1 = -(-first * d.up // d.down), -(-last * d.up // d.down)
        # windows[k]: the n_taps inputs ending at global input first + k, oldest first
        windows = sliding_window_view(buf[: keep + n], n_taps, axis=0)
        y = self._resampled[: j1 - j0]
        for c in range(min(d.up, j1 - j0)):  # outputs c, c + up, … share one branch
            i, phase = divmod((j0 + c) * d.down, d.up)
            rows = windows[i - first :: d.down][: len(range(c, j1 - j0, d.up))]
            np.matmul(rows, self._branches[phase], out=y[c :: d.up])
        t = resample_times(d, ts, first, self._count[: j1 - j0] + j0, self._t_out[: j1 - j0])
        buf[:keep] = buf[n : n + keep]
        self._n_resample_in = last
        return y, t

    def _standardize(self, x: np.ndarray) -> np.ndarray:
        """Running (x - mean) / sqrt(var + eps); ``x`` (owned scratch) is overwritten."""
        d, n = self._d, len(x)
        a = d.std_decay
        b, den = [1.0 - a], [1.0, -a]
        weight = self._weight[:n]  # total weight of the samples seen so far: 1 - a**(k+1)
        np.power(a, self._count[:n] + (self._n_std + 1), out=weight)
        np.subtract(1.0, weight, out=weight)
        mean, self._z_mean = signal.lfilter(b, den, x, axis=0, zi=self._z_mean)
        mean /= weight[:, None]
        x -= mean
        var, self._z_var = signal.lfilter(b, den, np.square(x, out=mean), axis=0, zi=self._z_var)
        var /= weight[:, None]
        var += d.std_eps
        x /= np.sqrt(var, out=var)
        self._n_std += n
        return x


def _merge(a: NonFinite | None, b: NonFinite) -> NonFinite:
    """One span covering both (``b`` after ``a``)."""
    if a is None:
        return b
    return NonFinite(a.samples + b.samples, a.start, max(a.stop, b.stop))


def preprocess_offline(
    config: PreprocessConfig, info: StreamInfo, data: np.ndarray, timestamps: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Apply the causal chain of :class:`Preprocessor` to a whole signal in one call.

    The reference that streaming output must equal for any chunking; written with one-shot
    scipy calls (``sosfilt``, ``upfirdn`` on a signal padded with its first sample,
    ``lfilter``) rather than the streaming code.

    Parameters
    ----------
    config : PreprocessConfig
    info : StreamInfo
    data : array, shape (n_samples, n_channels_in)
    timestamps : array, shape (n_samples,), seconds

    Returns
    -------
    data_out : array, shape (n_out, n_channels_out), float32
    timestamps_out : array, shape (n_out,), float64 seconds
    """
    d = design(config, info)
    x = np.asarray(data, dtype=np.float64)
    t = np.asarray(timestamps, dtype=np.float64)
    _check_chunk(info, x, t)
    if len(x) == 0:
        return np.empty((0, d.info_out.n_channels), np.float32), np.empty(0)
    ref = x[:, d.ref_idx].mean(axis=1, keepdims=True) if d.reference == "channels" else 0.0
    x = x[:, d.picks] if d.picks is not None else x.copy()
    if d.reference == "average":
        x -= x.mean(axis=1, keepdims=True)
    x -= ref
    if d.sos is not None:
        x = signal.sosfilt(d.sos, x, axis=0, zi=signal.sosfilt_zi(d.sos)[:, :, None] * x[0])[0]
    if d.fir is not None:
        x, t = _resample_offline(d, x, t)
    if d.std_decay is not None:
        x = _standardize_offline(d, x)
    return x.astype(np.float32), t


def _resample_offline(d: Design, x: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n_pad = -(-(len(d.fir) - 1) // (d.up * d.down)) * d.down  # >= history, multiple of down
    padded = np.concatenate([np.repeat(x[:1], n_pad, axis=0), x])
    offset = n_pad // d.down * d.up
    n_out = -(-len(x) * d.up // d.down)
    y = signal.upfirdn(d.fir, padded, d.up, d.down, axis=0)[offset : offset + n_out]
    return y, resample_times(d, t, 0, np.arange(n_out), np.empty(n_out))


def _standardize_offline(d: Design, x: np.ndarray) -> np.ndarray:
    a = d.std_decay
    b, den = [1.0 - a], [1.0, -a]
    weight = (1.0 - a ** np.arange(1, len(x) + 1, dtype=np.float64))[:, None]
    dev = x - signal.lfilter(b, den, x, axis=0) / weight
    var = signal.lfilter(b, den, dev**2, axis=0) / weight
    return dev / np.sqrt(var + d.std_eps)
