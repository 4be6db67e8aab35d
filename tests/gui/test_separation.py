"""The display is its own process: nothing of it, nor Qt, is imported by the engine."""

from __future__ import annotations

import subprocess
import sys


def test_the_engine_does_not_import_the_display():
    """The engine and its sinks load nothing of ``rtbci.gui``; the command line (with its
    parser built) loads neither Qt nor pyqtgraph."""
    code = ("import sys, rtbci.engine, rtbci.sinks.mqtt\n"
            "print(sorted(m for m in sys.modules if m.startswith('rtbci.gui')))\n"
            "import rtbci.cli\n"
            "rtbci.cli.build_parser()\n"
            "print(sorted(m for m in sys.modules if m.startswith(('PySide6', 'pyqtgraph'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)
    assert out.stdout.split() == ["[]", "[]"], out.stdout
