"""RingBuffer against a plain-list reference model (hypothesis), wraparound included."""

import contextlib
import sys
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rtbci.ringbuffer import Overtaken, RingBuffer

chunk_sizes = st.lists(st.integers(min_value=0, max_value=40), min_size=1, max_size=30)


def _chunk(start: int, n: int, n_ch: int) -> tuple[np.ndarray, np.ndarray]:
    counter = np.arange(start, start + n)
    data = (counter[:, None] * 10 + np.arange(n_ch)).astype(np.float32)
    return data, counter / 100.0


@settings(max_examples=200, deadline=None)
@given(capacity=st.integers(1, 25), n_ch=st.integers(1, 4), sizes=chunk_sizes,
       data=st.data())
def test_matches_list_model(capacity, n_ch, sizes, data):
    ring = RingBuffer(capacity, n_ch, srate=100.0)
    model_data, model_times = [], []
    for n in sizes:
        chunk, stamps = _chunk(len(model_times), n, n_ch)
        ring.write(chunk, stamps)
        model_data.extend(chunk)
        model_times.extend(stamps)
        assert ring.count == len(model_times)
        held = min(capacity, len(model_times))
        k = data.draw(st.integers(0, held), label="latest n")
        got, times = ring.latest(k)
        expect = np.array(model_data[len(model_data) - k:]).reshape(k, n_ch)
        np.testing.assert_array_equal(got, expect)
        np.testing.assert_array_equal(times, model_times[len(model_times) - k:])
        assert got.base is not None  # a view, not a copy
    start = data.draw(st.integers(ring.oldest, ring.count), label="window start")
    stop = data.draw(st.integers(start, ring.count), label="window stop")
    got, times = ring.window(start, stop)
    np.testing.assert_array_equal(got, np.array(model_data[start:stop]).reshape(-1, n_ch))
    np.testing.assert_array_equal(times, model_times[start:stop])
    assert ring.gaps == 0


@settings(max_examples=100, deadline=None)
@given(capacity=st.integers(1, 20), sizes=chunk_sizes, lag=st.integers(0, 30))
def test_since_counts_overflow_when_reader_falls_behind(capacity, sizes, lag):
    ring = RingBuffer(capacity, 1)
    reader, total = 0, 0
    for n in sizes:
        ring.write(*_chunk(total, n, 1))
        total += n
    reader = max(0, total - capacity - lag) if lag else max(0, total - capacity)
    behind = reader < total - capacity
    got, times, next_counter = ring.since(reader)
    assert next_counter == total
    assert ring.overflows == int(behind)
    first = max(reader, total - capacity)
    np.testing.assert_array_equal(got[:, 0], (np.arange(first, total) * 10).astype(np.float32))


def test_gap_detection_between_and_within_chunks():
    ring = RingBuffer(100, 2, srate=100.0)
    ring.write(*_chunk(0, 10, 2))
    assert ring.gaps == 0
    data, stamps = _chunk(10, 10, 2)
    ring.write(data, stamps + 0.5)  # 0.5 s jump before this chunk
    assert ring.gaps == 1
    assert ring.gap_seconds == pytest.approx(0.5)
    stamps = np.arange(20, 30) / 100.0 + 0.5
    stamps[5:] += 0.004  # a 1.4-period step: jitter, not a gap
    stamps[8:] += 0.2  # a gap inside the chunk
    ring.write(data, stamps)
    assert ring.gaps == 2
    assert ring.gap_seconds == pytest.approx(0.7, abs=1e-9)


def test_a_chunk_spanning_its_sample_count_is_not_scanned_for_gaps():
    """Jitter inside a chunk whose stamps span its sample count is not a gap (no sample is
    missing); a chunk one sample longer is scanned and its jump counted."""
    ring = RingBuffer(100, 1, srate=100.0)
    jittered = np.array([0, 1, 3, 3.2, 4, 5, 6, 7, 8, 9]) / 100.0  # a 2-period step, 9 in all
    ring.write(np.zeros((10, 1), np.float32), jittered)
    assert ring.gaps == 0
    missing = (10 + np.r_[0:5, 6:11]) / 100.0  # sample 15 never came
    ring.write(np.zeros((10, 1), np.float32), missing)
    assert ring.gaps == 1
    assert ring.gap_seconds == pytest.approx(0.01)


def test_write_allocates_nothing():
    import tracemalloc

    ring = RingBuffer(1000, 64, srate=1000.0)
    data = np.ones((10, 64), np.float32)
    stamps = np.arange(10) / 1000.0
    ring.write(data, stamps)
    tracemalloc.start()
    for _i in range(1, 200):
        stamps += 0.01
        ring.write(data, stamps)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 2_000  # bytes: small Python objects only, never a per-chunk array


