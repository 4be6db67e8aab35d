"""Sinks: where results go (MQTT, LSL outlet, console).

Each sink implements :class:`Sink`; :func:`make_sink` builds one from its ``[[sinks]]`` entry.
"""

from __future__ import annotations

from rtbci.sinks.base import Sink

__all__ = ["Sink", "make_sink"]


def make_sink(config, session: str) -> Sink:
    """The sink for a validated ``[[sinks]]`` entry."""
    if config.kind == "mqtt":
        from rtbci.sinks.mqtt import MQTTSink

        return MQTTSink(config, session)
    if config.kind == "lsl":
        from rtbci.sinks.lsl import LSLSink

        return LSLSink(config, session)
    if config.kind == "console":
        from rtbci.sinks.console import ConsoleSink

        return ConsoleSink(config)
    raise ValueError(f"unknown sink kind {config.kind!r}")
