"""Hostile and confusing LSL peers (issue 21): bad marker bytes, huge markers, a peer that
answers discovery but never replies, unreadable channel locations, restarts with another
montage, several streams matching one source."""

import asyncio
import logging
import re
import socket
import struct
import threading
import time
import uuid

import numpy as np
import pylsl
import pytest

from rtbci.devices.lsl import LSLSource, MarkerReader, info_from_lsl

pytestmark = pytest.mark.slow


def wait_until(condition, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


async def await_until(condition, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def marker_outlet(name: str) -> pylsl.StreamOutlet:
    return pylsl.StreamOutlet(pylsl.StreamInfo(name, "Markers", 1, pylsl.IRREGULAR_RATE,
                                               pylsl.cf_string, f"{name}-sid"))


class Sender:
    """A real 100 Hz float32 outlet whose channel ``label`` carries the value ``code`` in
    every sample (so a column's content tells which channel it came from)."""

    def __init__(self, name: str, labels: list[str], codes: list[float], srate: float = 100.0,
                 source_id: str | None = None):
        info = pylsl.StreamInfo(name, "EEG", len(labels), srate, pylsl.cf_float32,
                                source_id or f"{name}-sid")
        channels = info.desc().append_child("channels")
        for label in labels:
            ch = channels.append_child("channel")
            ch.append_child_value("label", label)
            ch.append_child_value("type", "EEG")
            ch.append_child_value("unit", "microvolts")
        self.outlet = pylsl.StreamOutlet(info)
        self.row = np.array(codes, dtype=np.float32)
        self.srate = srate
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._push, daemon=True)
        self._thread.start()

    def _push(self) -> None:
        chunk = np.tile(self.row, (10, 1))
        while not self._stop.wait(10 / self.srate):
            self.outlet.push_chunk(chunk)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5.0)
        self.outlet = None  # unpublishes the stream


# --- markers ----------------------------------------------------------------------------


def test_a_marker_that_is_not_utf8_does_not_end_the_marker_thread(unique_name):
    got = []
    outlet = marker_outlet(unique_name)
    reader = MarkerReader({"name": unique_name}, lambda t, text: got.append(text)).start()
    try:
        assert outlet.wait_for_consumers(20.0)
        outlet.push_sample(["before"])
        outlet.push_sample([b"caf\xe9 \xff\xfe"])  # Latin-1 and garbage: not UTF-8
        for text in ("after-1", "after-2", "after-3"):
            outlet.push_sample([text])
        wait_until(lambda: len(got) == 5, what="all five markers")
    finally:
        reader.stop()
    assert got[0] == "before" and got[2:] == ["after-1", "after-2", "after-3"]
    assert got[1] == "caf\ufffd \ufffd\ufffd"
    assert reader.stats() == {"markers_truncated": 0, "markers_undecodable": 1,
                              "marker_errors": 0}
    assert reader.thread.is_alive() is False  # stopped on purpose, not before


def test_the_marker_loop_survives_any_exception(unique_name, caplog):
    got = []

    def on_marker(t, text):
        if text.startswith("boom"):
            raise KeyError(text)
        got.append(text)

    outlet = marker_outlet(unique_name)
    reader = MarkerReader({"name": unique_name}, on_marker).start()
    try:
        assert outlet.wait_for_consumers(20.0)
        for text in ("boom-1", "ok-1", "boom-2", "ok-2"):
            outlet.push_sample([text])
        wait_until(lambda: len(got) == 2, what="the markers after the errors")
    finally:
        reader.stop()
    assert got == ["ok-1", "ok-2"]
    assert reader.errors == 2
    lines = [r for r in caplog.records if "KeyError" in r.getMessage()]
    assert len(lines) == 1, "one line per kind of error"


def test_long_markers_are_cut_to_engine_max_marker_bytes_and_counted(unique_name, run_engine,
                                                                     wait_streaming):
    sender = Sender(unique_name, ["C3", "C4"], [1.0, 2.0])
    markers = marker_outlet(f"{unique_name}-m")
    huge = "é" * 600_000  # 1.2 MB of UTF-8; the cut at 64 bytes falls between characters
    config = {"engine": {"max_marker_bytes": 65},
              "sources": [{"name": "eeg", "kind": "lsl", "stream": {"name": unique_name},
                           "markers": {"name": f"{unique_name}-m"}}]}

    async def during(engine):
        await wait_streaming(engine)
        await asyncio.to_thread(markers.wait_for_consumers, 20.0)
        for _ in range(20):
            markers.push_sample([huge])
        markers.push_sample(["short"])
        await await_until(lambda: engine.markers_received["eeg"] == 21, what="21 markers")

    try:
        engine, stats = run_engine(config, 60.0, during, settle=0.2)
    finally:
        sender.stop()
    texts = [text for _, text in engine.markers["eeg"]]
    assert texts[-1] == "short"
    assert all(text == "é" * 32 for text in texts[:-1])  # 64 bytes; the split 65th dropped
    eeg = stats["streams"]["eeg"]
    assert eeg["markers_truncated"] == 20 and eeg["markers"] == 21
    assert eeg["markers_undecodable"] == 0 and eeg["marker_errors"] == 0


