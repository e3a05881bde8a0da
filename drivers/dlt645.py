"""DL/T 645-2007 over RS-485: frame codec, stream scanner, data items and a serial client.

The only module that speaks DL/T 645.  Layers, bottom up:

* frame codec: :func:`encode_frame` / :func:`decode_frame`, :class:`Frame`;
* :class:`FrameScanner`: finds frames in a byte stream (garbage, doubled ``68``, split reads);
* data items: :data:`DATA_ITEMS` (2007 data identifiers -> quantity, BCD format, unit),
  :func:`decode_value`, :func:`encode_value`, :func:`decode_energy_block`;
* :class:`Dlt645Client`: one serial port (or pyserial URL), one request at a time.

Frame (domain-facts.md §6, field-vectors.md "Protocol conventions")::

    [FE x n] 68 A0 A1 A2 A3 A4 A5 68 C L DATA[L] CS 16

* address: 6 BCD bytes, lowest byte first on the wire; shown as 12 digits, highest first;
* DATA: every byte sent as value + 0x33 (mod 256), received as value - 0x33 (mod 256);
* CS: sum mod 256 of every byte from the first ``68`` through the last DATA byte;
* C: D7 direction (1 = meter reply), D6 abnormal (error reply), D5 follow-on frame,
  D4..D0 function (0x11 read, 0x12 read follow-up, 0x13 read address, 0x08 time sync).

Field pitfalls handled, with the vector that shows each (field-vectors.md section A):

* wake-up preamble ``FE`` x n before a frame (FC-001, FC-015, FC-023);
* the frame end is found from the length byte, never by searching for ``16``, so a
  checksum byte equal to 0x16 ends nothing early (domain-facts §6); checksum 0x00 is a
  checksum like any other (FC-003);
* -0x33 and +0x33 wrap mod 256 (FC-005 data byte ``33`` -> 0x00; FC-011 ``C3`` -> 0x90);
* garbage and a doubled start byte ``68 68`` before a frame: the scanner drops one byte and
  resyncs (FC-020, C-02); a truncated frame waits for more bytes (FC-016, FC-019);
* every malformed frame is rejected with its own :class:`DecodeError` subclass naming the
  byte offset (FC-016);
* DL/T 645-1997 control codes are refused, not misread as 2007 (FC-024);
* error replies (C = 0xD1) name each error bit (FC-013);
* the all-``AA`` wildcard address and the ``99`` broadcast address are distinct (FC-001,
  FC-019);
* RS-485 echo: a master->meter frame read back (our own request) is ignored;
* a reply can take 2 s on carrier (PLC) links, hence the 2 s default timeout (FC-002).
"""

from __future__ import annotations

import asyncio
import termios
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

import serial

from drivers.reading import DecodeError, DeviceTimeout, DriverError, Reading
from flylead.clock import Clock

#: What a failing serial port raises from pyserial: SerialException, OSError, and
#: termios.error (not an OSError) from the line-setting and flush calls, e.g.
#: ``reset_input_buffer`` on an unplugged USB adapter.  The client turns each into a
#: :class:`DriverError` naming the port.
_PORT_ERRORS = (serial.SerialException, OSError, termios.error)


def _port_error(exc: BaseException) -> str:
    """``exc`` for a message; termios.error's ``(5, 'Input/output error')`` reads as an
    OSError's ``[Errno 5] Input/output error``."""
    if isinstance(exc, termios.error) and len(exc.args) == 2:
        return f"[Errno {exc.args[0]}] {exc.args[1]}"
    return str(exc)


__all__ = [
    "BROADCAST_ADDRESS",
    "DATA_ITEMS",
    "DEFAULT_DIS",
    "ENERGY_BLOCK_DI",
    "WILDCARD_ADDRESS",
    "ChecksumError",
    "DataItem",
    "Dlt645Client",
    "Dlt645ErrorReply",
    "EndMarkerError",
    "Frame",
    "FrameError",
    "FrameScanner",
    "HeaderError",
    "IncompleteFrame",
    "LengthError",
    "Protocol1997Error",
    "address_from_wire",
    "address_to_wire",
    "decode_energy_block",
    "decode_frame",
    "decode_value",
    "di_to_wire",
    "encode_energy_block",
    "encode_frame",
    "encode_value",
    "error_reasons",
    "parse_hex",
    "read_address_request",
    "read_follow_request",
    "read_request",
]

# -- frame constants (domain-facts.md §6) ------------------------------------------------

