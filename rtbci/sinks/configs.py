"""The ``[[sinks]]`` entries' schemas, one pydantic model per sink kind.

Kept apart from the sinks themselves so that :mod:`rtbci.config` validates a configuration
without importing any sink implementation (aiomqtt, pylsl, the session writer);
:func:`rtbci.sinks.make_sink` imports a sink's module only when one is built. Each sink
module re-exports its schema (``from rtbci.sinks.mqtt import MQTTSinkConfig`` works).
A new sink kind adds its model here, to :data:`SINK_CONFIGS` and to ``make_sink``.
"""

from __future__ import annotations

import string
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from rtbci.mqtt_connection import MQTTConnection

__all__ = ["PATH_KEYS", "SINK_CONFIGS", "ConsoleSinkConfig", "LSLSinkConfig",
           "MQTTSinkConfig", "RecordSinkConfig"]

PATH_KEYS = ("session", "start")  # the {key}s of a record path


class MQTTSinkConfig(MQTTConnection):
    """The ``[[sinks]]`` entry of kind ``mqtt``.

    The connection keys (``url``, ``username``, ``password``, ``tls_ca``, ``tls_insecure``)
    are those of :class:`~rtbci.mqtt_connection.MQTTConnection`; the password is never
    written out (``**********`` in a dumped config).

    Attributes
    ----------
    qos : {0, 1}
        MQTT quality of service of the result messages (the status always uses QoS 1).
    client_id : str | None
        MQTT client identifier; generated when omitted.
    outbox_size : int
        Results kept while the broker is unreachable; beyond it the oldest are dropped.
    reconnect_min_s, reconnect_max_s : float
        Bounds of the exponential backoff between reconnection attempts, in seconds.
    keepalive_s : int
        MQTT keepalive, in seconds: a silent broker is declared lost after 1 to 2 × this.
    """

    kind: Literal["mqtt"] = "mqtt"
    qos: Literal[0, 1] = 0
    client_id: str | None = None
    outbox_size: int = Field(default=1000, gt=0)
    reconnect_min_s: float = Field(default=0.2, gt=0)
    reconnect_max_s: float = Field(default=5.0, gt=0)
    keepalive_s: int = Field(default=10, ge=1, le=65535)

    @model_validator(mode="after")
    def _check_consistency(self) -> MQTTSinkConfig:
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError(
                f"reconnect_max_s ({self.reconnect_max_s}) must be >= reconnect_min_s "
                f"({self.reconnect_min_s})"
            )
        return self


class LSLSinkConfig(BaseModel):
    """The ``[[sinks]]`` entry of kind ``lsl``."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["lsl"] = "lsl"
    prefix: str = "rtbci"  # outlet names: <prefix>-<session>-<decoder>


class ConsoleSinkConfig(BaseModel):
    """The ``[[sinks]]`` entry of kind ``console``."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["console"] = "console"
    interval_s: float = Field(1.0, gt=0, description="seconds between lines per decoder")


class RecordSinkConfig(BaseModel):
    """The ``[[sinks]]`` entry of kind ``record``."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["record"] = "record"
    path: str = Field("sessions/{session}-{start}",
                      description="session directory; {session} and {start} "
                                  "(YYYYmmdd-HHMMSS) are filled in")
    format: Literal["session", "xdf"] = Field(
        "session", description="session: a session directory (rtbci.devices.session); xdf: "
                               "one XDF file, PATH.xdf (rtbci.devices.xdf)")
    flush_s: float = Field(1.0, gt=0, le=60, description="at most this much is lost in a crash")
    buffer_seconds: float = Field(30.0, gt=0, description="raw history awaiting the writer")
    retry_s: float = Field(5.0, gt=0, le=300,
                           description="after a write error (a full disk…), try again this "
                                       "often; samples wait in the buffer meanwhile")
    private: bool = Field(True, description="the session directory 0700 and its files 0600 "
                                            "(personal data); false: as the umask says")

    @field_validator("path")
    @classmethod
    def _known_keys(cls, path: str) -> str:
        try:
            fields = [(key, spec, conv) for _, key, spec, conv in string.Formatter().parse(path)
                      if key is not None]
        except ValueError as exc:  # a lone { or }
            raise ValueError(f"{exc} (write {{{{ and }}}} for braces)") from None
        unknown = sorted({key if not (spec or conv) else f"{key}{'!' if conv else ':'}"
                          f"{conv or spec}" for key, spec, conv in fields} - set(PATH_KEYS))
        if unknown:
            raise ValueError(f"unknown {{{unknown[0]}}}; the path may use "
                             + ", ".join(f"{{{k}}}" for k in PATH_KEYS))
        return path


SINK_CONFIGS = (MQTTSinkConfig, LSLSinkConfig, ConsoleSinkConfig, RecordSinkConfig)