# --- a peer that answers discovery, then never replies ------------------------------------


class SilentPeer:
    """Answers LSL discovery for stream ``name`` (as a real outlet would) but never replies
    on its ports: a TCP listener that never accepts, a UDP socket that never answers."""

    def __init__(self, name: str):
        self.name = name
        self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.tcp.bind(("127.0.0.1", 0))
        self.tcp.listen(16)
        self.udp_service = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp_service.bind(("127.0.0.1", 0))
        self.shortinfo = self._shortinfo()
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.udp.bind(("", 16571))
        for group in ("239.255.172.215", "224.0.0.183"):
            self.udp.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                                struct.pack("4s4s", socket.inet_aton(group),
                                            socket.inet_aton("0.0.0.0")))
        self.udp.settimeout(0.1)
        self.answered = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _shortinfo(self) -> str:
        """A real outlet's discovery answer, with a fresh uid and this peer's ports."""
        outlet = pylsl.StreamOutlet(pylsl.StreamInfo(self.name, "EEG", 2, 100.0,
                                                     pylsl.cf_float32, f"{self.name}-sid"))
        xml = pylsl.resolve_bypred(f"name='{self.name}'", 1, 10.0)[0].as_xml()
        del outlet
        tcp, udp = self.tcp.getsockname()[1], self.udp_service.getsockname()[1]
        for tag, value in (("uid", str(uuid.uuid4())), ("v4data_port", tcp),
                           ("v4service_port", udp), ("v6data_port", tcp),
                           ("v6service_port", udp), ("v6address", "")):
            xml = re.sub(f"<{tag}>[^<]*</{tag}>|<{tag} */>", f"<{tag}>{value}</{tag}>", xml)
        return xml

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                message, (host, _) = self.udp.recvfrom(65536)
            except TimeoutError:
                continue
            lines = message.decode("utf-8", "replace").split("\r\n")
            if len(lines) < 3 or lines[0] != "LSL:shortinfo" or f"'{self.name}'" not in lines[1]:
                continue
            port, query_id = lines[2].split()
            self.udp.sendto(f"{query_id}\r\n{self.shortinfo}".encode(), (host, int(port)))
            self.answered += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2.0)
        for sock in (self.udp, self.tcp, self.udp_service):
            sock.close()


def test_a_peer_that_never_replies_is_passed_over_for_the_real_stream(unique_name,
                                                                       run_engine, caplog):
    peer = SilentPeer(unique_name)
    found = {}

    async def during(engine):
        # the silent peer is found, tried, and did not answer (pylsl's own TimeoutError)
        await await_until(lambda: "did not answer" in caplog.text, 30.0, "the silent peer")
        found["state"] = engine.acquisitions["eeg"].state
        sender = Sender(unique_name, ["C3", "C4"], [1.0, 2.0])
        try:
            await await_until(lambda: "eeg" in engine.streams
                              and engine.streams["eeg"].buffer.count > 200, 30.0,
                              "samples from the real stream")
        finally:
            sender.stop()

    try:
        engine, stats = run_engine({"sources": [{"name": "eeg", "kind": "lsl",
                                                 "stream": {"name": unique_name}}]},
                                   90.0, during, settle=0.2)
    finally:
        peer.stop()
    assert peer.answered > 0
    assert found["state"] == "waiting"
    eeg = stats["streams"]["eeg"]
    assert "error" not in eeg, eeg
    assert eeg["samples"] > 200
    data, _ = engine.streams["eeg"].buffer.window(0, 10)
    np.testing.assert_array_equal(data, np.tile([1.0, 2.0], (10, 1)))


