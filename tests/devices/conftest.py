"""Fixtures for tests against real LSL streams."""

import asyncio
import struct
import uuid

import numpy as np
import pytest

from rtbci.config import parse_config
from rtbci.engine import Engine


@pytest.fixture
def unique_name(request) -> str:
    """A stream name no other test (or machine on the network) uses."""
    return f"rtbci-test-{request.node.name[:20]}-{uuid.uuid4().hex[:8]}"


async def engine_streaming(engine, source: str = "eeg", timeout: float = 20.0) -> None:
    """Wait until ``engine``'s own inlet on ``source`` is open (not just any consumer: another
    LSL client on the machine may subscribe to the same outlet first)."""
    for _ in range(int(timeout / 0.05)):
        acquisition = engine.acquisitions.get(source)
        if acquisition is not None and acquisition.state == "streaming":
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"the engine did not connect to source {source!r}")


@pytest.fixture
def wait_streaming():
    return engine_streaming


@pytest.fixture
def run_engine():
    """Run the engine in-process: ``run_engine(config_dict, duration, during=coro_fn)``.

    ``during(engine)`` (an async function) runs concurrently with the engine, which stops
    ``settle`` seconds after it returns (or at ``duration``, whichever comes first).
    Returns ``(engine, stats)``.
    """

    def run(config: dict, duration: float, during=None, settle: float = 1.0):
        engine = Engine(parse_config(config))

        async def main():
            stop = asyncio.Event()

            async def script():
                await during(engine)
                await asyncio.sleep(settle)
                stop.set()

            task = asyncio.create_task(script()) if during else None
            stats = await engine.run(duration, stop)
            if task is not None:
                await task
            return stats

        return engine, asyncio.run(main())

    return run


# --- XDF ---------------------------------------------------------------------------------
# pyxdf only reads; this writes the XDF 1.0 container (specification: chunks of
# [length-size byte][length][tag u16][content]) so the tests can make real files.


def _varlen(n: int) -> bytes:
    return struct.pack("<BQ", 8, n)


def _chunk(tag: int, content: bytes) -> bytes:
    return struct.pack("<BQH", 8, len(content) + 2, tag) + content


def write_xdf(path, streams: list[dict]) -> None:
    """Write streams ``{"name", "type", "srate", "channels": [labels] | None (markers),
    "data": (n, n_ch) float32 or list of str, "times": (n,)}`` to an XDF file; a stream's
    optional ``"offsets": [(collection_time, offset_s), …]`` become ClockOffset chunks after
    its samples, and footer entries, as LabRecorder writes them."""
    out = [b"XDF:", _chunk(1, b'<?xml version="1.0"?><info><version>1.0</version></info>')]
    for sid, s in enumerate(streams, start=1):
        is_markers = s["channels"] is None
        n_ch = 1 if is_markers else len(s["channels"])
        channels = "" if is_markers else "<channels>" + "".join(
            f"<channel><label>{c}</label><type>EEG</type><unit>microvolts</unit></channel>"
            for c in s["channels"]) + "</channels>"
        header = (f'<?xml version="1.0"?><info><name>{s["name"]}</name><type>{s["type"]}</type>'
                  f'<channel_count>{n_ch}</channel_count><nominal_srate>{s["srate"]}'
                  f'</nominal_srate><channel_format>{"string" if is_markers else "float32"}'
                  f'</channel_format><source_id>{s["name"]}-sid</source_id>'
                  f'<created_at>0</created_at><desc>{channels}</desc></info>')
        out.append(_chunk(2, struct.pack("<I", sid) + header.encode()))
        body = bytearray(struct.pack("<I", sid) + _varlen(len(s["times"])))
        for value, t in zip(s["data"], s["times"]):
            body += struct.pack("<Bd", 8, t)
            if is_markers:
                body += _varlen(len(value.encode())) + value.encode()
            else:
                body += np.asarray(value, dtype="<f4").tobytes()
        out.append(_chunk(3, bytes(body)))
        offsets = s.get("offsets", [])
        out += [_chunk(4, struct.pack("<Idd", sid, t, v)) for t, v in offsets]
        footer = (f'<?xml version="1.0"?><info><first_timestamp>{s["times"][0]}'
                  f'</first_timestamp><last_timestamp>{s["times"][-1]}</last_timestamp>'
                  f'<sample_count>{len(s["times"])}</sample_count><clock_offsets>'
                  + "".join(f"<offset><time>{t}</time><value>{v}</value></offset>"
                            for t, v in offsets) + '</clock_offsets></info>')
        out.append(_chunk(6, struct.pack("<I", sid) + footer.encode()))
    path.write_bytes(b"".join(out))


@pytest.fixture
def xdf_writer():
    return write_xdf
