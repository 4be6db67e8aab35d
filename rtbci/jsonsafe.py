"""JSON that other tools can read: NaN and ±inf (not JSON) written as ``null``.

Used by every writer of a statistics or report document (``--stats-json``, ``rtbci evaluate``'s
report.json), the CLI and the library alike.
"""

from __future__ import annotations

import math

__all__ = ["json_safe"]


def json_safe(obj):
    """``obj`` with every non-finite float replaced by None, in nested dicts and lists."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [json_safe(v) for v in obj]
    return obj
