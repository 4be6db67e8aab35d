"""``rtbci gui`` names the missing system libraries of Qt's platform plugin in one line
before Qt can abort the process (issue 21: exit 134 without libxcb-cursor0)."""

import os
import subprocess
import sys

import pytest

from rtbci.gui import app


def test_a_missing_library_of_the_platform_is_named_with_its_package(monkeypatch, capsys):
    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")
    monkeypatch.setitem(app.RUNTIME_LIBRARIES, "offscreen", ("libxcb-cursor.so.0",
                                                             "libno-such-rtbci-lib.so.7"))
    monkeypatch.setattr(app, "_loadable", lambda name: name != "libxcb-cursor.so.0"
                        and name != "libno-such-rtbci-lib.so.7")
    assert app.main(["--quit-after", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("rtbci: error: the display's Qt platform "
                                                   "plugin 'offscreen' needs system libraries")
    assert "missing: libxcb-cursor.so.0, libno-such-rtbci-lib.so.7;" in err
    assert "sudo apt-get install libno-such-rtbci-lib.so.7 libxcb-cursor0;" in err


def test_a_library_that_cannot_load_is_found_missing(monkeypatch):
    monkeypatch.setitem(app.RUNTIME_LIBRARIES, "minimal", ("libno-such-rtbci-lib.so.7",))
    assert "libno-such-rtbci-lib.so.7" in app.missing_libraries("minimal")
    assert app.qt_platform({"QT_QPA_PLATFORM": "xcb:dpi=96;offscreen"}) == "xcb"
    assert app.qt_platform({"WAYLAND_DISPLAY": "wayland-0", "XDG_SESSION_TYPE": "wayland"}) \
        == "wayland"
    assert app.qt_platform({}) == "xcb"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Qt's xcb plugin: Linux")
def test_xcb_without_a_screen_or_its_libraries_is_one_line_not_an_abort():
    pytest.importorskip("PySide6")
    env = {k: v for k, v in os.environ.items() if k != "DISPLAY"}
    env["QT_QPA_PLATFORM"] = "xcb"
    out = subprocess.run([sys.executable, "-m", "rtbci", "gui", "--quit-after", "1"],
                         capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 2, out.stderr  # Qt's own abort: 134
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("rtbci: error: the display")
    assert "apt-get install" in out.stderr or "DISPLAY is not set" in out.stderr
