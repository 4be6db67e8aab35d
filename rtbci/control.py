"""The engine's control channel: ``rtbci ctl SESSION status | reload DECODER``.

A live engine serves a Unix socket on its event loop, ``$XDG_RUNTIME_DIR/rtbci/<session>.sock``
(without ``XDG_RUNTIME_DIR``: ``/tmp/rtbci-<uid>/<session>.sock``). Its folder is ``0700`` and
the socket ``0600``: only the user who runs the engine can control it, from the same machine.
The socket is removed when the engine stops; a socket file nothing listens on (an engine that
was killed) is replaced; one another engine still serves is left alone (that engine keeps the
channel; this one serves none, and says so). Offline runs serve nothing.

Protocol: one JSON request per line, one JSON reply line each: ``{"ok": true, ...}`` or
``{"ok": false, "error": "one line"}``. Requests:

- ``{"op": "status"}`` → ``{"ok": true, "session", "decoders": [{"name", "state", "model",
  "spec", "reloads", "results"}]}``;
- ``{"op": "reload", "decoder": NAME, "model": SPEC | null, "set": {KEY: VALUE}}`` →
  ``{"ok": true, "decoder", "old", "new", "spec"}`` once the new decoder decodes
  (:meth:`rtbci.engine.Engine.reload`).

``set`` keys are ``[[decoders]]`` keys (``budget_ms``) or ``options.KEY``; ``rtbci ctl``
parses each value as a TOML value (``options.alpha=0.5`` is a float, ``runtime=numpy`` the
string).

Every result names the model that produced it (:func:`model_hash`, ``Result.model``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import socket
import stat
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from rtbci.config import RENAMED_DECODER_KEYS, DecoderConfig, format_errors
from rtbci.errors import RtbciError
from rtbci.models import checkpoint_path, is_checkpoint

if TYPE_CHECKING:
    from rtbci.engine import Engine
    from rtbci.scheduler import DecoderTask, TriggerSpec

log = logging.getLogger("rtbci.control")

MAX_REQUEST = 64 * 1024  # bytes in one request line
HASH_CHARS = 12
SESSION = re.compile(r"[A-Za-z0-9_.-]+")  # [engine] session's pattern
UNCHANGEABLE = ("name", "source")  # keys a reload cannot change (a restart can)


def model_hash(cfg: DecoderConfig, base_dir: Path | None = None) -> str:
    """The identity of decoder ``cfg``'s model: 12 hex characters of a SHA-256.

    A checkpoint: over the file's bytes (the first 12 characters of ``sha256sum FILE``;
    its ``options`` are not part of the model). ``builtin:`` and ``python:``: over the model
    spec and the canonical JSON of ``options`` (sorted keys); not over a ``python:``
    module's file, whose code a reload does not import again.

    Raises :class:`RtbciError` when the checkpoint cannot be read.
    """
    digest = hashlib.sha256()
    if is_checkpoint(cfg.model):
        path = checkpoint_path(cfg.model, base_dir)
        try:
            with path.open("rb") as file:
                for block in iter(lambda: file.read(1 << 20), b""):
                    digest.update(block)
        except OSError as exc:
            raise RtbciError(f"decoder {cfg.name!r}: cannot read {path} to identify its model: "
                             f"{exc.strerror}") from None
    else:
        options = json.dumps(cfg.options, sort_keys=True, separators=(",", ":"), default=str)
        digest.update(f"{cfg.model}\n{options}".encode())
    return digest.hexdigest()[:HASH_CHARS]


def socket_path(session: str) -> Path:
    """Where the engine of ``session`` serves its control socket (this user, this machine).

    Raises :class:`RtbciError` for a name no session can have (``[A-Za-z0-9_.-]+``)."""
    if not SESSION.fullmatch(session):
        raise RtbciError(f"session {session!r}: a session name is letters, digits, _ . and -")
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    folder = Path(runtime) / "rtbci" if runtime else Path(f"/tmp/rtbci-{os.getuid()}")
    return folder / f"{session}.sock"


def parse_value(text: str) -> Any:
    """A ``--set`` value as TOML reads it (``0.5``, ``true``, ``[8, 12]``, ``"x"``); text that
    is no TOML value is the string itself (``numpy``)."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_settings(items: list[str]) -> dict[str, Any]:
    """``["KEY=VALUE", …]`` → ``{KEY: value}`` (:func:`parse_value`); raises RtbciError."""
    settings = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise RtbciError(f"--set {item!r}: expected KEY=VALUE (e.g. options.alpha=0.5)")
        settings[key.strip()] = parse_value(value.strip())
    return settings


