"""Property tests of the DL/T 645 codec: arbitrary and mutated bytes never raise anything
but the project's DecodeError family, and every frame returned verifies.

12,500 generated cases in all (the ``max_examples`` below); about 10 s.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.dlt645 import (
    DATA_ITEMS,
    END_BYTE,
    ENERGY_BLOCK_DI,
    FRAME_OVERHEAD,
    MAX_DATA_LEN,
    Frame,
    FrameScanner,
    decode_energy_block,
    decode_frame,
    decode_value,
    parse_hex,
)
from drivers.reading import DecodeError
from tests.test_dlt645 import GOLDEN_FRAMES

pytestmark = pytest.mark.timeout(120)

GOLDEN = [parse_hex(text) for text in GOLDEN_FRAMES]
FAST = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


def assert_verifies(frame: Frame) -> None:
    """A returned frame is internally consistent and re-encodes to its own bytes."""
    raw = frame.raw
    assert raw[0] == raw[7] == 0x68 and raw[-1] == END_BYTE
    assert len(raw) == FRAME_OVERHEAD + raw[9] and raw[9] <= MAX_DATA_LEN
    assert sum(raw[:-2]) & 0xFF == raw[-2]
    # addresses are shown as hex, not validated as BCD, so rebuild by hand rather than
    # with encode_frame (which refuses a non-BCD address)
    assert frame.address == raw[6:0:-1].hex().upper() and frame.control == raw[8]
    assert bytes((b + 0x33) & 0xFF for b in frame.data) == raw[10:-2]


def decode_or_family(data: bytes) -> Frame | None:
    try:
        frame = decode_frame(data)
    except DecodeError:
        return None
    assert_verifies(frame)
    return frame


# Byte strings that look like frames often enough to reach the deep checks.
frame_like = st.builds(
    lambda pre, addr, c, data, tail: (
        b"\xfe" * pre + b"\x68" + addr + b"\x68" + bytes((c, len(data))) + data + tail
    ),
    st.integers(0, 4),
    st.binary(min_size=6, max_size=6),
    st.integers(0, 255),
    st.binary(max_size=40),
    st.binary(max_size=3),
)


@settings(FAST, max_examples=3000)
@given(st.one_of(st.binary(max_size=300), frame_like))
def test_decode_arbitrary_bytes(data: bytes) -> None:
    decode_or_family(data)


mutation = st.one_of(
    st.tuples(st.just("set"), st.integers(0, 300), st.integers(0, 255)),
    st.tuples(st.just("insert"), st.integers(0, 300), st.integers(0, 255)),
    st.tuples(st.just("delete"), st.integers(0, 300), st.just(0)),
    st.tuples(st.just("truncate"), st.integers(0, 300), st.just(0)),
)


def mutate(data: bytes, mutations: list[tuple[str, int, int]]) -> bytes:
    buf = bytearray(data)
    for kind, pos, value in mutations:
        i = pos % (len(buf) + 1)
        if kind == "set" and i < len(buf):
            buf[i] = value
        elif kind == "insert":
            buf.insert(i, value)
        elif kind == "delete" and i < len(buf):
            del buf[i]
        elif kind == "truncate":
            del buf[i:]
    return bytes(buf)


@settings(FAST, max_examples=3500)
@given(st.sampled_from(GOLDEN), st.lists(mutation, min_size=1, max_size=4))
def test_decode_mutated_golden_frames(frame: bytes, mutations: list[tuple[str, int, int]]) -> None:
    decode_or_family(mutate(frame, mutations))


@settings(FAST, max_examples=3000)
@given(
    st.lists(
        st.one_of(
            st.sampled_from(GOLDEN),
            st.binary(max_size=30),
            st.tuples(st.sampled_from(GOLDEN), st.lists(mutation, min_size=1, max_size=2)).map(
                lambda t: mutate(*t)
            ),
        ),
        max_size=8,
    ),
    st.lists(st.integers(1, 40), min_size=1, max_size=20),
)
def test_scanner_never_raises_and_returns_verified_frames(
    parts: list[bytes], cuts: list[int]
) -> None:
    stream = b"".join(parts)
    scanner = FrameScanner()
    frames: list[Frame] = []
    i = k = 0
    while i < len(stream):
        n = cuts[k % len(cuts)]
        frames += scanner.feed(stream[i : i + n])
        i, k = i + n, k + 1
    for frame in frames:
        assert_verifies(frame)
    assert scanner.pending <= FRAME_OVERHEAD + MAX_DATA_LEN
    assert all(isinstance(e, DecodeError) for e in scanner.errors)


@settings(FAST, max_examples=1500)
@given(
    st.lists(st.sampled_from(GOLDEN), min_size=1, max_size=6),
    st.lists(st.binary(max_size=20).map(lambda b: b.replace(b"\x68", b"")), min_size=7, max_size=7),
    st.integers(1, 25),
)
def test_scanner_finds_every_frame_between_noise(
    frames: list[bytes], noise: list[bytes], step: int
) -> None:
    """Noise without 68 bytes never hides a frame, however the stream is cut."""
    stream = noise[0] + b"".join(f + n for f, n in zip(frames, noise[1:]))
    scanner = FrameScanner()
    found = [f for i in range(0, len(stream), step) for f in scanner.feed(stream[i : i + step])]
    assert found == [decode_frame(f) for f in frames]


@settings(FAST, max_examples=1500)
@given(st.sampled_from([*DATA_ITEMS, ENERGY_BLOCK_DI]), st.binary(max_size=24))
def test_value_decoders_raise_only_decode_error(di: str, payload: bytes) -> None:
    try:
        if di == ENERGY_BLOCK_DI:
            total, tariffs = decode_energy_block(payload)
            assert 0 <= total <= 999999.99 and len(tariffs) == len(payload) // 4 - 1
        else:
            value = decode_value(di, payload)
            assert abs(value) < 10 ** (2 * DATA_ITEMS[di].size) * DATA_ITEMS[di].scale
    except DecodeError:
        pass