def test_errors_name_the_problem():
    ring = RingBuffer(10, 2)
    with pytest.raises(ValueError, match="n_channels=2"):
        ring.write(np.zeros((3, 3), np.float32), np.zeros(3))
    ring.write(*_chunk(0, 15, 2))
    with pytest.raises(IndexError, match=r"holds \[5, 15\)"):
        ring.window(2, 8)
    with pytest.raises(ValueError, match="capacity"):
        RingBuffer(0, 1)


def test_oversized_chunk_keeps_the_newest():
    ring = RingBuffer(4, 1)
    ring.write(*_chunk(0, 10, 1))
    assert ring.count == 10
    got, _ = ring.latest(4)
    np.testing.assert_array_equal(got[:, 0], [60, 70, 80, 90])


# --- one writer thread, reader threads: no torn window is ever accepted ---------------------


@contextlib.contextmanager
def frequent_thread_switches():
    """Let the interpreter switch threads every microsecond, to provoke interleavings."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(interval)


def write_counter_signal(ring: RingBuffer, n_samples: int, chunk: int) -> None:
    """Value == sample counter in every channel, timestamp == counter / 1000, arrival == the
    chunk's first counter."""
    data = np.empty((chunk, ring.n_channels), np.float32)
    stamps = np.empty(chunk)
    base = np.arange(chunk)
    for k in range(0, n_samples, chunk):
        data[:] = (k + base)[:, None]
        np.divide(k + base, 1000.0, out=stamps)
        ring.write(data, stamps, arrived=float(k))


def check_copy(data: np.ndarray, times: np.ndarray, first: int) -> None:
    counters = np.arange(first, first + len(data))
    np.testing.assert_array_equal(data, np.broadcast_to(counters[:, None], data.shape))
    np.testing.assert_array_equal(times, counters / 1000.0)


def test_concurrent_reads_are_whole_or_detected():
    """A writer at full speed against readers at the oldest edge (the whole buffer) and at the
    newest: every copy that ``intact`` accepts is exactly the written signal, searches and
    arrival times are right, and torn copies do happen (so the check is what saves them)."""
    ring, chunk, n_samples = RingBuffer(256, 64, srate=1000.0), 16, 200_000
    writer = threading.Thread(target=write_counter_signal, args=(ring, n_samples, chunk))
    out = np.empty((256, 64), np.float32)
    accepted = torn = overtaken = 0
    position = 0
    with frequent_thread_switches():
        writer.start()
        while writer.is_alive():
            data, times, first = ring._newest(256)  # the whole buffer: the oldest edge
            n = len(data)
            out[:n], stamps = data, times.copy()
            if ring.intact(first):
                check_copy(out[:n], stamps, first)
                accepted += 1
            else:
                torn += 1
            data, times, position = ring.since(position)
            first = position - len(data)
            out[: len(data)], stamps = data, times.copy()
            if ring.intact(first):
                check_copy(out[: len(data)], stamps, first)
            count = ring.count
            if count > 100:
                target = count - 100
                try:
                    found = ring.search(target / 1000.0 - 0.0004)
                except Overtaken:  # said, never guessed
                    overtaken += 1
                else:
                    assert found == target or not ring.intact(target)
                with contextlib.suppress(IndexError):  # unless the writer lapped this reader
                    arrived = ring.arrival(count - 1)
                    assert arrived == (count - 1) // chunk * chunk or not ring.intact(count - 1)
        writer.join()
    assert ring.count == n_samples
    assert accepted > 50
    assert torn > 0  # the race is real: these copies were overwritten while being made


def test_search_finds_the_first_sample_at_or_after():
    ring = RingBuffer(10, 1)
    write_counter_signal(ring, 25, 5)  # holds 15 … 24
    assert ring.search(0.0) == 15  # before the oldest: the oldest
    assert ring.search(0.0174) == 18 and ring.search(0.018) == 18
    assert ring.search(1.0) == 25  # after the newest: count
    assert ring.arrival(24) == 20.0
    with pytest.raises(IndexError, match=r"holds \[15, 25\)"):
        ring.arrival(14)


class Lapping(RingBuffer):
    """A ring whose writer, ``laps`` times, writes a whole buffer of newer samples right after
    a reader took its snapshot (so the reader searches overwritten samples)."""

    laps = 0

    def _newest(self, n):
        snapshot = super()._newest(n)
        if self.laps:
            self.laps -= 1
            self.write(*_chunk(self.count, self.capacity, self.n_channels))
        return snapshot


