"""The display's MQTT feed against a real mosquitto: malformed results and invented names
are counted, never kept (issue 21, point 6). No Qt needed."""

from __future__ import annotations

import asyncio
import time

import aiomqtt
import msgpack
import numpy as np

from rtbci.gui.feeds import MqttFeed
from rtbci.messages import MAX_DECODER_NAMES, Result, encode


def _result(session: str, decoder: str = "bp") -> Result:
    now = time.perf_counter()
    return Result(decoder=decoder, seq=0, trigger="every", window_start=now - 0.5,
                  window_end=now, kind="classes", t_arrived=now, t_published=now + 0.001,
                  labels=["left", "right"], probabilities=np.array([0.3, 0.7], np.float32),
                  session=session)


def _publish(url_port: int, messages: list[tuple[str, bytes]]) -> None:
    async def run() -> None:
        async with aiomqtt.Client("127.0.0.1", url_port) as client:
            for topic, payload in messages:
                await client.publish(topic, payload, qos=1)

    asyncio.run(run())


def _wait_for(condition, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _malformed(session: str) -> list[dict]:
    good = msgpack.unpackb(encode(_result(session)), raw=False)
    wrong = [{"seq": "1"}, {"probabilities": "0.7"}, {"labels": "left"},
             {"labels": ["left"]}, {"t_published": None},
             {"probabilities": None, "ids": [1.5, 2.5], "scores": None},
             {"probabilities": None, "embedding": {"x": 1}}]
    missing = [{k: v for k, v in good.items() if k != name}
               for name in ("decoder", "window_end", "late")]
    return [{**good, **fields} for fields in wrong] + missing


def test_malformed_results_and_invented_names_are_counted_not_kept(mosquitto, unique):
    feed = MqttFeed(mosquitto.url, unique, history=100_000, reconnect_s=(0.05, 0.2)).start()
    try:
        assert _wait_for(lambda: feed.connected), feed.error
        bad = [(f"rtbci/{unique}/bad{i}", msgpack.packb(m, use_bin_type=True))
               for i, m in enumerate(_malformed(unique))]
        names = [(f"rtbci/{unique}/d{i}", encode(_result(unique, f"d{i}")))
                 for i in range(MAX_DECODER_NAMES + 50)]
        _publish(mosquitto.port, [*bad, *names, (f"rtbci/{unique}/d0",
                                                 encode(_result(unique, "d0")))])
        total = len(bad) + len(names) + 1
        assert _wait_for(lambda: feed.received >= total), feed.received
        results = feed.take_results()
    finally:
        feed.stop()
    assert feed.bad_messages == len(bad)
    assert feed.untracked == 50
    assert len(feed.decoders) == MAX_DECODER_NAMES
    kept = [message["decoder"] for message, _ in results]
    assert kept == [f"d{i}" for i in range(MAX_DECODER_NAMES)] + ["d0"]
    assert all(message["ids"] is None for message, _ in results)  # optional fields present
