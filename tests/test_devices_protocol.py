"""The device wire protocol: round trips, and every malformed frame refused with its reason."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from hwq.devices import protocol as p
from hwq.devices.errors import ConnectionClosed, FrameTooLarge, ProtocolError, TruncatedFrame
from hwq.errors import HwqError

DTYPES = st.sampled_from(list(p.DTYPES.values()))
HASHES = st.binary(min_size=32, max_size=32)


@settings(max_examples=200, deadline=None)
@given(dtype=DTYPES, shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=6),
       rid=st.integers(0, 2**64 - 1), mhash=HASHES, kind=st.sampled_from([p.Kind.INFER, p.Kind.SCORES]),
       data=st.data())
def test_array_round_trip(dtype, shape, rid, mhash, kind, data):
    arr = data.draw(hnp.arrays(dtype, shape))
    bits = data.draw(st.integers(0, dtype.itemsize * 8))
    back = p.from_bytes(p.to_bytes(p.array_frame(kind, rid, mhash, arr, bits)))
    assert (back.kind, back.request_id, back.model_hash, back.bits) == (kind, rid, mhash, bits)
    assert back.data.dtype == dtype and back.data.shape == arr.shape
    assert np.array_equal(back.data, arr)


@settings(max_examples=100, deadline=None)
@given(obj=st.dictionaries(st.text(max_size=8), st.one_of(st.integers(-2**53, 2**53), st.text(max_size=20),
                                                          st.booleans(), st.none())),
       rid=st.integers(0, 2**64 - 1), mhash=HASHES)
def test_json_round_trip(obj, rid, mhash):
    back = p.from_bytes(p.to_bytes(p.json_frame(p.Kind.IDENTITY, rid, mhash, obj)))
    assert back.data == obj and back.request_id == rid and back.model_hash == mhash


def frame_bytes(n=3, d=4):
    arr = np.arange(n * d, dtype=np.uint8).reshape(n, d)
    return p.to_bytes(p.array_frame(p.Kind.INFER, 9, b"h" * 32, arr, 8))


@settings(max_examples=200, deadline=None)
@given(cut=st.integers(1, len(frame_bytes()) - 1))
def test_truncated_frames_are_refused(cut):
    with pytest.raises(TruncatedFrame, match="connection closed after"):
        p.from_bytes(frame_bytes()[:cut])


def test_empty_stream_is_a_clean_close():
    with pytest.raises(ConnectionClosed):
        p.from_bytes(b"")


@settings(max_examples=300, deadline=None)
@given(garbage=st.binary(min_size=1, max_size=300))
def test_garbage_never_decodes_silently(garbage):
    """Random bytes are refused with a protocol error (never another exception, never a frame)."""
    with pytest.raises(ProtocolError):
        p.from_bytes(garbage)


@settings(max_examples=300, deadline=None)
@given(pos=st.integers(0, p.HEADER.size - 1), value=st.integers(0, 255))
def test_corrupted_headers_are_refused_or_exact(pos, value):
    raw = bytearray(frame_bytes())
    if raw[pos] == value:
        return
    raw[pos] = value
    try:
        back = p.from_bytes(bytes(raw))
    except HwqError as exc:
        assert isinstance(exc, ProtocolError)
        return
    # only fields that carry free values may change without breaking the frame
    assert pos in range(5, 8) or pos in range(8, 48), pos
    assert back.data.size * back.data.dtype.itemsize == 12


def header(**fields):
    base = dict(magic=p.MAGIC, version=p.VERSION, kind=3, dtype=1, bits=8, rid=1, mhash=b"h" * 32,
                ndim=2, dims=(3, 4, 0, 0), length=12)
    base.update(fields)
    return p.HEADER.pack(base["magic"], base["version"], base["kind"], base["dtype"], base["bits"],
                         base["rid"], base["mhash"], base["ndim"], base.get("reserved", bytes(7)),
                         *base["dims"], base["length"])


@pytest.mark.parametrize("fields, message", [
    (dict(magic=b"GET "), "not an hwq device frame"),
    (dict(version=2), "protocol version 2 is not supported"),
    (dict(kind=77), "unknown frame kind"),
    (dict(dtype=9), "unknown dtype"),
    (dict(ndim=5), "bad shape"),
    (dict(dims=(3, 4, 2, 0)), "bad shape"),
    (dict(length=13), "does not match shape"),
    (dict(bits=9), "bit width 9"),
    (dict(reserved=b"\x01" + bytes(6)), "reserved header bytes"),
])
def test_bad_headers_name_the_field(fields, message):
    with pytest.raises(ProtocolError, match=message):
        p.from_bytes(header(**fields) + bytes(12) + p.END)


def test_missing_end_marker():
    with pytest.raises(ProtocolError, match="end-of-frame marker"):
        p.from_bytes(header() + bytes(12) + b"XXXX")


def test_trailing_bytes_are_refused():
    with pytest.raises(ProtocolError, match="after the end-of-frame marker"):
        p.from_bytes(frame_bytes() + b"x")


def test_oversized_frames_are_refused_before_reading_the_payload():
    big = header(dims=(2**20, 1024, 0, 0), length=2**30)
    with pytest.raises(FrameTooLarge, match="exceeds the limit"):
        p.from_bytes(big)  # no payload follows: refused from the header alone
    with pytest.raises(FrameTooLarge):
        p.from_bytes(frame_bytes(), limit=11)
    json_big = header(dtype=p.JSON, ndim=1, dims=(p.JSON_LIMIT + 1, 0, 0, 0), length=p.JSON_LIMIT + 1)
    with pytest.raises(FrameTooLarge):
        p.from_bytes(json_big)


def test_json_payload_must_be_an_object_and_utf8():
    for payload in (b"[1, 2]", b"\xff\xfe", b"{"):
        raw = header(kind=1, dtype=p.JSON, ndim=1, dims=(len(payload), 0, 0, 0), length=len(payload))
        with pytest.raises(ProtocolError, match="JSON"):
            p.from_bytes(raw + payload + p.END)


def test_header_layout_is_the_documented_one():
    assert p.HEADER.size == 96
    raw = frame_bytes()
    assert raw[:4] == b"HWQD" and raw[-4:] == b"HWQE"
    assert struct.unpack_from("<Q", raw, 8)[0] == 9 and struct.unpack_from("<Q", raw, 88)[0] == 12
    assert len(raw) == 96 + 12 + 4


def test_unsupported_arrays_are_not_sent():
    with pytest.raises(ProtocolError, match="cannot send"):
        p.encode(p.Frame(p.Kind.INFER, 1, b"h" * 32, np.zeros(3, np.float32)))
