"""``rtbci listen`` against real mosquitto brokers: TLS, credentials, bad input, foreign data."""

import asyncio
import json
import subprocess
import time
import uuid

import aiomqtt
import msgpack
import numpy as np
import pytest

from rtbci.cli import main
from rtbci.messages import Result, encode
from rtbci.mqtt_connection import MQTTConnection

PASSWORD = "listen-pw-93b2"


def result(session: str, seq: int = 0) -> Result:
    now = time.perf_counter()
    return Result(decoder="bp", seq=seq, trigger="every", window_start=now - 0.5,
                  window_end=now, kind="classes", t_arrived=now, t_published=now + 0.001,
                  labels=["left", "right"], probabilities=np.array([0.3, 0.7], np.float32),
                  session=session)


def retain(connection: MQTTConnection, messages: list[tuple[str, bytes]]) -> None:
    """Publish retained messages: a subscriber that comes later receives them at once."""
    async def publish() -> None:
        async with aiomqtt.Client(**connection.client_kwargs()) as client:
            for topic, payload in messages:
                await client.publish(topic, payload, qos=1, retain=True)

    asyncio.run(publish())


@pytest.fixture
def session() -> str:
    return f"li{uuid.uuid4().hex[:6]}"


def test_a_missing_broker_is_one_line_naming_the_url(capsys):
    code = main(["listen", "--url", "mqtt://127.0.0.1:9", "--duration", "1"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().splitlines() == [
        "rtbci: error: --url: cannot connect to mqtt://127.0.0.1:9: [Errno 111] Connection "
        "refused"]


def test_stats_into_a_missing_folder_is_refused_before_listening(tmp_path, capsys):
    """Checked before connecting: a broker that is there would not save the summary."""
    out = tmp_path / "missing" / "stats.json"
    assert main(["listen", "--url", "mqtt://127.0.0.1:9", "--stats-json", str(out)]) == 2
    assert capsys.readouterr().err == (f"rtbci: error: --stats-json: no folder "
                                       f"'{tmp_path / 'missing'}' to write stats.json in\n")


@pytest.mark.parametrize("session", ["#", "+", "a/b", ""])
def test_wildcard_sessions_are_refused(capsys, session):
    assert main(["listen", "--url", "mqtt://127.0.0.1:9", "--session", session]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"rtbci: error: --session: {session!r} is not a session name (no '/', "
                   "'+', '#'; wildcards are not allowed)")


def test_foreign_payloads_are_counted_and_listening_goes_on(mosquitto, session, tmp_path,
                                                            capsys, caplog):
    topic = f"rtbci/{session}"
    retain(MQTTConnection(url=mosquitto.url), [
        (f"{topic}/junk", b"\xc1 not msgpack"),
        (f"{topic}/other", msgpack.packb({"temperature": 21.5})),
        (f"{topic}/status", b"\xc1"),
        (f"{topic}/bp", encode(result(session)))])
    stats = tmp_path / "listen.json"
    code = main(["listen", "--url", mosquitto.url, "--session", session, "--duration", "1.5",
                 "--summary-only", "--stats-json", str(stats)])
    assert code == 0, capsys.readouterr().err
    summary = json.loads(stats.read_text())
    assert summary["bp"]["received"] == 1  # the real result still counts
    assert summary["#foreign"] == 3
    warnings = [r.getMessage() for r in caplog.records if r.name == "rtbci.listen"]
    assert len(warnings) == 3 and all("foreign message" in w for w in warnings)
    assert {w.split()[5] for w in warnings} == {f"{topic}/junk", f"{topic}/other",
                                                f"{topic}/status"}


def password_file(folder, user: str, password: str):
    path = folder / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(path), user, password], check=True,
                   capture_output=True)
    path.chmod(0o644)
    return path


def test_credentials_from_a_file_or_the_environment(make_mosquitto, broker_dir, session,
                                                    tmp_path, capsys, monkeypatch):
    passwd = password_file(broker_dir, session, PASSWORD)
    broker = make_mosquitto(f"allow_anonymous false\npassword_file {passwd}\n")
    retain(MQTTConnection(url=broker.url, username=session, password=PASSWORD),
           [(f"rtbci/{session}/bp", encode(result(session)))])
    secret = tmp_path / "pw"
    secret.write_text(PASSWORD + "\n")
    stats = tmp_path / "s.json"
    common = ["listen", "--url", broker.url, "--session", session, "--duration", "1",
              "--summary-only", "--stats-json", str(stats)]

    assert main([*common, "--username", session, "--password-file", str(secret)]) == 0
    assert json.loads(stats.read_text())["bp"]["received"] == 1
    monkeypatch.setenv("RTBCI_MQTT_PASSWORD", PASSWORD)
    stats.unlink()
    assert main([*common, "--username", session]) == 0
    assert json.loads(stats.read_text())["bp"]["received"] == 1
    capsys.readouterr()

    monkeypatch.setenv("RTBCI_MQTT_PASSWORD", "wrong")
    assert main([*common, "--username", session]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"rtbci: error: --url: cannot connect to "
                                               f"{broker.url}: ")
    monkeypatch.delenv("RTBCI_MQTT_PASSWORD")
    assert main(common) == 2  # anonymous
    assert "cannot connect" in capsys.readouterr().err


def test_tls_verifies_the_broker_and_refuses_plain_text(make_mosquitto, certificates, session,
                                                        tmp_path, capsys):
    ca, cert, key = certificates
    tls = make_mosquitto(f"certfile {cert}\nkeyfile {key}\n", scheme="mqtts")
    retain(MQTTConnection(url=tls.url, tls_ca=str(ca)),
           [(f"rtbci/{session}/bp", encode(result(session)))])
    stats = tmp_path / "s.json"
    common = ["listen", "--session", session, "--duration", "1", "--summary-only"]

    assert main([*common, "--url", tls.url, "--tls-ca", str(ca), "--stats-json",
                 str(stats)]) == 0
    assert json.loads(stats.read_text())["bp"]["received"] == 1
    capsys.readouterr()
    assert main([*common, "--url", tls.url]) == 2  # the system's CAs do not know ours
    assert "certificate verify failed" in capsys.readouterr().err
    plain = make_mosquitto()
    assert main([*common, "--url", plain.url.replace("mqtt:", "mqtts:")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rtbci: error: --url: cannot connect to mqtts:")
    assert main([*common, "--url", plain.url, "--tls-ca", str(ca)]) == 2
    assert "need a TLS url" in capsys.readouterr().err


def test_an_mqtts_url_builds_a_verifying_tls_context(certificates):
    ca, _, _ = certificates
    kwargs = MQTTConnection(url="mqtts://broker.lab", tls_ca=str(ca), username="u",
                            password="p").client_kwargs()
    context = kwargs["tls_context"]
    assert context is not None and context.check_hostname
    assert (kwargs["hostname"], kwargs["port"], kwargs["password"]) == ("broker.lab", 8883, "p")
    assert MQTTConnection(url="mqtt://h").client_kwargs()["tls_context"] is None


def test_the_display_gets_the_login_without_the_password_in_its_arguments():
    from rtbci.mqtt_connection import PASSWORD_ENV, child_environment

    login = MQTTConnection(url="mqtts://h", username="demo", password="pw-x", tls_ca="ca.pem")
    args, env = child_environment(login)
    assert args == ["--username", "demo", "--tls-ca", "ca.pem"]
    assert env[PASSWORD_ENV] == "pw-x"