#: Wake-up byte sent before a frame, any number of times (domain-facts §6, FC-001).
PREAMBLE_BYTE = 0xFE
#: Frame start byte; appears twice, before and after the address (domain-facts §6).
START_BYTE = 0x68
#: Frame end byte (domain-facts §6).
END_BYTE = 0x16
#: Added to every DATA byte on send, subtracted on receive, mod 256 (domain-facts §6).
DATA_OFFSET = 0x33
#: Most DATA bytes accepted in one frame.  DL/T 645-2007 limits the data field of a read
#: reply to 200 bytes (frame-format clause: "L <= 200 for reads, <= 50 for writes");
#: longer items are split into follow-on frames (C = 0xB1/0x92).  A larger L is taken as a
#: corrupt or false header (FC-016: L = 0xFF is rejected), so the scanner never waits for
#: up to 267 bytes behind a stray ``68``.
MAX_DATA_LEN = 200
#: Bytes of a frame without DATA: 68, 6 address, 68, C, L, CS, 16.
FRAME_OVERHEAD = 12
#: Wildcard address: all ``AA``, used point to point when the address is unknown (FC-001).
WILDCARD_ADDRESS = "AAAAAAAAAAAA"
#: Broadcast address of the time-sync command C = 0x08; never answered (FC-019).
BROADCAST_ADDRESS = "999999999999"

# Control codes (domain-facts §6, FC-016 control-code bit tests).
#: Read data (master -> meter), DATA = DI (4 bytes, low first).
C_READ = 0x11
#: Normal read reply, DATA = DI + value.
C_READ_REPLY = 0x91
#: Read reply with follow-on frames to come (D5 set).
C_READ_REPLY_MORE = 0xB1
#: Read follow-up (master -> meter), DATA = DI + frame sequence number (1 byte, from 1).
C_READ_FOLLOW = 0x12
#: Last follow-up reply, DATA = DI + value part + sequence number.
C_FOLLOW_REPLY = 0x92
#: Follow-up reply with more to come.
C_FOLLOW_REPLY_MORE = 0xB2
#: Error reply to a read (D6 set), DATA = one error byte (FC-013).
C_READ_ERROR = 0xD1
#: Error reply to a read follow-up.
C_FOLLOW_ERROR = 0xD2
#: Read communication address (master -> meter, to the wildcard address; FC-001).
C_READ_ADDRESS = 0x13
#: Read-address reply, DATA = the 6 address bytes (FC-002).
C_READ_ADDRESS_REPLY = 0x93
#: Broadcast time sync, DATA = ss mm hh DD MM YY (FC-019); no reply.
C_TIME_SYNC = 0x08

#: Control code bits (FC-016): D7 direction, D6 abnormal, D5 follow-on, D4..D0 function.
DIRECTION_BIT = 0x80
ERROR_BIT = 0x40
FOLLOW_ON_BIT = 0x20
FUNCTION_MASK = 0x1F

#: DL/T 645-1997 function codes that 2007 does not use: 01 read, 02 read follow-up,
#: 04 write, 0A read address, 0C change baud rate, 0F change password, 10 clear demand
#: (FC-024: C = 0x01 request and 0x81 reply).
FUNCTIONS_1997 = frozenset({0x01, 0x02, 0x04, 0x0A, 0x0C, 0x0F, 0x10})

#: Error byte of an error reply, bit -> meaning (FC-013 source b; bit 7 reserved).
ERROR_BITS: dict[int, str] = {
    0: "other error",
    1: "no requested data",
    2: "password wrong or unauthorised",
    3: "baud rate cannot be changed",
    4: "year time-zone count exceeded",
    5: "daily period count exceeded",
    6: "tariff count exceeded",
}

#: Most follow-on frames fetched for one data item.  The sequence number is one byte;
#: the items read here need at most one (0001FF00 is 4 + 4 x 5 bytes).  A bound stops a
#: meter that never clears D5 from holding the bus.
MAX_FOLLOW_ON = 32


# -- errors ----------------------------------------------------------------------------


class FrameError(DecodeError):
    """A byte sequence is not a valid DL/T 645-2007 frame.

    Attributes:
        offset: byte offset of the frame's first ``68`` in the buffer given to
            :func:`decode_frame` (or in the stream fed to a :class:`FrameScanner`).
    """

    def __init__(self, message: str, offset: int = 0) -> None:
        super().__init__(message)
        self.offset = offset


class IncompleteFrame(FrameError):
    """Not enough bytes yet for a whole frame (truncated; FC-016, FC-019).  Not a fault of
    the bytes so far: a stream scanner waits for more."""


class HeaderError(FrameError):
    """No ``68`` where a frame starts, or the second ``68`` is not 7 bytes after the
    first (FC-016 ``69`` variant, FC-020 doubled ``68``)."""


class LengthError(FrameError):
    """The length byte L exceeds :data:`MAX_DATA_LEN` (FC-016 L = 0xFF), or bytes follow a
    complete frame given to :func:`decode_frame`."""


class ChecksumError(FrameError):
    """The checksum byte differs from the sum of the frame (FC-016).

    Attributes:
        computed: sum mod 256 from the first ``68`` through the last DATA byte.
        received: the checksum byte on the wire.
    """

    def __init__(self, message: str, offset: int, computed: int, received: int) -> None:
        super().__init__(message, offset)
        self.computed = computed
        self.received = received


class EndMarkerError(FrameError):
    """The byte after the checksum is not ``16`` (FC-016 ``17`` variant)."""


class Protocol1997Error(FrameError):
    """A well-formed frame with a DL/T 645-1997 control code (FC-024); this codec speaks
    2007 only."""