def test_marker_reader_passes_over_a_peer_that_never_replies(unique_name):
    peer = SilentPeer(unique_name)
    got = []
    reader = MarkerReader({"name": unique_name}, lambda t, text: got.append(text)).start()
    try:
        wait_until(lambda: reader._chooser._unresponsive, 30.0, "the silent peer to be tried")
        outlet = marker_outlet(unique_name)
        assert outlet.wait_for_consumers(30.0)
        outlet.push_sample(["real"])
        wait_until(lambda: got == ["real"], 20.0, "the real stream's marker")
        assert reader.thread.is_alive()
    finally:
        reader.stop()
        peer.stop()
    assert reader.errors == 0


# --- channel locations -------------------------------------------------------------------


def test_channel_locations_with_a_decimal_comma_or_garbage(unique_name, caplog):
    lsl = pylsl.StreamInfo(unique_name, "EEG", 3, 250.0, pylsl.cf_float32, "sid")
    channels = lsl.desc().append_child("channels")
    for label, xyz in (("Fz", ("12,5", "-3", "40.25")), ("Cz", ("abc", "1", "2")),
                       ("Pz", ("1", "2", "nan"))):
        ch = channels.append_child("channel")
        ch.append_child_value("label", label)
        loc = ch.append_child("location")
        for axis, value in zip("XYZ", xyz):
            loc.append_child_value(axis, value)
    with caplog.at_level(logging.WARNING, logger="rtbci.devices.lsl"):
        info = info_from_lsl(lsl)
    np.testing.assert_allclose(info.positions[0], [0.0125, -0.003, 0.04025])
    assert np.isnan(info.positions[1:]).all()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1, lines
    assert unique_name in lines[0] and "'Cz'" in lines[0] and "'Pz'" in lines[0]


# --- restarts ----------------------------------------------------------------------------


def _restart_run(run_engine, wait_streaming, unique_name, before, after, source=None,
                 duration=60.0):
    """Stream ``before`` = (labels, codes), stop it, then stream ``after`` with the same
    name and source_id; return (engine, stats, samples before the restart)."""
    counts = {}

    async def during(engine):
        first = Sender(unique_name, *before)
        await wait_streaming(engine)
        await await_until(lambda: engine.streams["eeg"].buffer.count > 100, what="data")
        first.stop()
        acq = engine.acquisitions["eeg"]
        await await_until(lambda: acq.state == "waiting", what="the stream to be lost")
        counts["before"] = engine.streams["eeg"].buffer.count
        second = Sender(unique_name, *after)
        try:
            await await_until(lambda: acq.state == "failed"
                              or engine.streams["eeg"].buffer.count > counts["before"] + 100,
                              30.0, "the restarted stream")
        finally:
            second.stop()

    config = {"sources": [{"name": "eeg", "kind": "lsl", "stream": {"name": unique_name},
                           **(source or {})}]}
    engine, stats = run_engine(config, duration, during, settle=0.2)
    return engine, stats, counts["before"]


def test_restart_with_renamed_channels_stops_the_source_in_one_line(
        unique_name, run_engine, wait_streaming, caplog):
    with caplog.at_level(logging.INFO):
        engine, stats, before = _restart_run(run_engine, wait_streaming, unique_name,
                                             (["C3", "C4", "Cz"], [1, 2, 3]),
                                             (["C3", "C4", "Pz"], [1, 2, 3]))
    eeg = stats["streams"]["eeg"]
    assert eeg["state"] == "failed"
    assert "'Cz'" in eeg["error"] and "'Pz'" in eeg["error"], eeg["error"]
    assert eeg["samples"] == before, "no sample of the changed stream was taken"
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR
              and r.name.startswith(("rtbci.acquisition", "rtbci.devices"))]
    assert len(errors) == 1 and "came back changed" in errors[0].getMessage()


def test_restart_with_reordered_channels_is_remapped_by_name(unique_name, run_engine,
                                                             wait_streaming, caplog):
    with caplog.at_level(logging.INFO):
        engine, stats, before = _restart_run(run_engine, wait_streaming, unique_name,
                                             (["C3", "C4", "Cz"], [1, 2, 3]),
                                             (["Cz", "X1", "C3", "C4"], [3, 9, 1, 2]))
    eeg = stats["streams"]["eeg"]
    assert eeg["state"] != "failed" and "error" not in eeg, eeg
    ring = engine.streams["eeg"].buffer
    assert ring.count > before + 100
    data, _ = ring.window(before, ring.count)
    np.testing.assert_array_equal(data, np.tile([1, 2, 3], (len(data), 1)))
    assert engine.streams["eeg"].info.ch_names == ("C3", "C4", "Cz")
    lines = [r.getMessage() for r in caplog.records if "re-mapped" in r.getMessage()]
    assert len(lines) == 1


