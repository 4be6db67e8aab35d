"""Sinks: where results go (MQTT, LSL outlet, console, session recorder).

Each sink implements :class:`Sink`; ``make_sink`` builds one from its ``[[sinks]]`` config.
"""

from rtbci.sinks.base import Sink

__all__ = ["Sink"]