def updated_config(cfg: DecoderConfig, model: str | None, settings: dict[str, Any],
                   where: str) -> DecoderConfig:
    """``cfg`` with ``model`` (if given) and ``settings`` (decoder keys or ``options.KEY``)
    applied, validated as a ``[[decoders]]`` entry; raises RtbciError naming the key."""
    data = cfg.model_dump()
    options = dict(cfg.options)
    for key, value in settings.items():
        key = RENAMED_DECODER_KEYS.get(key, key)  # the old names, as in a config file
        head, dot, rest = key.partition(".")
        if head == "options" and dot and rest:
            options[rest] = value
        elif dot:
            raise RtbciError(f"{where}.{key}: unknown key (give a decoder key or options.KEY)")
        elif key in UNCHANGEABLE:
            raise RtbciError(f"{where}.{key}: cannot change while running (restart the engine)")
        elif key == "options":
            if not isinstance(value, dict):
                raise RtbciError(f"{where}.options: expected a table, got {value!r}")
            options = dict(value)
        else:
            data[key] = value
    if model is not None:
        data["model"] = model
    data["options"] = options
    try:
        return DecoderConfig.model_validate(data)
    except ValidationError as exc:
        raise RtbciError("; ".join(format_errors(exc, where).splitlines())) from None


def window_change(task: DecoderTask, decoder, trigger: TriggerSpec) -> str | None:
    """Why a reloaded ``decoder`` (with ``trigger``) cannot take ``task``'s windows, or None:
    the window's length, start, step, marker pattern and channel count must stay."""
    old = task.trigger
    before = (old.length, old.start, old.every, old.marker)
    after = (trigger.length, trigger.start, trigger.every, trigger.marker)
    if before != after:
        return (f"its window would change (length, start, every, on_marker: {before} → "
                f"{after}); restart the engine to change a window")
    channels = getattr(task.decoder, "n_channels", None), getattr(decoder, "n_channels", None)
    if channels[0] != channels[1]:
        return (f"it would take {channels[1]} channels instead of {channels[0]}; restart the "
                "engine to change its input")
    return None


