"""``lsl``: each decoder's results as an LSL outlet (layout in docs/messages.md)."""

from __future__ import annotations

from typing import Literal

import numpy as np
import pylsl
from pydantic import BaseModel, ConfigDict

from rtbci.messages import Result
from rtbci.sinks.base import Sink


class LSLSinkConfig(BaseModel):
    """The ``[[sinks]]`` entry of kind ``lsl``."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["lsl"] = "lsl"
    prefix: str = "rtbci"  # outlet names: <prefix>-<session>-<decoder>


def channel_labels(decoder: dict) -> list[str]:
    """Channel names of a decoder's result outlet, from its status entry.

    ``classes``: one probability per label; ``retrieval``: ``id1..idK`` then
    ``score1..scoreK``; ``embedding``: ``e0..e{n-1}``; then always ``seq`` and ``latency_ms``.
    """
    kind, size = decoder["kind"], decoder["output_size"]
    if kind == "classes":
        names = [f"p_{label}" for label in decoder["labels"]]
    elif kind == "retrieval":
        k = size // 2
        names = [f"id{i + 1}" for i in range(k)] + [f"score{i + 1}" for i in range(k)]
    else:
        names = [f"e{i}" for i in range(size)]
    return [*names, "seq", "latency_ms"]


class LSLSink(Sink):
    """One irregular-rate float32 outlet per decoder, type ``rtbci.result``.

    Each result is one sample stamped with ``window_end`` (the LSL time of the window's last
    sample), so a client can align it with the data it came from.
    """

    kind = "lsl"
    worker_safe = True  # each decoder's worker pushes to its own outlet (liblsl is thread-safe)

    def __init__(self, config: LSLSinkConfig, session: str):
        self.config, self.session = config, session
        self.outlets: dict[str, tuple[pylsl.StreamOutlet, np.ndarray]] = {}
        self.sent: dict[str, int] = {}  # per decoder: one writer thread each

    async def start(self, status: dict) -> None:
        self.status_changed(status)

    def status_changed(self, status: dict) -> None:
        for name, decoder in status.get("decoders", {}).items():
            if name not in self.outlets and "error" not in decoder:
                self.add_decoder(name, decoder)

    def add_decoder(self, name: str, decoder: dict) -> None:
        labels = channel_labels(decoder)
        info = pylsl.StreamInfo(f"{self.config.prefix}-{self.session}-{name}", "rtbci.result",
                                len(labels), pylsl.IRREGULAR_RATE, pylsl.cf_float32,
                                f"{self.config.prefix}-{self.session}-{name}")
        channels = info.desc().append_child("channels")
        for label in labels:
            channels.append_child("channel").append_child_value("label", label)
        info.desc().append_child_value("kind", decoder["kind"])
        info.desc().append_child_value("session", self.session)
        self.outlets[name] = (pylsl.StreamOutlet(info), np.zeros(len(labels), np.float32))

    def publish(self, result: Result) -> None:
        entry = self.outlets.get(result.decoder)
        if entry is None:
            return
        outlet, sample = entry
        if result.kind == "classes":
            values = result.probabilities
        elif result.kind == "retrieval":
            values = np.concatenate([result.ids, result.scores])
        else:
            values = result.embedding
        n = len(sample) - 2
        sample[:n] = values[:n]
        sample[n], sample[n + 1] = result.seq, result.latency_ms
        outlet.push_chunk(sample, result.window_end)  # one sample, zero copy
        self.sent[result.decoder] = self.sent.get(result.decoder, 0) + 1

    async def close(self) -> None:
        self.outlets.clear()

    def stats(self) -> dict:
        return {"sent": sum(list(self.sent.values()))}  # a snapshot: workers may add keys
