"""Stream sources: LSL inlets, the simulated amplifier, BrainFlow boards, file replay
(``rtbci.devices``)."""

from __future__ import annotations

import uuid

from rtbci.devices.base import Source, SourceLost

__all__ = ["Source", "SourceLost", "make_source"]


def make_source(config) -> tuple[Source, dict[str, str] | None, object | None]:
    """Build the source for a ``[[sources]]`` entry.

    Returns ``(source, marker_query, companion)``: the LSL query of the source's marker
    stream (or None), and for ``simulate`` the started
    :class:`~rtbci.devices.simulate.SimulatedAmplifier` whose LSL outlets the source reads
    (stop it at shutdown; otherwise None).
    """
    from rtbci.devices.lsl import LSLSource

    if config.kind == "lsl":
        markers = config.markers.as_dict() if config.markers else None
        return LSLSource(config.name, config.stream.as_dict(), config.processing), markers, None
    if config.kind == "simulate":
        from rtbci.devices.simulate import SimulatedAmplifier

        # a source_id of its own: the source reads this simulator, never another engine's
        # simulator of the same name (same config) on the network
        name = config.stream_name or config.name
        amp = SimulatedAmplifier(config.profile, name=name,
                                 seed=config.seed, snr=config.snr, classes=tuple(config.classes),
                                 subject=config.subject, task=config.task,
                                 items=config.items,
                                 source_id=f"rtbci-sim-{name}-{uuid.uuid4().hex[:12]}")
        source = LSLSource(config.name, {"source_id": amp.info.source_id},
                           ("clocksync", "dejitter"))
        return source, {"source_id": amp.marker_source_id}, amp.start()
    if config.kind == "brainflow":
        from rtbci.devices.brainflow import BrainFlowSource, Connection

        connection = Connection(**{key: getattr(config, key) for key in (
            "serial_port", "ip_address", "ip_port", "mac_address", "serial_number",
            "other_info", "file", "master_board")})
        return BrainFlowSource(config.name, config.board, connection, config.stream_name,
                               config.lost_after_s, config.dejitter), None, None
    raise ValueError(f"unknown source kind {config.kind!r}")
