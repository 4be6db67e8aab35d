"""Shared pytest fixtures. Each group of fixtures sits under its own header."""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from rtbci.messages import Result
from rtbci.sinks import Sink

# ---------------------------------------------------------------------------------------------
# MQTT: a real mosquitto broker on a free loopback port, and mosquitto_sub as a real client
# ---------------------------------------------------------------------------------------------

_MOSQUITTO_CONF = """\
listener {port} 127.0.0.1
allow_anonymous true
persistence false
log_dest stdout
set_tcp_nodelay true
"""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class MosquittoBroker:
    """A mosquitto process on ``127.0.0.1:port``; ``stop()``/``start()`` keep the port.

    Parameters
    ----------
    workdir : Path
        Directory for the config file and the broker's log (its stdout).
    port : int
        Loopback TCP port to listen on.
    extra_conf : str
        Lines appended to the config (they apply to the listener, e.g. TLS ``certfile``).
    scheme : str
        URL scheme of :attr:`url` (``"mqtts"`` for a TLS listener).
    """

    host = "127.0.0.1"

    def __init__(self, workdir: Path, port: int, extra_conf: str = "", scheme: str = "mqtt"):
        self.port = port
        self.url = f"{scheme}://{self.host}:{port}"
        self._conf = workdir / f"mosquitto-{port}.conf"
        self._conf.write_text(_MOSQUITTO_CONF.format(port=port) + extra_conf)
        self._log = workdir / f"mosquitto-{port}.log"
        self._proc: subprocess.Popen | None = None

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<MosquittoBroker {self.url} ({state})>"

    @property
    def running(self) -> bool:
        """Whether the broker process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 5.0) -> None:
        """Start the broker and wait until its port accepts connections."""
        if self.running:
            return
        with self._log.open("ab") as log:
            cmd = ["mosquitto", "-c", str(self._conf)]
            self._proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not _accepts(self.port) or self._proc.poll() is not None:
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"mosquitto did not start on port {self.port}:\n{self.log()}")
            time.sleep(0.01)

    def stop(self) -> None:
        """Kill the broker (SIGKILL: clients see the connection drop, as in a crash)."""
        if self._proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self._proc.kill()  # SIGKILL works on a paused (SIGSTOP) process too
        self._proc.wait(timeout=5)
        self._proc = None

    def pause(self) -> None:
        """Freeze the broker (SIGSTOP): connections stay open but nothing is answered."""
        if self._proc is not None:
            self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Undo :meth:`pause` (SIGCONT)."""
        if self._proc is not None:
            self._proc.send_signal(signal.SIGCONT)

    def log(self) -> str:
        """The broker's log so far."""
        return self._log.read_text(errors="replace") if self._log.exists() else ""


@pytest.fixture
def make_mosquitto(tmp_path: Path) -> Iterator[Callable[..., MosquittoBroker]]:
    """Factory ``make_mosquitto(extra_conf="", scheme="mqtt")`` of running brokers.

    Skips the test if ``mosquitto`` is not on PATH; kills every broker at teardown.
    """
    if shutil.which("mosquitto") is None:
        pytest.skip("mosquitto broker not installed (apt-get install mosquitto mosquitto-clients)")
    brokers: list[MosquittoBroker] = []

    def make(extra_conf: str = "", scheme: str = "mqtt") -> MosquittoBroker:
        broker = MosquittoBroker(tmp_path, _free_port(), extra_conf, scheme)
        brokers.append(broker)
        broker.start()
        return broker

    yield make
    for broker in brokers:
        broker.stop()


