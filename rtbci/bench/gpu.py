"""GPU rows: the neural decoder families through compiled CUDA runtimes, when CUDA is there.

Each row runs the engine on a simulated task of the family (``kind = "simulate"``, its own
profile, published over LSL in the engine process) with the family's demo checkpoint every
100 ms on ``cuda`` through ``cudagraph`` (and ``tensorrt`` where ``import tensorrt`` works);
results go out through the LSL sink to the receiver like every other row.
"""

from __future__ import annotations

import importlib.util

FAMILIES = ("motor-gnn", "seeg-words", "image-retrieval", "speech")
EVERY_S = 0.1  # one result per 100 ms


def cuda_available() -> bool:
    """Whether torch imports and sees a CUDA device."""
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return torch.cuda.is_available()


def runtimes() -> list[str]:
    """The compiled GPU runtimes usable here."""
    found = ["cudagraph"]
    if importlib.util.find_spec("tensorrt") is not None:
        found.append("tensorrt")
    return found


def status_line() -> str | None:
    """One line saying that there are no GPU rows and why (None when CUDA is available)."""
    if cuda_available():
        return None
    return ("GPU: no CUDA device here (torch.cuda.is_available() is False or torch is not "
            "installed); no GPU rows (neural families via cudagraph / tensorrt)")


def config(family: str, runtime: str, out: str) -> dict:
    """The engine config of a GPU row."""
    return {"engine": {"session": "bench"},
            "sources": [{"name": "s0", "kind": "simulate", "task": family}],
            "decoders": [{"name": "bp0x0", "model": f"demo:{family}", "source": "s0",
                          "every_ms": EVERY_S * 1e3, "budget_ms": 50, "runtime": runtime,
                          "device": "cuda"}],
            "sinks": [{"kind": "lsl", "prefix": out}]}
