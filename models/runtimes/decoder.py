"""A compiled runtime as an :class:`rtbci.models.Decoder` (what the engine schedules)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from rtbci.errors import RtbciError
from rtbci.models.base import Decoder, DecoderOutput
from rtbci.models.runtimes.base import Runtime


class CompiledDecoder(Decoder):
    """A decoder whose network runs in a loaded :class:`Runtime`.

    The runtime's input must be ``(1, n_samples, n_inputs)``: the engine's window layout
    (a network that wants ``(channels, time)`` transposes inside its forward, which the
    exporters fuse). The first output, flattened, is the network's output vector.

    Parameters
    ----------
    runtime : Runtime
        Loaded.
    kind : str
        ``embedding``; ``classes`` (``labels`` names the classes and the output holds their
        probabilities); or ``retrieval`` (the output is an embedding, compared by cosine
        similarity with each row of ``bank``; the result is the ``top_k`` best rows, and
        ``labels`` names the rows).
    labels : list of str | None
    picks : array of int (n_inputs,) | None
        Stream channels fed to the network, in its input order (None: all, in order).
    n_channels : int | None
        Channels of the stream's window (default: ``n_inputs``).
    bank : array (n_candidates, ...) | None
        Retrieval candidates, each of the output's flattened size.
    top_k : int
        Candidates per retrieval result.
    explain : callable(window (n_samples, n_inputs)) -> array (n_inputs,) | None
        Per-channel importance, computed by :meth:`importance` (slower: off the compiled
        path; the scheduler calls it after the result was published).
    channel_names : list of str | None
        Names of the network's input channels, in order (reported in the engine status).
    """

    def __init__(self, runtime: Runtime, kind: str = "embedding",
                 labels: list[str] | None = None, *, picks: np.ndarray | None = None,
                 n_channels: int | None = None, bank: np.ndarray | None = None,
                 top_k: int = 5,
                 explain: Callable[[np.ndarray], np.ndarray] | None = None,
                 channel_names: list[str] | None = None):
        shape = runtime.input_shape
        if len(shape) != 3 or shape[0] != 1:
            raise RtbciError(f"{runtime.name}: a decoder's runtime takes (1, n_samples, "
                             f"n_channels) windows, not {shape}")
        if kind not in ("embedding", "classes", "retrieval"):
            raise RtbciError(f"{runtime.name}: unknown output kind {kind!r}")
        self.runtime, self.kind, self.labels, self._explain = runtime, kind, labels, explain
        self.explains = explain is not None
        self.n_samples, self.n_channels = shape[1], n_channels or shape[2]
        self.picks, self.channel_names = picks, channel_names
        self._input = np.empty((shape[1], shape[2]), np.float32) if picks is not None else None
        size = int(np.prod(runtime.output_shapes[0]))
        self.output_size = size
        if kind == "classes" and (labels is None or len(labels) != size):
            raise RtbciError(f"{runtime.name}: {size} class outputs but labels {labels}")
        if kind == "retrieval":
            self._bank = self._normalised_bank(bank, size, labels)
            self._scores = np.empty(len(self._bank), np.float32)
            self.top_k = min(top_k, len(self._bank))
            self.output_size = 2 * self.top_k

    def _normalised_bank(self, bank, size: int, labels) -> np.ndarray:
        if bank is None or int(np.prod(bank.shape[1:])) != size:
            raise RtbciError(f"{self.runtime.name}: the candidate bank "
                             f"{None if bank is None else bank.shape} does not match the "
                             f"network's {size} outputs")
        if labels is None or len(labels) != len(bank):
            raise RtbciError(f"{self.runtime.name}: {len(bank)} candidates but "
                             f"{0 if labels is None else len(labels)} labels")
        flat = np.asarray(bank, np.float32).reshape(len(bank), -1)
        return flat / np.maximum(np.linalg.norm(flat, axis=1, keepdims=True), 1e-12)

    def __call__(self, window: np.ndarray) -> DecoderOutput:
        if self.picks is not None:
            window = np.take(window, self.picks, axis=1, out=self._input)
        out = self.runtime.run(window)
        vector = (out[0] if isinstance(out, tuple) else out).reshape(-1)
        if self.kind == "classes":
            return DecoderOutput(probabilities=vector.copy(), labels=self.labels)
        if self.kind == "retrieval":
            scores = np.matmul(self._bank, vector, out=self._scores)
            scores /= max(float(np.linalg.norm(vector)), 1e-12)  # cosine similarities
            best = np.argpartition(scores, len(scores) - self.top_k)[-self.top_k:]
            best = best[np.argsort(-scores[best])]
            return DecoderOutput(ids=best, scores=scores[best],
                                 labels=[self.labels[i] for i in best])
        return DecoderOutput(embedding=vector.copy())

    def importance(self, window: np.ndarray) -> np.ndarray | None:
        """Per-channel importance ``(n_inputs,)`` of ``window`` ``(n_samples, n_channels)``
        (the stream's channels; this picks the network's inputs), or None without ``explain``."""
        if self._explain is None:
            return None
        return self._explain(window if self.picks is None else window[:, self.picks])

    def describe(self) -> dict:
        """The runtime's description, with the decoder's ``input`` / ``output`` shapes."""
        return {**self.runtime.describe(), "input": [self.n_samples, self.n_channels],
                "output": [self.output_size]}
