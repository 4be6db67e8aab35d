"""How to reach an MQTT broker: URL, TLS and credentials, shared by every rtbci MQTT client.

One home for "MQTT connection options → ``aiomqtt.Client`` keyword arguments": the MQTT sink
(``[[sinks]] kind = "mqtt"``), ``rtbci listen`` and the display (``rtbci gui``) all build their
client from an :class:`MQTTConnection`, so ``mqtts://``, a CA file, a user name and a password
mean the same thing everywhere, and every client disables Nagle's algorithm.

The password is a :class:`pydantic.SecretStr`: it shows as ``**********`` in ``repr`` and in
``model_dump(mode="json")``, so a config written to disk (a recording's ``session.json``) or
sent anywhere never carries it. On the command line it comes from ``--password-file`` or the
``RTBCI_MQTT_PASSWORD`` environment variable, never from an argument (visible in ``ps``).
"""

from __future__ import annotations

import argparse
import os
import socket
import ssl
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from rtbci.errors import RtbciError

URL_FORM = "mqtt://HOST[:PORT] or mqtts://HOST[:PORT] (TLS)"
DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}
DEFAULT_URL = "mqtt://127.0.0.1:1883"
PASSWORD_ENV = "RTBCI_MQTT_PASSWORD"
NODELAY = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]


