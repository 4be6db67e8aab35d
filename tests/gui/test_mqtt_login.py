"""The display's MQTT feed connects like the sink: TLS with a CA file, user name, password."""

import asyncio
import os
import subprocess
import sys
import time

import aiomqtt

from rtbci.gui.feeds import MqttFeed
from rtbci.messages import encode
from rtbci.mqtt_connection import MQTTConnection


def wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.05)
    return predicate()


def test_feed_logs_in_over_tls(make_mosquitto, certificates, broker_dir, unique):
    ca, cert, key = certificates
    passwd = broker_dir / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwd), "viewer", "pw-8c1"],
                   check=True, capture_output=True)
    passwd.chmod(0o644)
    broker = make_mosquitto(f"certfile {cert}\nkeyfile {key}\nallow_anonymous false\n"
                            f"password_file {passwd}\n", scheme="mqtts")
    login = MQTTConnection(url=broker.url, tls_ca=str(ca), username="viewer", password="pw-8c1")

    async def retain_status() -> None:
        async with aiomqtt.Client(**login.client_kwargs()) as client:
            await client.publish(f"rtbci/{unique}/status",
                                 encode({"state": "online", "session": unique}), qos=1,
                                 retain=True)

    asyncio.run(retain_status())
    feed = MqttFeed(login, unique, reconnect_s=(0.05, 0.2)).start()
    anonymous = MqttFeed(MQTTConnection(url=broker.url, tls_ca=str(ca)), unique,
                         reconnect_s=(0.05, 0.2)).start()
    try:
        assert wait_for(lambda: feed.status is not None), feed.error
        assert feed.connected and feed.status["state"] == "online"
        assert wait_for(lambda: anonymous.error is not None)
        assert not anonymous.connected and anonymous.status is None
    finally:
        feed.stop()
        anonymous.stop()


def test_bad_connection_options_are_one_line(tmp_path):
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    bad = subprocess.run([sys.executable, "-m", "rtbci.gui", "--broker", "mqtts://127.0.0.1",
                          "--tls-ca", str(tmp_path / "missing.pem")], capture_output=True,
                         text=True, timeout=30, env=env)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        f"rtbci: error: --tls-ca: cannot load the CA file '{tmp_path / 'missing.pem'}': "
        "[Errno 2] No such file or directory"]