def test_identical_restart_resumes_a_source_with_picks_and_resampling(
        unique_name, run_engine, wait_streaming):
    engine, stats, before = _restart_run(
        run_engine, wait_streaming, unique_name, (["C3", "C4", "Cz"], [1, 2, 3]),
        (["C3", "C4", "Cz"], [1, 2, 3]),
        source={"preprocess": {"picks": ["Cz", "C3"], "resample_hz": 50.0}})
    eeg = stats["streams"]["eeg"]
    assert eeg["state"] != "failed" and "error" not in eeg, eeg
    ring = engine.streams["eeg"].buffer
    assert ring.count > before + 100, "the source did not resume"
    assert engine.streams["eeg"].info.ch_names == ("Cz", "C3")


# --- several streams match one source ----------------------------------------------------


def test_two_matching_streams_are_reported_and_none_is_guessed(unique_name, run_engine,
                                                               caplog):
    a = Sender(unique_name, ["C3"], [1.0], source_id=f"{unique_name}-a")
    b = Sender(unique_name, ["C3"], [2.0], source_id=f"{unique_name}-b")
    seen = {}

    async def during(engine):
        await await_until(lambda: "not guessing" in caplog.text, 30.0, "the warning")
        await asyncio.sleep(1.5)
        seen["state"] = engine.acquisitions["eeg"].state
        await asyncio.to_thread(b.stop)  # only one left: it is used
        await await_until(lambda: "eeg" in engine.streams
                          and engine.streams["eeg"].buffer.count > 100, 30.0, "data")

    try:
        engine, stats = run_engine({"sources": [{"name": "eeg", "kind": "lsl",
                                                 "stream": {"name": unique_name}}]},
                                   90.0, during, settle=0.2)
    finally:
        a.stop()
        b.stop()
    assert seen["state"] == "waiting"
    lines = [r.getMessage() for r in caplog.records if "not guessing" in r.getMessage()]
    assert len(lines) == 1
    assert f"{unique_name}-a" in lines[0] and f"{unique_name}-b" in lines[0]
    assert "stream.source_id" in lines[0]
    data, _ = engine.streams["eeg"].buffer.window(0, 100)
    assert (data == 1.0).all(), "read the stream that was left"


def test_a_second_matching_stream_while_running_is_counted_once(unique_name, run_engine,
                                                                wait_streaming, caplog):
    a = Sender(unique_name, ["C3"], [1.0], source_id=f"{unique_name}-a")
    extra = []

    async def during(engine):
        await wait_streaming(engine)
        extra.append(Sender(unique_name, ["C3"], [2.0], source_id=f"{unique_name}-b"))
        await await_until(lambda: engine.stats()["streams"]["eeg"]["duplicate_streams"] >= 1,
                          30.0, "the duplicate to be seen")
        await asyncio.sleep(8.0)  # more checks: still counted once

    try:
        engine, stats = run_engine({"sources": [{"name": "eeg", "kind": "lsl",
                                                 "stream": {"name": unique_name}}]},
                                   90.0, during, settle=0.2)
    finally:
        a.stop()
        for sender in extra:
            sender.stop()
    eeg = stats["streams"]["eeg"]
    assert eeg["duplicate_streams"] == 1
    lines = [r.getMessage() for r in caplog.records if "another stream matches" in
             r.getMessage()]
    assert len(lines) == 1 and f"{unique_name}-b" in lines[0]
    ring = engine.streams["eeg"].buffer
    data, _ = ring.window(0, ring.count)
    assert (data == 1.0).all(), "kept reading the stream it connected to"


def test_lsl_source_open_takes_a_stream_only_when_one_matches(unique_name):
    """LSLSource.open on its own: two matches → None; one → the stream."""
    a = Sender(unique_name, ["C3"], [1.0], source_id=f"{unique_name}-a")
    b = Sender(unique_name, ["C3"], [2.0], source_id=f"{unique_name}-b")
    source = LSLSource("x", {"name": unique_name})
    try:
        wait_until(lambda: len(pylsl.resolve_bypred(f"name='{unique_name}'", 2, 1.0)) == 2)
        assert source.open(timeout=1.0) is None
        b.stop()
        wait_until(lambda: len(pylsl.resolve_bypred(f"name='{unique_name}'", 2, 0.3)) == 1)
        info = source.open(timeout=5.0)
        assert info is not None and info.source_id == f"{unique_name}-a"
    finally:
        source.close()
        a.stop()
        b.stop()
