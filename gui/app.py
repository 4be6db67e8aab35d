"""``rtbci gui``: command-line options and the Qt application of the display.

The display is its own process, fed by LSL (signals, markers) and MQTT (results, status,
statistics): a slow frame or a closed window never touches the engine, and nothing in
``rtbci.gui`` is imported by the engine.

``python -m rtbci.gui --session demo`` runs it without the ``rtbci`` command.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

from rtbci.mqtt_connection import add_arguments as add_mqtt_arguments

log = logging.getLogger("rtbci.gui")

DEFAULT_SIZE = (1600, 1000)


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, got {text!r}") from None
    if width < 200 or height < 200:
        raise argparse.ArgumentTypeError(f"window too small: {text}")
    return width, height


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the display's options to ``parser`` (used by ``rtbci gui``)."""
    parser.add_argument("--session", default="demo", help="engine session to show (default demo)")
    add_mqtt_arguments(parser, "--broker")  # and --username, --password-file, --tls-ca, …
    parser.add_argument("--stream", dest="streams", action="append", default=[], metavar="NAME",
                        help="LSL stream to draw (repeatable; default: every numeric, regularly "
                             "sampled stream found on the network)")
    parser.add_argument("--seconds", type=_positive, default=10.0,
                        help="time span of the traces in seconds (default 10)")
    parser.add_argument("--fps", type=_positive, default=30.0,
                        help="redraws per second (default 30)")
    parser.add_argument("--history", type=_count, default=500,
                        help="results per decoder in the latency histograms (default 500)")
    parser.add_argument("--size", type=_size, default=DEFAULT_SIZE, metavar="WxH",
                        help="window size in pixels (default 1600x1000)")
    parser.add_argument("--screenshot", metavar="PATH",
                        help="save a PNG of the window after --quit-after seconds, then exit")
    parser.add_argument("--quit-after", type=_positive, metavar="S",
                        help="exit after S seconds (default 5 with --screenshot)")


def run(args: argparse.Namespace) -> int:
    """Open the display window and run the Qt event loop until it closes; exit status."""
    from rtbci.errors import RtbciError
    from rtbci.mqtt_connection import from_arguments

    try:
        connection = from_arguments(args.broker, args, "--broker")
    except RtbciError as exc:
        print(f"rtbci: error: {exc}", file=sys.stderr)
        return 2
    problem = platform_problem()  # before Qt, which aborts the process (exit 134)
    if problem:
        print(f"rtbci: error: {problem}", file=sys.stderr)
        return 2
    try:
        from PySide6 import QtCore

        from rtbci.gui.window import MainWindow, ensure_app
    except ImportError as exc:
        print(f"rtbci: error: the display needs PySide6 and pyqtgraph (pip install "
              f"'rtbci[gui]'): {exc}", file=sys.stderr)
        return 2

    app = ensure_app(sys.argv[:1])
    window = MainWindow(args.session, connection, args.streams, seconds=args.seconds,
                        fps=args.fps, history=args.history)
    window.resize(*args.size)
    window.show()
    outcome = {"code": 0}
    quit_after = args.quit_after or (5.0 if args.screenshot else None)
    if quit_after:
        QtCore.QTimer.singleShot(round(quit_after * 1000),
                                 lambda: _finish(app, window, args.screenshot, outcome))
    _quit_on_signals(app)
    app.aboutToQuit.connect(window.close_feeds)
    app.exec()
    window.close_feeds()
    return outcome["code"]


# libraries a Qt platform plugin opens at run time (not among its ELF dependencies): Qt >= 6.5
# refuses xcb without libxcb-cursor
RUNTIME_LIBRARIES: dict[str, tuple[str, ...]] = {"xcb": ("libxcb-cursor.so.0",)}
# soname → the Debian/Ubuntu package that ships it (docs/gui.md lists them per platform)
APT_PACKAGES = {
    "libxcb-cursor.so.0": "libxcb-cursor0", "libxcb-icccm.so.4": "libxcb-icccm4",
    "libxcb-image.so.0": "libxcb-image0", "libxcb-keysyms.so.1": "libxcb-keysyms1",
    "libxcb-randr.so.0": "libxcb-randr0", "libxcb-render-util.so.0": "libxcb-render-util0",
    "libxcb-shape.so.0": "libxcb-shape0", "libxcb-xinerama.so.0": "libxcb-xinerama0",
    "libxcb-xkb.so.1": "libxcb-xkb1", "libxcb-xfixes.so.0": "libxcb-xfixes0",
    "libxcb-sync.so.1": "libxcb-sync1", "libxcb-shm.so.0": "libxcb-shm0",
    "libxcb-render.so.0": "libxcb-render0", "libxcb-util.so.1": "libxcb-util1",
    "libxcb.so.1": "libxcb1", "libX11-xcb.so.1": "libx11-xcb1", "libX11.so.6": "libx11-6",
    "libxkbcommon.so.0": "libxkbcommon0", "libxkbcommon-x11.so.0": "libxkbcommon-x11-0",
    "libEGL.so.1": "libegl1", "libGL.so.1": "libgl1", "libOpenGL.so.0": "libopengl0",
    "libGLX.so.0": "libglx0", "libfontconfig.so.1": "libfontconfig1",
    "libfreetype.so.6": "libfreetype6", "libdbus-1.so.3": "libdbus-1-3",
    "libglib-2.0.so.0": "libglib2.0-0", "libwayland-client.so.0": "libwayland-client0",
    "libwayland-cursor.so.0": "libwayland-cursor0", "libwayland-egl.so.1": "libwayland-egl1",
}


