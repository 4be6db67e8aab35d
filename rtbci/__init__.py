"""rtbci — real-time streaming BCI decoding engine.

Sources (``rtbci.devices``) feed :class:`Stream` ring buffers; the scheduler runs decoders
(``rtbci.models``) on windows of them and hands each result to the sinks.
"""

import os
from pathlib import Path

# liblsl reads its settings when pylsl is first imported: keep its own log to errors only.
os.environ.setdefault("LSLAPICFG", str(Path(__file__).with_name("lsl_api.cfg")))

from rtbci.errors import RtbciError  # noqa: E402
from rtbci.ringbuffer import RingBuffer  # noqa: E402
from rtbci.stream import Chunk, Stream, StreamInfo  # noqa: E402

__version__ = "0.1.0"

__all__ = ["Chunk", "RingBuffer", "RtbciError", "Stream", "StreamInfo", "__version__"]