class ControlServer:
    """The control socket of a live engine, served on its event loop.

    Threads: every method on the engine's loop.
    """

    def __init__(self, engine: Engine):
        self.engine = engine
        self.path = socket_path(engine.session)
        self._server: asyncio.AbstractServer | None = None
        self._inode: int | None = None  # the socket file this server made (removed at stop)
        self._clients: set[asyncio.Task] = set()

    async def start(self) -> ControlServer | None:
        """Serve the socket; None (logged) when it cannot be or another engine serves it."""
        try:
            if not self._claim():
                return None
            self._server = await asyncio.start_unix_server(self._serve, path=str(self.path),
                                                           limit=MAX_REQUEST)
            os.chmod(self.path, 0o600)  # its folder is 0700 already: no one else saw it
            self._inode = os.stat(self.path).st_ino
        except (OSError, RtbciError) as exc:
            log.error("control channel: not served at %s: %s", self.path,
                      exc.strerror if isinstance(exc, OSError) and exc.strerror else exc)
            return None
        log.info("control channel: %s (rtbci ctl %s …)", self.path, self.engine.session)
        return self

    def _claim(self) -> bool:
        """Make the folder (0700, ours) and clear a stale socket; False if one is live."""
        folder = self.path.parent
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = os.lstat(folder)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
            raise RtbciError(f"{folder} is not a folder of this user")
        if stat.S_IMODE(info.st_mode) != 0o700:
            os.chmod(folder, 0o700)
        if len(os.fsencode(self.path)) > 100:  # sun_path holds 108 bytes
            raise RtbciError("the path is too long for a Unix socket (shorten the session)")
        if not os.path.lexists(self.path):
            return True
        if _listening(self.path):
            log.warning("control channel: another engine of session %r serves %s; this one "
                        "serves none", self.engine.session, self.path)
            return False
        self.path.unlink()  # stale: its engine died without removing it
        return True

    async def stop(self) -> None:
        """Stop serving (requests under way are cancelled) and remove the socket file."""
        if self._server is None:
            return
        self._server.close()
        for client in list(self._clients):
            client.cancel()
        await asyncio.gather(*self._clients, return_exceptions=True)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._server.wait_closed(), 1.0)
        with contextlib.suppress(OSError):
            if os.stat(self.path).st_ino == self._inode:
                self.path.unlink()
        self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._clients.add(task)
        try:
            while True:
                try:
                    line = await reader.readline()
                except ValueError:  # over MAX_REQUEST
                    await _reply(writer, _error(f"request over {MAX_REQUEST} bytes"))
                    return
                if not line:
                    return
                await _reply(writer, await self._answer(line))
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._clients.discard(task)
            writer.close()

    async def _answer(self, line: bytes) -> dict:
        try:
            request = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            return _error("not a JSON request line")
        if not isinstance(request, dict):
            return _error("a request is a JSON object")
        op = request.get("op")
        try:
            if op == "status":
                return {"ok": True, "session": self.engine.session,
                        "decoders": self.engine.control_status()}
            if op == "reload":
                return {"ok": True, **await self._reload(request)}
        except RtbciError as exc:
            return _error(str(exc))
        except Exception as exc:  # noqa: BLE001 - a request must never take the engine down
            log.exception("control request %r failed", op)
            return _error(f"{type(exc).__name__}: {exc}")
        return _error(f"unknown op {op!r} (status, reload)")

    async def _reload(self, request: dict) -> dict:
        name, model, settings = request.get("decoder"), request.get("model"), request.get("set")
        if not isinstance(name, str):
            raise RtbciError("reload: 'decoder' (a name) is missing")
        if model is not None and not isinstance(model, str):
            raise RtbciError("reload: 'model' must be a string")
        if not isinstance(settings, dict | None):
            raise RtbciError("reload: 'set' must be an object")
        return await self.engine.reload(name, model, settings or {})


def _error(text: str) -> dict:
    return {"ok": False, "error": " ".join(text.split())}  # one line


async def _reply(writer: asyncio.StreamWriter, reply: dict) -> None:
    writer.write(json.dumps(reply, default=str).encode() + b"\n")
    await writer.drain()


def _listening(path: Path) -> bool:
    """Whether something accepts connections on the Unix socket ``path``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        try:
            sock.connect(str(path))
        except OSError:
            return False
    return True


def request(session: str, message: dict, timeout: float = 120.0) -> dict:
    """Send one request to the engine of ``session`` on this machine; its reply.

    Raises :class:`RtbciError` when no engine serves the session here, or none answers in
    ``timeout`` seconds.
    """
    path = socket_path(session)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            raise RtbciError(f"no engine runs session {session!r} here (no socket at "
                             f"{path})") from None
        except PermissionError:
            raise RtbciError(f"not allowed to connect to {path} (the engine runs as another "
                             "user)") from None
        try:
            sock.sendall(json.dumps(message).encode() + b"\n")
            reply = _read_line(sock)
        except TimeoutError:
            raise RtbciError(f"session {session!r}: no answer from the engine within "
                             f"{timeout:g} s") from None
    try:
        answer = json.loads(reply)
    except ValueError:
        answer = None
    if not isinstance(answer, dict) or "ok" not in answer:
        raise RtbciError(f"session {session!r}: the engine's reply is not a control reply")
    return answer


def _read_line(sock: socket.socket) -> bytes:
    chunks = []
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        chunks.append(chunk)
        if chunk.endswith(b"\n"):
            break
    return b"".join(chunks)