class Dlt645ErrorReply(DriverError):
    """The meter answered with an error reply (C = 0xD1 / 0xD2, FC-013).

    Attributes:
        code: the error byte (after -0x33).
        reasons: the meaning of each set bit (:data:`ERROR_BITS`), lowest bit first.
    """

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code
        self.reasons = error_reasons(code)


def error_reasons(code: int) -> list[str]:
    """Names of the bits set in an error-reply byte (:data:`ERROR_BITS`, FC-013), lowest
    bit first; bit 7 is ``"reserved bit 7"``."""
    return [ERROR_BITS.get(bit, f"reserved bit {bit}") for bit in range(8) if code >> bit & 1]


# -- addresses and hex -------------------------------------------------------------------


def parse_hex(text: str) -> bytes:
    """Bytes from hex text, ignoring all whitespace, however irregular
    (``"fe  fefefe68 …"``: FC-015, FC-023).

    Raises:
        ValueError: a non-hex character or an odd number of digits.
    """
    digits = "".join(text.split())
    if len(digits) % 2:
        raise ValueError(f"odd number of hex digits ({len(digits)}) in {text!r}")
    return bytes.fromhex(digits)


def address_to_wire(address: str) -> bytes:
    """The 6 wire bytes (lowest first) of a 12-character address.

    Each byte pair is two BCD digits or ``AA`` (wildcard; FC-001), so ``"000000000101"``
    gives ``01 01 00 00 00 00`` (FC-002) and :data:`BROADCAST_ADDRESS` gives ``99`` x 6.

    Raises:
        ValueError: not 12 characters, or a pair that is neither BCD nor ``AA``.
    """
    text = address.upper()
    if len(text) != 12:
        raise ValueError(f"DL/T 645 address must have 12 digits, got {address!r}")
    pairs = [text[i : i + 2] for i in range(0, 12, 2)]
    for pair in pairs:
        if not (pair.isdigit() and pair.isascii()) and pair != "AA":
            raise ValueError(f"DL/T 645 address {address!r}: {pair!r} is neither BCD nor AA")
    return bytes(int(pair, 16) for pair in reversed(pairs))


def address_from_wire(wire: bytes) -> str:
    """The 12-character display form (highest byte first) of 6 wire address bytes.

    Bytes are shown as hex, so a non-BCD byte from a faulty meter stays visible.

    Raises:
        ValueError: not 6 bytes.
    """
    if len(wire) != 6:
        raise ValueError(f"DL/T 645 address needs 6 bytes, got {len(wire)}")
    return bytes(reversed(wire)).hex().upper()


def di_to_wire(di: str) -> bytes:
    """The 4 bytes (lowest first, before +0x33) of a data identifier such as
    ``"0001FF00"`` (domain-facts §6).

    Raises:
        ValueError: not 8 hex digits.
    """
    if len(di) != 8:
        raise ValueError(f"DL/T 645-2007 DI must have 8 hex digits, got {di!r}")
    try:
        return bytes.fromhex(di)[::-1]
    except ValueError:
        raise ValueError(f"DL/T 645-2007 DI must have 8 hex digits, got {di!r}") from None


def _address_matches(expected: str, got: str) -> bool:
    """True if ``got`` answers a request to ``expected`` (``AA`` pairs match any byte)."""
    return all(
        e == "AA" or e == g
        for e, g in zip(
            (expected[i : i + 2] for i in range(0, 12, 2)),
            (got[i : i + 2] for i in range(0, 12, 2)),
            strict=True,
        )
    )


# -- frames ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Frame:
    """One DL/T 645-2007 frame.

    Attributes:
        address: 12-character display address, e.g. ``"000000000161"`` or
            ``"AAAAAAAAAAAA"``.
        control: control code C, e.g. 0x91.
        data: DATA field after -0x33 (the plain values).
        raw: wire bytes from the first ``68`` through ``16`` (preamble excluded).
    """

    address: str
    control: int
    data: bytes
    raw: bytes = b""

    @property
    def is_reply(self) -> bool:
        """True for meter -> master frames (D7 set)."""
        return bool(self.control & DIRECTION_BIT)

    @property
    def is_error(self) -> bool:
        """True for error replies (D6 set, e.g. 0xD1)."""
        return bool(self.control & ERROR_BIT)

    @property
    def has_more(self) -> bool:
        """True if follow-on frames come (D5 set, e.g. 0xB1)."""
        return bool(self.control & FOLLOW_ON_BIT)

    @property
    def function(self) -> int:
        """Function code D4..D0 (0x11 read, 0x12 read follow-up, 0x13 read address)."""
        return self.control & FUNCTION_MASK

    @property
    def di(self) -> str | None:
        """Data identifier (8 hex digits) of a read or read-follow-up frame that is not an
        error reply, else None."""
        if self.function in (0x11, 0x12) and not self.is_error and len(self.data) >= 4:
            return self.data[3::-1].hex().upper()
        return None


