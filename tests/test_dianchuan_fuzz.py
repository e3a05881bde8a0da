"""Fuzzing the Dianchuan decoder: arbitrary bytes and mutated valid frames raise only the
project's decode errors (drivers.reading.DecodeError family), and the scanner never raises.

12,000 generated cases in all (five tests), derandomised so CI runs are repeatable; each
test counts the cases it ran and checks the count.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.dianchuan import (
    MAX_DATA,
    SOP_ANSWER,
    SOP_COMMAND,
    Frame,
    FrameError,
    FrameScanner,
    PayloadError,
    decode_frame,
    parse_answer,
)
from drivers.reading import DecodeError

pytestmark = pytest.mark.timeout(120)

FUZZ = dict(deadline=None, derandomize=True, database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# golden frames of field-vectors.md FC-050 / FC-051 as mutation seeds
GOLDEN = [bytes.fromhex(t) for t in (
    "EE 09 01 31 32 33 34 35 36 00 0F",
    "66 0C 01 31 32 33 34 35 36 03 01 02 03 09",
    "66 13 01 00 00 00 00 00 00 0A 01 01 01 01 01 01 01 01 01 01 18",
    "66 0C 07 00 00 00 00 00 00 00 00 00 00 0B",
    "66 11 0C 00 00 00 00 00 00 01 F4 00 00 FF 00 FF 00 FF 17",
    "66 0D 06 00 00 00 00 00 00 01 00 00 00 00 0A",
    "EE 11 08 00 00 00 00 00 00 01 F4 00 00 FF 00 FF 00 FF 13",
    "66 09 08 00 00 00 00 00 00 01 00",
    "66 0A 02 00 00 00 00 00 00 01 01 08",
)]
KNOWN_CMDS = [0x01, 0x02, 0x05, 0x06, 0x07, 0x08, 0x0B, 0x0C, 0x0D, 0x24]

frames = st.builds(
    Frame,
    sop=st.sampled_from([SOP_COMMAND, SOP_ANSWER]),
    cmd=st.one_of(st.sampled_from(KNOWN_CMDS), st.integers(0, 255)),
    session_id=st.binary(min_size=6, max_size=6),
    data=st.binary(max_size=40) | st.binary(max_size=MAX_DATA),
)
valid_bytes = st.sampled_from(GOLDEN) | frames.map(Frame.encode)


def parse_only_decode_errors(frame: Frame) -> None:
    try:
        parse_answer(frame)
    except PayloadError:
        pass


def scan(chunks: list[bytes]) -> tuple[FrameScanner, list[Frame]]:
    scanner = FrameScanner()
    found = [f for chunk in chunks for f in scanner.feed(chunk)]
    total = sum(map(len, chunks))
    assert scanner.garbage_bytes + sum(len(f.encode()) for f in found) + scanner.pending == total
    for frame in found:
        assert decode_frame(frame.encode()) == frame  # only valid frames come out
        parse_only_decode_errors(frame)
    return scanner, found


def test_decode_frame_on_arbitrary_bytes() -> None:
    ran = 0

    @settings(max_examples=3000, **FUZZ)
    @given(st.binary(max_size=300))
    def check(raw: bytes) -> None:
        nonlocal ran
        ran += 1
        try:
            frame = decode_frame(raw)
        except FrameError:
            return
        assert frame.encode() == raw
        parse_only_decode_errors(frame)

    check()
    assert ran >= 3000


def test_scanner_on_arbitrary_chunks() -> None:
    ran = 0

    @settings(max_examples=3000, **FUZZ)
    @given(st.lists(st.binary(max_size=80), max_size=12))
    def check(chunks: list[bytes]) -> None:
        nonlocal ran
        ran += 1
        scan(chunks)

    check()
    assert ran >= 3000


MUTATIONS = st.lists(
    st.tuples(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]),
              st.integers(0, 300), st.integers(0, 255)),
    min_size=1, max_size=4,
)


def mutate(raw: bytes, ops: list[tuple[str, int, int]]) -> bytes:
    out = bytearray(raw)
    for op, where, value in ops:
        i = where % (len(out) + 1)
        if op == "insert":
            out.insert(i, value)
        elif not out:
            continue
        elif op == "truncate":
            del out[i:]
        else:
            i %= len(out)
            if op == "delete":
                del out[i]
            elif op == "flip":
                out[i] ^= 1 << (value % 8)
            else:
                out[i] = value
    return bytes(out)


def test_mutated_valid_frames() -> None:
    ran = 0

    @settings(max_examples=3000, **FUZZ)
    @given(valid_bytes, MUTATIONS, st.integers(1, 16))
    def check(raw: bytes, ops: list[tuple[str, int, int]], chunk: int) -> None:
        nonlocal ran
        ran += 1
        bad = mutate(raw, ops)
        try:
            frame = decode_frame(bad)
        except FrameError:
            pass
        else:
            assert frame.encode() == bad
            parse_only_decode_errors(frame)
        scan([bad[i : i + chunk] for i in range(0, len(bad), chunk)])

    check()
    assert ran >= 3000


def test_valid_frames_between_garbage_without_start_bytes_are_all_found() -> None:
    ran = 0
    garbage = st.binary(max_size=20).map(lambda b: b.replace(b"\xee", b"\x00").replace(b"\x66", b"\x01"))

    @settings(max_examples=2000, **FUZZ)
    @given(st.lists(st.tuples(garbage, valid_bytes), max_size=6), st.integers(1, 40))
    def check(parts: list[tuple[bytes, bytes]], chunk: int) -> None:
        nonlocal ran
        ran += 1
        stream = b"".join(g + f for g, f in parts)
        scanner, found = scan([stream[i : i + chunk] for i in range(0, len(stream), chunk)])
        assert [f.encode() for f in found] == [f for _, f in parts]
        assert scanner.garbage_bytes == sum(len(g) for g, _ in parts) and scanner.pending == 0

    check()
    assert ran >= 2000


def test_parsers_on_arbitrary_data() -> None:
    ran = 0

    @settings(max_examples=1000, **FUZZ)
    @given(st.sampled_from([SOP_COMMAND, SOP_ANSWER]), st.sampled_from(KNOWN_CMDS),
           st.binary(max_size=24))
    def check(sop: int, cmd: int, data: bytes) -> None:
        nonlocal ran
        ran += 1
        try:
            parse_answer(Frame(sop, cmd, bytes(6), data))
        except DecodeError:
            pass

    check()
    assert ran >= 1000
