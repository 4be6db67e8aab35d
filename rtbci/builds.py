"""Decoder builds off the event loop: each in a daemon thread, abandoned when the engine stops.

A build (loading, exporting, compiling a decoder) can take minutes; the engine awaits it as a
future of its loop (:func:`in_daemon_thread`) so the loop keeps running, and a stop never
waits for it. A build nobody awaits any more closes what it made (:func:`close_built`).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable


def close_built(built: asyncio.Future) -> None:
    """Done-callback of a build nobody awaits any more: close the decoder it made."""
    if not built.cancelled() and built.exception() is None:
        close_built_decoder(built.result()[0])


def close_built_decoder(decoder) -> None:
    """``decoder.close()`` (a worker process's) in a daemon thread, not awaited."""
    close = getattr(decoder, "close", None)
    if callable(close):
        threading.Thread(target=close, name="rtbci-close", daemon=True).start()


class BuildCancelled(Exception):
    """A decoder build the engine's stop cancelled before it started."""


def in_daemon_thread(fn: Callable, *args) -> asyncio.Future:
    """``fn(*args)`` in a daemon thread, awaited as a future of the running loop.

    Unlike ``asyncio.to_thread`` (whose executor ``asyncio.run`` waits for at exit), a
    build still compiling when the engine stops is abandoned: the process exits at once.
    """
    loop = asyncio.get_running_loop()
    future = loop.create_future()

    def settle(outcome, ok: bool) -> None:
        if not future.done():
            future.set_result(outcome) if ok else future.set_exception(outcome)

    def target() -> None:
        try:
            outcome, ok = fn(*args), True
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task
            outcome, ok = exc, False
        with contextlib.suppress(RuntimeError):  # the loop is closed: the engine stopped
            loop.call_soon_threadsafe(settle, outcome, ok)

    threading.Thread(target=target, name="rtbci-build", daemon=True).start()
    return future