def encode_frame(address: str, control: int, data: bytes = b"", *, preamble: int = 0) -> bytes:
    """Wire bytes of one frame.

    Args:
        address: 12-character address (:func:`address_to_wire`).
        control: control code, 0..255.
        data: plain DATA bytes; +0x33 mod 256 is applied here.
        preamble: number of ``FE`` wake-up bytes in front, >= 0.

    Raises:
        ValueError: bad address, control code, data longer than :data:`MAX_DATA_LEN`, or a
            negative preamble.
    """
    if not 0 <= control <= 0xFF:
        raise ValueError(f"control code must be 0..255, got {control}")
    if len(data) > MAX_DATA_LEN:
        raise ValueError(f"DATA has {len(data)} bytes, more than {MAX_DATA_LEN}")
    if preamble < 0:
        raise ValueError(f"preamble must be >= 0, got {preamble}")
    body = bytearray((START_BYTE,))
    body += address_to_wire(address)
    body += bytes((START_BYTE, control, len(data)))
    body += bytes((b + DATA_OFFSET) & 0xFF for b in data)
    body += bytes((sum(body) & 0xFF, END_BYTE))
    return bytes((PREAMBLE_BYTE,)) * preamble + bytes(body)


def read_request(address: str, di: str, *, preamble: int = 0) -> bytes:
    """Read request (C = 0x11) for one data identifier; for 00010000 to the wildcard
    address: ``68 AA AA AA AA AA AA 68 11 04 33 33 34 33 AE 16`` (domain-facts §6).

    Raises:
        ValueError: bad address or DI.
    """
    return encode_frame(address, C_READ, di_to_wire(di), preamble=preamble)


def read_follow_request(address: str, di: str, seq: int, *, preamble: int = 0) -> bytes:
    """Read follow-up request (C = 0x12): DI + frame sequence number 1..255 (FC-016).

    Raises:
        ValueError: bad address, DI or sequence number.
    """
    if not 1 <= seq <= 0xFF:
        raise ValueError(f"follow-on sequence number must be 1..255, got {seq}")
    return encode_frame(address, C_READ_FOLLOW, di_to_wire(di) + bytes((seq,)), preamble=preamble)


def read_address_request(*, preamble: int = 0) -> bytes:
    """Read-address request (C = 0x13, L = 0) to the wildcard address (FC-001)."""
    return encode_frame(WILDCARD_ADDRESS, C_READ_ADDRESS, preamble=preamble)


def _parse(buf: bytes | bytearray, start: int, base: int) -> tuple[Frame, int]:
    """Parse the frame whose first ``68`` is ``buf[start]``; return it and its end index.

    ``base`` is added to offsets in error messages (the stream position of ``buf[0]``).
    Checks run in wire order; the end marker is checked before the checksum because a
    wrong ``16`` means the length byte put the frame boundary elsewhere, so the byte
    taken as checksum is not one.
    """
    where = base + start
    avail = len(buf) - start
    if avail < 1 or buf[start] != START_BYTE:
        got = f"{buf[start]:02X}H" if avail >= 1 else "nothing"
        raise HeaderError(f"byte {where}: frame must start with 68H, got {got}", where)
    if avail < 10:
        raise IncompleteFrame(f"byte {where}: {avail} bytes of a frame header (10 needed)", where)
    if buf[start + 7] != START_BYTE:
        raise HeaderError(
            f"byte {where}: second 68H expected at byte {where + 7}, got {buf[start + 7]:02X}H",
            where,
        )
    length = buf[start + 9]
    if length > MAX_DATA_LEN:
        raise LengthError(
            f"byte {where}: length byte {length} exceeds the {MAX_DATA_LEN}-byte DATA limit",
            where,
        )
    total = FRAME_OVERHEAD + length
    if avail < total:
        raise IncompleteFrame(f"byte {where}: {avail} of {total} frame bytes", where)
    cs_at = start + 10 + length
    if buf[cs_at + 1] != END_BYTE:
        raise EndMarkerError(
            f"byte {where}: end marker 16H expected at byte {base + cs_at + 1}, "
            f"got {buf[cs_at + 1]:02X}H",
            where,
        )
    computed = sum(buf[start:cs_at]) & 0xFF
    received = buf[cs_at]
    if computed != received:
        raise ChecksumError(
            f"byte {where}: checksum computed {computed:02X}H, received {received:02X}H",
            where,
            computed,
            received,
        )
    control = buf[start + 8]
    address = address_from_wire(bytes(buf[start + 1 : start + 7]))
    if control & FUNCTION_MASK in FUNCTIONS_1997:
        raise Protocol1997Error(
            f"byte {where}: control code {control:02X}H from {address} is DL/T 645-1997, "
            "not 2007",
            where,
        )
    data = bytes((b - DATA_OFFSET) & 0xFF for b in buf[start + 10 : cs_at])
    return Frame(address, control, data, bytes(buf[start : cs_at + 2])), cs_at + 2