def test_a_search_overtaken_once_searches_again_on_a_fresh_snapshot():
    ring = Lapping(10, 1)
    ring.write(*_chunk(0, 10, 1))  # counter k stamped k / 100 s
    ring.laps = 1  # the first snapshot (0 … 9) is overwritten by 10 … 19 while searched
    assert ring.search(0.155) == 16
    assert ring.laps == 0


def test_a_search_the_writer_keeps_overtaking_says_so_instead_of_guessing():
    """Issue 20: every snapshot overwritten while searched: the search raises Overtaken. (The
    old fallback returned ``max(found, claimed - capacity)``: 80 here, where the sample at
    0.855 s is 86, while ``intact(80)`` said the ring was whole.)"""
    ring = Lapping(10, 1)
    ring.write(*_chunk(0, 10, 1))
    ring.laps = 1000
    with pytest.raises(Overtaken, match="overwrote the samples being searched"):
        ring.search(0.855)
    assert ring.intact(ring.count - ring.capacity)


def test_reads_are_read_only_views_of_the_ring():
    """Issue 20: no reader can write into the ring through a view it was given (a decoder on
    the source's thread included); the views are still zero-copy."""
    ring = RingBuffer(10, 2)
    ring.write(*_chunk(0, 8, 2))
    views = [*ring.window(2, 6), *ring.latest(4), *ring.since(0)[:2]]
    for view in views:
        assert np.shares_memory(view, ring._data) or np.shares_memory(view, ring._times)
        with pytest.raises(ValueError, match="read-only"):
            view += 1
    np.testing.assert_array_equal(ring.window(0, 8)[0], _chunk(0, 8, 2)[0])


def _write(ring: RingBuffer, stamps: np.ndarray, arrived: float) -> None:
    ring.write(np.zeros((len(stamps), 1), np.float32), stamps, arrived)


def test_a_clock_jump_either_way_is_counted_apart_from_gaps_and_re_anchors_the_ring():
    """Back by more than 1.5 periods: a jump. Forward: a jump when the timestamps advance more
    than the arrival time did (+ 1 s), a gap (a pause) when they advance about as much."""
    ring = RingBuffer(1000, 1, srate=100.0)
    t = 1000.0 + np.arange(10) / 100
    _write(ring, t, 1000.1)
    _write(ring, t + 0.1 - 100.0, 1000.2)  # an amplifier's clock reset: 100 s back
    assert (ring.jumps, ring.gaps, ring.anchor, ring.last_jump) == (1, 0, 10, pytest.approx(-99.99))
    _write(ring, t + 5.2 - 100.0, 1005.2)  # paused 5 s: stamps and arrivals advance alike
    assert (ring.jumps, ring.gaps) == (1, 1) and ring.gap_seconds == pytest.approx(5.0)
    _write(ring, t + 7205.3 - 100.0, 1005.3)  # 2 h forward, 0.1 s after the previous chunk
    assert (ring.jumps, ring.gaps, ring.anchor) == (2, 1, 30)
    assert ring.jump_seconds == pytest.approx(-100.0 + 7200.0)
    assert ring.continuous(0, 10) and ring.continuous(10, 30) and ring.continuous(30, 40)
    assert not ring.continuous(5, 15) and not ring.continuous(25, 35)
    assert not ring.continuous(0, 40)
    _write(ring, t + 7210.3 - 100.0, np.nan)  # no arrival time: a step forward is a gap
    assert (ring.jumps, ring.gaps) == (2, 2)


def test_a_jump_inside_a_chunk_and_a_dejittered_jump_count_once():
    ring = RingBuffer(2000, 1, srate=100.0)
    t = np.arange(20) / 100
    t[12:] -= 50.0  # inside the chunk
    _write(ring, t, 0.2)
    assert (ring.jumps, ring.anchor, ring.jump_start) == (1, 12, 12) and not ring.settling
    # LSL's dejitter spreads a jump over a ramp of shrinking steps: one jump, settled at its end
    steps = 0.01 - 0.8 * 0.97 ** np.arange(300)  # back by 0.79 s, 0.77 s, … then on again
    ramp = ring.last_timestamp + np.cumsum(steps)
    _write(ring, ramp[:100], 1.2)
    assert (ring.jumps, ring.jump_start, ring.anchor) == (2, 20, 119) and ring.settling
    _write(ring, ramp[100:], 4.2)
    assert ring.jumps == 2 and not ring.settling and ring.gaps == 0
    assert ring.last_jump == pytest.approx(float(np.sum(steps[steps < -0.015])))
    assert not ring.continuous(ring.jump_start - 1, ring.jump_start + 5)
    assert not ring.continuous(ring.anchor - 1, ring.anchor + 1)
    assert ring.continuous(ring.anchor, ring.count) and ring.continuous(12, 20)
