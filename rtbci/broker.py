"""An embedded MQTT broker (amqtt) for the demo and for labs without mosquitto.

Anonymous by default (bound to 127.0.0.1). With ``--password-file`` it refuses anonymous
clients and wrong passwords, and user ``U`` may use only ``rtbci/U/#`` (name users after
sessions); see docs/security.md.

It runs in its own process (``rtbci broker``) so it never shares the engine's event loop.
For experiments prefer mosquitto with ``set_tcp_nodelay true`` (faster, see docs/mqtt.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

from rtbci.errors import RtbciError

log = logging.getLogger("rtbci.broker")


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    """True if something accepts TCP connections on ``host:port``."""
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout):
        return True
    return False


USER_PATTERN = re.compile(r"^[A-Za-z0-9_.-]+$")  # a user name is a session name


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_users(password_file: Path) -> list[str]:
    """The user names of an amqtt password file (``USER:ARGON2-HASH`` lines).

    Raises
    ------
    RtbciError
        The file cannot be read, or a line is not ``USER:$argon2…`` with a session-like name.
    """
    try:
        lines = password_file.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise RtbciError(f"--password-file: cannot read {password_file}: {exc}") from None
    users = []
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.startswith("#"):
            continue
        user, _, digest = line.strip().partition(":")
        if not USER_PATTERN.match(user) or not digest.startswith("$argon2"):
            raise RtbciError(f"--password-file: {password_file} line {number}: expected "
                             "USER:$argon2…, as written by 'rtbci broker --add-user'")
        users.append(user)
    if not users:
        raise RtbciError(f"--password-file: {password_file} has no users "
                         "(add one with 'rtbci broker --password-file FILE --add-user NAME')")
    return users


def add_user(password_file: Path, user: str, password: str) -> None:
    """Add or replace ``user`` in ``password_file`` (argon2 hash; the file is made 0600)."""
    from pwdlib.hashers.argon2 import Argon2Hasher

    if not USER_PATTERN.match(user):
        raise RtbciError(f"--add-user: {user!r} must be a session name ([A-Za-z0-9_.-]+): "
                         "that user may use only rtbci/<user>/#")
    if not password:
        raise RtbciError("--add-user: empty password")
    lines = []
    if password_file.exists():
        read_users(password_file)  # refuse to extend a file of another format
        lines = [line for line in password_file.read_text().splitlines()
                 if line.partition(":")[0] != user]
    lines.append(f"{user}:{Argon2Hasher().hash(password)}")
    password_file.touch(mode=0o600)
    password_file.chmod(0o600)
    password_file.write_text("\n".join(lines) + "\n")


def broker_config(host: str, port: int, password_file: Path | None = None) -> dict:
    """amqtt configuration: anonymous, or password file + one topic subtree per user.

    With a password file, anonymous clients are refused and user ``U`` may subscribe to,
    receive and publish only ``rtbci/U/#`` (amqtt's ``TopicAccessControlListPlugin``).
    """
    listeners = {"default": {"type": "tcp", "bind": f"{host}:{port}"}}
    if password_file is None:
        return {"listeners": listeners, "plugins": {
            "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}}}
    acl = {user: [f"rtbci/{user}/#"] for user in read_users(password_file)}
    return {"listeners": listeners, "plugins": {
        "amqtt.plugins.authentication.FileAuthPlugin": {"password_file": str(password_file)},
        "amqtt.plugins.topic_checking.TopicAccessControlListPlugin":
            {"acl": acl, "publish_acl": acl}}}


async def serve(host: str, port: int, stop: asyncio.Event,
                password_file: Path | None = None) -> None:
    """Run an amqtt broker on ``host:port`` until ``stop`` is set (see :func:`broker_config`).

    Raises
    ------
    RtbciError
        The password file is unusable, or the address cannot be bound.
    """
    from amqtt.broker import Broker

    if not log.isEnabledFor(logging.DEBUG):  # its per-connection chatter (our port probes)
        logging.getLogger("amqtt").setLevel(logging.CRITICAL)
        logging.getLogger("transitions").setLevel(logging.WARNING)  # amqtt's state machine
    config = broker_config(host, port, password_file)
    if password_file is None and not is_loopback(host):
        log.warning("the MQTT broker on %s:%d accepts anonymous clients from the network: "
                    "anyone there can read and publish results; give --password-file "
                    "(docs/security.md)", host, port)
    broker = Broker(config)
    try:
        await broker.start()
    except Exception as exc:  # noqa: BLE001 - amqtt wraps bind errors in its own types
        cause = exc.__cause__ or exc.__context__ or exc
        raise RtbciError(f"--host/--port: cannot listen on {host}:{port}: {cause}") from None
    log.info("MQTT broker (amqtt) listening on %s:%d%s", host, port,
             " (password file, one topic subtree per user)" if password_file else "")
    try:
        await stop.wait()
    finally:
        await broker.shutdown()


def start_broker_process(host: str, port: int, timeout: float = 15.0,
                         password_file: Path | None = None) -> subprocess.Popen:
    """Start ``rtbci broker`` in a child process and wait until it accepts connections."""
    extra = [] if password_file is None else ["--password-file", str(password_file)]
    # its own session: a Ctrl-C in the terminal reaches the engine, not the broker, which its
    # starter stops after the engine has closed its MQTT sink (cli.cmd_demo)
    proc = subprocess.Popen([sys.executable, "-m", "rtbci", "-q", "broker", "--host", host,
                             "--port", str(port), *extra], stdin=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + timeout
    while not port_open(host, port):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"the embedded MQTT broker did not start on {host}:{port}")
        time.sleep(0.1)
    return proc