@pytest.fixture
def broker_dir() -> Iterator[Path]:
    """A world-readable folder for files mosquitto reads (it drops root: tmp_path is 0700)."""
    folder = Path(tempfile.mkdtemp(prefix="rtbci-broker-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def mosquitto(make_mosquitto: Callable[..., MosquittoBroker]) -> MosquittoBroker:
    """A running mosquitto broker on 127.0.0.1 (``.port``, ``.url``, ``.stop()``, ``.start()``)."""
    return make_mosquitto()


def make_certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it: (ca, cert, key)."""
    ca, ca_key = folder / "ca.crt", folder / "ca.key"
    cert, key, csr, ext = (folder / n for n in ("server.crt", "server.key", "server.csr",
                                                "san.ext"))
    ext.write_text("subjectAltName=IP:127.0.0.1\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for cmd in (
        ["req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-days", "1", "-subj", "/CN=ca"],
        ["req", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1"],
        ["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
         "-out", cert, "-days", "1", "-extfile", ext],
    ):
        subprocess.run(["openssl", *map(str, cmd)], check=True, capture_output=True)
    folder.chmod(0o755)  # mosquitto may read them after dropping root privileges
    for path in (ca, cert, key):
        path.chmod(0o644)
    return ca, cert, key


@pytest.fixture
def certificates() -> Iterator[tuple[Path, Path, Path]]:
    """CA, server certificate and key in a world-readable folder (mosquitto drops root)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed (needed to make test certificates)")
    folder = Path(tempfile.mkdtemp(prefix="rtbci-tls-"))
    try:
        yield make_certificates(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


class MosquittoSub:
    """A ``mosquitto_sub`` process printing ``<topic> <hex payload>`` lines.

    Parameters
    ----------
    port : int
        Broker port on 127.0.0.1.
    topic : str
        Topic filter to subscribe to.
    count : int
        Exit after this many messages (``-C``).
    out : Path
        File that receives the process's stdout.
    args : sequence of str
        Extra ``mosquitto_sub`` arguments (e.g. ``["-T", "rtbci/x/status"]``).
    timeout : float
        Seconds after which mosquitto_sub gives up (``-W``).
    """

    def __init__(self, port: int, topic: str, count: int, out: Path,
                 args: Sequence[str] = (), timeout: float = 10) -> None:
        self._out = out
        cmd = ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-t", topic,
               "-C", str(count), "-W", str(int(timeout)), "-F", "%t %x", "-d", *args]
        if shutil.which("stdbuf"):  # line-buffer its stdout so the SUBACK line shows at once
            cmd = ["stdbuf", "-oL", *cmd]
        with out.open("wb") as stdout:
            self.proc = subprocess.Popen(cmd, stdout=stdout, stderr=subprocess.STDOUT)

    def wait_subscribed(self, timeout: float = 5.0) -> None:
        """Block until the broker acknowledged the subscription (SUBACK)."""
        if not shutil.which("stdbuf"):  # output is block-buffered: no way to see the SUBACK
            time.sleep(0.5)
            return
        deadline = time.monotonic() + timeout
        while "received SUBACK" not in self._out.read_text(errors="replace"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mosquitto_sub did not subscribe:\n{self.output()}")
            time.sleep(0.01)

    def messages(self, timeout: float = 10.0) -> list[tuple[str, bytes]]:
        """Wait for the process to exit; return the ``(topic, payload)`` pairs it printed."""
        self.proc.wait(timeout=timeout)
        pairs = []
        for line in self.output().splitlines():
            topic, _, payload = line.partition(" ")
            if not line.startswith("Client ") and topic and _is_hex(payload):
                pairs.append((topic, bytes.fromhex(payload)))
        return pairs

    def output(self) -> str:
        """Everything it printed so far (debug lines included)."""
        return self._out.read_text(errors="replace")

    def kill(self) -> None:
        """Stop the process if it still runs."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)


def _is_hex(text: str) -> bool:
    try:
        bytes.fromhex(text)
    except ValueError:
        return False
    return bool(text)


@pytest.fixture
def mosquitto_sub(tmp_path: Path) -> Iterator[Callable[..., MosquittoSub]]:
    """Factory ``mosquitto_sub(port, topic, count, *args) -> MosquittoSub`` (subscribed)."""
    if shutil.which("mosquitto_sub") is None:
        pytest.skip("mosquitto_sub not installed (apt-get install mosquitto-clients)")
    procs: list[MosquittoSub] = []

    def start(port: int, topic: str, count: int, *args: str) -> MosquittoSub:
        sub = MosquittoSub(port, topic, count, tmp_path / f"mosquitto_sub_{len(procs)}.out", args)
        procs.append(sub)
        sub.wait_subscribed()
        return sub

    yield start
    for sub in procs:
        sub.kill()


# --- Engine ------------------------------------------------------------------------------


class Collector(Sink):
    """A sink that keeps every result it is handed, in order."""

    kind = "collector"

    def __init__(self) -> None:
        self.results: list[Result] = []

    def publish(self, result: Result) -> None:
        self.results.append(result)


@pytest.fixture
def collector() -> Collector:
    """A fresh :class:`Collector` sink (pass it to ``Engine(config, sinks=[collector])``)."""
    return Collector()


@pytest.fixture
def new_collector() -> Callable[[], Collector]:
    """The :class:`Collector` class, for tests that need several."""
    return Collector
