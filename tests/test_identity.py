"""Identity on the network (issue 21, point 4): an engine's simulator is its own, and two
engines never run one session."""

import asyncio
import logging
import os
import uuid

import pytest

from rtbci.config import parse_config
from rtbci.engine import Engine
from rtbci.errors import RtbciError

pytestmark = pytest.mark.slow


async def _until(condition, timeout: float = 30.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("timed out")


def test_two_engines_with_one_simulate_config_read_their_own_simulators():
    name = f"sim-{uuid.uuid4().hex[:8]}"
    config = {"sources": [{"name": "eeg", "kind": "simulate", "stream_name": name,
                           "buffer_seconds": 5}]}
    engines = [Engine(parse_config(config)), Engine(parse_config(config))]

    async def main():
        stop = asyncio.Event()
        runs = [asyncio.create_task(e.run(60.0, stop)) for e in engines]
        await _until(lambda: all("eeg" in e.streams and e.streams["eeg"].buffer.count > 500
                                 for e in engines))
        stop.set()
        return await asyncio.gather(*runs)

    stats = asyncio.run(main())
    read = [e.streams["eeg"].raw_info.source_id for e in engines]
    own = [e._companions[0].info.source_id for e in engines]
    assert read == own, "an engine read another engine's simulator"
    assert read[0] != read[1]
    for s in stats:
        assert s["streams"]["eeg"]["duplicate_streams"] == 0


def test_a_second_engine_on_a_session_refuses_in_one_line(caplog):
    session = f"ident-{uuid.uuid4().hex[:8]}"
    config = {"engine": {"session": session},
              "sources": [{"name": "eeg", "kind": "lsl",
                           "stream": {"name": f"absent-{session}"}}],
              "sinks": [{"kind": "lsl", "prefix": f"p{uuid.uuid4().hex[:6]}"}]}
    first, second = Engine(parse_config(config)), Engine(parse_config(config))

    async def main():
        stop = asyncio.Event()
        running = asyncio.create_task(first.run(60.0, stop))
        await _until(lambda: first._presence is not None)
        try:
            with pytest.raises(RtbciError) as refused:
                await asyncio.wait_for(second.run(60.0), 20.0)
            await asyncio.sleep(0.5)
            assert not running.done(), "the first engine must run on"
        finally:
            stop.set()
            await running
        return str(refused.value)

    with caplog.at_level(logging.WARNING, logger="rtbci.presence"):
        message = asyncio.run(main())
    assert "\n" not in message
    assert f"engine.session {session!r}" in message
    assert f"pid {os.getpid()}" in message and "another engine.session" in message
    # the first engine may see the second before it leaves: one warning at most
    warnings = [r.getMessage() for r in caplog.records if r.name == "rtbci.presence"]
    assert len(warnings) <= 1 and all("after this one" in w for w in warnings)
    assert second._marker_readers == [] and second.acquisitions == {}, "started nothing"


def test_a_later_engine_found_while_running_is_stopped():
    """The watch goes on after the start: an engine that starts while one runs is told."""
    from rtbci.presence import SessionPresence

    session = f"ident-{uuid.uuid4().hex[:8]}"
    refused = []
    early = SessionPresence(session, refused.append).start()
    try:
        late = SessionPresence(session, refused.append)
        late.start()
        try:
            assert late.conflict.wait(10.0)
        finally:
            late.stop()
    finally:
        early.stop()
    assert len(refused) == 1 and late.refusal == refused[0]
    assert early.refusal is None
