"""Ray, for work spread over many recordings (``rtbci evaluate``, ``rtbci train … --ray``).

Ray is an optional extra (``pip install 'rtbci[cluster]'``) and is imported only here, only
when a command asks for it. :func:`connect` starts a local Ray or joins a running cluster;
:func:`parallel_map` then runs a function over items as one Ray task each (serially in this
process when no Ray session was opened here, and in Ray's own workers).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from rtbci.errors import RtbciError

log = logging.getLogger(__name__)

RAY_MODES = "off, local, auto or a cluster ADDRESS (host:port, ray://host:port)"
MISSING = "--ray: Ray is not installed; pip install 'rtbci[cluster]' (or use --ray off)"
TASK_RETRIES = 1  # a task whose worker process died is run once more (Ray's max_retries)


@dataclass
class Session:
    """An open Ray session: ``address`` ("local" for one started here), ``workers`` (CPUs
    Ray offers, or the ``--workers`` cap), ``started`` (whether :func:`connect` started it)."""

    address: str
    workers: int
    started: bool


_session: Session | None = None


def import_ray():
    """The ``ray`` module, or the one-line error naming the extra that installs it."""
    try:
        import ray
    except ImportError:
        raise RtbciError(MISSING) from None
    return ray


def connect(mode: str, workers: int | None = None) -> Session | None:
    """Open Ray for this process: ``off`` → None (serial); ``local`` → a Ray on this
    machine with ``workers`` CPUs (default: all cores), or the one already open in this
    process; ``auto`` or an ADDRESS → join that running cluster (``ray start --head``)."""
    global _session
    if mode == "off":
        return None
    if workers is not None and workers < 1:
        raise RtbciError(f"--workers: at least 1, got {workers}")
    ray = import_ray()
    if mode != "local":
        _reachable(mode)
    started = not ray.is_initialized()
    if started:
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                  "logging_level": logging.ERROR}  # no start-up chatter
        try:
            if mode == "local":
                ray.init(num_cpus=workers or os.cpu_count() or 1, **kwargs)
            else:
                ray.init(address=mode, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            hint = "" if mode == "local" or os.environ.get("RAY_AUTH_MODE") else (
                " (a cluster with token authentication, Ray's default for `ray start` since "
                "2.59, needs RAY_AUTH_MODE=token and its token: docs/cluster.md)")
            raise RtbciError(f"--ray {mode}: cannot connect to a Ray cluster: "
                             f"{str(exc).splitlines()[0]}{hint}") from None
    cpus = int(ray.cluster_resources().get("CPU", 1))
    address = "local" if mode == "local" else _address(ray, mode)
    _session = Session(address, min(cpus, workers or cpus), started)
    log.info("Ray %s: %d workers", address, _session.workers)
    return _session


def _reachable(address: str, timeout: float = 5.0) -> None:
    """Refuse at once a ``HOST:PORT`` (or ``ray://HOST:PORT``) nobody listens at (Ray itself
    would retry for minutes); ``auto`` is left to Ray."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if address == "auto" or not sep or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise RtbciError(f"--ray {address}: no Ray cluster answers there ({exc.strerror or exc}"
                         f"); start one with 'ray start --head' (docs/cluster.md)") from None


def _address(ray, mode: str) -> str:
    try:
        return ray.get_runtime_context().gcs_address
    except Exception:  # a Ray client (ray://) session does not know it
        return mode


def session() -> Session | None:
    """The Ray session :func:`connect` opened in this process, or None (serial)."""
    return _session


def disconnect() -> None:
    """Close the Ray session :func:`connect` started (one it joined in-process stays open)."""
    global _session
    if _session is not None and _session.started:
        import_ray().shutdown()
    _session = None


def parallel_map(fn: Callable, items: Iterable, done: Callable[[int, Any], None] | None = None,
                 on_lost: Callable[[int, Exception], Any] | None = None) -> list:
    """``[fn(item) for item in items]``, as Ray tasks when this process opened a session
    (at most ``workers`` in flight; each retried once if its worker dies), else in order here.

    ``done(i, result)`` is called as each finishes. A task whose worker died twice raises,
    unless ``on_lost(i, error)`` gives its result instead. ``fn`` and the items travel by
    pickle: ``fn`` must be a module-level function (or a partial of one).
    """
    items = list(items)
    results: list = [None] * len(items)
    if _session is None:
        for i, item in enumerate(items):
            results[i] = fn(item)
            if done:
                done(i, results[i])
        return results
    ray = import_ray()
    remote = ray.remote(num_cpus=1, max_retries=TASK_RETRIES)(_call)
    fn_ref = ray.put(fn)
    pending: dict = {}
    queue = list(enumerate(items))
    while queue or pending:
        while queue and len(pending) < _session.workers:
            i, item = queue.pop(0)
            pending[remote.remote(fn_ref, item)] = i
        ready, _ = ray.wait(list(pending), num_returns=1)
        i = pending.pop(ready[0])
        try:
            results[i] = ray.get(ready[0])
        except ray.exceptions.RayTaskError as exc:  # fn raised: raise what it raised
            raise exc.cause if isinstance(exc.cause, Exception) else exc from None
        except ray.exceptions.WorkerCrashedError as exc:
            if on_lost is None:
                raise
            results[i] = on_lost(i, exc)
        if done:
            done(i, results[i])
    return results


def _call(fn: Callable, item: Any) -> Any:
    return fn(item)
