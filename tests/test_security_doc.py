"""docs/security.md's mosquitto example, run as written: TLS, passwords, the ACL."""

import asyncio
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import aiomqtt
import pytest

from rtbci.broker import port_open
from rtbci.cli import main
from rtbci.messages import encode
from rtbci.mqtt_connection import MQTTConnection

DOC = Path(__file__).parents[1] / "docs" / "security.md"


def doc_block(marker: str) -> str:
    """The fenced block after ``<!-- marker -->`` in docs/security.md."""
    match = re.search(rf"<!-- {re.escape(marker)} -->\n```\n(.*?)```", DOC.read_text(), re.S)
    assert match, f"no {marker} block in {DOC}"
    return match.group(1)


@pytest.fixture
def documented_broker(certificates, broker_dir):
    """mosquitto on the doc's configuration; users engine and demo: ``(url, ca)``."""
    if shutil.which("mosquitto") is None or shutil.which("mosquitto_passwd") is None:
        pytest.skip("mosquitto not installed")
    ca, cert, key = certificates
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    passwd, acl = broker_dir / "passwd", broker_dir / "acl"
    for user, flag in (("engine", "-c"), ("demo", None)):
        subprocess.run(["mosquitto_passwd", "-b", *([flag] if flag else []), str(passwd),
                        user, f"{user}-pw"], check=True, capture_output=True)
    passwd.chmod(0o644)
    acl.write_text(doc_block("acl"))
    acl.chmod(0o644)
    conf = (doc_block("mosquitto.conf").replace("listener 8883 0.0.0.0",
                                                f"listener {port} 127.0.0.1")
            .replace("/etc/mosquitto/certs/ca.crt", str(ca))
            .replace("/etc/mosquitto/certs/server.crt", str(cert))
            .replace("/etc/mosquitto/certs/server.key", str(key))
            .replace("/etc/mosquitto/passwd", str(passwd))
            .replace("/etc/mosquitto/acl", str(acl)))
    (broker_dir / "mosquitto.conf").write_text(conf)
    proc = subprocess.Popen(["mosquitto", "-c", str(broker_dir / "mosquitto.conf")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 5
    while not port_open("127.0.0.1", port):
        assert proc.poll() is None and time.monotonic() < deadline, "mosquitto did not start"
        time.sleep(0.02)
    yield f"mqtts://127.0.0.1:{port}", ca
    proc.kill()
    proc.wait(5)


def test_the_documented_mosquitto_setup(documented_broker, tmp_path, capsys, monkeypatch):
    url, ca = documented_broker
    engine = MQTTConnection(url=url, username="engine", password="engine-pw", tls_ca=str(ca))

    async def publish() -> None:
        async with aiomqtt.Client(**engine.client_kwargs()) as client:
            for session in ("demo", "other"):
                await client.publish(f"rtbci/{session}/status",
                                     encode({"state": "online", "session": session}), qos=1,
                                     retain=True)
    asyncio.run(publish())

    monkeypatch.setenv("RTBCI_MQTT_PASSWORD", "demo-pw")
    viewer = ["listen", "--url", url, "--tls-ca", str(ca), "--username", "demo",
              "--duration", "1"]
    assert main([*viewer, "--session", "demo"]) == 0
    assert "status: online" in capsys.readouterr().out
    other = main([*viewer, "--session", "other"])
    out, err = capsys.readouterr()
    assert "status: online" not in out  # the ACL: demo reads only rtbci/demo/#
    assert other == 0  # mosquitto 2.0 grants it, delivers nothing; listen says so
    assert err.strip().splitlines() == [
        "rtbci listen: no results for session 'other' yet; sessions on the broker: 'demo'",
        "{}"]
    monkeypatch.delenv("RTBCI_MQTT_PASSWORD")
    assert main([*viewer, "--session", "demo"]) == 2  # no password
    assert main([*viewer[:2], url.replace("mqtts:", "mqtt:"), *viewer[3:],
                 "--session", "demo"]) == 2
