"""TF32 is set once per process under one lock, never flipped around a call (CPU: the flags
exist without CUDA)."""

import gc
import threading

import pytest

torch = pytest.importorskip("torch")

from rtbci.errors import RtbciError  # noqa: E402
from rtbci.models.runtimes.eager import claim_precision  # noqa: E402


class FakeRuntime:
    def __init__(self, name, precision):
        self.name, self.precision = name, precision


def flags():
    return torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32


def test_a_conflicting_tf32_mode_is_refused_naming_the_holder():
    strict = FakeRuntime("strict", "fp32")
    claim_precision(torch, strict)
    assert flags() == (False, False)
    claim_precision(torch, FakeRuntime("also-strict", "fp32"))
    claim_precision(torch, FakeRuntime("half", "fp16"))  # autocast: no claim
    with pytest.raises(RtbciError, match="fast: precision 'tf32' needs TF32, but decoder "
                                         "'strict' already runs"):
        claim_precision(torch, FakeRuntime("fast", "tf32"))
    assert flags() == (False, False)
    del strict
    gc.collect()
    fast = FakeRuntime("fast", "tf32")
    claim_precision(torch, fast)  # the fp32 runtimes are gone
    assert flags() == (True, True)
    with pytest.raises(RtbciError, match="strict: precision 'fp32' needs strict fp32"):
        claim_precision(torch, FakeRuntime("strict", "fp32"))
    del fast
    gc.collect()
    claim_precision(torch, FakeRuntime("strict", "fp32"))


def test_concurrent_claims_agree_with_the_flags():
    """Threads claiming both modes at once: the survivors all got the mode the flags hold."""
    runtimes = [FakeRuntime(f"r{i}", "tf32" if i % 2 else "fp32") for i in range(40)]
    gc.collect()
    granted, start = [], threading.Barrier(len(runtimes))

    def claim(runtime):
        start.wait()
        try:
            claim_precision(torch, runtime)
            granted.append(runtime)
        except RtbciError:
            pass

    threads = [threading.Thread(target=claim, args=(r,)) for r in runtimes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    modes = {r.precision for r in granted}
    assert len(modes) == 1 and len(granted) == 20
    assert flags() == ((modes == {"tf32"}),) * 2
