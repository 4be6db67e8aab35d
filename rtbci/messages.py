"""The result message: one versioned schema, encoded with msgpack (see docs/messages.md).

numpy arrays travel as typed binary: a map ``{"nd": true, "dtype": "<f4", "shape": [n],
"data": <bytes>}`` that any msgpack client can rebuild without rtbci.
"""

from __future__ import annotations

import contextlib
import math
import re
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
    model : str | None
        The identity of the model that produced it (:func:`rtbci.control.model_hash`: 12 hex
        characters); it changes when the decoder is reloaded (``rtbci ctl``). None in
        messages from before it existed.
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
    model: str | None = None
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


DECODER_NAME = re.compile(r"[A-Za-z0-9_.-]{1,255}")  # a config's names, length-bounded
MAX_DECODER_NAMES = 256  # distinct decoder names a consumer (listen, the display) tracks
_TIMES = ("window_end", "t_published", "t_arrived")
_OPTIONAL = ("kind", "marker", "label", "labels", "probabilities", "ids", "scores",
             "embedding", "importance", "importance_seq", "model")
_NUMERIC, _INTEGER = "iuf", "iu"  # numpy dtype kinds


def _array(value: Any, kinds: str, ndim: int | None = 1) -> bool:
    return (isinstance(value, np.ndarray) and value.dtype.kind in kinds and value.size > 0
            and (value.ndim >= 1 if ndim is None else value.ndim == ndim))


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def result_problem(message: Any) -> str | None:
    """Why a decoded message is not a well-formed result: the field at fault, or None.

    Checks what a consumer (``rtbci listen``, the display) relies on: ``decoder`` a name
    (``[A-Za-z0-9_.-]``, at most 255 characters); ``seq`` an int; ``late`` a bool; the times
    finite numbers; ``labels`` a list of str; ``probabilities`` 1-D numeric (as many as
    ``labels``); ``ids`` 1-D int with ``scores`` 1-D numeric of the same length;
    ``embedding`` numeric; ``importance`` 1-D numeric; ``kind``, ``marker``, ``label``,
    ``model`` str.
    Optional fields may be missing or None.
    """
    if not isinstance(message, dict):
        return "not a map"
    get = message.get
    if not isinstance(get("decoder"), str) or not DECODER_NAME.fullmatch(get("decoder")):
        return "decoder"
    if not isinstance(get("seq"), int) or isinstance(get("seq"), bool):
        return "seq"
    if not isinstance(get("late"), bool):
        return "late"
    for name in _TIMES:
        if not _number(get(name)):
            return name
    for name in ("kind", "marker", "label", "model"):
        if get(name) is not None and not isinstance(get(name), str):
            return name
    labels = get("labels")
    if labels is not None and not (isinstance(labels, list)
                                   and all(isinstance(x, str) for x in labels)):
        return "labels"
    return _arrays_problem(get("probabilities"), get("ids"), get("scores"), get("embedding"),
                           get("importance"), labels)


def _arrays_problem(probabilities, ids, scores, embedding, importance, labels) -> str | None:
    if probabilities is not None and not (_array(probabilities, _NUMERIC) and (
            not labels or len(labels) == len(probabilities))):
        return "probabilities"
    if ids is not None and not _array(ids, _INTEGER):
        return "ids"
    if ids is not None and not (_array(scores, _NUMERIC) and len(scores) == len(ids)):
        return "scores"
    if ids is not None and probabilities is None and labels and len(labels) != len(ids):
        return "labels"
    if embedding is not None and not _array(embedding, _NUMERIC, ndim=None):
        return "embedding"
    if importance is not None and not _array(importance, _NUMERIC):
        return "importance"
    return None


def as_result(payload: bytes) -> dict | None:
    """The well-formed result in an MQTT payload (:func:`result_problem`), with every optional
    field present (None when missing); None for anything else (foreign or damaged)."""
    try:
        message = decode(payload)
    except Exception:  # noqa: BLE001 - any undecodable payload is foreign
        return None
    if result_problem(message) is not None:
        return None
    for name in _OPTIONAL:
        message.setdefault(name, None)
    return message
