"""Fixtures for the display's tests: an offscreen QApplication, waiting, MQTT publishing."""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before Qt is imported
pytest.importorskip("PySide6", reason="the display needs PySide6 (pip install 'rtbci[gui]')")
pytest.importorskip("pyqtgraph", reason="the display needs pyqtgraph (pip install 'rtbci[gui]')")

from PySide6 import QtGui, QtWidgets  # noqa: E402

from rtbci.gui.window import MainWindow, ensure_app  # noqa: E402
from rtbci.messages import encode  # noqa: E402


@pytest.fixture(scope="session")
def qapp() -> QtWidgets.QApplication:
    """The themed QApplication (offscreen unless QT_QPA_PLATFORM says otherwise)."""
    return ensure_app()


@pytest.fixture
def unique(request) -> str:
    """A session / stream name no other test or machine on the network uses."""
    return f"gui-{request.node.name[:16].strip('_')}-{uuid.uuid4().hex[:8]}"


class QtHelper:
    """Waiting on a live Qt event loop, and checking screenshots."""

    def __init__(self, app: QtWidgets.QApplication):
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
    def pixels(image: QtGui.QImage) -> np.ndarray:
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
def make_window(qapp, request) -> Callable[..., MainWindow]:
    """Factory ``make_window(session, broker, streams=(), seconds=5)`` of shown windows.

    Every window is closed (its feeds stopped) at teardown.
    """
    windows: list[MainWindow] = []

    def make(session: str, broker: str, streams=(), seconds: float = 5.0) -> MainWindow:
        window = MainWindow(session, broker, streams, seconds=seconds)
        window.resize(1400, 900)
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