def qt_platform(environ=os.environ) -> str:
    """The Qt platform plugin Qt will load: ``QT_QPA_PLATFORM`` (its first entry, without
    options), else ``wayland`` in a Wayland session, else ``xcb`` (Linux)."""
    wanted = environ.get("QT_QPA_PLATFORM", "").split(";")[0].split(":")[0].strip()
    if wanted:
        return wanted
    if environ.get("WAYLAND_DISPLAY") and environ.get("XDG_SESSION_TYPE") == "wayland":
        return "wayland"
    return "xcb"


def _plugin_dir() -> Path | None:
    """PySide6's ``Qt/plugins/platforms`` folder, found without importing Qt (or None)."""
    import importlib.util

    spec = importlib.util.find_spec("PySide6")
    for root in (spec.submodule_search_locations or []) if spec else []:
        folder = Path(root) / "Qt" / "plugins" / "platforms"
        if folder.is_dir():
            return folder
    return None


def _loadable(soname: str) -> bool:
    import ctypes

    try:
        ctypes.CDLL(soname)
    except OSError:
        return False
    return True


def missing_libraries(platform: str, plugin_dir: Path | None = None) -> list[str]:
    """The system libraries (sonames) Qt's ``platform`` plugin needs that cannot be loaded:
    its ELF dependencies ``ldd`` reports ``not found`` and :data:`RUNTIME_LIBRARIES`.
    Empty when nothing is missing or it cannot be told (no plugin, no ``ldd``, not Linux)."""
    if not sys.platform.startswith("linux"):
        return []
    plugin = (plugin_dir or _plugin_dir() or Path("/nonexistent")) / f"libq{platform}.so"
    missing: list[str] = []
    if plugin.is_file():
        try:
            out = subprocess.run(["ldd", str(plugin)], capture_output=True, text=True,
                                 timeout=10).stdout
        except (OSError, subprocess.TimeoutExpired):
            out = ""
        for line in out.splitlines():
            name, _, where = line.strip().partition(" => ")
            if where.strip() == "not found" and name not in missing:
                missing.append(name)
    missing += [name for name in RUNTIME_LIBRARIES.get(platform, ())
                if name not in missing and not _loadable(name)]
    return missing


def platform_problem(environ=os.environ, plugin_dir: Path | None = None) -> str | None:
    """Why Qt would abort on start (a missing system library of its platform plugin, or no
    X display for xcb), in one line with the apt-get packages to install; None if none."""
    platform = qt_platform(environ)
    missing = missing_libraries(platform, plugin_dir)
    if missing:
        packages = sorted({APT_PACKAGES.get(name, name) for name in missing})
        return (f"the display's Qt platform plugin {platform!r} needs system libraries that "
                f"are missing: {', '.join(missing)}; install them (Debian/Ubuntu: sudo "
                f"apt-get install {' '.join(packages)}; docs/gui.md), or set "
                "QT_QPA_PLATFORM=offscreen for --screenshot only")
    if platform == "xcb" and sys.platform.startswith("linux") and not environ.get("DISPLAY"):
        return ("the display needs a screen: DISPLAY is not set (run it in a desktop "
                "session or with ssh -X, or set QT_QPA_PLATFORM=offscreen for --screenshot "
                "only)")
    return None


def _finish(app, window, screenshot: str | None, outcome: dict) -> None:
    """Save the screenshot (if asked for) and quit the event loop."""
    if screenshot:
        if window.screenshot(screenshot):
            log.info("screenshot written to %s", screenshot)
        else:
            print(f"rtbci: error: cannot write the screenshot {screenshot}", file=sys.stderr)
            outcome["code"] = 1
    app.quit()


def _quit_on_signals(app) -> None:
    """Quit cleanly on Ctrl-C / SIGTERM (a timer lets Python run its handlers every 200 ms)."""
    from PySide6 import QtCore

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: app.quit())
    timer = QtCore.QTimer(app)
    timer.timeout.connect(lambda: None)
    timer.start(200)


def main(argv: list[str] | None = None) -> int:
    """``python -m rtbci.gui``: parse ``argv`` and :func:`run` the display."""
    parser = argparse.ArgumentParser(prog="rtbci gui",
                                     description="The rtbci display: live traces from LSL, "
                                                 "decoder outputs and timing from MQTT.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    return run(args)
