"""Credentials never leave the config: not in a recording, not in any MQTT message."""

import asyncio
import subprocess
import uuid
from pathlib import Path

import aiomqtt
import pytest

from rtbci.config import parse_config
from rtbci.engine import Engine
from rtbci.mqtt_connection import MQTTConnection

pytestmark = pytest.mark.slow

SECRET = "s3cret-Pa55word-7f1c"


def password_file(folder: Path, user: str, password: str) -> Path:
    """A mosquitto password file (mosquitto_passwd) readable by the broker."""
    path = folder / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(path), user, password], check=True,
                   capture_output=True)
    path.chmod(0o644)
    return path


def test_the_password_is_in_no_file_and_no_message(make_mosquitto, broker_dir, tmp_path):
    session = f"sec{uuid.uuid4().hex[:6]}"
    passwd = password_file(broker_dir, session, SECRET)
    broker = make_mosquitto(f"allow_anonymous false\npassword_file {passwd}\n")
    config = parse_config({
        "engine": {"session": session, "stats_interval_s": 0.5},
        "sources": [{"name": "eeg", "kind": "simulate", "stream_name": f"{session}-eeg"}],
        "decoders": [{"name": "bp", "model": "builtin:bandpower", "source": "eeg",
                      "window_ms": 500, "every_ms": 100, "runtime": "numpy"}],
        "sinks": [{"kind": "mqtt", "url": broker.url, "username": session, "password": SECRET},
                  {"kind": "record", "path": str(tmp_path / "{session}"), "flush_s": 0.5}]})
    assert SECRET not in repr(config) and SECRET not in config.model_dump_json()
    engine = Engine(config)
    login = MQTTConnection(url=broker.url, username=session, password=SECRET)
    payloads: list[bytes] = []

    async def main() -> dict:
        ready = asyncio.Event()

        async def subscribe() -> None:
            async with aiomqtt.Client(**login.client_kwargs()) as client:
                await client.subscribe(f"rtbci/{session}/#")
                ready.set()
                async for msg in client.messages:
                    payloads.append(bytes(msg.payload))

        task = asyncio.create_task(subscribe())
        await asyncio.wait_for(ready.wait(), 5)
        stats = await engine.run(3.0)
        await asyncio.sleep(0.3)
        task.cancel()
        return stats

    stats = asyncio.run(main())
    assert stats["sinks"]["mqtt[0]"]["delivered"] > 10  # the sink did log in with it
    assert len(payloads) > 10  # results, retained status, statistics
    files = [p for p in (tmp_path / session).rglob("*") if p.is_file()]
    assert {"session.json", "eeg_raw.fif"} <= {p.name for p in files}
    for path in files:
        assert SECRET.encode() not in path.read_bytes(), path
    assert not [p for p in payloads if SECRET.encode() in p]
