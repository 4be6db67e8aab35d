"""A compiled runtime as an :class:`rtbci.models.Decoder` (what the engine schedules)."""

from __future__ import annotations

import numpy as np

from rtbci.errors import RtbciError
from rtbci.models.base import Decoder, DecoderOutput
from rtbci.models.runtimes.base import Runtime


class CompiledDecoder(Decoder):
    """A decoder whose network runs in a loaded :class:`Runtime`.

    The runtime's input must be ``(1, n_samples, n_channels)``: the engine's window layout
    (a network that wants ``(channels, time)`` transposes inside its forward, which the
    exporters fuse). The first output, flattened, is the decoder's output vector.

    Parameters
    ----------
    runtime : Runtime
        Loaded.
    kind : str
        ``embedding`` or ``classes`` (then ``labels`` names the classes and the first output
        holds their probabilities).
    labels : list of str | None
    """

    def __init__(self, runtime: Runtime, kind: str = "embedding",
                 labels: list[str] | None = None):
        shape = runtime.input_shape
        if len(shape) != 3 or shape[0] != 1:
            raise RtbciError(f"{runtime.name}: a decoder's runtime takes (1, n_samples, "
                             f"n_channels) windows, not {shape}")
        if kind not in ("embedding", "classes"):
            raise RtbciError(f"{runtime.name}: compiled decoders output an embedding or "
                             f"classes, not {kind!r}")
        self.runtime, self.kind, self.labels = runtime, kind, labels
        self.n_samples, self.n_channels = shape[1], shape[2]
        self.output_size = int(np.prod(runtime.output_shapes[0]))
        if kind == "classes" and (labels is None or len(labels) != self.output_size):
            raise RtbciError(f"{runtime.name}: {self.output_size} class outputs but labels "
                             f"{labels}")

    def __call__(self, window: np.ndarray) -> DecoderOutput:
        out = self.runtime.run(window)
        vector = (out[0] if isinstance(out, tuple) else out).reshape(-1).copy()
        if self.kind == "classes":
            return DecoderOutput(probabilities=vector, labels=self.labels)
        return DecoderOutput(embedding=vector)

    def describe(self) -> dict:
        """The runtime's description, with the decoder's ``input`` / ``output`` shapes."""
        return {**self.runtime.describe(), "input": [self.n_samples, self.n_channels],
                "output": [self.output_size]}
