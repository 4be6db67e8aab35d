"""Without torch, rtbci.models (runtimes included) imports and says clearly what is missing."""

import subprocess
import sys

SCRIPT = """
import sys


class NoTorch:  # as if torch were not installed
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError(f"No module named {name!r}")


sys.meta_path.insert(0, NoTorch())
import numpy as np
from rtbci.errors import RtbciError
from rtbci.models.bandpower import BandPower
from rtbci.models.runtimes import cuda_available, load_runtime

bp = BandPower(100, 2, 100.0)
print(bp(np.zeros((100, 2), np.float32)).embedding.shape, cuda_available())
for attempt in (bp.to_torch, lambda: load_runtime("auto", object(), (1, 100, 2), name="bp")):
    try:
        attempt()
    except RtbciError as exc:
        print(exc)
"""


def test_models_import_and_fail_clearly_without_torch():
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "(6,) False",
        "bandpower: the torch twin (BandPowerNet) needs torch (pip install torch)",
        "bp: runtime 'torch' needs torch (pip install torch)"]
