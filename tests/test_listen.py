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


# -- hostile or mistaken peers (issue 21, points 6 and 11) ------------------------------------


def publish(connection: MQTTConnection, messages: list[tuple[str, bytes]]) -> None:
    """Publish (not retained) with a real client, QoS 1 so that all reach the broker."""
    async def run() -> None:
        async with aiomqtt.Client(**connection.client_kwargs()) as client:
            for topic, payload in messages:
                await client.publish(topic, payload, qos=1)

    asyncio.run(run())


class ListenProcess:
    """``rtbci listen`` in a child process, started once it has subscribed (it prints the
    session's retained status, which this puts there first)."""

    def __init__(self, url: str, session: str, stats, duration: float):
        import sys

        retain(MQTTConnection(url=url), [(f"rtbci/{session}/status",
                                          encode({"state": "online", "session": session}))])
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rtbci", "listen", "--url", url, "--session", session,
             "--duration", str(duration), "--stats-json", str(stats)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()  # blocks until subscribed (or the process ends)
        assert line == "status: online\n", (line, self.proc.stderr.read())

    def finish(self, timeout: float = 60.0) -> tuple[int, str]:
        _, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, err


def nd(array: np.ndarray) -> dict:
    return {"nd": True, "dtype": array.dtype.str, "shape": list(array.shape),
            "data": array.tobytes()}


def malformed(session: str) -> dict[str, dict]:
    """Results with one field missing or of the wrong type, by the topic level they go to."""
    good = msgpack.unpackb(encode(result(session)), raw=False)
    good["probabilities"] = nd(np.array([0.3, 0.7], np.float32))

    def bad(**fields) -> dict:
        message = {**good, **fields}
        return {k: v for k, v in message.items() if v is not ...}

    return {
        "no_seq": bad(seq=...), "no_window_end": bad(window_end=...),
        "decoder_int": bad(decoder=7), "late_str": bad(late="yes"),
        "nan_time": bad(t_arrived=float("nan")),
        "prob_str": bad(probabilities="0.7"),
        "prob_list_str": bad(probabilities=["a", "b"]),
        "prob_2d": bad(probabilities=nd(np.ones((2, 2), np.float32))),
        "prob_complex": bad(probabilities=nd(np.ones(2, np.complex64))),
        "prob_bad_nd": bad(probabilities={"nd": True, "dtype": "<f4", "shape": [9],
                                          "data": b"\0" * 8}),
        "labels_str": bad(labels="left"), "labels_int": bad(labels=[1, 2]),
        "labels_short": bad(labels=["left"]),
        "ids_float": bad(probabilities=None, ids=nd(np.ones(2, np.float32)),
                         scores=nd(np.ones(2, np.float32))),
        "ids_no_scores": bad(probabilities=None, ids=nd(np.arange(2))),
        "embedding_str": bad(probabilities=None, embedding="x"),
        "embedding_0d": bad(probabilities=None, embedding=nd(np.float32(1.0).reshape(()))),
        "importance_2d": bad(importance=nd(np.ones((2, 2), np.float32))),
        "kind_list": bad(kind=["classes"]),
    }


@pytest.mark.timeout(120)
def test_malformed_results_are_foreign_never_a_traceback(mosquitto, session, tmp_path,
                                                        caplog):
    stats = tmp_path / "listen.json"
    listener = ListenProcess(mosquitto.url, session, stats, duration=4)
    bad = malformed(session)
    messages = [(f"rtbci/{session}/{level}", msgpack.packb(m, use_bin_type=True))
                for level, m in bad.items()]
    publish(MQTTConnection(url=mosquitto.url),
            [*messages, messages[0], (f"rtbci/{session}/bp", encode(result(session)))])
    code, err = listener.finish()
    assert code == 0, err
    assert "Traceback" not in err
    summary = json.loads(stats.read_text())
    assert summary["bp"]["received"] == 1
    assert summary["#foreign"] == len(bad) + 1
    warned = [line for line in err.splitlines() if "ignoring a foreign message" in line]
    assert len(warned) == len(bad)  # once per topic
    assert {line.split(" on ")[1].split()[0] for line in warned} == {t for t, _ in messages}


@pytest.mark.timeout(120)
def test_distinct_decoder_names_are_capped(mosquitto, session, tmp_path):
    from rtbci.listen import MAX_DECODERS

    stats = tmp_path / "listen.json"
    listener = ListenProcess(mosquitto.url, session, stats, duration=6)
    messages = []
    for i in range(MAX_DECODERS + 300):
        message = result(session)
        message.decoder = f"d{i}"
        messages.append((f"rtbci/{session}/d{i}", encode(message)))
    publish(MQTTConnection(url=mosquitto.url), messages)
    code, err = listener.finish()
    assert code == 0, err
    summary = json.loads(stats.read_text())
    assert summary.pop("#untracked") == 300
    assert sorted(summary) == sorted(f"d{i}" for i in range(MAX_DECODERS))
    assert sum("decoder names on this session" in line for line in err.splitlines()) == 1


def test_thirty_thousand_names_keep_a_bounded_table():
    from rtbci.listen import MAX_DECODERS, LatencyLog

    log = LatencyLog()
    message = {"decoder": "", "late": False, "window_end": 1.0, "t_published": 1.5,
               "t_arrived": 1.0}
    for i in range(30_000):
        message["decoder"] = f"n{i}"
        log.add(message, 2.0)
    assert len(log.received) == len(log.e2e) == len(log.engine) == MAX_DECODERS == 256
    assert log.untracked == 30_000 - MAX_DECODERS


def test_a_mistyped_session_names_the_sessions_on_the_broker(mosquitto, capsys):
    """``--session dmeo``: one line says nothing came and which sessions the broker has."""
    tag = uuid.uuid4().hex[:4]
    retain(MQTTConnection(url=mosquitto.url), [
        (f"rtbci/demo{tag}/status", encode({"state": "online", "session": f"demo{tag}"})),
        (f"rtbci/old{tag}/status", encode({"state": "offline", "session": f"old{tag}"})),
        (f"rtbci/demo{tag}/bp", encode(result(f"demo{tag}")))])
    code = main(["listen", "--url", mosquitto.url, "--session", f"dmeo{tag}", "--duration",
                 "3.5", "--summary-only"])
    assert code == 0
    hints = [line for line in capsys.readouterr().err.splitlines()
             if line.startswith("rtbci listen:")]
    assert hints == [f"rtbci listen: no results for session 'dmeo{tag}' yet; sessions on the "
                     f"broker: 'demo{tag}', 'old{tag}' (offline)"]


def test_a_short_listen_without_results_still_says_so(mosquitto, capsys):
    """Shorter than the hint delay: the line comes at exit; no session at all: 'none seen'."""
    assert main(["listen", "--url", mosquitto.url, "--session", "nobody", "--duration",
                 "0.5", "--summary-only"]) == 0
    err = capsys.readouterr().err
    assert ("rtbci listen: no results for session 'nobody' yet; sessions on the broker: "
            "none seen") in err.splitlines()
