"""DL/T 645-2007 codec, scanner and client.

Golden cases are the captured frames of field-vectors.md section A (FC ids in the test
names); the client runs against :class:`simulators.dlt645_meter.Dlt645MeterSim` on a
pseudo-terminal at 2400 8E1 (the pty ignores line settings), no mocks.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from drivers.dlt645 import (
    BROADCAST_ADDRESS,
    DATA_ITEMS,
    DEFAULT_DIS,
    ENERGY_BLOCK_DI,
    MAX_DATA_LEN,
    WILDCARD_ADDRESS,
    ChecksumError,
    Dlt645Client,
    Dlt645ErrorReply,
    EndMarkerError,
    Frame,
    FrameError,
    FrameScanner,
    HeaderError,
    IncompleteFrame,
    LengthError,
    Protocol1997Error,
    address_from_wire,
    address_to_wire,
    decode_energy_block,
    decode_frame,
    decode_value,
    di_to_wire,
    encode_energy_block,
    encode_frame,
    encode_value,
    error_reasons,
    parse_hex,
    read_address_request,
    read_follow_request,
    read_request,
)
from drivers.reading import UNITS, DecodeError, DeviceTimeout, DriverError
from flylead.clock import SimClock
from simulators.dlt645_meter import OTHER_ADDRESS, Dlt645MeterSim
from simulators.trace import LoadTrace

pytestmark = pytest.mark.timeout(60)

H = parse_hex

# -- field-vectors.md section A, verbatim ------------------------------------------------

FC001_1FE = "FE 68 AA AA AA AA AA AA 68 13 00 DF 16"
FC001_4FE = "FE FE FE FE 68 AA AA AA AA AA AA 68 13 00 DF 16"
FC002 = "68 01 01 00 00 00 00 68 93 06 34 34 33 33 33 33 9F 16"
FC003 = "FE 68 01 01 00 00 00 00 68 11 04 33 32 34 33 B3 16"
FC005_REQ = "68 61 01 00 00 00 00 68 11 04 33 33 34 33 14 16"
FC005_REP = "68 61 01 00 00 00 00 68 91 08 33 33 34 33 59 33 33 33 8A 16"
FC006_REQ = "68 61 01 00 00 00 00 68 11 04 33 34 34 35 17 16"
FC006_REP = "68 61 01 00 00 00 00 68 91 06 33 34 34 35 34 43 10 16"
FC008_REQ_P = "68 61 01 00 00 00 00 68 11 04 33 33 36 35 18 16"
FC008_P = "68 61 01 00 00 00 00 68 91 07 33 33 36 35 45 58 33 6B 16"
FC008_Q = "68 61 01 00 00 00 00 68 91 07 33 33 37 35 64 76 33 A9 16"
FC008_S = "68 61 01 00 00 00 00 68 91 07 33 33 38 35 39 83 33 8C 16"
FC008_PF = "68 61 01 00 00 00 00 68 91 06 33 33 39 35 34 38 09 16"
FC010_DATE = "68 12 00 00 00 10 20 68 91 08 34 34 33 37 34 44 34 49 72 16"
FC010_TIME = "68 12 00 00 00 10 20 68 91 07 35 34 33 37 88 86 54 DF 16"
FC010_FREEZE = "68 12 00 00 00 10 20 68 91 09 34 33 39 38 33 33 3C 43 48 B1 16"
FC011_MONEY = "68 12 00 00 00 10 20 68 91 08 33 35 C3 33 89 CB 34 33 C4 16"
FC011_COVER = "68 12 00 00 00 10 20 68 91 07 33 40 63 36 5A 33 33 76 16"
FC011_TRIP = "68 12 00 00 00 10 20 68 91 07 34 33 33 50 33 33 33 2D 16"
FC012_REQ = "68 12 00 00 00 10 20 68 11 04 33 32 34 33 F3 16"
FC012_REP = (
    "68 12 00 00 00 10 20 68 91 18 33 32 34 33 5C 34 33 33 95 33 33 33 93 33 33 33 "
    "36 33 33 33 35 33 33 33 74 16"
)
FC013_A = "68 12 00 00 00 10 20 68 D1 01 35 19 16"
FC013_B = "68 12 90 78 56 34 12 68 D1 01 35 8D 16"
FC013_C = "68 03 01 00 00 00 00 68 D1 01 35 DB 16"
FC013_C_ZERO_P = "68 03 01 00 00 00 00 68 91 07 33 33 36 35 33 33 33 D6 16"
FC015 = "FE FE FE FE 68 04 01 00 00 00 00 68 91 06 35 33 B3 35 36 83 75 16"
FC016_GOOD = "68 12 90 78 56 34 12 68 91 08 33 33 34 33 89 67 45 33 54 16"
FC016_CS55 = "68 12 90 78 56 34 12 68 91 08 33 33 34 33 89 67 45 33 55 16"
FC016_END17 = "68 12 90 78 56 34 12 68 91 08 33 33 34 33 89 67 45 33 54 17"
FC016_HDR69 = "68 12 90 78 56 34 12 69 91 08 33 33 34 33 89 67 45 33 54 16"
FC016_LFF = "68 12 90 78 56 34 12 68 91 FF 33 33"
FC016_TRUNC = "FE FE 68 12 90 78 56 34 12 68 91 08 33 33"
FC016_FE_ONLY = "FE FE FE FE"
FC016_REQ_WILD = "FE FE FE FE 68 AA AA AA AA AA AA 68 11 04 33 33 34 33 AE 16"
FC016_REQ = "68 12 90 78 56 34 12 68 11 04 33 33 34 33 68 16"
FC016_REQ_FOLLOW = "68 12 90 78 56 34 12 68 12 05 34 33 63 36 34 D1 16"
FC019_BCAST = "68 99 99 99 99 99 99 68 08 06 84 55 43 38 39 4A 4B 16"
FC019_SINGLE = "68 11 11 11 11 11 11 68 08 06 58 73 43 38 39 4A 0D 16"
FC019_TRUNC = "68 99 99 99 99 99 99 68 08 06 37 53 44 48 34 4B 09"
FC019_MONTH34 = "FE FE FE FE 68 99 99 99 99 99 99 68 08 06 58 44 35 45 67 89 7A 16"
FC020 = "68 68 03 00 00 00 00 00 68 91 07 33 34 34 35 33 33 33 D4 16"
FC023_PRE = "FE FE FE FE 68 02 00 31 08 22 20 68 11 04 32 55 B3 35 D1 16"
FC023_PRE_IRREGULAR = "fe  fefefe68 02 00 31 08 22 20 68 11 04 32 55 B3 35 D1 16"
FC023_WILD = "68 AA AA AA AA AA AA 68 11 04 33 34 34 35 B1 16"
FC024_REQ = "68 03 00 00 00 00 00 68 01 02 44 E9 03 16"
FC024_REP = "68 03 00 00 00 00 00 68 81 04 44 E9 33 34 EC 16"

GOLDEN_FRAMES = [
    FC001_1FE, FC001_4FE, FC002, FC003, FC005_REQ, FC005_REP, FC006_REQ, FC006_REP,
    FC008_REQ_P, FC008_P, FC008_Q, FC008_S, FC008_PF, FC010_DATE, FC010_TIME, FC010_FREEZE,
    FC011_MONEY, FC011_COVER, FC011_TRIP, FC012_REQ, FC012_REP, FC013_A, FC013_B, FC013_C,
    FC013_C_ZERO_P, FC015, FC016_GOOD, FC016_REQ_WILD, FC016_REQ, FC016_REQ_FOLLOW,
    FC019_BCAST, FC019_SINGLE, FC019_MONTH34, FC023_PRE, FC023_WILD,
]  # fmt: skip


def value_of(frame_hex: str) -> float:
    frame = decode_frame(H(frame_hex))
    assert frame.di is not None
    return decode_value(frame.di, frame.data[4:])


# -- golden frames: decode ---------------------------------------------------------------


@pytest.mark.parametrize("text, preamble", [(FC001_1FE, 1), (FC001_4FE, 4)])
def test_fc001_read_address_request_with_preamble(text: str, preamble: int) -> None:
    frame = decode_frame(H(text))
    assert frame.address == WILDCARD_ADDRESS != BROADCAST_ADDRESS
    assert (frame.control, frame.data, frame.is_reply) == (0x13, b"", False)
    assert frame.raw == H(text)[preamble:]
    assert read_address_request(preamble=preamble) == H(text)


def test_fc002_read_address_reply() -> None:
    frame = decode_frame(H(FC002))
    assert (frame.control, frame.address) == (0x93, "000000000101")
    assert frame.data == bytes.fromhex("010100000000")
    assert address_from_wire(frame.data) == frame.address


def test_fc003_block_request_checksum_b3() -> None:
    frame = decode_frame(H(FC003))
    assert (frame.address, frame.control, frame.di) == ("000000000101", 0x11, "0001FF00")
    assert read_request("000000000101", "0001FF00", preamble=1) == H(FC003)


def test_fc005_forward_energy() -> None:
    assert decode_frame(H(FC005_REP)).di == "00010000"
    assert value_of(FC005_REP) == 0.26
    assert read_request("000000000161", "00010000") == H(FC005_REQ)


def test_fc006_phase_a_voltage() -> None:
    assert value_of(FC006_REP) == 100.1
    assert read_request("000000000161", "02010100") == H(FC006_REQ)


def test_fc008_power_and_power_factor_in_si_units() -> None:
    assert value_of(FC008_P) == 251.2  # 0.2512 kW
    assert value_of(FC008_Q) == 433.1  # 0.4331 kvar
    assert value_of(FC008_S) == 500.6  # 0.5006 kVA
    assert value_of(FC008_PF) == 0.501
    assert read_request("000000000161", "02030000") == H(FC008_REQ_P)
    assert value_of(FC013_C_ZERO_P) == 0.0


def test_fc010_date_time_frames_framing() -> None:
    date, clock, freeze = (decode_frame(H(x)) for x in (FC010_DATE, FC010_TIME, FC010_FREEZE))
    assert (date.di, date.data[4:]) == ("04000101", bytes.fromhex("01110116"))  # WWDDMMYY
    assert (clock.di, clock.data[4:]) == ("04000102", bytes.fromhex("555321"))  # ssmmhh
    assert (freeze.di, freeze.data[4:]) == ("05060001", bytes.fromhex("0000091015"))
    assert date.address == "201000000012"


def test_fc011_plus_33_wraps_c3_to_90() -> None:
    money, cover, trip = (decode_frame(H(x)) for x in (FC011_MONEY, FC011_COVER, FC011_TRIP))
    assert money.di == "00900200" and money.data[4:] == bytes.fromhex("56980100")  # 198.56
    assert cover.di == "03300D00" and cover.data[4:] == bytes.fromhex("270000")  # 27
    assert trip.di == "1D000001" and trip.data[4:] == bytes.fromhex("000000")  # 0


def test_fc012_energy_block_tariff_mismatch_is_not_an_error() -> None:
    frame = decode_frame(H(FC012_REP))
    assert frame.di == ENERGY_BLOCK_DI
    total, tariffs = decode_energy_block(frame.data[4:])
    assert (total, tariffs) == (1.29, [0.62, 0.60, 0.03, 0.02])  # sum 1.27 != 1.29
    assert read_request("201000000012", ENERGY_BLOCK_DI) == H(FC012_REQ)
    assert encode_energy_block(1.29, [0.62, 0.60, 0.03, 0.02]) == frame.data[4:]


@pytest.mark.parametrize(
    "text, address",
    [(FC013_A, "201000000012"), (FC013_B, "123456789012"), (FC013_C, "000000000103")],
)
def test_fc013_error_reply_no_requested_data(text: str, address: str) -> None:
    frame = decode_frame(H(text))
    assert (frame.address, frame.control, frame.data) == (address, 0xD1, b"\x02")
    assert frame.is_reply and frame.is_error and frame.di is None
    assert error_reasons(frame.data[0]) == ["no requested data"]


def test_fc013_error_bits_named_one_by_one() -> None:
    assert error_reasons(0x7F) == [
        "other error",
        "no requested data",
        "password wrong or unauthorised",
        "baud rate cannot be changed",
        "year time-zone count exceeded",
        "daily period count exceeded",
        "tariff count exceeded",
    ]
    assert error_reasons(0x05) == ["other error", "password wrong or unauthorised"]
    assert error_reasons(0x80) == ["reserved bit 7"]
    assert error_reasons(0) == []


def test_fc015_frequency_four_fe_and_irregular_hex() -> None:
    assert value_of(FC015) == 50.03
    irregular = "FE FE FE FE6804 01 00 00 00 00 68910635 33 B3 35 36 837516"  # as in the source
    assert parse_hex(irregular) == H(FC015)
    assert decode_frame(parse_hex(irregular)).di == "02800002"


def test_fc016_good_reply() -> None:
    frame = decode_frame(H(FC016_GOOD))
    assert (frame.address, frame.di) == ("123456789012", "00010000")
    assert decode_value("00010000", frame.data[4:]) == 1234.56


def test_fc016_checksum_error_names_computed_and_received() -> None:
    with pytest.raises(ChecksumError, match="computed 54H, received 55H") as info:
        decode_frame(H(FC016_CS55))
    assert (info.value.computed, info.value.received, info.value.offset) == (0x54, 0x55, 0)


def test_fc016_end_marker_error() -> None:
    with pytest.raises(EndMarkerError, match="end marker 16H expected at byte 19, got 17H"):
        decode_frame(H(FC016_END17))


def test_fc016_header_error_and_scanner_resync() -> None:
    with pytest.raises(HeaderError, match="second 68H expected at byte 7, got 69H"):
        decode_frame(H(FC016_HDR69))
    scanner = FrameScanner()
    assert scanner.feed(H(FC016_HDR69) + H(FC016_GOOD)) == [decode_frame(H(FC016_GOOD))]
    assert [type(e) for e in scanner.errors] == [HeaderError]
    assert scanner.errors[0].offset == 0


def test_fc016_length_too_long() -> None:
    with pytest.raises(LengthError, match="length byte 255 exceeds the 200-byte"):
        decode_frame(H(FC016_LFF))
    scanner = FrameScanner()
    assert scanner.feed(H(FC016_LFF)) == []
    assert [type(e) for e in scanner.errors] == [LengthError]
    # dropped one byte; only the inner 68 (byte 7) is held, waiting for its own header,
    # never 267 bytes behind the first
    assert scanner.pending == 5


def test_fc016_truncated_is_incomplete_and_fe_consumed() -> None:
    with pytest.raises(IncompleteFrame):
        decode_frame(H(FC016_TRUNC))
    scanner = FrameScanner()
    assert scanner.feed(H(FC016_TRUNC)) == []
    assert (scanner.pending, scanner.dropped, scanner.errors) == (12, 2, [])
    rest = H(FC016_GOOD)[12:]
    assert scanner.feed(rest) == [decode_frame(H(FC016_GOOD))]
    assert scanner.pending == 0


def test_fc016_preamble_only_is_no_frame() -> None:
    with pytest.raises(IncompleteFrame):
        decode_frame(H(FC016_FE_ONLY))
    scanner = FrameScanner()
    assert scanner.feed(H(FC016_FE_ONLY)) == []
    assert (scanner.pending, scanner.dropped) == (0, 4)


def test_fc016_request_forms_encode_byte_for_byte() -> None:
    assert read_request(WILDCARD_ADDRESS, "00010000", preamble=4) == H(FC016_REQ_WILD)
    assert read_request(WILDCARD_ADDRESS, "00010000") == H(
        "68 AA AA AA AA AA AA 68 11 04 33 33 34 33 AE 16"
    )  # domain-facts §6
    assert read_request("123456789012", "00010000") == H(FC016_REQ)
    assert read_follow_request("123456789012", "03300001", 1) == H(FC016_REQ_FOLLOW)
    follow = decode_frame(H(FC016_REQ_FOLLOW))
    assert (follow.control, follow.di, follow.data[4]) == (0x12, "03300001", 1)


def test_fc016_control_code_bits() -> None:
    def bits(c: int) -> tuple[bool, bool, bool]:
        f = Frame("000000000001", c, b"")
        return f.is_reply, f.has_more, f.is_error

    assert bits(0x91) == (True, False, False)
    assert bits(0x11) == (False, False, False)
    assert bits(0xB1) == (True, True, False)
    assert bits(0xD1) == (True, False, True)


def test_fc019_broadcast_time_sync_framing() -> None:
    frame = decode_frame(H(FC019_BCAST))
    assert (frame.address, frame.control) == (BROADCAST_ADDRESS, 0x08)
    assert frame.address != WILDCARD_ADDRESS
    assert frame.data == bytes.fromhex("512210050617")  # 2017-06-05 10:22:51
    assert encode_frame(BROADCAST_ADDRESS, 0x08, frame.data) == H(FC019_BCAST)
    single = decode_frame(H(FC019_SINGLE))
    assert (single.address, single.data) == ("111111111111", bytes.fromhex("254010050617"))
    # wire format only: month 34 is not checked by the codec
    assert decode_frame(H(FC019_MONTH34)).data == bytes.fromhex("251102123456")


def test_fc019_truncated_needs_more_then_decodes() -> None:
    with pytest.raises(IncompleteFrame):
        decode_frame(H(FC019_TRUNC))
    scanner = FrameScanner()
    assert scanner.feed(H(FC019_TRUNC)) == []
    assert scanner.pending == 17
    (frame,) = scanner.feed(b"\x16")
    assert frame.data == bytes.fromhex("042011150118")  # 2018-01-15 11:20:04


def test_fc020_doubled_68_resyncs_at_byte_1() -> None:
    with pytest.raises(HeaderError, match="second 68H expected at byte 7, got 00H"):
        decode_frame(H(FC020))
    scanner = FrameScanner()
    (frame,) = scanner.feed(H(FC020))
    assert (frame.address, frame.control, frame.di) == ("000000000003", 0x91, "02010100")
    assert frame.data[4:] == b"\x00\x00\x00"
    assert [(type(e), e.offset) for e in scanner.errors] == [(HeaderError, 0)]
    # 3 value bytes for a 2-byte item: flagged (strict), not guessed
    with pytest.raises(DecodeError, match=r"DI 02010100 \(phase A voltage\): 3 value bytes"):
        decode_value(frame.di, frame.data[4:])


def test_fc023_irregular_hex_and_wildcard_requests() -> None:
    assert parse_hex(FC023_PRE_IRREGULAR) == H(FC023_PRE)
    frame = decode_frame(H(FC023_PRE))
    assert (frame.address, frame.di) == ("202208310002", "028022FF")
    assert read_request("202208310002", "028022FF", preamble=4) == H(FC023_PRE)
    wild = decode_frame(H(FC023_WILD))
    assert (wild.address, wild.di) == (WILDCARD_ADDRESS, "02010100")
    assert read_request(WILDCARD_ADDRESS, "02010100") == H(FC023_WILD)


@pytest.mark.parametrize("text, code", [(FC024_REQ, "01H"), (FC024_REP, "81H")])
def test_fc024_dlt645_1997_rejected(text: str, code: str) -> None:
    with pytest.raises(Protocol1997Error, match=f"control code {code} .* DL/T 645-1997"):
        decode_frame(H(text))


def test_fc024_scanner_skips_the_whole_1997_frame() -> None:
    scanner = FrameScanner()
    frames = scanner.feed(H(FC024_REP) + H(FC006_REP))
    assert frames == [decode_frame(H(FC006_REP))]
    assert [type(e) for e in scanner.errors] == [Protocol1997Error]


@pytest.mark.parametrize("text", GOLDEN_FRAMES)
def test_every_golden_frame_reencodes_byte_for_byte(text: str) -> None:
    wire = H(text)
    frame = decode_frame(wire)
    preamble = len(wire) - len(frame.raw)
    assert encode_frame(frame.address, frame.control, frame.data, preamble=preamble) == wire


# -- pitfalls ----------------------------------------------------------------------------


def test_checksum_byte_equal_to_16_does_not_end_the_frame() -> None:
    data = next(
        bytes((0, 0, 1, 0, v))
        for v in range(256)
        if encode_frame("000000000001", 0x91, bytes((0, 0, 1, 0, v)))[-2] == 0x16
    )
    wire = encode_frame("000000000001", 0x91, data)
    assert wire[-2:] == b"\x16\x16"
    assert decode_frame(wire).data == data
    scanner = FrameScanner()
    frames = scanner.feed(wire + H(FC006_REP))
    assert [f.data for f in frames] == [data, decode_frame(H(FC006_REP)).data]
    assert scanner.feed(b"") == [] and scanner.errors == []


def test_data_offset_wraps_both_ways_for_every_byte() -> None:
    for data in (bytes(range(0, 200)), bytes(range(200, 256))):
        wire = encode_frame("000000000001", 0x91, data)
        assert wire[10:-2] == bytes((b + 0x33) % 256 for b in data)
        assert decode_frame(wire).data == data
    assert encode_frame("000000000001", 0x91, b"\xcd")[10] == 0x00  # 0xCD + 0x33 wraps
    assert decode_frame(H("68 01 00 00 00 00 00 68 91 01 00 63 16")).data == b"\xcd"


def test_checksum_zero_is_a_checksum() -> None:  # FC-003 original CS 0x00
    data = next(
        bytes((v,)) for v in range(256) if encode_frame("000000000001", 0x91, bytes((v,)))[-2] == 0
    )
    assert decode_frame(encode_frame("000000000001", 0x91, data)).data == data


def test_scanner_garbage_split_reads_and_back_to_back_frames() -> None:
    replies = [FC005_REP, FC006_REP, FC008_P, FC012_REP, FC013_A, FC015, FC016_GOOD]
    stream = H("00 68 13 FF 16 55 68 01 02 03 04 05 06 68 91 F0 16 FE")
    for text in replies:
        stream += H(text) + H("FE FE 00 16")
    expected = [decode_frame(H(t)) for t in replies]
    assert FrameScanner().feed(stream) == expected
    scanner = FrameScanner()  # byte by byte, as a slow line delivers it
    got = [f for i in range(len(stream)) for f in scanner.feed(stream[i : i + 1])]
    assert got == expected


def test_scanner_error_offsets_are_stream_positions() -> None:
    scanner = FrameScanner()
    scanner.feed(H(FC016_GOOD))
    scanner.feed(b"\x00\x00" + H(FC016_CS55))
    err = scanner.errors[0]  # then header rejects of the 68 inside the frame
    assert isinstance(err, ChecksumError) and err.offset == 22
    assert "byte 22: checksum computed 54H, received 55H" in str(err)


def test_decode_frame_rejects_trailing_bytes() -> None:
    with pytest.raises(LengthError, match="2 bytes after the frame"):
        decode_frame(H(FC016_GOOD) + b"\xfe\xfe")
    with pytest.raises(HeaderError):
        decode_frame(b"\x00" + H(FC016_GOOD))


def test_frame_errors_are_decode_errors() -> None:
    for cls in (ChecksumError, EndMarkerError, HeaderError, LengthError, IncompleteFrame,
                Protocol1997Error):  # fmt: skip
        assert issubclass(cls, FrameError) and issubclass(cls, DecodeError)
    assert issubclass(Dlt645ErrorReply, DriverError)


def test_max_data_len_frames() -> None:
    data = bytes(MAX_DATA_LEN)
    assert decode_frame(encode_frame("000000000001", 0x91, data)).data == data
    with pytest.raises(ValueError):
        encode_frame("000000000001", 0x91, bytes(MAX_DATA_LEN + 1))


# -- addresses, hex, data items ----------------------------------------------------------


def test_address_helpers() -> None:
    assert address_to_wire("000000000101") == bytes.fromhex("010100000000")
    assert address_to_wire("123456789012") == bytes.fromhex("129078563412")
    assert address_to_wire(WILDCARD_ADDRESS) == b"\xaa" * 6
    assert address_to_wire(BROADCAST_ADDRESS) == b"\x99" * 6
    assert address_to_wire("aaaaaaaa0101") == bytes.fromhex("0101aaaaaaaa")
    assert address_from_wire(bytes.fromhex("129078563412")) == "123456789012"
    for bad in ("12345678901", "1234567890123", "12345678901A", "0000000000FF", "A0000000000A"):
        with pytest.raises(ValueError):
            address_to_wire(bad)
    with pytest.raises(ValueError):
        parse_hex("68 1")
    with pytest.raises(ValueError):
        di_to_wire("0201010")


def test_data_item_table_quantities_and_units() -> None:
    assert set(DEFAULT_DIS) == set(DATA_ITEMS)
    assert {item.quantity for item in DATA_ITEMS.values()} == {
        "voltage", "current", "active_power", "reactive_power", "apparent_power",
        "power_factor", "frequency", "energy_import", "energy_export",
    }  # fmt: skip
    assert all(item.quantity in UNITS for item in DATA_ITEMS.values())


@pytest.mark.parametrize(
    "di, value, wire",
    [
        ("02010100", 230.4, "0423"),
        ("02020100", 5.123, "235100"),
        ("02020100", -5.123, "235180"),  # sign bit = MSB of the highest byte
        ("02030000", 1180.3, "031801"),  # W -> 1.1803 kW
        ("02030000", -251.2, "122580"),  # FC-008 negative form
        ("02040000", -433.1, "314380"),
        ("02050000", 500.6, "065000"),
        ("02060000", -0.501, "0185"),
        ("02800002", 50.03, "0350"),
        ("00010000", 1234.56, "56341200"),
        ("00020000", 999999.99, "99999999"),
    ],
)
def test_value_encode_decode(di: str, value: float, wire: str) -> None:
    assert encode_value(di, value) == bytes.fromhex(wire)
    assert decode_value(di, bytes.fromhex(wire)) == value


def test_value_errors_name_the_di() -> None:
    with pytest.raises(DecodeError, match=r"DI 02010100 \(phase A voltage\): byte 0 .* 1AH, not"):
        decode_value("02010100", bytes.fromhex("1A22"))
    with pytest.raises(DecodeError, match=r"DI 00010000 .* byte 3 .* A0H"):
        decode_value("00010000", bytes.fromhex("000000A0"))
    with pytest.raises(DecodeError, match=r"DI 0001FF00 .* item 2"):
        decode_energy_block(bytes.fromhex("00000000 00000000 0000F000"))
    with pytest.raises(DecodeError, match="multiple of 4"):
        decode_energy_block(b"\x00" * 6)
    with pytest.raises(ValueError, match="not in the data-item table"):
        decode_value("04000101", b"\x00" * 4)
    with pytest.raises(ValueError, match="unsigned"):
        encode_value("00010000", -1.0)
    with pytest.raises(ValueError, match="does not fit"):
        encode_value("02030000", 80_000.0)  # 80 kW: the sign bit would be set


# -- client against the pty meter simulator ----------------------------------------------

ADDRESS = "000000000161"
START = 1_700_000_000.0
VALUES = {
    "voltage": 230.4,
    "current": 5.123,
    "active_power": 1180.3,
    "reactive_power": 387.5,
    "apparent_power": 1242.4,
    "power_factor": 0.95,
    "frequency": 50.02,
    "energy_import": 1234.56,
    "energy_export": 7.89,
}


def run(coro):
    return asyncio.run(coro)


@pytest.fixture
def sim():
    with Dlt645MeterSim(ADDRESS, lambda: dict(VALUES)) as meter:
        yield meter


def client_for(meter: Dlt645MeterSim, **kw) -> Dlt645Client:
    return Dlt645Client(meter.path, clock=SimClock(START, speed=1.0), **kw)


async def read_with(meter: Dlt645MeterSim, dis=None, address=ADDRESS, **kw):
    async with client_for(meter, **kw) as client:
        return await client.read(address, dis, device="meter-h01")


def test_client_reads_every_di_at_2400_8e1(sim: Dlt645MeterSim) -> None:
    reading = run(read_with(sim))
    assert reading.values == VALUES
    assert reading.device == "meter-h01"
    assert START <= reading.t < START + 5
    assert 0 < reading.latency_s < 5
    sent = sim.requests
    assert [f.di for f in sent] == list(DEFAULT_DIS)
    assert all(f.control == 0x11 and f.address == ADDRESS for f in sent)


def test_client_sends_preamble_and_8e1_settings(sim: Dlt645MeterSim) -> None:
    client = client_for(sim)

    async def go():
        async with client:
            await client.read(ADDRESS, ["02010100"], device="m")
            port = client._serial
            return (port.baudrate, port.parity, port.bytesize, port.stopbits)

    assert run(go()) == (2400, "E", 8, 1)


def test_client_energy_block_single_frame(sim: Dlt645MeterSim) -> None:
    async def go():
        async with client_for(sim) as client:
            reading = await client.read(ADDRESS, [ENERGY_BLOCK_DI], device="m")
            payload = await client.read_payload(ADDRESS, ENERGY_BLOCK_DI, device="m")
            return reading, payload

    reading, payload = run(go())
    assert reading.values == {"energy_import": 1234.56}
    assert decode_energy_block(payload) == (1234.56, [617.28, 308.64, 308.64, 0.0])


def test_client_follows_on_b1_frames() -> None:
    with Dlt645MeterSim(ADDRESS, lambda: dict(VALUES), follow_on=True) as meter:
        async def go():
            async with client_for(meter) as client:
                return await client.read_payload(ADDRESS, ENERGY_BLOCK_DI, device="m")

        payload = run(go())
        assert decode_energy_block(payload) == (1234.56, [617.28, 308.64, 308.64, 0.0])
        assert [(f.control, f.data[4:]) for f in meter.requests] == [(0x11, b""), (0x12, b"\x01")]


def test_client_read_address(sim: Dlt645MeterSim) -> None:
    async def go():
        async with client_for(sim) as client:
            return await client.read_address()

    assert run(go()) == ADDRESS
    (request,) = sim.requests
    assert (request.address, request.control) == (WILDCARD_ADDRESS, 0x13)


def test_client_wildcard_address_read(sim: Dlt645MeterSim) -> None:
    reading = run(read_with(sim, ["02800002"], address=WILDCARD_ADDRESS))
    assert reading.values == {"frequency": 50.02}


def test_client_with_trace_and_sim_clock() -> None:
    n = 1440
    trace = LoadTrace("h01", START, 60.0, np.full(n, 1500.0), voltage_v=np.full(n, 221.3),
                      power_factor=np.full(n, 0.8))  # fmt: skip
    clock = SimClock(START + 3600, speed=60.0)
    with Dlt645MeterSim(ADDRESS, trace=trace, clock=clock) as meter:
        async def go():
            async with Dlt645Client(meter.path, clock=clock) as client:
                return await client.read(ADDRESS, device="meter-h01")

        reading = run(go())
    v = reading.values
    assert (v["voltage"], v["active_power"], v["apparent_power"], v["reactive_power"]) == (
        221.3, 1500.0, 1875.0, 1125.0,
    )  # fmt: skip
    assert (v["power_factor"], v["frequency"], v["energy_export"]) == (0.8, 50.0, 0.0)
    assert v["current"] == round(1875.0 / 221.3, 3)
    assert 1.5 <= v["energy_import"] <= 1.5 + 1500 * 300 / 3.6e6  # 1 h at 1.5 kW, + <= 5 min
    assert START + 3600 <= reading.t < START + 3600 + 300


def test_client_paced_bytes_like_a_2400_baud_line() -> None:
    with Dlt645MeterSim(ADDRESS, lambda: dict(VALUES), byte_time_s=11 / 2400) as meter:
        reading = run(read_with(meter, ["02010100", "00010000", ENERGY_BLOCK_DI]))
    assert reading.values == {"voltage": 230.4, "energy_import": 1234.56}


def test_client_unknown_di_error_reply(sim: Dlt645MeterSim) -> None:
    async def go():
        async with client_for(sim) as client:
            await client.read_payload(ADDRESS, "04000101", device="meter-h01")

    with pytest.raises(Dlt645ErrorReply, match="meter-h01 .*000000000161.* DI 04000101.*D1H, "
                       r"error byte 02H \(no requested data\)") as info:  # fmt: skip
        run(go())
    assert (info.value.code, info.value.reasons) == (2, ["no requested data"])


def test_client_missing_quantity_is_an_error_reply() -> None:
    values = {k: v for k, v in VALUES.items() if k != "reactive_power"}
    with Dlt645MeterSim(ADDRESS, lambda: values) as meter:
        with pytest.raises(Dlt645ErrorReply, match=r"DI 02040000 \(total reactive power\)"):
            run(read_with(meter))


def test_client_timeout_when_silent(sim: Dlt645MeterSim) -> None:
    sim.set_fault("silent")
    started = time.monotonic()
    with pytest.raises(DeviceTimeout, match=r"meter-h01 \(address 000000000161 on .*\): no reply "
                       r"in 0.5 s to read of DI 02010100 \(phase A voltage\)"):  # fmt: skip
        run(read_with(sim, ["02010100"], timeout_s=0.5))
    assert 0.5 <= time.monotonic() - started < 0.5 + 2.0  # its timeout once (slack for a loaded machine)


def test_client_timeout_when_nobody_has_the_address(sim: Dlt645MeterSim) -> None:
    with pytest.raises(DeviceTimeout, match="000000000999"):
        run(read_with(sim, ["02010100"], address="000000000999", timeout_s=0.3))
    assert len(sim.requests) == 1  # heard, not answered


def test_client_read_address_timeout(sim: Dlt645MeterSim) -> None:
    sim.set_fault("silent")

    async def go():
        async with client_for(sim, timeout_s=0.3) as client:
            await client.read_address(device="bus-1")

    with pytest.raises(DeviceTimeout, match="bus-1 .*AAAAAAAAAAAA.* communication address"):
        run(go())


def test_client_checksum_error(sim: Dlt645MeterSim) -> None:
    sim.set_fault("bad_checksum")
    started = time.monotonic()
    with pytest.raises(ChecksumError, match=r"meter-h01 .* DI 02010100 .*: byte 4: checksum "
                       r"computed [0-9A-F]{2}H, received [0-9A-F]{2}H") as info:  # fmt: skip
        run(read_with(sim, ["02010100"], timeout_s=0.5))
    assert info.value.received == (info.value.computed + 1) & 0xFF
    assert time.monotonic() - started < 0.5 + 2.0  # within its timeout (slack for a loaded machine)


@pytest.mark.parametrize("fault", ["garbage", "doubled_68", "echo"])
def test_client_resyncs(sim: Dlt645MeterSim, fault: str) -> None:
    sim.set_fault(fault)
    assert run(read_with(sim)).values == VALUES


def test_client_slow_reply_within_timeout(sim: Dlt645MeterSim) -> None:
    sim.set_fault("slow")
    sim.delay_s = 0.6
    reading = run(read_with(sim, ["02010100"], timeout_s=1.0))
    assert reading.values == {"voltage": 230.4}
    assert 0.6 <= reading.latency_s < 1.0


def test_client_late_reply_is_not_taken_for_the_next(sim: Dlt645MeterSim) -> None:
    sim.set_fault("slow")
    sim.delay_s = 0.8

    async def go():
        async with client_for(sim, timeout_s=0.4) as client:
            with pytest.raises(DeviceTimeout):
                await client.read(ADDRESS, ["02010100"], device="m")
            await asyncio.sleep(0.8)  # the late voltage reply is now in the input buffer
            sim.set_fault(None)
            return await client.read(ADDRESS, ["02800002"], device="m")

    assert run(go()).values == {"frequency": 50.02}


def test_client_reply_from_another_address(sim: Dlt645MeterSim) -> None:
    sim.set_fault("other_address")
    with pytest.raises(DecodeError, match=f"answered by address {OTHER_ADDRESS}"):
        run(read_with(sim, ["02010100"]))


def test_client_reply_for_another_di(sim: Dlt645MeterSim) -> None:
    sim.set_fault("other_di")
    with pytest.raises(DecodeError, match=r"read of DI 02010100 .* answered for DI 02800002"):
        run(read_with(sim, ["02010100"]))


def test_client_bad_port_and_bad_config() -> None:
    client = Dlt645Client("/dev/does-not-exist-dlt645", clock=SimClock(START, speed=1.0))
    with pytest.raises(DriverError, match="cannot open serial port /dev/does-not-exist-dlt645"):
        run(client.read(ADDRESS, ["02010100"], device="m"))
    with pytest.raises(ValueError, match="not in the data-item table"):
        run(client.read(ADDRESS, ["04000101"], device="m"))
    with pytest.raises(ValueError, match="12 digits"):
        run(client.read("161", ["02010100"], device="m"))
    with pytest.raises(ValueError):
        Dlt645Client("x", clock=SimClock(START), parity="X")
    with pytest.raises(ValueError):
        Dlt645Client("x", clock=SimClock(START), timeout_s=0)


def test_sim_rejects_unknown_fault(sim: Dlt645MeterSim) -> None:
    with pytest.raises(ValueError):
        sim.set_fault("fire")


def test_client_port_dies_mid_run_is_a_driver_error_naming_the_port() -> None:
    """The USB adapter unplugged (here: the pty simulator closed under an open client).
    tcflush then raises termios.error, which is no OSError: it must still come out as a
    DriverError naming the port, the port closed, and the next read try to open it again."""
    meter = Dlt645MeterSim(ADDRESS, lambda: dict(VALUES))
    meter.start()
    path = meter.path

    async def main():
        async with Dlt645Client(path, clock=SimClock(START, speed=1.0)) as client:
            before = await client.read(ADDRESS, ["02010100"], device="meter-h01")
            meter.stop()
            errors = []
            for _ in range(2):
                try:
                    await client.read(ADDRESS, ["02010100"], device="meter-h01")
                except Exception as exc:  # noqa: BLE001 - what comes out is the point
                    errors.append(exc)
            return before, errors

    try:
        before, errors = run(main())
    finally:
        meter.stop()
    assert before.values == {"voltage": 230.4}
    assert len(errors) == 2
    first, second = errors
    assert type(first) is DriverError, repr(first)
    assert str(first).startswith(
        f"meter-h01 (address {ADDRESS} on {path}): serial port {path} failed during "
        "read of DI 02010100 (phase A voltage) ("
    )
    assert type(second) is DriverError, repr(second)
    assert str(second).startswith(
        f"meter-h01 (address {ADDRESS} on {path}): cannot open serial port {path} ("
    )