def decode_frame(raw: bytes) -> Frame:
    """Decode exactly one frame, optionally after ``FE`` wake-up bytes.

    Raises:
        IncompleteFrame: too few bytes (including none after the preamble).
        HeaderError: no ``68`` after the preamble, or no second ``68`` 7 bytes later.
        LengthError: L > :data:`MAX_DATA_LEN`, or bytes after the frame's ``16``.
        EndMarkerError: no ``16`` after the checksum.
        ChecksumError: checksum mismatch (message names computed and received).
        Protocol1997Error: a DL/T 645-1997 control code.
    """
    start = 0
    while start < len(raw) and raw[start] == PREAMBLE_BYTE:
        start += 1
    if start == len(raw):
        raise IncompleteFrame(f"byte {start}: no frame after {start} preamble bytes", start)
    frame, end = _parse(raw, start, 0)
    if end != len(raw):
        raise LengthError(
            f"byte {start}: {len(raw) - end} bytes after the frame end at byte {end - 1}", start
        )
    return frame


class FrameScanner:
    """Finds frames in a byte stream fed in arbitrary pieces.

    Bytes before a ``68`` are dropped.  A candidate at a ``68`` that turns out malformed
    (header, length, end marker or checksum) costs one byte: the scanner records the
    error and tries the next ``68`` (FC-020: resync at byte 1 of ``68 68 …``).  A
    well-formed DL/T 645-1997 frame is skipped whole.  An incomplete candidate waits for
    more bytes; since L <= :data:`MAX_DATA_LEN`, at most 212 bytes are ever held.

    Attributes:
        errors: rejected candidates, oldest first (:class:`FrameError` subclasses whose
            ``offset`` is the stream position); the newest 64 are kept.
        dropped: bytes discarded so far, garbage and rejected candidates' first bytes.
    """

    _MAX_ERRORS = 64

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0  # stream position of self._buf[0]
        self.errors: list[FrameError] = []
        self.dropped = 0

    @property
    def pending(self) -> int:
        """Bytes held back as the start of an incomplete frame."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[Frame]:
        """Add bytes; return every frame completed by them, in stream order."""
        buf = self._buf
        buf += data
        frames: list[Frame] = []
        while buf:
            start = buf.find(START_BYTE)
            if start < 0:
                self._drop(len(buf))
                break
            if start:
                self._drop(start)
            try:
                frame, end = _parse(buf, 0, self._pos)
            except IncompleteFrame:
                break
            except Protocol1997Error as exc:
                self._record(exc)
                self._drop(FRAME_OVERHEAD + buf[9])
                continue
            except FrameError as exc:
                self._record(exc)
                self._drop(1)
                continue
            frames.append(frame)
            del buf[:end]
            self._pos += end
        return frames

    def reset(self) -> None:
        """Forget buffered bytes and recorded errors (the stream position keeps counting)."""
        self._pos += len(self._buf)
        self._buf.clear()
        self.errors.clear()

    def _drop(self, n: int) -> None:
        del self._buf[:n]
        self._pos += n
        self.dropped += n

    def _record(self, exc: FrameError) -> None:
        self.errors.append(exc)
        if len(self.errors) > self._MAX_ERRORS:
            del self.errors[0]


# -- data items --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DataItem:
    """One DL/T 645-2007 data identifier read as one quantity.

    Attributes:
        di: data identifier, 8 hex digits, e.g. ``"02010100"``.
        quantity: name in :data:`drivers.reading.UNITS`.
        name: what the meter calls it, for messages.
        size: value bytes (BCD, lowest byte first).
        decimals: digits after the decimal point of the standard format (XXX.X -> 1).
        signed: the top bit of the highest byte is the sign (1 = negative).
        scale: meter unit -> SI unit of ``quantity`` (kW -> W: 1000).
    """

    di: str
    quantity: str
    name: str
    size: int
    decimals: int
    signed: bool = False
    scale: int = 1


def _items(*items: DataItem) -> dict[str, DataItem]:
    return {item.di: item for item in items}


#: The data items read into a :class:`Reading`, formats from DL/T 645-2007 appendix A as
#: summarised in domain-facts §6 and checked against FC-005/006/008/015/016.
DATA_ITEMS: dict[str, DataItem] = _items(
    DataItem("02010100", "voltage", "phase A voltage", 2, 1),  # XXX.X V, FC-006
    DataItem("02020100", "current", "phase A current", 3, 3, signed=True),  # XXX.XXX A
    DataItem("02030000", "active_power", "total active power", 3, 4, True, 1000),  # XX.XXXX kW
    DataItem("02040000", "reactive_power", "total reactive power", 3, 4, True, 1000),  # kvar
    DataItem("02050000", "apparent_power", "total apparent power", 3, 4, True, 1000),  # kVA
    DataItem("02060000", "power_factor", "total power factor", 2, 3, signed=True),  # X.XXX
    DataItem("02800002", "frequency", "grid frequency", 2, 2),  # XX.XX Hz, FC-015
    DataItem("00010000", "energy_import", "forward active energy, total", 4, 2),  # kWh, FC-005
    DataItem("00020000", "energy_export", "reverse active energy, total", 4, 2),  # kWh
)

#: Forward active energy block: total then tariffs T1..Tn, 4 bytes XXXXXX.XX kWh each
#: (FC-012).  Read into ``energy_import`` (the total); see :func:`decode_energy_block`.
ENERGY_BLOCK_DI = "0001FF00"

#: Data identifiers :meth:`Dlt645Client.read` asks for when none are given.
DEFAULT_DIS: tuple[str, ...] = tuple(DATA_ITEMS)


def _bcd(payload: bytes, signed: bool, what: str) -> int:
    """Little-endian BCD to int; the top bit of the last byte is the sign if ``signed``.

    Raises:
        DecodeError: a nibble above 9 (message names ``what`` and the byte offset).
    """
    value = 0
    negative = False
    for i in range(len(payload) - 1, -1, -1):
        byte = payload[i]
        if signed and i == len(payload) - 1:
            negative = bool(byte & 0x80)
            byte &= 0x7F
        hi, lo = byte >> 4, byte & 0x0F
        if hi > 9 or lo > 9:
            raise DecodeError(f"{what}: byte {i} of the value is {payload[i]:02X}H, not BCD")
        value = value * 100 + hi * 10 + lo
    return -value if negative else value


def _item(di: str) -> DataItem:
    item = DATA_ITEMS.get(di.upper())
    if item is None:
        known = ", ".join([*DATA_ITEMS, ENERGY_BLOCK_DI])
        raise ValueError(f"DI {di!r} is not in the data-item table ({known})")
    return item


def decode_value(di: str, payload: bytes) -> float:
    """Value of a data item in the SI unit of its quantity (kW -> W, kvar -> var,
    kVA -> VA; kWh stays kWh).

    Args:
        di: a key of :data:`DATA_ITEMS`.
        payload: the value bytes after the DI (DATA after -0x33 without its first 4 bytes).

    Raises:
        ValueError: ``di`` not in :data:`DATA_ITEMS`.
        DecodeError: payload length differs from the standard size (strict, so a 3-byte
            voltage as in FC-020 is flagged, not guessed), or a nibble is not BCD.
    """
    item = _item(di)
    what = f"DI {item.di} ({item.name})"
    if len(payload) != item.size:
        raise DecodeError(f"{what}: {len(payload)} value bytes, format needs {item.size}")
    return _bcd(payload, item.signed, what) * item.scale / 10**item.decimals


def encode_value(di: str, value: float) -> bytes:
    """Value bytes (plain, before +0x33) of a data item from its SI value; the inverse of
    :func:`decode_value`, rounded to the format's decimals.

    Raises:
        ValueError: ``di`` unknown, a negative value for an unsigned item, or too large for
            the format.
    """
    item = _item(di)
    n = round(value * 10**item.decimals / item.scale)
    digits = 2 * item.size
    limit = 8 * 10 ** (digits - 1) if item.signed else 10**digits
    if n < 0 and not item.signed:
        raise ValueError(f"DI {item.di} ({item.name}) is unsigned, got {value!r}")
    if abs(n) >= limit:
        raise ValueError(f"DI {item.di} ({item.name}): {value!r} does not fit the format")
    wire = bytearray(bytes.fromhex(f"{abs(n):0{digits}d}")[::-1])
    if n < 0:
        wire[-1] |= 0x80
    return bytes(wire)


def decode_energy_block(payload: bytes) -> tuple[float, list[float]]:
    """Total and tariff energies (kWh) of the 0001FF00 block (FC-012).

    The tariffs need not add up to the total (FC-012: 1.27 != 1.29); that is not checked.

    Raises:
        DecodeError: payload empty or not a multiple of 4 bytes, or not BCD.
    """
    what = f"DI {ENERGY_BLOCK_DI} (forward active energy block)"
    if not payload or len(payload) % 4:
        raise DecodeError(f"{what}: {len(payload)} value bytes, need a multiple of 4")
    values = [
        _bcd(payload[i : i + 4], False, f"{what} item {i // 4}") / 100
        for i in range(0, len(payload), 4)
    ]
    return values[0], values[1:]


def encode_energy_block(total_kwh: float, tariffs_kwh: Iterable[float]) -> bytes:
    """Value bytes of the 0001FF00 block; inverse of :func:`decode_energy_block`.

    Raises:
        ValueError: a value negative or above 999999.99 kWh.
    """
    return b"".join(encode_value("00010000", v) for v in (total_kwh, *tariffs_kwh))


def _quantity(di: str) -> str:
    return "energy_import" if di == ENERGY_BLOCK_DI else DATA_ITEMS[di].quantity


def _decode_item(di: str, payload: bytes) -> float:
    if di == ENERGY_BLOCK_DI:
        return decode_energy_block(payload)[0]
    return decode_value(di, payload)


# -- serial client -----------------------------------------------------------------------

# How often the reading thread looks at the deadline while waiting for bytes (real s).
_POLL_S = 0.02


class Dlt645Client:
    """One RS-485 port with DL/T 645-2007 meters on it; one request at a time.

    Blocking pyserial I/O runs in a worker thread (:func:`asyncio.to_thread`).  Before each
    request the input buffer is flushed, so a late reply to an earlier, timed-out request
    is not taken for this one.  A reply is the first meter -> master frame after the
    request; master -> meter frames (the RS-485 echo of our own request, another master's
    request) are ignored.  The port opens on the first request and reopens after an I/O
    error.

    Args:
        port: serial device (``"/dev/ttyUSB0"``) or pyserial URL (``"socket://host:port"``
            for a transparent RS-485 to Ethernet converter).
        clock: stamps readings (``clock.now()`` when the first request is sent).
        baudrate, parity, bytesize, stopbits: line settings; DL/T 645 default 2400 8E1
            (domain-facts §6).  Parity ``"N"``, ``"E"`` or ``"O"``.
        timeout_s: longest wait for one reply, real seconds, > 0, counted from the end of
            sending the request.  2 s by default because replies over carrier links take
            2 s (FC-002).
        preamble: ``FE`` wake-up bytes sent before each request, >= 0 (4 is common:
            FC-001, FC-015).

    Raises:
        ValueError: a setting out of range.
    """

    def __init__(
        self,
        port: str,
        *,
        clock: Clock,
        baudrate: int = 2400,
        parity: str = "E",
        bytesize: int = 8,
        stopbits: int = 1,
        timeout_s: float = 2.0,
        preamble: int = 4,
    ) -> None:
        if parity not in ("N", "E", "O"):
            raise ValueError(f"{port}: parity must be N, E or O, got {parity!r}")
        if not timeout_s > 0:
            raise ValueError(f"{port}: timeout_s must be > 0, got {timeout_s}")
        if preamble < 0:
            raise ValueError(f"{port}: preamble must be >= 0, got {preamble}")
        self.port = port
        self._clock = clock
        self._settings = {
            "baudrate": baudrate,
            "parity": parity,
            "bytesize": bytesize,
            "stopbits": stopbits,
        }
        self.timeout_s = timeout_s
        self._preamble = preamble
        self._serial: serial.SerialBase | None = None
        self._lock = asyncio.Lock()  # one request at a time per port (asyncio side)
        # and per thread: a cancelled await leaves its worker thread running to its deadline
        self._io_lock = threading.Lock()

    async def __aenter__(self) -> Dlt645Client:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the port (a later request opens it again)."""
        await asyncio.to_thread(self._close_sync)

    async def read(self, address: str, dis: list[str] | None = None, *, device: str) -> Reading:
        """Read data items of one meter, one request per DI.

        Args:
            address: 12-digit meter address (``AA`` pairs as wildcard, FC-001).
            dis: keys of :data:`DATA_ITEMS` or :data:`ENERGY_BLOCK_DI`; default
                :data:`DEFAULT_DIS`.
            device: device name for the reading and for errors.

        Returns:
            a :class:`Reading` stamped with ``clock.now()`` when the first request was
            sent; ``latency_s`` = real seconds until the last reply.

        Raises:
            ValueError: bad address or a DI not in the table (configuration).
            DeviceTimeout: no reply within ``timeout_s`` to some DI.
            Dlt645ErrorReply: the meter answered a DI with an error reply (FC-013).
            DecodeError: a reply from another address, for another DI, with an unexpected
                control code, a bad value; or only corrupt frames (a :class:`FrameError`
                subclass) before the timeout.
            DriverError: the port cannot be opened or failed.
        """
        wanted = [d.upper() for d in (dis if dis is not None else DEFAULT_DIS)]
        for di in wanted:
            if di != ENERGY_BLOCK_DI:
                _item(di)
        address_to_wire(address)
        values: dict[str, float] = {}
        t = self._clock.now()
        started = time.monotonic()
        for di in wanted:
            payload = await self._read_payload(address, di, device)
            values[_quantity(di)] = _decode_item(di, payload)
        return Reading(device, t, values, time.monotonic() - started)

    async def read_payload(self, address: str, di: str, *, device: str) -> bytes:
        """Value bytes of any data identifier (after -0x33, without the DI), follow-on
        frames joined; for items outside :data:`DATA_ITEMS` such as dates (FC-010).

        Raises:
            as :meth:`read`.
        """
        address_to_wire(address)
        di_to_wire(di)
        return await self._read_payload(address, di.upper(), device)

    async def read_address(self, *, device: str | None = None) -> str:
        """Address of the only meter on the line (C = 0x13 to the wildcard address).

        Returns:
            the 12-digit address from the reply's DATA (FC-002).

        Raises:
            DeviceTimeout: no reply.
            Dlt645ErrorReply: error reply.
            DecodeError: wrong control code or length, or the DATA address differs from
                the frame's address.
            DriverError: port failure.
        """
        who = f"{device or 'meter'} (address {WILDCARD_ADDRESS} on {self.port})"
        what = "read of the communication address"
        frame = await self._transact(read_address_request(preamble=self._preamble), who, what)
        if frame.is_error:
            raise self._error_reply(frame, who, what)
        if frame.control != C_READ_ADDRESS_REPLY or len(frame.data) != 6:
            raise DecodeError(
                f"{who}: {what} answered C={frame.control:02X}H with {len(frame.data)} "
                "data bytes (93H with 6 expected)"
            )
        address = address_from_wire(frame.data)
        if address != frame.address:
            raise DecodeError(
                f"{who}: {what} answered address {address} in a frame from {frame.address}"
            )
        return address

    # -- internals ---------------------------------------------------------------------

    async def _read_payload(self, address: str, di: str, device: str) -> bytes:
        who = f"{device} (address {address} on {self.port})"
        item = DATA_ITEMS.get(di)
        what = f"read of DI {di}" + (f" ({item.name})" if item else "")
        frame = await self._transact(read_request(address, di, preamble=self._preamble), who, what)
        self._check_reply(frame, address, di, (C_READ_REPLY, C_READ_REPLY_MORE), who, what)
        payload = frame.data[4:]
        seq = 0
        while frame.has_more:
            seq += 1
            if seq > MAX_FOLLOW_ON:
                raise DecodeError(f"{who}: {what}: more than {MAX_FOLLOW_ON} follow-on frames")
            follow_what = f"{what}, follow-on frame {seq}"
            request = read_follow_request(address, di, seq, preamble=self._preamble)
            frame = await self._transact(request, who, follow_what)
            self._check_reply(
                frame, address, di, (C_FOLLOW_REPLY, C_FOLLOW_REPLY_MORE), who, follow_what
            )
            if len(frame.data) < 5 or frame.data[-1] != seq:
                got = frame.data[-1] if len(frame.data) >= 5 else None
                raise DecodeError(f"{who}: {follow_what}: sequence number {got}, expected {seq}")
            payload += frame.data[4:-1]
        return payload

    def _check_reply(
        self,
        frame: Frame,
        address: str,
        di: str,
        controls: tuple[int, int],
        who: str,
        what: str,
    ) -> None:
        if not _address_matches(address, frame.address):
            raise DecodeError(f"{who}: {what} answered by address {frame.address}")
        if frame.is_error:
            raise self._error_reply(frame, who, what)
        if frame.control not in controls:
            raise DecodeError(f"{who}: {what} answered with control code {frame.control:02X}H")
        if frame.di != di:
            raise DecodeError(f"{who}: {what} answered for DI {frame.di or 'none'}")

    @staticmethod
    def _error_reply(frame: Frame, who: str, what: str) -> Dlt645ErrorReply:
        if len(frame.data) != 1:
            return Dlt645ErrorReply(
                f"{who}: {what}: error reply {frame.control:02X}H with "
                f"{len(frame.data)} data bytes",
                -1,
            )
        code = frame.data[0]
        reasons = ", ".join(error_reasons(code)) or "no bit set"
        return Dlt645ErrorReply(
            f"{who}: {what}: error reply {frame.control:02X}H, error byte {code:02X}H ({reasons})",
            code,
        )

    async def _transact(self, request: bytes, who: str, what: str) -> Frame:
        async with self._lock:
            frame, scanner = await asyncio.to_thread(self._transact_sync, request, who, what)
        if frame is not None:
            return frame
        # A frame-shaped reply that failed its end marker, checksum or protocol check says
        # more than "silence"; header and length rejects are line noise.
        corrupt = [e for e in scanner.errors if not isinstance(e, HeaderError | LengthError)]
        if corrupt:
            last = corrupt[-1]
            last.args = (f"{who}: {what}: {last.args[0]} (no valid reply in {self.timeout_s:g} s)",)
            raise last
        noise = f" ({scanner.dropped} bytes of noise)" if scanner.dropped else ""
        raise DeviceTimeout(f"{who}: no reply in {self.timeout_s:g} s to {what}{noise}")

    def _transact_sync(
        self, request: bytes, who: str, what: str
    ) -> tuple[Frame | None, FrameScanner]:
        """Send ``request`` and wait for the first meter -> master frame (worker thread)."""
        with self._io_lock:
            scanner = FrameScanner()
            try:
                port = self._open_sync(who)
                port.reset_input_buffer()
                port.write(request)
                port.flush()
                deadline = time.monotonic() + self.timeout_s
                while time.monotonic() < deadline:
                    chunk = port.read(max(1, port.in_waiting))
                    if not chunk:
                        continue
                    for frame in scanner.feed(chunk):
                        if frame.is_reply:
                            return frame, scanner
            except _PORT_ERRORS as exc:
                # a USB adapter unplugged, a pty whose other side closed: tcflush
                # (reset_input_buffer) raises termios.error, not an OSError
                self._close_unlocked()
                raise DriverError(
                    f"{who}: serial port {self.port} failed during {what} ({_port_error(exc)})"
                ) from None
            return None, scanner

    def _open_sync(self, who: str) -> serial.SerialBase:
        if self._serial is not None and self._serial.is_open:
            return self._serial
        try:
            self._serial = serial.serial_for_url(
                self.port, timeout=_POLL_S, write_timeout=self.timeout_s, **self._settings
            )
        except (*_PORT_ERRORS, ValueError) as exc:
            # termios.error is not an OSError: a port (or pty) refusing the line settings
            what = ("cannot connect to" if self.port.startswith(("socket://", "rfc2217://"))
                    else "cannot open serial port")
            raise DriverError(f"{who}: {what} {self.port} ({_port_error(exc)})") from None
        return self._serial

    def _close_sync(self) -> None:
        with self._io_lock:
            self._close_unlocked()

    def _close_unlocked(self) -> None:
        port, self._serial = self._serial, None
        if port is not None:
            try:
                port.close()
            except _PORT_ERRORS:
                pass
