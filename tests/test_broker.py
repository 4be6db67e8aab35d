"""``rtbci broker`` (amqtt) with real aiomqtt clients: passwords, anonymous clients, the ACL."""

import asyncio
import logging
import subprocess
import sys

import aiomqtt
import pytest

from rtbci.broker import serve, start_broker_process
from rtbci.cli import main
from rtbci.errors import RtbciError
from rtbci.mqtt_connection import MQTTConnection

pytestmark = pytest.mark.slow


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def add_user(path, user: str, password: str) -> None:
    """``rtbci broker --add-user`` as a user runs it, the password on stdin."""
    done = subprocess.run([sys.executable, "-m", "rtbci", "broker", "--password-file",
                           str(path), "--add-user", user], input=password + "\n",
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    """A ``rtbci broker --password-file`` process with users alice and bob: its URL."""
    path = tmp_path_factory.mktemp("broker") / "passwd"
    add_user(path, "alice", "alice-pw")
    add_user(path, "bob", "bob-pw")
    add_user(path, "alice", "alice-pw2")  # replaces alice's password
    assert "alice-pw" not in path.read_text() and path.stat().st_mode & 0o077 == 0
    port = free_port()
    proc = start_broker_process("127.0.0.1", port, password_file=path)
    yield f"mqtt://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(10)


def client(url: str, user: str | None = None, password: str | None = None) -> aiomqtt.Client:
    login = MQTTConnection(url=url, username=user, password=password)
    return aiomqtt.Client(**login.client_kwargs(), timeout=5)


async def connects(url: str, user=None, password=None) -> bool:
    try:
        async with client(url, user, password):
            return True
    except aiomqtt.MqttError:
        return False


def test_known_users_only(broker):
    assert asyncio.run(connects(broker, "alice", "alice-pw2"))
    assert not asyncio.run(connects(broker, "alice", "alice-pw"))  # the old password
    assert not asyncio.run(connects(broker, "alice", "bob-pw"))
    assert not asyncio.run(connects(broker, "mallory", "x"))
    assert not asyncio.run(connects(broker))  # anonymous


def test_each_user_reads_and_writes_only_its_session(broker):
    async def scenario() -> tuple[dict, list, list]:
        granted = {}
        async with client(broker, "bob", "bob-pw") as bob, \
                client(broker, "alice", "alice-pw2") as alice:
            for name, topic in [("own", "rtbci/bob/#"), ("other", "rtbci/alice/#"),
                                ("all", "#"), ("wild", "rtbci/+/status")]:
                granted[name] = (await bob.subscribe(topic))[0]
            await alice.subscribe("rtbci/alice/#")
            await alice.publish("rtbci/bob/bp", b"from alice", qos=1)  # not alice's session
            await alice.publish("rtbci/alice/bp", b"alice's own", qos=1)
            await bob.publish("rtbci/bob/bp", b"bob's own", qos=1)
            got_bob, got_alice = [], []
            for who, into in ((bob, got_bob), (alice, got_alice)):
                try:
                    async with asyncio.timeout(1.0):
                        async for msg in who.messages:
                            into.append(bytes(msg.payload))
                except TimeoutError:
                    pass
        return granted, got_bob, got_alice

    granted, got_bob, got_alice = asyncio.run(scenario())
    codes = {name: int(getattr(code, "value", code)) for name, code in granted.items()}
    assert codes == {"own": 0, "other": 0x80, "all": 0x80, "wild": 0x80}
    assert got_bob == [b"bob's own"]
    assert got_alice == [b"alice's own"]


def test_listen_as_another_session_is_one_line(broker, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RTBCI_MQTT_PASSWORD", "bob-pw")
    code = main(["listen", "--url", broker, "--username", "bob", "--session", "alice",
                 "--duration", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [f"rtbci: error: {broker}: the broker refused the "
                                 "subscription to rtbci/alice/# (not allowed for this user?)"]


@pytest.mark.parametrize(("args", "message"), [
    (["--port", "99999"], "rtbci: error: --port: must be 1..65535, got 99999"),
    (["--port", "0"], "rtbci: error: --port: must be 1..65535, got 0"),
    (["--add-user", "x"], "rtbci: error: --add-user needs --password-file"),
])
def test_bad_options_are_one_line(args, message, capsys):
    assert main(["broker", *args]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [message]


def test_bad_password_files_are_refused(tmp_path):
    plain = tmp_path / "mosquitto.passwd"
    plain.write_text("alice:$7$101$abc\n")  # mosquitto_passwd's format: not amqtt's
    with pytest.raises(RtbciError, match=r"line 1: expected USER:\$argon2"):
        asyncio.run(serve("127.0.0.1", free_port(), asyncio.Event(), plain))
    with pytest.raises(RtbciError, match="cannot read"):
        asyncio.run(serve("127.0.0.1", free_port(), asyncio.Event(), tmp_path / "missing"))


def test_warns_when_anonymous_on_the_network(caplog):
    async def briefly(host: str) -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(0.2, stop.set)
        await serve(host, free_port(), stop)

    caplog.set_level(logging.WARNING, logger="rtbci.broker")
    asyncio.run(briefly("127.0.0.1"))
    assert not caplog.records
    asyncio.run(briefly("0.0.0.0"))
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert "accepts anonymous clients from the network" in caplog.text
    assert "--password-file" in caplog.text


def test_a_session_name_is_a_user_name(tmp_path):
    with pytest.raises(RtbciError, match="must be a session name"):
        from rtbci.broker import add_user as add

        add(tmp_path / "p", "a/b", "pw")
