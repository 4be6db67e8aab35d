"""rtbci — real-time streaming BCI decoding engine.

Sources (``rtbci.devices``) feed :class:`Stream` ring buffers; the scheduler runs decoders
(``rtbci.models``) on windows of them and hands each result to the sinks.
"""

from rtbci.errors import RtbciError
from rtbci.ringbuffer import RingBuffer
from rtbci.stream import Chunk, Stream, StreamInfo

__version__ = "0.1.0"

__all__ = ["Chunk", "RingBuffer", "RtbciError", "Stream", "StreamInfo", "__version__"]