def parse_url(url: str) -> tuple[str, str, int]:
    """Split a broker URL into ``(scheme, host, port)``.

    Parameters
    ----------
    url : str
        ``mqtt://HOST[:PORT]`` or ``mqtts://HOST[:PORT]``; the port defaults to 1883 / 8883.

    Raises
    ------
    ValueError
        If the URL is not of that form; the message shows the expected form.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"expected {URL_FORM}, got {url!r} ({exc})") from None
    problem = None
    if parts.scheme not in DEFAULT_PORTS:
        problem = f"unknown scheme {parts.scheme!r}" if parts.scheme else "no scheme"
    elif not parts.hostname:
        problem = "no host"
    elif parts.username is not None or parts.password is not None:
        problem = "credentials belong in the username/password fields"
    elif parts.path not in ("", "/") or parts.query or parts.fragment:
        problem = "unexpected path or query"
    elif port == 0:
        problem = "port 0"
    if problem:
        raise ValueError(f"expected {URL_FORM}, got {url!r} ({problem})")
    return parts.scheme, parts.hostname, DEFAULT_PORTS[parts.scheme] if port is None else port


class MQTTConnection(BaseModel):
    """Where the broker is and how to log in: the connection keys of an MQTT client.

    Attributes
    ----------
    url : str
        Broker address, ``mqtt://HOST[:PORT]`` or ``mqtts://HOST[:PORT]`` for TLS.
    username : str | None
        Broker user name.
    password : SecretStr | None
        Broker password (needs ``username``); never shown or written out.
    tls_ca : str | None
        CA certificate file (PEM) to verify the broker with (``mqtts`` only); the system's
        trusted CAs when omitted.
    tls_insecure : bool
        Skip verification of the broker's certificate and host name (testing only).
    """

    model_config = ConfigDict(extra="forbid")

    url: str = DEFAULT_URL
    username: str | None = None
    password: SecretStr | None = None
    tls_ca: str | None = None
    tls_insecure: bool = False

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: str) -> str:
        parse_url(url)
        return url

    @model_validator(mode="after")
    def _check_connection(self) -> MQTTConnection:
        if not self.tls and (self.tls_ca is not None or self.tls_insecure):
            raise ValueError("tls_ca / tls_insecure need a TLS url: mqtts://HOST[:PORT]")
        if self.password is not None and self.username is None:
            raise ValueError("password is set but username is not")
        return self

    @property
    def host(self) -> str:
        """Broker host name or address."""
        return parse_url(self.url)[1]

    @property
    def port(self) -> int:
        """Broker TCP port."""
        return parse_url(self.url)[2]

    @property
    def tls(self) -> bool:
        """Whether the connection uses TLS (``mqtts://``)."""
        return self.url.startswith("mqtts:")

    def tls_context(self, where: str = "tls_ca") -> ssl.SSLContext | None:
        """The TLS context of an ``mqtts://`` connection (None for ``mqtt://``).

        Raises
        ------
        RtbciError
            If the CA file cannot be loaded; the message starts with ``where``.
        """
        if not self.tls:
            return None
        try:
            context = ssl.create_default_context(cafile=self.tls_ca)
        except (OSError, ssl.SSLError) as exc:
            raise RtbciError(f"{where}: cannot load the CA file {self.tls_ca!r}: {exc}") \
                from None
        if self.tls_insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def client_kwargs(self, tls_context: ssl.SSLContext | None = None) -> dict:
        """Keyword arguments of ``aiomqtt.Client``: host, port, credentials, TLS, TCP_NODELAY.

        ``tls_context`` is the one from :meth:`tls_context` (built once, reused across
        reconnections); built here when omitted.
        """
        if tls_context is None:
            tls_context = self.tls_context()
        password = self.password.get_secret_value() if self.password is not None else None
        return {"hostname": self.host, "port": self.port, "username": self.username,
                "password": password, "tls_context": tls_context, "socket_options": NODELAY}


def add_arguments(parser: argparse.ArgumentParser, url_flag: str = "--url") -> None:
    """Add the connection options (``url_flag``, ``--username``, ``--password-file``,
    ``--tls-ca``, ``--tls-insecure``) to a command's parser."""
    parser.add_argument(url_flag, default=DEFAULT_URL, metavar="URL",
                        help=f"MQTT broker, mqtt://HOST[:PORT] or mqtts://HOST[:PORT] (TLS) "
                             f"(default {DEFAULT_URL})")
    parser.add_argument("--username", help="broker user name")
    parser.add_argument("--password-file", type=Path, metavar="PATH",
                        help=f"file whose first line is the broker password (default: the "
                             f"{PASSWORD_ENV} environment variable)")
    parser.add_argument("--tls-ca", metavar="PEM",
                        help="CA certificate to verify an mqtts:// broker with (default: the "
                             "system's)")
    parser.add_argument("--tls-insecure", action="store_true",
                        help="mqtts:// without verifying the broker's certificate (testing only)")


def from_arguments(url: str, args: argparse.Namespace,
                   url_flag: str = "--url") -> MQTTConnection:
    """The :class:`MQTTConnection` of options added by :func:`add_arguments`.

    Raises
    ------
    RtbciError
        One line naming the option at fault.
    """
    try:
        parse_url(url)
    except ValueError as exc:
        raise RtbciError(f"{url_flag}: {exc}") from None
    password = os.environ.get(PASSWORD_ENV) or None
    if args.password_file is not None:
        try:
            password = args.password_file.read_text().splitlines()[0]
        except (OSError, UnicodeDecodeError, IndexError) as exc:
            raise RtbciError(f"--password-file: cannot read a password from "
                             f"{args.password_file}: {exc or 'empty file'}") from None
    try:
        connection = MQTTConnection(url=url, username=args.username, password=password,
                                    tls_ca=args.tls_ca, tls_insecure=args.tls_insecure)
    except ValidationError as exc:
        message = exc.errors()[0]["msg"].removeprefix("Value error, ")
        raise RtbciError(f"MQTT options: {message} (--tls-ca, --tls-insecure, --username, "
                         f"--password-file / {PASSWORD_ENV})") from None
    connection.tls_context("--tls-ca")  # a missing CA file is an error now, not at connect
    return connection


def child_environment(connection: MQTTConnection) -> tuple[list[str], dict[str, str]]:
    """Options and environment that pass ``connection`` on to another rtbci command
    (e.g. the display started by ``rtbci run --gui``), the password only in the environment."""
    args = []
    if connection.username is not None:
        args += ["--username", connection.username]
    if connection.tls_ca is not None:
        args += ["--tls-ca", connection.tls_ca]
    if connection.tls_insecure:
        args.append("--tls-insecure")
    env = dict(os.environ)
    if connection.password is not None:
        env[PASSWORD_ENV] = connection.password.get_secret_value()
    return args, env
