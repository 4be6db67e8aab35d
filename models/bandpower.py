"""``builtin:bandpower``: log band power per channel, optionally through a linear classifier.

Classifier files (``options.classifier``) are ``.npz`` with ``coef (n_classes, n_features)``,
``intercept (n_classes,)`` and ``labels (n_classes,)``; features are ordered channel-major
(``feature = channel * n_bands + band``). :func:`fit_lda` makes one from labelled windows.

:meth:`BandPower.to_torch` gives its torch twin, :class:`BandPowerNet` (imported lazily, so
this module works without torch), which the compiled runtimes (``rtbci.models.runtimes``) run.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
from scipy import signal

from rtbci.errors import RtbciError
from rtbci.models.base import Decoder, DecoderOutput

DEFAULT_BANDS = ((4.0, 8.0), (8.0, 13.0), (13.0, 30.0))
DFT_MAX_COLUMNS = 64  # bands' bins × 2 (cos, sin) up to which one matmul beats the full rfft


class BandPower(Decoder):
    """log10 power in frequency bands per channel: ``log10 Σ_band |rfft(hann · (x − mean))|²``.

    When the bands hold few bins (``2 · n_bins ≤ DFT_MAX_COLUMNS``, e.g. 13 bins for
    4–30 Hz over 500 ms), the DFT at those bins is one float32 matmul with a precomputed
    ``[hann·cos | hann·sin]`` matrix whose column means are removed (that is the mean removal:
    ``Σ_t (x_t − x̄) d_t = Σ_t x_t (d_t − d̄)``; the first sample is subtracted before, so no
    large DC offset cancels in float32): cheaper than the full rfft, and equal to scipy's
    periodogram within float32 rounding (tests/models/test_bandpower.py). Otherwise the rfft
    runs, in float64.

    Parameters
    ----------
    n_samples, n_channels : int
        Window shape.
    srate : float
        Sampling rate in Hz.
    bands : sequence of (low, high) in Hz
        Bins with ``low <= f < high`` are summed.
    classifier : path | None
        A ``.npz`` linear classifier; output is then softmax class probabilities.
    """

    def __init__(self, n_samples: int, n_channels: int, srate: float,
                 bands=DEFAULT_BANDS, classifier: str | Path | None = None):
        self.n_samples, self.n_channels, self.srate = n_samples, n_channels, srate
        self.bands = [tuple(map(float, b)) for b in bands]
        freqs = np.fft.rfftfreq(n_samples, 1.0 / srate)
        self._band_matrix = np.array([(freqs >= lo) & (freqs < hi) for lo, hi in self.bands],
                                     dtype=np.float64)  # (n_bands, n_freqs)
        empty = [b for b, row in zip(self.bands, self._band_matrix) if not row.any()]
        if empty:
            raise RtbciError(f"bandpower: band {empty[0]} Hz holds no frequency bin of a "
                             f"{n_samples}-sample window at {srate:g} Hz")
        self._taper = signal.get_window("hann", n_samples)[:, None]  # periodic Hann
        self._work = np.empty((n_samples, n_channels))
        self._dft = self._band_sums = None
        bins = np.flatnonzero(self._band_matrix.any(axis=0))
        if 2 * len(bins) <= DFT_MAX_COLUMNS:
            angle = 2 * np.pi * np.outer(np.arange(n_samples), bins) / n_samples
            dft = np.hstack([self._taper * np.cos(angle), self._taper * np.sin(angle)])
            dft -= dft.mean(axis=0)  # the mean removal, folded in
            self._dft = np.ascontiguousarray(dft.T, dtype=np.float32)  # (2 n_bins, n_samples)
            sums = self._band_matrix[:, bins]  # (n_bands, n_bins)
            self._band_sums = np.hstack([sums, sums]).astype(np.float32)  # (n_bands, 2 n_bins)
            self._spectrum = np.empty((2 * len(bins), n_channels), np.float32)
            self._offset_free = np.empty((n_samples, n_channels), np.float32)
        self.n_features = n_channels * len(self.bands)
        self.kind, self.output_size = "embedding", self.n_features
        self.coef = self.intercept = None
        if classifier is not None:
            self._load_classifier(Path(classifier))

    def _load_classifier(self, path: Path) -> None:
        try:
            with np.load(path) as f:
                coef, intercept, labels = f["coef"], f["intercept"], f["labels"]
        except (OSError, KeyError, ValueError) as exc:
            raise RtbciError(f"{path}: not a bandpower classifier (.npz with coef, intercept, "
                             f"labels): {exc}") from None
        if coef.shape != (len(labels), self.n_features) or intercept.shape != (len(labels),):
            raise RtbciError(f"{path}: coef has shape {coef.shape}, expected ({len(labels)}, "
                             f"{self.n_features}) for {self.n_channels} channels × "
                             f"{len(self.bands)} bands")
        self.coef, self.intercept = coef.astype(np.float64), intercept.astype(np.float64)
        self.kind, self.labels, self.output_size = "classes", [str(s) for s in labels], len(labels)

    def features(self, window: np.ndarray) -> np.ndarray:
        """Log band power, shape ``(n_channels * n_bands,)``, channel-major."""
        if self._dft is not None:
            # minus the first sample: no large DC offset left to cancel in float32 sums
            x = np.subtract(window, window[:1], out=self._offset_free, casting="same_kind")
            spectrum = np.matmul(self._dft, x, out=self._spectrum)  # (2 n_bins, n_ch)
            spectrum *= spectrum
            bands = self._band_sums @ spectrum  # (n_bands, n_channels)
            return np.log10(bands.T.ravel() + 1e-20)
        work = self._work
        np.subtract(window, window.mean(axis=0, dtype=np.float64), out=work)  # DC offsets
        work *= self._taper
        power = np.abs(np.fft.rfft(work, axis=0)) ** 2  # (n_freqs, n_channels)
        bands = self._band_matrix @ power  # (n_bands, n_channels)
        return np.log10(bands.T.ravel() + 1e-20)

    def __call__(self, window: np.ndarray) -> DecoderOutput:
        feats = self.features(window)
        if self.coef is None:
            return DecoderOutput(embedding=feats.astype(np.float32))
        scores = self.coef @ feats + self.intercept
        scores -= scores.max()
        prob = np.exp(scores)
        prob /= prob.sum()
        return DecoderOutput(probabilities=prob.astype(np.float32), labels=self.labels)

    def to_torch(self):
        """Its torch twin, a :class:`BandPowerNet` with the same bands and classifier."""
        return _bandpower_net()(self.n_samples, self.n_channels, self.srate, self.bands,
                                coef=self.coef, intercept=self.intercept)


def __getattr__(name: str):
    if name == "BandPowerNet":  # defined on first use: torch is optional
        return _bandpower_net()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def _bandpower_net() -> type:
    """Define :class:`BandPowerNet` (needs torch)."""
    try:
        import torch
    except ImportError:
        raise RtbciError("bandpower: the torch twin (BandPowerNet) needs torch "
                         "(pip install torch)") from None

    class BandPowerNet(torch.nn.Module):
        """:class:`BandPower` in torch: ``(1, n_samples, n_channels)`` → log10 band powers.

        Same maths as :meth:`BandPower.features`, in float32: mean removal over time, a
        periodic Hann taper and the DFT at the bands' bins as one matmul with a precomputed
        ``[taper·cos | taper·sin]`` matrix (no ``torch.fft``, so it exports to ONNX and
        TensorRT), squared magnitudes summed per band by a second matmul, ``log10(· + 1e-20)``.
        With ``coef`` and ``intercept``, the linear classifier and a softmax follow.

        Parameters
        ----------
        n_samples, n_channels, srate, bands
            As :class:`BandPower`.
        coef : array (n_classes, n_channels * n_bands) | None
        intercept : array (n_classes,) | None

        Notes
        -----
        input : ``(batch, n_samples, n_channels)`` float32, the engine's window layout
        output : ``(batch, n_channels * n_bands)`` log10 power, channel-major
            (``feature = channel * n_bands + band``), or ``(batch, n_classes)`` probabilities
        """

        def __init__(self, n_samples: int, n_channels: int, srate: float,
                     bands=DEFAULT_BANDS, coef=None, intercept=None):
            super().__init__()
            reference = BandPower(n_samples, n_channels, srate, bands)  # validates the bands
            bins = np.flatnonzero(reference._band_matrix.any(axis=0))
            angle = 2 * np.pi * np.outer(np.arange(n_samples), bins) / n_samples
            taper = reference._taper  # (n_samples, 1)
            dft = np.hstack([taper * np.cos(angle), taper * np.sin(angle)])  # (n, 2·n_bins)
            sums = reference._band_matrix[:, bins].T  # (n_bins, n_bands)
            self.n_samples, self.n_channels = n_samples, n_channels
            self.n_features = reference.n_features
            self.register_buffer("dft", torch.tensor(dft, dtype=torch.float32))
            self.register_buffer("band_sums", torch.tensor(np.vstack([sums, sums]),
                                                           dtype=torch.float32))
            self.classifier = None
            if coef is not None:
                coef = np.asarray(coef, dtype=np.float64)
                intercept = np.zeros(len(coef)) if intercept is None else np.asarray(intercept)
                if coef.shape[1:] != (self.n_features,) or intercept.shape != coef.shape[:1]:
                    raise RtbciError(f"bandpower: coef {coef.shape} / intercept "
                                     f"{intercept.shape} do not fit {self.n_features} features")
                # Softmax ignores what all classes' scores share: centring the weights across
                # classes keeps the probabilities and shrinks the float32 sums ~20× (LDA scores
                # are ~1e3 apart from zero but only a few units apart from each other).
                self.classifier = torch.nn.Linear(self.n_features, len(coef))
                with torch.no_grad():
                    self.classifier.weight.copy_(torch.from_numpy(coef - coef.mean(axis=0)))
                    self.classifier.bias.copy_(torch.from_numpy(intercept - intercept.mean()))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x - x.mean(dim=1, keepdim=True)
            spectrum = torch.matmul(x.transpose(1, 2), self.dft)  # (batch, ch, 2·n_bins)
            power = torch.matmul(spectrum * spectrum, self.band_sums)  # (batch, ch, n_bands)
            features = torch.log10(power + 1e-20).flatten(1)
            if self.classifier is None:
                return features
            return torch.softmax(self.classifier(features), dim=-1)

    BandPowerNet.__module__, BandPowerNet.__qualname__ = __name__, "BandPowerNet"
    return BandPowerNet


def fit_lda(features: np.ndarray, labels: list[str], shrinkage: float = 0.1) -> dict:
    """Shrinkage LDA on feature vectors: returns ``coef``, ``intercept``, ``labels`` for np.savez.

    Parameters
    ----------
    features : array, shape (n_windows, n_features)
    labels : sequence of str, length n_windows
    shrinkage : float in [0, 1]
        Weight of the scaled identity in the pooled covariance.
    """
    classes = sorted(set(labels))
    y = np.array([classes.index(lab) for lab in labels])
    means = np.array([features[y == k].mean(axis=0) for k in range(len(classes))])
    centred = features - means[y]
    cov = centred.T @ centred / max(1, len(features) - len(classes))
    cov = (1 - shrinkage) * cov + shrinkage * np.trace(cov) / len(cov) * np.eye(len(cov))
    coef = np.linalg.solve(cov, means.T).T  # (n_classes, n_features)
    priors = np.bincount(y, minlength=len(classes)) / len(y)
    intercept = -0.5 * np.einsum("kf,kf->k", coef, means) + np.log(priors)
    return {"coef": coef, "intercept": intercept, "labels": np.array(classes)}


def train_on_simulator(profile: str = "eeg64", seed: int = 100, subject: int = 0,
                       snr: float = 1.0, minutes: float = 4.0, window_s: float = 0.6,
                       bands=((1.0, 4.0), (4.0, 8.0), (8.0, 13.0))) -> tuple[dict, float]:
    """Fit :func:`fit_lda` on marker-locked windows ``[0, window_s)`` of a simulated session.

    Returns the classifier (for ``np.savez``) and its accuracy on the held-out last third.
    """
    from rtbci.devices.simulate import SignalModel, get_profile

    p = get_profile(profile)
    model = SignalModel(p, seed=seed, snr=snr, subject=subject)
    data, events = model.next(int(minutes * 60 * p.srate))
    n = int(round(window_s * p.srate))
    bp = BandPower(n, len(p.ch_names), p.srate, bands=bands)
    trials = [(s, label) for s, label in events if s + n <= len(data)]
    feats = np.array([bp.features(data[s:s + n]) for s, _ in trials])
    labels = [label for _, label in trials]
    split = 2 * len(trials) // 3
    held_out = fit_lda(feats[:split], labels[:split], shrinkage=0.3)
    scores = feats[split:] @ held_out["coef"].T + held_out["intercept"]
    accuracy = float(np.mean(held_out["labels"][scores.argmax(1)] == np.array(labels[split:])))
    return fit_lda(feats, labels, shrinkage=0.3), accuracy


def main(argv: list[str] | None = None) -> None:
    """``python -m rtbci.models.bandpower --out FILE``: the demo's classifier."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m rtbci.models.bandpower",
                                     description="Fit the band-power LDA on a simulated session.")
    parser.add_argument("--profile", default="eeg64")
    parser.add_argument("--seed", type=int, default=100, help="session seed (default 100)")
    parser.add_argument("--subject", type=int, default=0, help="subject seed (default 0)")
    parser.add_argument("--snr", type=float, default=1.0)
    parser.add_argument("--minutes", type=float, default=4.0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    clf, accuracy = train_on_simulator(args.profile, args.seed, args.subject, args.snr,
                                       args.minutes)
    np.savez(args.out, **clf)
    print(f"{args.out}: {len(clf['labels'])} classes, held-out accuracy {accuracy:.2f} "
          f"(chance {1 / len(clf['labels']):.2f})")


if __name__ == "__main__":
    main()
