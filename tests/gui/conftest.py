"""Fixtures for the display's tests: an offscreen QApplication, waiting, MQTT publishing."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from rtbci.messages import encode

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before Qt is imported
try:  # the test modules that need Qt skip themselves without it (pytest.importorskip)
    from PySide6 import QtGui, QtWidgets
except ImportError:
    QtGui = QtWidgets = None


@pytest.fixture(scope="session")
def qapp():
    """The themed QApplication (offscreen unless QT_QPA_PLATFORM says otherwise)."""
    for module in ("PySide6", "pyqtgraph"):
        pytest.importorskip(module, reason=f"the display needs {module} (pip install "
                                           "'rtbci[gui]')")
    from rtbci.gui.window import ensure_app

    return ensure_app()


@pytest.fixture
def unique(request) -> str:
    """A session / stream name no other test or machine on the network uses."""
    return f"gui-{request.node.name[:16].strip('_')}-{uuid.uuid4().hex[:8]}"


class QtHelper:
    """Waiting on a live Qt event loop, and checking screenshots."""

    def __init__(self, app):
        self.app = app

    def wait_until(self, condition: Callable[[], object], timeout: float = 10.0,
                   what: str = "") -> None:
        """Process Qt events until ``condition()`` is true; fail after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for "
                                     f"{what or condition}")
            self.app.processEvents()
            time.sleep(0.01)
        self.app.processEvents()

    def settle(self, seconds: float) -> None:
        """Process Qt events for ``seconds``."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.app.processEvents()
            time.sleep(0.01)

    @staticmethod
    def pixels(image) -> np.ndarray:
        """An image's pixels as an array of shape (height, width, 4), uint8."""
        image = image.convertToFormat(QtGui.QImage.Format.Format_RGBA8888)
        height, width = image.height(), image.width()
        data = np.frombuffer(image.constBits(), dtype=np.uint8, count=image.sizeInBytes())
        rows = data.reshape(height, image.bytesPerLine())[:, : 4 * width]
        return rows.reshape(height, width, 4).copy()  # the converted QImage dies on return

    def assert_not_blank(self, path: Path) -> None:
        """Fail if the PNG at ``path`` is missing, empty or (nearly) a single colour."""
        image = QtGui.QImage(str(path))
        assert not image.isNull(), f"{path} is not a readable image"
        rgb = self.pixels(image)[..., :3].reshape(-1, 3)
        colours = np.unique(rgb[:: max(1, len(rgb) // 200_000)], axis=0)
        assert rgb.std() > 5.0 and len(colours) > 20, (
            f"{path} looks blank: std {rgb.std():.2f}, {len(colours)} colours")


@pytest.fixture
def qt(qapp) -> QtHelper:
    """``qt.wait_until(cond, timeout)``, ``qt.settle(s)``, ``qt.assert_not_blank(png)``."""
    return QtHelper(qapp)


@pytest.fixture
def make_window(qapp) -> Callable:
    """Factory ``make_window(session, broker, streams=(), seconds=5)`` of shown windows.

    Every window is closed (its feeds stopped) at teardown.
    """
    from rtbci.gui.window import MainWindow

    windows: list[MainWindow] = []

    def make(session: str, broker: str, streams=(), seconds: float = 5.0,
             size: tuple[int, int] = (1400, 900)) -> MainWindow:
        window = MainWindow(session, broker, streams, seconds=seconds)
        window.resize(*size)
        window.show()
        windows.append(window)
        return window

    yield make
    for window in windows:
        window.close()
    qapp.processEvents()


@pytest.fixture
def nobroker() -> str:
    """The URL of a loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"mqtt://127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture
def publish() -> Callable[[int, list], None]:
    """``publish(port, [(topic, message, retain), …])``: aiomqtt, QoS 1, in order.

    Messages are encoded with :func:`rtbci.messages.encode`; bytes are sent as they are.
    """
    import aiomqtt

    def send(port: int, messages: list[tuple[str, object, bool]]) -> None:
        async def run() -> None:
            async with aiomqtt.Client("127.0.0.1", port) as client:
                for topic, message, retain in messages:
                    payload = message if isinstance(message, bytes) else encode(message)
                    await client.publish(topic, payload, qos=1, retain=retain)

        asyncio.run(run())

    return send


class Subscriber:
    """An aiomqtt client in a background thread that keeps every message of a topic filter.

    ``messages`` holds ``(topic, decoded message, receive time on the LSL clock)``.
    """

    def __init__(self, port: int, topic: str):
        self.port, self.topic = port, topic
        self.messages: list[tuple[str, dict, float]] = []
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self) -> Subscriber:
        self._thread.start()
        assert self._ready.wait(10), "the test's MQTT subscriber did not connect"
        return self

    def __exit__(self, *exc) -> None:
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(5)

    def results(self, decoder: str) -> list[dict]:
        """The result messages of ``decoder`` received so far."""
        return [m for topic, m, _ in list(self.messages) if topic.endswith(f"/{decoder}")]

    async def _run(self) -> None:
        import aiomqtt
        import pylsl

        from rtbci.messages import decode

        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        nodelay = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
        async with aiomqtt.Client("127.0.0.1", self.port, socket_options=nodelay) as client:
            await client.subscribe(self.topic)
            self._ready.set()
            reader = asyncio.ensure_future(self._read(client, decode, pylsl.local_clock))
            await self._stop.wait()
            reader.cancel()

    async def _read(self, client, decode, clock) -> None:
        async for message in client.messages:
            self.messages.append((str(message.topic), decode(message.payload), clock()))


@pytest.fixture
def subscribe() -> Callable[[int, str], Subscriber]:
    """``with subscribe(port, topic) as sub:`` — an MQTT client collecting messages."""
    return Subscriber
