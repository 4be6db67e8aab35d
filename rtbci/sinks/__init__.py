"""Sinks: where results go (MQTT, LSL outlet, console, session recorder).

Each sink implements :class:`Sink`; :func:`make_sink` builds one from its ``[[sinks]]`` entry.
"""

from __future__ import annotations

from rtbci.sinks.base import Sink

__all__ = ["Sink", "make_sink"]


def make_sink(config, session: str, engine_config=None) -> Sink:
    """The sink for a validated ``[[sinks]]`` entry (``engine_config``: the whole Config)."""
    if config.kind == "mqtt":
        from rtbci.sinks.mqtt import MQTTSink

        return MQTTSink(config, session)
    if config.kind == "lsl":
        from rtbci.sinks.lsl import LSLSink

        return LSLSink(config, session)
    if config.kind == "console":
        from rtbci.sinks.console import ConsoleSink

        return ConsoleSink(config)
    if config.kind == "record":
        from rtbci.sinks.record import RecordSink

        return RecordSink(config, session, engine_config)
    raise ValueError(f"unknown sink kind {config.kind!r}")
