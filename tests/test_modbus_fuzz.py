"""Property-based fuzzing of the Modbus decoding path (hypothesis), 11,500 cases in all.

Whatever arrives, decoding either returns values or raises the project's DecodeError
family (drivers.reading.DecodeError; drivers.rtu.RtuFrameError for frames): never
IndexError, struct.error, ValueError, OverflowError or UnicodeDecodeError.  Round trips
check that encode and decode agree for every type and byte/word order.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.profile import ORDERS, RegisterType, decode_words, encode_words, list_profiles, load_profile
from drivers.reading import DecodeError, quantity_unit
from drivers.rtu import (
    ReplyScanner,
    RtuFrameError,
    RtuRequest,
    decode_request,
    decode_response,
    encode_exception,
    encode_response,
)

pytestmark = pytest.mark.timeout(120)

FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])

WORD = st.integers(0, 0xFFFF)
ANY_WORD = st.one_of(WORD, st.integers(-(2**40), 2**40))  # sometimes outside 0..65535
TYPES = st.sampled_from(list(RegisterType))
ORDER = st.sampled_from(ORDERS)
PROFILES = {name: load_profile(name) for name in list_profiles()}

INT_RANGES = {
    "int16": (-(2**15), 2**15 - 1), "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1), "uint32": (0, 2**32 - 1),
    "int64": (-(2**63), 2**63 - 1), "uint64": (0, 2**64 - 1),
    "bcd16": (0, 9999), "bcd32": (0, 99_999_999),
}


@settings(FUZZ, max_examples=3000)
@given(TYPES, ORDER, st.lists(ANY_WORD, min_size=0, max_size=6))
def test_decode_words_only_decode_errors(rtype, order, words):
    try:
        value = decode_words(words, rtype, order)
    except DecodeError:
        return
    assert rtype.width in (0, len(words))
    assert isinstance(value, str if rtype is RegisterType.STRING else (int, float))


@settings(FUZZ, max_examples=1500)
@given(st.sampled_from(sorted(INT_RANGES)), ORDER, st.data())
def test_integer_round_trip(type_name, order, data):
    lo, hi = INT_RANGES[type_name]
    value = data.draw(st.integers(lo, hi))
    words = encode_words(value, type_name, order)
    assert len(words) == RegisterType(type_name).width
    assert decode_words(words, type_name, order) == value


@settings(FUZZ, max_examples=1000)
@given(st.sampled_from([("float32", 32), ("float64", 64)]), ORDER, st.data())
def test_float_round_trip(type_and_width, order, data):
    type_name, width = type_and_width
    value = data.draw(st.floats(width=width, allow_nan=True, allow_infinity=True))
    back = decode_words(encode_words(value, type_name, order), type_name, order)
    assert back == value or (math.isnan(back) and math.isnan(value))


@settings(FUZZ, max_examples=2000)
@given(st.sampled_from(sorted(PROFILES)), st.data())
def test_profile_decode_any_blocks(name, data):
    """Planned blocks full of arbitrary words, sometimes cut short or with a word out of
    range: values with valid names and finite values, or a DecodeError."""
    profile = PROFILES[name]
    blocks = {}
    for request in profile.plan() + profile.plan(info=True):
        count = data.draw(st.integers(0, request.count + 2))
        words = data.draw(st.lists(ANY_WORD if data.draw(st.booleans()) else WORD, min_size=count, max_size=count))
        key = (request.function_code, request.address)
        blocks[key] = words
    try:
        values = profile.decode(blocks, device="fuzz")
        info = profile.decode_info(blocks, device="fuzz")
    except DecodeError as exc:
        assert str(exc).startswith("fuzz")
        return
    for value_name, value in values.items():
        quantity_unit(value_name)
        assert math.isfinite(value)
        if value_name.startswith(("alarm_", "fault_")):
            assert value in (0.0, 1.0)
    assert set(info) <= {entry.quantity for entry in profile.info}


@settings(FUZZ, max_examples=1500)
@given(st.binary(min_size=0, max_size=260))
def test_decode_response_any_bytes(frame):
    try:
        reply = decode_response(frame)
    except RtuFrameError as exc:
        assert isinstance(exc, DecodeError) and exc.offset >= 0
        return
    assert 1 <= reply.device_id <= 247
    assert reply.exception_code is not None or 2 * len(reply.registers) == frame[2]


@settings(FUZZ, max_examples=1000)
@given(
    st.integers(1, 247),
    st.sampled_from([3, 4]),
    st.lists(WORD, min_size=1, max_size=125),
    st.integers(0, 300),
    st.sampled_from(["flip", "cut", "extend", "none"]),
    st.integers(0, 255),
)
def test_decode_response_mutated_frames(device_id, fc, registers, where, how, byte):
    frame = bytearray(encode_response(device_id, fc, registers))
    i = where % len(frame)
    if how == "flip":
        frame[i] ^= byte or 1
    elif how == "cut":
        del frame[i:]
    elif how == "extend":
        frame.append(byte)
    try:
        reply = decode_response(frame)
    except RtuFrameError:
        assert how != "none"
        return
    if how == "none":
        assert reply.registers == tuple(registers)


@settings(FUZZ, max_examples=1000)
@given(
    st.lists(st.binary(min_size=0, max_size=40), min_size=0, max_size=6),
    st.lists(WORD, min_size=1, max_size=20),
    st.booleans(),
    st.integers(1, 8),
)
def test_reply_scanner_any_chunks(noise_chunks, registers, exception, chunk):
    """Noise then the real reply, in chunks of any size: the scanner never raises, and it
    finds the real reply unless the noise already held a frame that passes as the reply."""
    request = RtuRequest(7, 4, 0x0100, len(registers))
    reply = encode_exception(7, 4, 2) if exception else encode_response(7, 4, registers)
    stream = b"".join(noise_chunks) + reply
    scanner = ReplyScanner(request)
    found = None
    for i in range(0, len(stream), chunk):
        found = scanner.feed(stream[i : i + chunk]) or found
    assert found is not None
    assert found.device_id == 7 and found.function_code == 4
    if found.exception_code is None:
        assert len(found.registers) == len(registers)
    if 7 not in b"".join(noise_chunks):  # no false start possible: exactly the real reply
        assert found == decode_response(reply)
        assert scanner.noise == len(stream) - len(reply)
    for error in scanner.errors:
        assert isinstance(error, RtuFrameError)


@settings(FUZZ, max_examples=500)
@given(st.binary(min_size=0, max_size=16))
def test_decode_request_any_bytes(frame):
    try:
        request = decode_request(frame)
    except RtuFrameError:
        return
    assert len(frame) == 8 and 1 <= request.function_code <= 6
