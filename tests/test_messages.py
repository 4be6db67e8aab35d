"""The result message: msgpack round trip, typed binary arrays, status dicts."""

from __future__ import annotations

from dataclasses import fields

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from rtbci.messages import SCHEMA_VERSION, Result, decode, encode


def _result(**overrides) -> Result:
    base = dict(
        decoder="speech", seq=7, trigger="marker", marker="word/onset", window_start=10.0,
        window_end=11.5, kind="retrieval", t_arrived=11.501, t_queued=11.502,
        t_started=11.503, t_finished=11.504, t_published=11.505, budget_ms=20.0,
        labels=["cat", "dog", "house"], probabilities=np.array([0.1, 0.7, 0.2], np.float32),
        ids=np.array([3, 1, 4], np.int64), scores=np.array([0.9, 0.5, 0.1], np.float64),
        embedding=np.arange(12, dtype=np.float16).reshape(3, 4), session="sub-01",
    )
    return Result(**{**base, **overrides})


def _assert_same(decoded: dict, result: Result) -> None:
    assert set(decoded) == {f.name for f in fields(Result)}
    for f in fields(Result):
        sent, got = getattr(result, f.name), decoded[f.name]
        if isinstance(sent, np.ndarray):
            assert isinstance(got, np.ndarray), f.name
            assert got.dtype == sent.dtype and got.shape == sent.shape, f.name
            np.testing.assert_array_equal(got, sent)
        else:
            assert got == sent, f.name


def test_result_round_trip_keeps_arrays_and_scalars():
    result = _result()
    decoded = decode(encode(result))
    _assert_same(decoded, result)
    assert decoded["version"] == SCHEMA_VERSION


def test_none_fields_stay_none():
    result = Result(decoder="mi", seq=0, trigger="every", window_start=0.0, window_end=2.0,
                    kind="classes", t_arrived=2.0)
    decoded = decode(encode(result))
    _assert_same(decoded, result)
    for name in ("marker", "labels", "probabilities", "ids", "scores", "embedding"):
        assert decoded[name] is None


def test_arrays_are_msgpack_bin_not_lists():
    payload = encode(_result())
    plain = msgpack.unpackb(payload, raw=False)  # any msgpack client, no rtbci hook
    probs = plain["probabilities"]
    assert probs == {"nd": True, "dtype": "<f4", "shape": [3],
                     "data": np.array([0.1, 0.7, 0.2], np.float32).tobytes()}
    assert isinstance(probs["data"], bytes)
    assert plain["embedding"]["shape"] == [3, 4] and plain["embedding"]["dtype"] == "<f2"
    assert plain["labels"] == ["cat", "dog", "house"]


def test_numpy_scalars_become_plain_numbers():
    decoded = decode(encode(_result(budget_ms=np.float32(12.5), seq=np.int64(3))))
    assert decoded["budget_ms"] == 12.5 and type(decoded["budget_ms"]) is float
    assert decoded["seq"] == 3 and type(decoded["seq"]) is int


def test_non_contiguous_and_big_endian_arrays():
    strided = np.arange(20, dtype=np.float32)[::2]
    big = np.array([1.5, -2.0], dtype=">f8")
    decoded = decode(encode(_result(probabilities=strided, scores=big)))
    np.testing.assert_array_equal(decoded["probabilities"], strided)
    assert decoded["scores"].dtype == np.dtype(">f8")
    np.testing.assert_array_equal(decoded["scores"], big)


def test_status_dict_round_trip():
    status = {"state": "online", "session": "sub-01", "decoders": ["speech", "mi"],
              "streams": {"eeg": {"sfreq": 250.0, "n_channels": 64}}, "pid": 1234}
    assert decode(encode(status)) == status


def test_unencodable_value_is_a_clear_type_error():
    with pytest.raises(TypeError, match="cannot encode object"):
        encode(_result(labels=[object()]))


_dtypes = st.sampled_from(["<f4", "<f8", "<f2", "<i8", "<i4", "|u1", "|b1", ">f4"])


@settings(max_examples=50, deadline=None)
@given(dtype=_dtypes, data=st.data())
def test_any_array_round_trips(dtype, data):
    shape = hnp.array_shapes(min_dims=1, max_dims=3, min_side=0)
    array = data.draw(hnp.arrays(np.dtype(dtype), shape))
    got = decode(encode({"x": array}))["x"]
    assert got.dtype == array.dtype and got.shape == array.shape
    np.testing.assert_array_equal(got, array)


def test_zero_dim_array_round_trips():
    got = decode(encode({"x": np.array(1.5, np.float32)}))["x"]
    assert got.shape == ()
