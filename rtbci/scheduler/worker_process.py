"""The worker process of a decoder with ``isolation = "process"``: its side of the hop.

:func:`child_main` runs in the spawned child (:class:`rtbci.scheduler.process.ProcessDecoder`
starts it): it sets its CPU placement, builds the decoder, warms it up, then answers one
request at a time (:func:`_serve`): ``map`` (the two shared-memory segments, the window's
mapped read-only), ``call`` / ``importance`` (decode the mapped window; the output's arrays
go into the result segment and a few msgpack bytes say where) and ``stop``.

Requests and replies are framed as :class:`multiprocessing.connection.Connection` frames them
(:func:`frame`, :func:`read_message`), so the build's messages can use the Connection itself
while the hot path costs one ``os.write`` and one ``os.read`` a side.
"""

from __future__ import annotations

import logging
import mmap
import os
import signal
import struct
import time
import traceback
from multiprocessing.connection import Connection
from pathlib import Path

import msgpack
import numpy as np

from rtbci.errors import RtbciError, describe_exception
from rtbci.models.base import Decoder, DecoderOutput

log = logging.getLogger("rtbci.scheduler")

OUTPUT_BYTES = 1 << 20  # the result segment: every array of one output must fit
READ_BYTES = 1 << 16  # a request or a reply: one read
_HEADER = struct.Struct("!i")  # multiprocessing.connection's frame header
_FIELDS = ("probabilities", "ids", "scores", "embedding", "importance")


def child_main(conn: Connection, config, info, where, base_dir, preprocess) -> None:
    """The worker process: set its CPU placement, build the decoder, then serve windows."""
    from rtbci.models import load_decoder

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the engine, which stops us
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(config.compute_threads or 1, user_api="blas")  # its own cap, as in-engine
        if config.cpu:
            os.sched_setaffinity(0, config.cpu)
        if config.nice:
            os.nice(config.nice)
        decoder = load_decoder(config, info, where, base_dir, preprocess)
        decoder(np.zeros((decoder.n_samples, info.n_channels), np.float32))  # warm-up
    except BaseException as exc:
        message = str(exc) if isinstance(exc, RtbciError) else (
            f"{where} ({config.name!r}): failed to start in its worker process: "
            f"{describe_exception(exc)}")
        conn.send_bytes(msgpack.packb({"error": message}))
        return
    conn.send_bytes(msgpack.packb({
        "kind": decoder.kind, "labels": decoder.labels, "n_samples": decoder.n_samples,
        "n_channels": decoder.n_channels, "output_size": decoder.output_size,
        "window_start": decoder.window_start, "explains": bool(decoder.explains),
        "channel_names": getattr(decoder, "channel_names", None),
        "describe": decoder.describe()}, default=_plain))
    _serve(conn, decoder, info.n_channels)


def _serve(conn: Connection, decoder: Decoder, n_channels: int) -> None:
    """Answer ``call`` / ``importance`` requests until ``stop`` or the pipe closes."""
    window = out = None
    fd = conn.fileno()
    while True:
        try:
            request = msgpack.unpackb(read_message(fd))
        except (EOFError, OSError):
            return
        op = request[0]
        if op == "stop":
            return
        if op == "map":
            window, out = _map_segments(request[1], request[2],
                                        (decoder.n_samples, n_channels))
            conn.send_bytes(msgpack.packb("mapped"))
            continue
        started = time.perf_counter()
        reply: dict = {"error": None}
        try:
            if op == "call":
                output = decoder(window)
                if not isinstance(output, DecoderOutput):
                    raise TypeError(f"returned {type(output).__name__}, not a DecoderOutput")
                values = {name: getattr(output, name) for name in _FIELDS}
                reply["labels"] = list(output.labels) if output.labels is not None else None
            else:
                values = {"importance": decoder.importance(window)}
            reply["arrays"] = _write_arrays(out, values)
        except BaseException as exc:  # user code: SystemExit, KeyboardInterrupt included
            reply["error"] = describe_exception(exc)
            log.debug("decoder raised:\n%s", traceback.format_exc())
        reply["took"] = time.perf_counter() - started
        os.write(fd, frame(msgpack.packb(reply, default=_plain)))


def frame(payload: bytes) -> bytes:
    """``payload`` framed as :class:`multiprocessing.connection.Connection` frames it (a 4-byte
    big-endian length first), to go out in one ``os.write``."""
    return _HEADER.pack(len(payload)) + payload


def read_message(fd: int) -> bytes:
    """One message framed as :func:`frame` does (or ``Connection.send_bytes``), in one
    ``os.read`` when it fits: the hot path, where one request or one reply is in flight at a
    time (so nothing follows it). Raises EOFError when the other end closed."""
    data = os.read(fd, READ_BYTES)
    while True:
        need = _HEADER.size
        if len(data) >= need:
            need += _HEADER.unpack_from(data)[0]
            if len(data) >= need:
                return data[_HEADER.size:need]
        more = os.read(fd, need - len(data))
        if not more:
            raise EOFError
        data += more


REQUESTS = {op: frame(msgpack.packb([op])) for op in ("call", "importance")}  # packed once


def _map_segments(input_name: str, output_name: str, shape: tuple[int, int]):
    """The input segment mapped read-only (an in-place edit raises) and the output one
    read-write, by their names under /dev/shm (plain mmaps: no resource tracker here)."""
    def mapped(name: str, access: int) -> mmap.mmap:
        flags = os.O_RDONLY if access == mmap.ACCESS_READ else os.O_RDWR
        fd = os.open(f"/dev/shm/{name}", flags)
        try:
            return mmap.mmap(fd, 0, access=access)
        finally:
            os.close(fd)

    window = np.frombuffer(mapped(input_name, mmap.ACCESS_READ), np.float32,
                           shape[0] * shape[1]).reshape(shape)
    return window, mapped(output_name, mmap.ACCESS_WRITE)


def _write_arrays(out: mmap.mmap, values: dict) -> list:
    """Write each array of ``values`` into ``out``; ``[name, dtype, shape, offset]`` each."""
    placed, offset = [], 0
    for name, value in values.items():
        if value is None:
            continue
        array = np.ascontiguousarray(value)
        if array.dtype == object:
            raise TypeError(f"{name} is not numeric")
        if offset + array.nbytes > len(out):
            raise ValueError(f"output larger than the worker's result area "
                             f"({OUTPUT_BYTES} bytes)")
        np.frombuffer(out, array.dtype, array.size, offset)[:] = array.reshape(-1)
        placed.append([name, array.dtype.str, list(array.shape), offset])
        offset += -(-array.nbytes // 8) * 8  # keep every array 8-byte aligned
    return placed


def _plain(value):
    """msgpack fallback: numpy scalars and arrays in metadata as plain Python."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (tuple, Path)):
        return list(value) if isinstance(value, tuple) else str(value)
    raise TypeError(f"cannot send {type(value).__name__}")
