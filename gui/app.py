"""``rtbci gui``: command-line options and the Qt application of the display.

The display is its own process, fed by LSL (signals, markers) and MQTT (results, status,
statistics): a slow frame or a closed window never touches the engine, and nothing in
``rtbci.gui`` is imported by the engine.

``python -m rtbci.gui --session demo`` runs it without the ``rtbci`` command.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys

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
