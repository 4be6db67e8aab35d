"""The ``timeflux`` row: a real Timeflux graph, in its own virtualenv.

Timeflux 0.17.2 pins numpy 1.26.4 and imports ``resolve_stream`` and ``pylsl.pylsl``, which
pylsl 1.18 no longer has, so it cannot share rtbci's environment. :func:`setup` builds a
virtualenv at :data:`VENV` (``~/.cache/rtbci/peers/timeflux``, or ``$RTBCI_TIMEFLUX_VENV``)
with ``timeflux==0.17.2 timeflux-dsp pylsl==1.16.2``; pylsl 1.16.2's Linux wheel carries no
liblsl, so the liblsl 1.18 bundled in rtbci's own pylsl wheel is copied into it
(``pylsl/lib/liblsl.so``). ``rtbci bench --setup-timeflux`` runs it.

The graph (rate 0, Timeflux's fastest): ``timeflux.nodes.lsl.Receive`` (``clocksync: false``,
so timestamps stay on the LSL clock; Receive itself forces clocksync + dejitter on the inlet)
→ ``timeflux.nodes.window.Slide`` (0.5 s every 0.05 s) → a log band power node (the job's
formula, numpy; below) → ``timeflux.nodes.lsl.Send`` (stamps each result with the DataFrame's
index, the window's last-sample time).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pylsl

PACKAGES = ["timeflux==0.17.2", "timeflux-dsp==0.3.4", "pylsl==1.16.2"]

NODE = '''\
"""Log band power per channel, the rtbci bench's job, as a Timeflux node."""
import numpy as np
import pandas as pd
from timeflux.core.node import Node

BANDS = ((4.0, 8.0), (8.0, 13.0), (13.0, 30.0))


class LogBandPower(Node):
    def __init__(self, rate):
        self._rate, self._n = rate, 0

    def update(self):
        if not self.i.ready():
            return
        x = self.i.data.values
        if self._n != len(x):  # rtbci's BandPower: the DFT at the bands' bins as one matmul
            n = self._n = len(x)
            f = np.fft.rfftfreq(n, 1.0 / self._rate)
            bands = np.array([(f >= lo) & (f < hi) for lo, hi in BANDS], float)
            bins = np.flatnonzero(bands.any(axis=0))
            angle = 2 * np.pi * np.outer(np.arange(n), bins) / n
            taper = np.hanning(n + 1)[:-1, None]
            dft = np.hstack([taper * np.cos(angle), taper * np.sin(angle)])
            self._dft = (dft - dft.mean(axis=0)).T  # mean removal folded in
            self._sums = np.hstack([bands[:, bins], bands[:, bins]])
        spectrum = self._dft @ (x - x[:1])
        values = np.log10(self._sums @ (spectrum * spectrum) + 1e-20).T.reshape(1, -1)
        self.o.data = pd.DataFrame(values, index=self.i.data.index[-1:])
'''

GRAPH = """\
graphs:
  - id: bench
    rate: {graph_rate}
    nodes:
      - id: receive
        module: timeflux.nodes.lsl
        class: Receive
        params: {{prop: name, value: "{stream}", clocksync: false, max_samples: 4096}}
      - id: window
        module: timeflux.nodes.window
        class: Slide
        params: {{length: 0.5, step: 0.05, rate: {rate}}}
      - id: bandpower
        module: rtbci_bench_node
        class: LogBandPower
        params: {{rate: {rate}}}
      - id: send
        module: timeflux.nodes.lsl
        class: Send
        params: {{name: "{out}-bp", type: bench.result}}
    edges:
      - {{source: receive, target: window}}
      - {{source: window, target: bandpower}}
      - {{source: bandpower, target: send}}
"""


def venv() -> Path:
    """Where the Timeflux virtualenv lives."""
    default = Path.home() / ".cache" / "rtbci" / "peers" / "timeflux"
    return Path(os.environ.get("RTBCI_TIMEFLUX_VENV", default))


def python() -> Path | None:
    """The Timeflux virtualenv's python, or None when it is not installed."""
    exe = venv() / "bin" / "python"
    return exe if exe.exists() else None


def built(path: Path) -> bool:
    """Whether the virtualenv at ``path`` imports Timeflux's LSL nodes already."""
    exe = path / "bin" / "python"
    return exe.exists() and subprocess.run(
        [str(exe), "-c", "import timeflux.nodes.lsl"], capture_output=True).returncode == 0


def setup(path: Path | None = None) -> Path:
    """Build the Timeflux virtualenv at ``path`` (nothing to do if it works already: delete
    the folder to rebuild it); returns its python."""
    path = path or venv()
    if built(path):
        print(f"timeflux ready: {path / 'bin' / 'python'} (built before)", flush=True)
        return path / "bin" / "python"
    print(f"creating {path} …", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(path)], check=True)
    exe = path / "bin" / "python"
    subprocess.run([str(exe), "-m", "pip", "install", "-q", *PACKAGES], check=True)
    site = subprocess.run([str(exe), "-c", "import os, pylsl; print(os.path.dirname("
                           "pylsl.__file__))"], check=True, capture_output=True, text=True,
                          env={**os.environ, "PYLSL_LIB": liblsl()}).stdout.strip()
    (Path(site) / "lib").mkdir(exist_ok=True)
    shutil.copyfile(liblsl(), Path(site) / "lib" / "liblsl.so")
    version = subprocess.run([str(exe), "-c", "import pylsl, timeflux.nodes.lsl; "
                              "print(pylsl.library_version())"], check=True,
                             capture_output=True, text=True).stdout.strip()
    print(f"timeflux ready: {exe} (liblsl {version})", flush=True)
    return exe


def liblsl() -> str:
    """The liblsl shared library bundled in this environment's pylsl wheel."""
    lib = Path(pylsl.__file__).parent / "lib"
    found = sorted(lib.glob("liblsl.so.*")) or sorted(lib.glob("liblsl*"))
    if not found:
        raise FileNotFoundError(f"no liblsl in {lib}")
    return str(found[0].resolve())


GRAPH_RATE = 1000  # the timeflux-rate row's graph rate, Hz (Timeflux's own setting)


def command(workdir: Path, stream: str, out: str, rate: float,
            graph_rate: float = 0) -> tuple[list[str], dict]:
    """The command line and environment that run the graph on ``stream`` (``graph_rate``:
    the graph's ``rate``, 0 = as fast as it can); numpy's BLAS at one thread, as the other
    rows run it (idle OpenBLAS threads spin)."""
    (workdir / "rtbci_bench_node.py").write_text(NODE)
    graph = workdir / "timeflux.yaml"
    graph.write_text(GRAPH.format(stream=stream, out=out, rate=rate, graph_rate=graph_rate))
    env = {**os.environ, "PYTHONPATH": str(workdir), "TIMEFLUX_LOG_LEVEL_CONSOLE": "WARNING",
           "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return [str(python()), "-m", "timeflux", str(graph)], env
