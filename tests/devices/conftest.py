"""Fixtures for tests against real LSL streams."""

import asyncio
import uuid

import pytest

from rtbci.config import parse_config
from rtbci.engine import Engine


@pytest.fixture
def unique_name(request) -> str:
    """A stream name no other test (or machine on the network) uses."""
    return f"rtbci-test-{request.node.name[:20]}-{uuid.uuid4().hex[:8]}"


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
