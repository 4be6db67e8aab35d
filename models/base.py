"""The decoder interface: a fixed-shape window in, one output out."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

OUTPUT_KINDS = ("classes", "retrieval", "embedding")


@dataclass
class DecoderOutput:
    """What a decoder returns for one window (fields by ``Decoder.kind``).

    probabilities : array (n_classes,)  — ``classes``
    ids, scores : arrays (k,)           — ``retrieval`` (labels: the candidates' labels)
    embedding : array (n_features,)     — ``embedding`` (or alongside the others, on request)
    importance : array (n_channels,)      — per-channel importance, on request (``motor-gnn``)
    """

    probabilities: np.ndarray | None = None
    ids: np.ndarray | None = None
    scores: np.ndarray | None = None
    labels: list[str] | None = None
    embedding: np.ndarray | None = None
    importance: np.ndarray | None = None


class Decoder(ABC):
    """A decoder bound to one stream's layout.

    Attributes
    ----------
    kind : str
        ``classes``, ``retrieval`` or ``embedding``.
    labels : list of str | None
        Class labels for ``classes``.
    n_samples, n_channels : int
        The window shape it takes: ``(n_samples, n_channels)`` float32.
    output_size : int
        Length of the output vector (classes, 2·k for retrieval ids + scores, or features).
    window_start : int
        First sample of an event-locked window relative to the marker (checkpoints set it).
    explains : bool
        Whether :meth:`importance` gives per-channel importance (the scheduler then calls it
        after each result was published, on the decoder's own thread).
    """

    kind: str = "embedding"
    labels: list[str] | None = None
    n_samples: int
    n_channels: int
    output_size: int
    window_start: int = 0
    explains: bool = False

    @abstractmethod
    def __call__(self, window: np.ndarray) -> DecoderOutput:
        """Decode one window of shape ``(n_samples, n_channels)``, float32."""

    def importance(self, window: np.ndarray) -> np.ndarray | None:
        """Per-channel importance ``(n_inputs,)`` for ``window`` ``(n_samples, n_channels)``,
        the window of the last call (None: this decoder has none)."""
        return None

    def describe(self) -> dict:
        """Backend, device, precision and shapes (logged, and sent in the status message)."""
        return {"backend": "numpy", "device": "cpu", "precision": "fp32",
                "input": [self.n_samples, self.n_channels], "output": [self.output_size]}
