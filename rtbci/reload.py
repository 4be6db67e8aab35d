"""Swapping a running decoder (``rtbci ctl SESSION reload``): the new one is built beside the old,
takes its place between two windows, and the old one is closed.

Threads: every function here runs on the engine's event loop; the build runs in a daemon
thread (:mod:`rtbci.builds`) and the swap is applied by the scheduler between two windows
(:meth:`rtbci.scheduler.DecoderTask.swap`), on whichever thread frees the decoder.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from rtbci.builds import BuildCancelled, close_built, close_built_decoder, in_daemon_thread
from rtbci.config import DecoderConfig
from rtbci.control import model_hash, updated_config, window_change
from rtbci.errors import RtbciError
from rtbci.scheduler import DecoderTask, Swap

if TYPE_CHECKING:
    from rtbci.engine import Engine

log = logging.getLogger("rtbci.engine")

RELOAD_WAIT_S = 10.0  # a reload waits this long (at least) for the decoder's running window


def control_status(engine: Engine) -> list[dict]:
    """Each configured decoder: name, state, model hash, model spec, reloads, results."""
    tasks = engine.scheduler.tasks if engine.scheduler else {}
    out = []
    for name, state in engine.decoder_states.items():
        task = tasks.get(name)
        out.append({"name": name, "state": state, "model": task.model if task else None,
                    "spec": decoder_config(engine, name)[1].model,
                    "reloads": task.reloads if task else 0,
                    "results": task.results if task else 0})
    return out

def decoder_config(engine: Engine, name: str) -> tuple[int, DecoderConfig]:
    """``(index in [[decoders]], config now)`` of decoder ``name`` (a reload's, if any)."""
    i = next(i for i, cfg in enumerate(engine.config.decoders) if cfg.name == name)
    return i, engine.reloaded.get(name, engine.config.decoders[i])

async def reload(engine: Engine, name: str, model: str | None = None,
                 settings: dict | None = None) -> dict:
    """Swap running decoder ``name`` for one built from its config with ``model`` and
    ``settings`` (decoder keys or ``options.KEY``) applied, without stopping anything.

    The new decoder is built off the loop while the old one keeps decoding; it must take
    the same windows; it replaces the old one between two windows (none is lost or decoded
    half by each: :meth:`DecoderTask.swap`), and the old one is closed. Returns
    ``{"decoder", "old", "new", "spec"}`` (model hashes); raises :class:`RtbciError` (one
    line) and keeps the old decoder on any problem.
    """
    task = engine.scheduler.tasks.get(name) if engine.scheduler else None
    if task is None or engine.decoder_states.get(name) != "running":
        raise RtbciError(f"no running decoder {name!r} (running: "
                         + (", ".join(map(repr, engine.scheduler.tasks if engine.scheduler
                                          else ())) or "none") + ")")
    if name in engine.reloading:
        raise RtbciError(f"decoder {name!r}: a reload is under way already")
    engine.reloading.add(name)
    try:
        i, cfg = decoder_config(engine, name)
        where = f"decoders[{i}]"
        new_cfg = updated_config(cfg, model, settings or {}, where)
        decoder, identity = await _build_reload(engine, new_cfg, task, where)
        old_model, old = task.model, await _swap_in(engine, task, decoder, identity, new_cfg)
    finally:
        engine.reloading.discard(name)
    engine.reloaded[name] = new_cfg
    engine.decoder_status[name] = {**engine.decoder_status[name], "kind": decoder.kind,
                                 "labels": decoder.labels,
                                 "output_size": decoder.output_size,
                                 "budget_ms": new_cfg.budget_ms,
                                 "runtime": decoder.describe(), "model": identity,
                                 "spec": new_cfg.model}
    log.info("decoder %r reloaded: %s → %s (%s)", name, old_model, identity, new_cfg.model)
    engine._push_status()
    await close_decoder(name, old)
    return {"decoder": name, "old": old_model, "new": identity, "spec": new_cfg.model}

async def _build_reload(engine: Engine, cfg: DecoderConfig, task: DecoderTask, where: str):
    """Build ``cfg``'s decoder off the loop (:meth:`Engine.build`) and its model hash; refuse
    one that would take other windows than ``task``'s."""
    built = in_daemon_thread(engine.build, cfg, task.stream, where)
    try:
        decoder, trigger = await asyncio.shield(built)
    except asyncio.CancelledError:  # the engine stops: close what the build still makes
        built.add_done_callback(close_built)
        raise
    except BuildCancelled:
        raise RtbciError("the engine is stopping") from None
    except RtbciError:
        raise
    except Exception as exc:
        raise RtbciError(f"{where} ({cfg.name!r}): failed to start: "
                         f"{type(exc).__name__}: {exc}") from None
    problem = window_change(task, decoder, trigger)
    try:
        if problem:
            raise RtbciError(f"decoder {cfg.name!r} not reloaded: {problem}")
        return decoder, await in_daemon_thread(model_hash, cfg, engine.config.base_dir)
    except BaseException:
        await close_decoder(cfg.name, decoder)
        raise

async def _swap_in(engine: Engine, task: DecoderTask, decoder, identity: str,
                   cfg: DecoderConfig):
    """Put ``decoder`` in ``task``'s place between two windows; the decoder it replaced.
    One still busy after ``RELOAD_WAIT_S`` (or twice its ``timeout_ms``) keeps its own."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def applied(swap: Swap) -> None:  # under the scheduler's lock, any thread
        with contextlib.suppress(RuntimeError):  # the loop closed: the engine stopped
            loop.call_soon_threadsafe(lambda: done.done() or done.set_result(swap.old))

    swap = Swap(decoder, identity, cfg.budget_ms, cfg.timeout_ms, applied)
    engine.scheduler.swap(task.name, swap)
    wait_s = max(RELOAD_WAIT_S, 2e-3 * task.timeout_ms)
    try:
        old = await asyncio.wait_for(asyncio.shield(done), wait_s)
    except asyncio.CancelledError:  # the engine stops: the task keeps what it has
        if engine.scheduler.cancel_swap(task.name, swap):
            close_built_decoder(decoder)
        raise
    except TimeoutError:
        if not engine.scheduler.cancel_swap(task.name, swap):
            return await done  # applied meanwhile
        await close_decoder(task.name, decoder)
        raise RtbciError(f"decoder {task.name!r} not reloaded: still busy with a window "
                         f"after {wait_s:g} s; the old one keeps running") from None
    engine.scheduler.pool.supervise(task)  # a decoder in a worker process is supervised
    engine.scheduler.pool.supervisor.remove(old)
    return old

async def close_decoder(name: str, decoder) -> None:
    """``decoder.close()`` if it has one (a worker process's), off the loop; logged."""
    close = getattr(decoder, "close", None)
    if not callable(close):
        return
    try:
        await in_daemon_thread(close)
    except Exception as exc:
        log.error("decoder %r: closing the replaced decoder failed: %s", name, exc)
