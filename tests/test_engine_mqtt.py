"""The engine publishing decoded results through a real mosquitto broker."""

import asyncio
import socket
import time
import uuid

import aiomqtt
import numpy as np
import pytest

from rtbci.config import parse_config
from rtbci.engine import Engine
from rtbci.messages import decode

pytestmark = pytest.mark.slow


def make_engine(url: str, session: str, collector, **mqtt) -> Engine:
    config = parse_config({
        "engine": {"session": session},
        "sources": [{"name": "eeg", "kind": "simulate", "stream_name": f"{session}-eeg"}],
        "decoders": [{"name": "bp", "model": "builtin:bandpower", "source": "eeg",
                      "window_ms": 500, "every_ms": 50, "budget_ms": 20, "runtime": "numpy"}],
        "sinks": [{"kind": "mqtt", "url": url, "reconnect_max_s": 1.0, **mqtt}]})
    return Engine(config, sinks=[collector])


async def subscribe(port: int, topic: str, into: list, ready: asyncio.Event):
    nodelay = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
    async with aiomqtt.Client("127.0.0.1", port, socket_options=nodelay) as client:
        await client.subscribe(topic, qos=1)
        ready.set()
        async for msg in client.messages:
            into.append((str(msg.topic), decode(msg.payload)))


def test_results_reach_aiomqtt_and_mosquitto_sub_unchanged(mosquitto, mosquitto_sub, collector):
    session = f"e{uuid.uuid4().hex[:6]}"
    engine = make_engine(mosquitto.url, session, collector)
    cli = mosquitto_sub(mosquitto.port, f"rtbci/{session}/bp", 20)
    received = []

    async def main():
        ready = asyncio.Event()
        sub = asyncio.create_task(subscribe(mosquitto.port, f"rtbci/{session}/#", received,
                                            ready))
        await ready.wait()
        await engine.run(5.0)
        await asyncio.sleep(0.5)
        sub.cancel()

    asyncio.run(main())
    sent = {r.seq: r for r in collector.results}
    results = [m for t, m in received if t.endswith("/bp")]
    assert len(results) == len(sent) > 60
    for message in results:
        expected = vars(sent[message["seq"]])
        assert message.keys() == expected.keys()
        for key, value in expected.items():
            if isinstance(value, np.ndarray):
                assert message[key].dtype == value.dtype
                np.testing.assert_array_equal(message[key], value)
            else:
                assert message[key] == value, key
    statuses = [m for t, m in received if t.endswith("/status")]
    assert statuses[0]["state"] == "online" and statuses[-1]["state"] == "offline"
    online = [s for s in statuses if s["state"] == "online" and s["decoders"]]
    assert online and online[-1]["decoders"]["bp"]["kind"] == "embedding"
    assert online[-1]["streams"]["eeg"]["n_channels"] == 64
    ticks = [m for t, m in received if t.endswith("/stats")]
    assert len(ticks) >= 3  # one a second
    assert ticks[-1]["session"] == session and ticks[-1]["streams"]["eeg"]["samples"] > 2000
    assert ticks[-1]["decoders"]["bp"]["results"] > ticks[0]["decoders"]["bp"]["results"]
    from_cli = [decode(payload) for _, payload in cli.messages()]
    assert len(from_cli) == 20
    for message in from_cli:
        np.testing.assert_array_equal(message["embedding"], sent[message["seq"]].embedding)


@pytest.mark.timeout(120)
def test_engine_keeps_decoding_through_a_5_s_broker_outage(mosquitto, collector):
    session = f"o{uuid.uuid4().hex[:6]}"
    engine = make_engine(mosquitto.url, session, collector, outbox_size=60)
    received, marks = [], {}

    async def main():
        async def outage():
            await asyncio.sleep(3.0)
            marks["down"] = len(collector.results)
            await asyncio.to_thread(mosquitto.stop)
            await asyncio.sleep(5.0)
            marks["up"] = len(collector.results)
            await asyncio.to_thread(mosquitto.start)
            ready = asyncio.Event()
            marks["sub"] = asyncio.create_task(subscribe(mosquitto.port,
                                                         f"rtbci/{session}/bp", received, ready))
            await ready.wait()

        task = asyncio.create_task(outage())
        stats = await engine.run(13.0)
        await task
        await asyncio.sleep(0.5)
        marks["sub"].cancel()
        return stats

    stats = asyncio.run(main())
    assert marks["up"] - marks["down"] > 80, "decoding paused while the broker was down"
    sink = stats["sinks"]["mqtt[0]"]
    assert sink["produced"] == len(collector.results)
    assert sink["delivered"] + sink["dropped"] == sink["produced"]
    assert sink["dropped"] > 0  # 5 s × 20/s overflows an outbox of 60 ...
    assert sink["reconnects"] >= 1
    seqs = [m["seq"] for _, m in received]
    assert len(seqs) > 60  # ... and results flow to a subscriber again after the restart
    assert seqs == sorted(seqs)
    assert stats["decoders"]["bp"]["errors"] == 0


def test_rtbci_listen_reports_what_it_received(mosquitto, collector, tmp_path):
    import json
    import subprocess
    import sys

    session = f"l{uuid.uuid4().hex[:6]}"
    engine = make_engine(mosquitto.url, session, collector)
    out = tmp_path / "listen.json"
    listener = subprocess.Popen([sys.executable, "-m", "rtbci", "listen", "--url", mosquitto.url,
                                 "--session", session, "--duration", "12", "--summary-only",
                                 "--stats-json", str(out)], stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(2.0)  # the listener subscribes
        asyncio.run(engine.run(5.0))  # results, the status and a stats message each second
        assert listener.wait(timeout=20) == 0, listener.stderr.read()
    finally:
        listener.kill()
    summary = json.loads(out.read_text())["bp"]
    assert summary["received"] == len(collector.results) > 60
    assert 0 < summary["engine_ms"]["p50"] < 20 and summary["end_to_end_ms"]["p50"] > 0
