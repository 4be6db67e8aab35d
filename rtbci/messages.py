"""The result message: one versioned schema, encoded with msgpack (see docs/messages.md).

numpy arrays travel as typed binary: a map ``{"nd": true, "dtype": "<f4", "shape": [n],
"data": <bytes>}`` that any msgpack client can rebuild without rtbci.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

SCHEMA_VERSION = 1


@dataclass
class Result:
    """One decoder output and the time of every stage.

    All times are seconds on the local LSL clock (``pylsl.local_clock()``).

    Attributes
    ----------
    decoder : str
        Decoder name from the config.
    seq : int
        Sequence number of the trigger that produced it (0-based; skipped triggers leave holes).
    trigger : str
        ``"every"`` (sliding window) or ``"marker"`` (event-locked).
    marker : str | None
        The marker string for ``trigger == "marker"``.
    label : str | None
        The label the decoder's ``on_marker`` pattern gives that marker (``stim/left`` with
        ``on_marker = "stim"`` → ``left``; see :mod:`rtbci.events`); what ``--report`` scores.
    window_start, window_end : float
        Timestamps of the window's first and last sample.
    kind : str
        Output kind: ``"classes"``, ``"retrieval"`` or ``"embedding"``.
    labels : list of str | None
        Class labels (``classes``, aligned with ``probabilities``) or the top-k candidates'
        labels (``retrieval``, aligned with ``ids``/``scores``).
    probabilities : array, shape (n_classes,) | None
    ids : array of int, shape (k,) | None
    scores : array, shape (k,) | None
    embedding : array, shape (n_features,) | None
    importance : array, shape (n_channels,) | None
        Per-channel importance of the decoder's input channels (``options.importance``),
        computed after a result was published and sent with the decoder's next result.
    importance_seq : int | None
        The ``seq`` of the result whose window ``importance`` belongs to.
    t_arrived : float
        Arrival in the engine of the window's last sample.
    t_queued, t_started, t_finished, t_published : float
        Job queued; inference start and end; result handed to the sinks.
    budget_ms : float
        The decoder's latency budget; ``late`` is ``t_published - t_arrived > budget_ms``.
    late : bool
    session : str
    """

    decoder: str
    seq: int
    trigger: str
    window_start: float
    window_end: float
    kind: str
    t_arrived: float
    t_queued: float = 0.0
    t_started: float = 0.0
    t_finished: float = 0.0
    t_published: float = 0.0
    budget_ms: float = 0.0
    late: bool = False
    marker: str | None = None
    label: str | None = None
    labels: list[str] | None = None
    probabilities: np.ndarray | None = None
    ids: np.ndarray | None = None
    scores: np.ndarray | None = None
    embedding: np.ndarray | None = None
    importance: np.ndarray | None = None
    importance_seq: int | None = None
    session: str = ""
    version: int = field(default=SCHEMA_VERSION)

    @property
    def latency_ms(self) -> float:
        """Engine latency: last sample arrived → handed to sinks, in ms."""
        return (self.t_published - self.t_arrived) * 1e3


def _pack_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        arr = obj if obj.flags.c_contiguous else np.ascontiguousarray(obj)  # keeps 0-d shape
        return {"nd": True, "dtype": arr.dtype.str, "shape": list(arr.shape), "data": arr.tobytes()}
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot encode {type(obj).__name__} in a result message")


def _unpack_hook(obj: dict) -> Any:
    if obj.get("nd") is True and "data" in obj:
        return np.frombuffer(obj["data"], dtype=np.dtype(obj["dtype"])).reshape(obj["shape"])
    return obj


def encode(message: Result | dict) -> bytes:
    """Serialise a :class:`Result` (or a status dict) to msgpack bytes."""
    payload = vars(message) if isinstance(message, Result) else message  # shallow, no copies
    return msgpack.packb(payload, default=_pack_default, use_bin_type=True)


def decode(payload: bytes) -> dict:
    """Parse msgpack bytes from rtbci into a dict; typed arrays come back as numpy arrays."""
    return msgpack.unpackb(payload, object_hook=_unpack_hook, raw=False)


def decode_all(payload: bytes) -> list[dict]:
    """Decode concatenated messages (a session's results file); a cut-off last one is dropped."""
    unpacker = msgpack.Unpacker(object_hook=_unpack_hook, raw=False)
    unpacker.feed(payload)
    out = []
    with contextlib.suppress(msgpack.UnpackException, ValueError):
        for message in unpacker:
            out.append(message)
    return out
