"""Dianchuan/Dongjun 10-port e-bike charging boards: UART codec and pile driver.

Many compound charging stations are boards that speak a vendor protocol over RS-485 at
9600 8N1 (field-vectors.md FC-050, FC-051, FC-053).  Every frame is::

    SOP  LEN  CMD  SESSION_ID(6)  DATA(n)  SUM

* ``SOP`` is ``EE`` for a command and ``66`` for an answer; the direction follows
  command versus answer, not which side sends (a board's own report is a command, the
  gateway's acknowledgement an answer);
* ``LEN`` counts CMD through SUM (``8 + n``), so a frame is ``LEN + 2`` bytes;
* ``SUM`` is the XOR of LEN, CMD, SESSION_ID and DATA (the SOP is excluded).

Layers, smallest first:

* :class:`Frame`, :func:`decode_frame` (exactly one frame, strict) and
  :class:`FrameScanner` (a byte stream in, frames out, resynchronising after garbage and
  counting what it skipped).  Errors are :class:`FrameError` subclasses of
  :class:`drivers.reading.DecodeError`: :class:`SumError`, :class:`LengthError`,
  :class:`ShortFrame`, :class:`GarbageError`; a DATA field that does not fit its
  command's layout is a :class:`PayloadError`;
* ``request_*`` builders and ``parse_*`` parsers of the commands the field tests confirm;
* :class:`DianchuanPile`, the driver: :class:`drivers.pile.PortReading` and
  :class:`drivers.pile.PileSession` out, read-only unless ``control_enabled``.

Every field layout the captures do not fix is in the *assumption table* below (one block
of constants, ids A1..A13), explained with its source in docs/dianchuan.md; a field capture
that disagrees is corrected there and nowhere else.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import logging
import struct
import termios
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import serial

from drivers.pile import EndReason, PileSession, PortReading, PortState
from drivers.reading import DecodeError, DeviceTimeout, DriverError
from flylead.clock import Clock

#: What a failing serial port raises (pyserial's SerialException, OSError, and
#: termios.error, which is not an OSError, from the line-setting and flush calls); each
#: becomes a :class:`DriverError` naming the port.
_PORT_ERRORS = (serial.SerialException, OSError, termios.error)

__all__ = [
    "Cmd",
    "CommandRejected",
    "ControlDisabled",
    "DianchuanPile",
    "FaultReport",
    "FinishReport",
    "Frame",
    "FrameError",
    "FrameScanner",
    "GarbageError",
    "LengthError",
    "PayloadError",
    "PortStatus",
    "Settings",
    "ShortFrame",
    "SumError",
    "TotalConsumption",
    "acknowledge",
    "decode_frame",
    "parse_all_ports",
    "parse_answer",
    "parse_fault_report",
    "parse_finish_report",
    "parse_port_status",
    "parse_set_result",
    "parse_settings",
    "parse_start_result",
    "parse_stop_result",
    "parse_total_consumption",
    "request",
    "request_all_ports",
    "request_port_status",
    "request_set_settings",
    "request_settings",
    "request_start",
    "request_stop",
    "request_total_consumption",
]

log = logging.getLogger("flylead.drivers.dianchuan")

# -- frame format: confirmed by every frame of FC-050 and FC-051 ----------------------------

#: Start byte of a command (FC-050).
SOP_COMMAND = 0xEE
#: Start byte of an answer (FC-050).
SOP_ANSWER = 0x66
#: Serial settings, 9600 8N1 (FC-050, doc.dongjun.org).
BAUDRATE = 9600
#: SESSION_ID length, bytes (FC-050: ASCII "123456"; FC-051: six zero bytes).
SESSION_ID_LEN = 6
#: Session id the field gateway of FC-051 sends with every command.
ZERO_SESSION = bytes(SESSION_ID_LEN)
#: Smallest LEN: CMD + SESSION_ID + SUM with no DATA (every capture has >= 1 DATA byte).
MIN_LEN = 1 + SESSION_ID_LEN + 1
#: Largest LEN (one byte) and so the largest DATA, bytes.
MAX_LEN = 0xFF
MAX_DATA = MAX_LEN - MIN_LEN
#: Bytes before DATA: SOP, LEN, CMD, SESSION_ID.
_DATA_AT = 3 + SESSION_ID_LEN

#: All-port status (0x01) codes -> state (FC-050: 01 idle, 02 in use, 03 disabled, 04 fault).
PORT_STATE_CODES: dict[int, PortState] = {
    1: PortState.IDLE,
    2: PortState.CHARGING,
    3: PortState.DISABLED,
    4: PortState.FAULT,
}
#: DATA of the 0x01, 0x07 and 0x0C queries: a fixed parameter 00 (FC-050, FC-051).
QUERY_DATA = b"\x00"
#: 0x02 start: DATA = port(1) + reserved power/energy tier(2) + minutes(2), big-endian
#: (FC-051: ``01 00 00 00 03`` = port 1 for 3 minutes; FC-053 "power reserved, only time").
START_FORMAT = struct.Struct(">BHH")
#: 0x02 answer: port(1) + result(1) (FC-051: ``01 01``).
START_ANSWER_FORMAT = struct.Struct(">BB")
#: Result byte meaning "accepted" in the 0x02 and 0x08 answers (FC-051).
RESULT_OK = 0x01
#: 0x08 command DATA and 0x0C answer DATA: a 9-byte settings block whose first field is
#: the maximum power, W, big-endian (FC-051: ``01 F4`` = 500 written by 0x08, read by 0x0C).
SETTINGS_LEN = 9
MAX_POWER_FORMAT = struct.Struct(">H")
#: Settings block of the FC-051 board (0x0C answer DATA).
FC051_SETTINGS = bytes.fromhex("01F40000FF00FF00FF")

# -- assumption table: every layout the captures do not fix (docs/dianchuan.md) -------------

#: A1. 0x06 answer DATA = port(1) + remaining(2) + power(2), big-endian.  The 5-byte length
#: is FC-051; the split and order follow the vendor table (docs/dianchuan.md, source V).
PORT_STATUS_FORMAT = struct.Struct(">BHH")
#: A2. Unit of "remaining" in 0x06, 0x0B and 0x05: minutes (vendor table; FC-051 shows 0).
#: In energy mode the vendor uses 0.01 kWh instead; the boards here start by time only
#: (FC-053), so the driver reads it as time.
REMAINING_UNIT_S = 60
#: A3. Unit of the 0x06 power field: 0.1 W (vendor table; FC-051 shows only 0).
POWER_UNIT_W = 0.1
#: A4. 0x07 answer DATA = card total(2) + coin total(2), big-endian (length 4 is FC-051).
TOTAL_FORMAT = struct.Struct(">HH")
#: A5. Money unit of the 0x07 totals: 0.1 yuan (the vendor's card price unit; unconfirmed).
MONEY_UNIT_YUAN = 0.1
#: A6. 0x0B stop command DATA = port(1).  No capture or vendor example exists.
STOP_FORMAT = struct.Struct(">B")
#: A7. 0x0B answer DATA = port(1) + remaining(2) (vendor table).
STOP_ANSWER_FORMAT = struct.Struct(">BH")
#: A8. 0x05 report DATA = port(1) + remaining(2) + reason(1), then optionally card
#: number(4) + refund(1) + card type(2), which the driver ignores (vendor table).
FINISH_FORMAT = struct.Struct(">BHB")
#: A8. "remaining" 0xFFFF in a 0x05 report: the transaction failed, full refund (vendor).
REMAINING_FAILED = 0xFFFF
#: A9. 0x05 reason codes (vendor table).  Unknown codes become ``EndReason.UNKNOWN``.
END_REASON_CODES: dict[int, EndReason] = {
    0: EndReason.TIME_USED,
    1: EndReason.USER_STOP,
    2: EndReason.FULL,
    3: EndReason.PORT_FAULT,
    4: EndReason.OVER_POWER,
    5: EndReason.CARD_REFUND,
    6: EndReason.NO_CHARGER,
}
#: A10. 0x0D report DATA = port(1, 0xFF = whole board) + error code(1) (vendor table).
FAULT_FORMAT = struct.Struct(">BB")
FAULT_WHOLE_BOARD = 0xFF
FAULT_CODES: dict[int, str] = {
    1: "port output fault",
    2: "board total power too high",
    3: "power supply fault",
}
#: A11. Acknowledgement of a 0x05/0x0D report: an answer (SOP 66) with the report's CMD and
#: SESSION_ID and DATA ``01`` (vendor table; the SOP follows the issue-8 rule, the
#: reference gateway firmware sends EE, so both are accepted as an acknowledgement).
ACK_DATA = b"\x01"
#: A12. Pause between the end of one exchange and the next request, real s (about two
#: frame times at 9600 baud; no field figure).
INTER_REQUEST_GAP_S = 0.02
#: A13. Commands that only read: the driver sends anything else only when control is
#: enabled (vendor command list; 0x15, 0x24, 0x25, 0x2A are reads the board may ignore).
READ_ONLY_COMMANDS = frozenset({0x01, 0x06, 0x07, 0x0C, 0x15, 0x24, 0x25, 0x2A})

#: Ports of the field board (FC-051: PORT_NUM 0x0A).
DEFAULT_PORTS = 10
#: Longest blocking read slice, real s: the driver checks its deadline at least this often.
_READ_SLICE_S = 0.02


class Cmd(enum.IntEnum):
    """Command codes (FC-050, FC-051, FC-053; 0x05 and 0x0D from the vendor list)."""

    ALL_PORT_STATUS = 0x01
    START = 0x02
    CHARGE_FINISHED = 0x05
    PORT_STATUS = 0x06
    TOTAL_CONSUMPTION = 0x07
    SET_SETTINGS = 0x08
    STOP = 0x0B
    READ_SETTINGS = 0x0C
    FAULT_REPORT = 0x0D
    ALL_PORT_POWER = 0x24


_CMD_NAMES = {
    0x01: "all-port status",
    0x02: "start charging",
    0x05: "charging finished report",
    0x06: "port status",
    0x07: "total consumption",
    0x08: "set max power",
    0x0B: "stop port",
    0x0C: "read settings",
    0x0D: "fault report",
    0x15: "read 5-tier billing",
    0x24: "all-port power status",
    0x25: "read version",
    0x26: "firmware update",
    0x27: "set free mode and volume",
    0x28: "set float power and time",
    0x29: "set card charging time",
    0x2A: "read card time, mode, volume, float settings",
}

#: Commands a board sends on its own (then the gateway acknowledges them).
REPORT_COMMANDS = frozenset({Cmd.CHARGE_FINISHED, Cmd.FAULT_REPORT})


def describe(cmd: int) -> str:
    """``"0x06 (port status)"``: a command code for messages."""
    return f"0x{cmd:02X} ({_CMD_NAMES.get(cmd, 'unknown')})"


# -- errors ---------------------------------------------------------------------------------


class FrameError(DecodeError):
    """A byte sequence is not one valid frame.

    Attributes:
        offset: byte offset of the problem (in the buffer given to :func:`decode_frame`,
            or in the whole stream fed to a :class:`FrameScanner`).
    """

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(message)
        self.offset = offset


class GarbageError(FrameError):
    """No start byte (EE or 66) where a frame should begin."""


class ShortFrame(FrameError):
    """The bytes end before the frame does (LEN says more bytes follow).

    Attributes:
        needed: frame length in bytes (LEN + 2, or 2 when LEN itself is missing).
        got: bytes available.
    """

    def __init__(self, message: str, offset: int, needed: int, got: int) -> None:
        super().__init__(message, offset)
        self.needed = needed
        self.got = got


class LengthError(FrameError):
    """LEN is below :data:`MIN_LEN`, or bytes follow the frame it announces."""


class SumError(FrameError):
    """The XOR checksum does not match.

    Attributes:
        computed: XOR of LEN..DATA as received.
        received: the SUM byte.
    """

    def __init__(self, message: str, offset: int, computed: int, received: int) -> None:
        super().__init__(message, offset)
        self.computed = computed
        self.received = received


class PayloadError(DecodeError):
    """A valid frame whose DATA does not fit its command's layout (length, port or code).

    Attributes:
        offset: byte offset in the frame of the offending field (DATA starts at 9).
    """

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(message)
        self.offset = offset


class ControlDisabled(DriverError):
    """A control command (start, stop, settings, or any non-read command) was asked of a
    driver built with ``control_enabled=False``; nothing was sent."""


class CommandRejected(DriverError):
    """The board answered a control command with a failure result."""


# -- frames ---------------------------------------------------------------------------------


def _xor(data: bytes | bytearray) -> int:
    acc = 0
    for b in data:
        acc ^= b
    return acc


def _hex(data: bytes | bytearray, limit: int = 24) -> str:
    text = data[:limit].hex(" ").upper()
    return text + (" ..." if len(data) > limit else "")


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame.

    Attributes:
        sop: :data:`SOP_COMMAND` (EE) or :data:`SOP_ANSWER` (66).
        cmd: command code, 0..255 (see :class:`Cmd`).
        session_id: 6 bytes; answers and acknowledgements echo the command's.
        data: DATA bytes, 0..247 of them.

    Raises:
        ValueError: a field out of range.
    """

    sop: int
    cmd: int
    session_id: bytes = ZERO_SESSION
    data: bytes = b""

    def __post_init__(self) -> None:
        if self.sop not in (SOP_COMMAND, SOP_ANSWER):
            raise ValueError(f"frame SOP must be 0xEE or 0x66, got {self.sop!r}")
        if not 0 <= self.cmd <= 0xFF:
            raise ValueError(f"frame CMD must be 0..255, got {self.cmd!r}")
        object.__setattr__(self, "session_id", bytes(self.session_id))
        object.__setattr__(self, "data", bytes(self.data))
        if len(self.session_id) != SESSION_ID_LEN:
            raise ValueError(
                f"session id must be {SESSION_ID_LEN} bytes, got {len(self.session_id)}")
        if len(self.data) > MAX_DATA:
            raise ValueError(f"frame DATA must be at most {MAX_DATA} bytes, got {len(self.data)}")

    @classmethod
    def command(cls, cmd: int, data: bytes = b"", session_id: bytes = ZERO_SESSION) -> Frame:
        """A command frame (SOP EE)."""
        return cls(SOP_COMMAND, cmd, session_id, data)

    @classmethod
    def answer(cls, cmd: int, data: bytes = b"", session_id: bytes = ZERO_SESSION) -> Frame:
        """An answer frame (SOP 66)."""
        return cls(SOP_ANSWER, cmd, session_id, data)

    @property
    def is_answer(self) -> bool:
        """True for SOP 66."""
        return self.sop == SOP_ANSWER

    def encode(self) -> bytes:
        """The frame's bytes, LEN and SUM computed."""
        body = bytes((MIN_LEN + len(self.data), self.cmd)) + self.session_id + self.data
        return bytes((self.sop,)) + body + bytes((_xor(body),))

    def __str__(self) -> str:
        kind = "answer" if self.is_answer else "command"
        return f"{kind} {describe(self.cmd)} [{_hex(self.encode(), 32)}]"


def decode_frame(buf: bytes | bytearray) -> Frame:
    """Decode exactly one frame.

    Raises:
        GarbageError: ``buf[0]`` is not EE or 66 (offset 0).
        ShortFrame: ``buf`` ends before the frame does.
        LengthError: LEN below 8 (offset 1), or bytes after the frame (offset LEN + 2).
        SumError: SUM differs from the XOR of LEN..DATA (offset LEN + 1).
    """
    n = len(buf)
    if n == 0:
        raise ShortFrame("empty buffer: no frame", 0, 2, 0)
    if buf[0] not in (SOP_COMMAND, SOP_ANSWER):
        raise GarbageError(
            f"byte 0 is 0x{buf[0]:02X}, not a start byte (EE or 66): [{_hex(buf)}]", 0)
    if n < 2:
        raise ShortFrame("frame ends after its start byte: LEN missing", 1, 2, n)
    length = buf[1]
    if length < MIN_LEN:
        raise LengthError(
            f"LEN 0x{length:02X} at byte 1 is below the minimum {MIN_LEN}: [{_hex(buf)}]", 1)
    end = length + 2
    if n < end:
        raise ShortFrame(
            f"short frame: LEN {length} needs {end} bytes, got {n}: [{_hex(buf)}]", n, end, n
        )
    if n > end:
        raise LengthError(
            f"{n - end} bytes after the {end}-byte frame at byte {end}: [{_hex(buf)}]", end)
    computed, received = _xor(buf[1 : end - 1]), buf[end - 1]
    if computed != received:
        raise SumError(
            f"bad SUM at byte {end - 1}: computed 0x{computed:02X}, received 0x{received:02X}: "
            f"[{_hex(buf)}]",
            end - 1,
            computed,
            received,
        )
    return Frame(buf[0], buf[2], bytes(buf[3:_DATA_AT]), bytes(buf[_DATA_AT : end - 1]))


class FrameScanner:
    """Frames out of a byte stream, resynchronising after garbage.

    Bytes are buffered until a frame is complete.  Bytes that cannot start a valid frame
    are skipped one at a time and counted: a candidate start byte with a LEN below 8 or a
    bad SUM is dropped (and scanning resumes at the next byte); a candidate whose LEN runs
    past the data so far is dropped as soon as a complete valid frame starts after it, so a
    stray EE in line noise cannot hold a real answer back.  :meth:`feed` never raises.

    Attributes:
        garbage_bytes: bytes skipped so far.
        sum_errors: candidates dropped for a bad SUM.
        length_errors: candidates dropped for a LEN below 8.
        frames: valid frames returned.
        errors: the last 16 :class:`SumError` / :class:`LengthError` (offsets in the stream).
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._base = 0  # stream offset of _buf[0]
        self.garbage_bytes = 0
        self.sum_errors = 0
        self.length_errors = 0
        self.frames = 0
        self.errors: collections.deque[FrameError] = collections.deque(maxlen=16)

    @property
    def pending(self) -> int:
        """Bytes held for an incomplete frame."""
        return len(self._buf)

    def reset(self) -> None:
        """Drop buffered bytes (counted as garbage)."""
        self.garbage_bytes += len(self._buf)
        self._base += len(self._buf)
        self._buf.clear()

    def feed(self, data: bytes | bytearray) -> list[Frame]:
        """Add bytes; return the frames completed by them, in stream order."""
        buf = self._buf
        buf += data
        out: list[Frame] = []
        n = len(buf)
        i = 0
        while i < n:
            j = _find_sop(buf, i)
            if j < 0:
                self.garbage_bytes += n - i
                i = n
                break
            self.garbage_bytes += j - i
            i = j
            if n - i < 2:
                break
            length = buf[i + 1]
            if length < MIN_LEN:
                self.length_errors += 1
                self.errors.append(LengthError(
                    f"LEN 0x{length:02X} below the minimum {MIN_LEN} after the start byte at "
                    f"stream byte {self._base + i}", self._base + i + 1))
                self.garbage_bytes += 1
                i += 1
                continue
            end = i + 2 + length
            if end > n:
                k = _next_complete(buf, i + 1)
                if k < 0:
                    break  # wait for more bytes
                self.garbage_bytes += k - i
                i = k
                continue
            computed, received = _xor(buf[i + 1 : end - 1]), buf[end - 1]
            if computed != received:
                self.sum_errors += 1
                self.errors.append(SumError(
                    f"bad SUM at stream byte {self._base + end - 1}: computed 0x{computed:02X}, "
                    f"received 0x{received:02X} ({describe(buf[i + 2])} frame at stream byte "
                    f"{self._base + i})", self._base + end - 1, computed, received))
                self.garbage_bytes += 1
                i += 1
                continue
            out.append(Frame(buf[i], buf[i + 2], bytes(buf[i + 3 : i + _DATA_AT]),
                             bytes(buf[i + _DATA_AT : end - 1])))
            i = end
        del buf[:i]
        self._base += i
        self.frames += len(out)
        return out


def _find_sop(buf: bytearray, start: int) -> int:
    a = buf.find(SOP_COMMAND, start)
    b = buf.find(SOP_ANSWER, start)
    if a < 0:
        return b
    if b < 0:
        return a
    return min(a, b)


def _next_complete(buf: bytearray, start: int) -> int:
    """Index of the first complete, valid frame starting at or after ``start``, or -1."""
    n = len(buf)
    k = start
    while True:
        k = _find_sop(buf, k)
        if k < 0 or k + 2 > n:
            return -1
        length = buf[k + 1]
        end = k + 2 + length
        if length >= MIN_LEN and end <= n and _xor(buf[k + 1 : end - 1]) == buf[end - 1]:
            return k
        k += 1


# -- command builders -----------------------------------------------------------------------


def _check_port_number(port: int) -> None:
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 0xFE:
        raise ValueError(f"port must be an int 1..254, got {port!r}")


def request(cmd: int, data: bytes = QUERY_DATA, *, session_id: bytes = ZERO_SESSION) -> Frame:
    """Any command frame; ``data`` defaults to the fixed query parameter ``00``.

    Raises:
        ValueError: a field out of range.
    """
    return Frame.command(cmd, data, session_id)


def request_all_ports(*, session_id: bytes = ZERO_SESSION) -> Frame:
    """0x01 all-port status query (FC-050, FC-051)."""
    return Frame.command(Cmd.ALL_PORT_STATUS, QUERY_DATA, session_id)


def request_port_status(port: int, *, session_id: bytes = ZERO_SESSION) -> Frame:
    """0x06 status of one port (FC-051: DATA = port).

    Raises:
        ValueError: port outside 1..254.
    """
    _check_port_number(port)
    return Frame.command(Cmd.PORT_STATUS, bytes((port,)), session_id)


def request_total_consumption(*, session_id: bytes = ZERO_SESSION) -> Frame:
    """0x07 total consumption query (FC-051)."""
    return Frame.command(Cmd.TOTAL_CONSUMPTION, QUERY_DATA, session_id)


def request_settings(*, session_id: bytes = ZERO_SESSION) -> Frame:
    """0x0C read the settings block (FC-051)."""
    return Frame.command(Cmd.READ_SETTINGS, QUERY_DATA, session_id)


def request_start(port: int, minutes: int, *, session_id: bytes = ZERO_SESSION) -> Frame:
    """0x02 start charging ``port`` for ``minutes`` (FC-051: port, reserved 0000, minutes).

    Raises:
        ValueError: port outside 1..254 or minutes outside 1..65535.
    """
    _check_port_number(port)
    if isinstance(minutes, bool) or not isinstance(minutes, int) or not 1 <= minutes <= 0xFFFF:
        raise ValueError(f"minutes must be an int 1..65535, got {minutes!r}")
    return Frame.command(Cmd.START, START_FORMAT.pack(port, 0, minutes), session_id)


def request_stop(port: int, *, session_id: bytes = ZERO_SESSION) -> Frame:
    """0x0B stop ``port`` (DATA = port: assumption A6, see docs/dianchuan.md).

    Raises:
        ValueError: port outside 1..254.
    """
    _check_port_number(port)
    return Frame.command(Cmd.STOP, STOP_FORMAT.pack(port), session_id)


def request_set_settings(settings: Settings, *, session_id: bytes = ZERO_SESSION) -> Frame:
    """0x08 write the 9-byte settings block (FC-051), e.g. ``settings.with_max_power(w)``."""
    return Frame.command(Cmd.SET_SETTINGS, settings.raw, session_id)


def acknowledge(report: Frame) -> Frame:
    """The acknowledgement of a board report (0x05/0x0D): an answer with the report's CMD
    and SESSION_ID and DATA ``01`` (assumption A11)."""
    return Frame.answer(report.cmd, ACK_DATA, report.session_id)


# -- answers and reports --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PortStatus:
    """0x06 answer.

    Attributes:
        port: port number, 1-based.
        remaining_s: charging time left, s (0 = not charging).
        power_w: instantaneous power, W.
    """

    port: int
    remaining_s: float
    power_w: float


@dataclass(frozen=True, slots=True)
class TotalConsumption:
    """0x07 answer: money taken by the board since its counters were cleared.

    Attributes:
        card_yuan: paid by IC card, yuan (unit: assumption A5).
        coin_yuan: paid by coins, yuan (unit: assumption A5).
    """

    card_yuan: float
    coin_yuan: float


@dataclass(frozen=True, slots=True)
class Settings:
    """The 9-byte settings block read with 0x0C and written with 0x08 (FC-051).

    Only the first field is decoded (maximum power per port, W, FC-051); the rest (card
    price, coin tiers per the vendor table) is kept verbatim so a write changes nothing else.

    Raises:
        ValueError: ``raw`` is not 9 bytes.
    """

    raw: bytes = FC051_SETTINGS

    def __post_init__(self) -> None:
        object.__setattr__(self, "raw", bytes(self.raw))
        if len(self.raw) != SETTINGS_LEN:
            raise ValueError(f"settings block must be {SETTINGS_LEN} bytes, got {len(self.raw)}")

    @property
    def max_power_w(self) -> int:
        """Maximum output power per port, W (FC-051)."""
        return MAX_POWER_FORMAT.unpack_from(self.raw)[0]

    def with_max_power(self, watts: int) -> Settings:
        """A copy with the maximum power set to ``watts`` (1..65535 W).

        Raises:
            ValueError: ``watts`` out of range.
        """
        if isinstance(watts, bool) or not isinstance(watts, int) or not 1 <= watts <= 0xFFFF:
            raise ValueError(f"max power must be an int 1..65535 W, got {watts!r}")
        return Settings(MAX_POWER_FORMAT.pack(watts) + self.raw[MAX_POWER_FORMAT.size :])


@dataclass(frozen=True, slots=True)
class FinishReport:
    """0x05 report: a port finished charging (layout: assumption A8).

    Attributes:
        port: port number, 1-based.
        remaining_s: time left unused, s; ``None`` for the vendor's 0xFFFF "transaction
            failed, full refund" marker.
        reason_code: the raw reason byte.
        end_reason: ``reason_code`` mapped by :data:`END_REASON_CODES`.
    """

    port: int
    remaining_s: float | None
    reason_code: int
    end_reason: EndReason


@dataclass(frozen=True, slots=True)
class FaultReport:
    """0x0D report: a board or port fault (layout: assumption A10).

    Attributes:
        port: port number, or ``None`` for the whole board (0xFF).
        code: the raw error code.
        description: text from :data:`FAULT_CODES` (or ``"unknown fault code N"``).
        received: when the driver received it, UTC epoch s (``None`` when only decoded).
    """

    port: int | None
    code: int
    description: str
    received: float | None = None


def _expect(frame: Frame, cmd: int, *, answer: bool, sizes: tuple[int, int | None]) -> None:
    want = "answer" if answer else "command"
    if frame.cmd != cmd or frame.is_answer != answer:
        got = "answer" if frame.is_answer else "command"
        raise PayloadError(f"expected {want} {describe(cmd)}, got {got} {describe(frame.cmd)}", 2)
    lo, hi = sizes
    n = len(frame.data)
    if n < lo or (hi is not None and n > hi):
        need = f"{lo}" if hi == lo else f"at least {lo}"
        raise PayloadError(
            f"{want} {describe(cmd)}: DATA is {n} bytes, expected {need} "
            f"[{_hex(frame.encode(), 32)}]",
            _DATA_AT + min(n, lo),
        )


def _port_field(frame: Frame, port: int, offset: int = 0) -> int:
    if port == 0:
        at = _DATA_AT + offset
        raise PayloadError(f"{describe(frame.cmd)}: port 0 at byte {at}", at)
    return port


def parse_all_ports(frame: Frame) -> list[PortState]:
    """0x01 answer -> state of ports 1..PORT_NUM (FC-050, FC-051).

    Raises:
        PayloadError: not a 0x01 answer, DATA length is not 1 + PORT_NUM, or an unknown
            state code (the message gives its port and byte offset).
    """
    _expect(frame, Cmd.ALL_PORT_STATUS, answer=True, sizes=(1, None))
    count = frame.data[0]
    if len(frame.data) != 1 + count:
        raise PayloadError(
            f"answer {describe(frame.cmd)}: PORT_NUM {count} needs {1 + count} DATA bytes, "
            f"got {len(frame.data)}", _DATA_AT)
    states = []
    for index, code in enumerate(frame.data[1:]):
        state = PORT_STATE_CODES.get(code)
        if state is None:
            raise PayloadError(
                f"answer {describe(frame.cmd)}: port {index + 1} has unknown state code "
                f"0x{code:02X} at byte {_DATA_AT + 1 + index}", _DATA_AT + 1 + index)
        states.append(state)
    return states


def parse_port_status(frame: Frame) -> PortStatus:
    """0x06 answer -> :class:`PortStatus` (layout A1, units A2 and A3).

    Raises:
        PayloadError: not a 0x06 answer, DATA not 5 bytes, or port 0.
    """
    _expect(frame, Cmd.PORT_STATUS, answer=True, sizes=(PORT_STATUS_FORMAT.size,) * 2)
    port, remaining, power = PORT_STATUS_FORMAT.unpack(frame.data)
    _port_field(frame, port)
    return PortStatus(port, float(remaining * REMAINING_UNIT_S), round(power * POWER_UNIT_W, 6))


def parse_total_consumption(frame: Frame) -> TotalConsumption:
    """0x07 answer -> :class:`TotalConsumption` (layout A4, unit A5).

    Raises:
        PayloadError: not a 0x07 answer or DATA not 4 bytes.
    """
    _expect(frame, Cmd.TOTAL_CONSUMPTION, answer=True, sizes=(TOTAL_FORMAT.size,) * 2)
    card, coin = TOTAL_FORMAT.unpack(frame.data)
    return TotalConsumption(card * MONEY_UNIT_YUAN, coin * MONEY_UNIT_YUAN)


def parse_settings(frame: Frame) -> Settings:
    """0x0C answer -> :class:`Settings` (FC-051).

    Raises:
        PayloadError: not a 0x0C answer or DATA not 9 bytes.
    """
    _expect(frame, Cmd.READ_SETTINGS, answer=True, sizes=(SETTINGS_LEN, SETTINGS_LEN))
    return Settings(frame.data)


def parse_start_result(frame: Frame) -> tuple[int, bool]:
    """0x02 answer -> (port, accepted) (FC-051: ``01 01`` = port 1 accepted).

    Raises:
        PayloadError: not a 0x02 answer, DATA not 2 bytes, or port 0.
    """
    _expect(frame, Cmd.START, answer=True, sizes=(2, 2))
    port, result = START_ANSWER_FORMAT.unpack(frame.data)
    return _port_field(frame, port), result == RESULT_OK


def parse_set_result(frame: Frame) -> bool:
    """0x08 answer -> accepted (FC-051: ``01``).

    Raises:
        PayloadError: not a 0x08 answer or DATA not 1 byte.
    """
    _expect(frame, Cmd.SET_SETTINGS, answer=True, sizes=(1, 1))
    return frame.data[0] == RESULT_OK


def parse_stop_result(frame: Frame) -> tuple[int, float]:
    """0x0B answer -> (port, remaining s) (layout A7, unit A2).

    Raises:
        PayloadError: not a 0x0B answer, DATA not 3 bytes, or port 0.
    """
    _expect(frame, Cmd.STOP, answer=True, sizes=(STOP_ANSWER_FORMAT.size,) * 2)
    port, remaining = STOP_ANSWER_FORMAT.unpack(frame.data)
    return _port_field(frame, port), float(remaining * REMAINING_UNIT_S)


def parse_finish_report(frame: Frame) -> FinishReport:
    """0x05 report (a command from the board) -> :class:`FinishReport` (layout A8, A9).

    Raises:
        PayloadError: not a 0x05 command, DATA shorter than 4 bytes, or port 0.
    """
    _expect(frame, Cmd.CHARGE_FINISHED, answer=False, sizes=(FINISH_FORMAT.size, None))
    port, remaining, code = FINISH_FORMAT.unpack_from(frame.data)
    _port_field(frame, port)
    remaining_s = None if remaining == REMAINING_FAILED else float(remaining * REMAINING_UNIT_S)
    return FinishReport(port, remaining_s, code, END_REASON_CODES.get(code, EndReason.UNKNOWN))


def parse_fault_report(frame: Frame) -> FaultReport:
    """0x0D report (a command from the board) -> :class:`FaultReport` (layout A10).

    Raises:
        PayloadError: not a 0x0D command, DATA shorter than 2 bytes, or port 0.
    """
    _expect(frame, Cmd.FAULT_REPORT, answer=False, sizes=(FAULT_FORMAT.size, None))
    port, code = FAULT_FORMAT.unpack_from(frame.data)
    _port_field(frame, port)
    return FaultReport(
        None if port == FAULT_WHOLE_BOARD else port,
        code,
        FAULT_CODES.get(code, f"unknown fault code {code}"),
    )


_ANSWER_PARSERS: dict[int, Callable[[Frame], Any]] = {
    Cmd.ALL_PORT_STATUS: parse_all_ports,
    Cmd.START: parse_start_result,
    Cmd.PORT_STATUS: parse_port_status,
    Cmd.TOTAL_CONSUMPTION: parse_total_consumption,
    Cmd.SET_SETTINGS: parse_set_result,
    Cmd.STOP: parse_stop_result,
    Cmd.READ_SETTINGS: parse_settings,
}
_REPORT_PARSERS: dict[int, Callable[[Frame], Any]] = {
    Cmd.CHARGE_FINISHED: parse_finish_report,
    Cmd.FAULT_REPORT: parse_fault_report,
}


def parse_answer(frame: Frame) -> Any:
    """Decode any frame the gateway may receive: an answer to a known command, or a
    board report; anything else is returned as the frame itself.

    Raises:
        PayloadError: the DATA does not fit the command's layout.
    """
    parsers = _ANSWER_PARSERS if frame.is_answer else _REPORT_PARSERS
    parser = parsers.get(frame.cmd)
    return frame if parser is None else parser(frame)


# -- driver ---------------------------------------------------------------------------------


@dataclass(slots=True)
class _Open:
    """A session the driver has seen running on one port."""

    start: float
    energy_kwh: float = 0.0
    last_t: float | None = None
    last_p: float = 0.0

    def sample(self, t: float, power_w: float) -> None:
        """Add a power sample (W at UTC epoch s): trapezoid since the last sample, or the
        first power held back to the start."""
        if self.last_t is None:
            self.energy_kwh += power_w * max(0.0, t - self.start) / 3.6e6
        else:
            self.energy_kwh += (self.last_p + power_w) / 2 * max(0.0, t - self.last_t) / 3.6e6
        self.last_t, self.last_p = t, power_w

    def close(self, t: float) -> float | None:
        """Energy up to ``t`` (last power held), kWh; ``None`` with no sample at all."""
        if self.last_t is None:
            return None
        return self.energy_kwh + self.last_p * max(0.0, t - self.last_t) / 3.6e6


class DianchuanPile:
    """One Dianchuan/Dongjun charging board on a serial port (RS-485 adapter or pty).

    Reads port states and powers, collects the board's finished-session reports (and
    acknowledges them) and, only with ``control_enabled``, starts and stops ports and sets
    the maximum power.  One request at a time; blocking pyserial I/O runs in a worker
    thread.  The serial port opens on first use and again after an I/O error.

    Session energy is not in the protocol: the driver integrates the 0x06 power of each
    :meth:`read_ports` (trapezoids, last power held up to the report), so its accuracy
    follows the poll interval; a session whose start the driver never saw has
    ``start=None`` and ``energy_kwh=None``.

    Args:
        port: serial device path, e.g. ``"/dev/ttyUSB0"`` or a simulator's ``.path``.
        device: device name for errors and :attr:`PileSession.pile`, e.g. ``"pile-b3"``.
        clock: stamps session starts and ends (UTC epoch s).
        timeout_s: longest wait for one answer, real s, > 0.
        control_enabled: allow start, stop, settings and other non-read commands.

    Attributes:
        faults: the last 100 :class:`FaultReport` received (0x0D), oldest first; a
            resent report, or the same fault twice in a row, counts once.

    Raises:
        ValueError: empty device name or ``timeout_s`` not > 0.
    """

    def __init__(
        self,
        port: str,
        *,
        device: str,
        clock: Clock,
        timeout_s: float = 1.0,
        control_enabled: bool = False,
    ) -> None:
        if not device:
            raise ValueError("DianchuanPile device name must not be empty")
        if not timeout_s > 0:
            raise ValueError(f"{device}: timeout_s must be > 0, got {timeout_s!r}")
        self.port = port
        self.device = device
        self.timeout_s = float(timeout_s)
        self.control_enabled = bool(control_enabled)
        self.faults: collections.deque[FaultReport] = collections.deque(maxlen=100)
        self._clock = clock
        self._who = f"{device} ({port})"
        self._serial: serial.Serial | None = None
        self._scanner = FrameScanner()
        self._lock = asyncio.Lock()
        self._last_io = float("-inf")
        self._sent_t = 0.0  # clock time the last request was written, UTC epoch s
        self._reports: list[tuple[Frame, float]] = []  # (report, UTC epoch s received)
        self._open: dict[int, _Open] = {}
        self._finished: list[PileSession] = []
        self._last_report: dict[int, tuple[bytes, bytes]] = {}
        self._stopped: set[int] = set()
        self._last_fault: tuple[bytes, bytes] | None = None

    async def __aenter__(self) -> DianchuanPile:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the serial port (a later call opens it again)."""
        async with self._lock:
            self._close_serial()

    # -- reads ------------------------------------------------------------------------------

    async def read_ports(self) -> list[PortReading]:
        """Every port's state (0x01), then power and remaining time of each charging port
        (0x06).  Also feeds the session energy integration.  A port the 0x01 answer calls
        charging whose 0x06 answer gives no time left (the vendor's "not charging") has
        ended in between and is read as idle.

        Returns:
            one :class:`PortReading` per port, port 1 first.

        Raises:
            DeviceTimeout: no valid answer within ``timeout_s`` (names the command, port).
            DecodeError: an answer whose DATA does not fit its layout.
            DriverError: the serial port cannot be opened or fails.
        """
        async with self._lock:
            states = self._decoded(parse_all_ports, await self._exchange(request_all_ports()))
            readings = []
            for port, state in enumerate(states, start=1):
                power_w = remaining_s = 0.0
                if state is PortState.CHARGING:
                    answer = await self._exchange(request_port_status(port), port=port)
                    status = self._decoded(parse_port_status, answer)
                    power_w, remaining_s = status.power_w, status.remaining_s
                    if remaining_s == 0:  # ended between the queries (V: 0 = not charging)
                        state, power_w = PortState.IDLE, 0.0
                energy = self._track(port, state, power_w, self._clock.now())
                readings.append(PortReading(port, state, power_w, remaining_s, energy))
            return readings

    async def total_consumption(self) -> TotalConsumption:
        """Card and coin totals (0x07).

        Raises:
            DeviceTimeout, DecodeError, DriverError: as :meth:`read_ports`.
        """
        async with self._lock:
            answer = await self._exchange(request_total_consumption())
            return self._decoded(parse_total_consumption, answer)

    async def read_settings(self) -> Settings:
        """The settings block (0x0C), maximum power per port in ``.max_power_w`` (W).

        Raises:
            DeviceTimeout, DecodeError, DriverError: as :meth:`read_ports`.
        """
        async with self._lock:
            return self._decoded(parse_settings, await self._exchange(request_settings()))

    async def poll_reports(self, wait_s: float = 0.0) -> list[PileSession]:
        """Read the board's unsolicited reports, acknowledge each (0x05 and 0x0D) and return
        the sessions finished since the last call (including ones ended by
        :meth:`stop_port`).  A report the board resends is acknowledged again but yields
        no second session.  0x0D fault reports go to :attr:`faults`.

        Args:
            wait_s: real seconds to wait for a first report when none is waiting, >= 0.

        Raises:
            DriverError: the serial port cannot be opened or fails.
        """
        async with self._lock:
            reports = await asyncio.to_thread(self._listen_blocking, max(0.0, wait_s))
            for frame, t in reports:
                self._handle_report(frame, t)
            finished, self._finished = self._finished, []
            return finished

    async def request(self, cmd: int, data: bytes = QUERY_DATA) -> Frame:
        """Send any command and return the board's answer frame (same CMD, SOP 66).

        Commands outside :data:`READ_ONLY_COMMANDS` need ``control_enabled``.

        Raises:
            ControlDisabled: a non-read command without ``control_enabled`` (nothing sent).
            DeviceTimeout: no answer within ``timeout_s``, e.g. for 0x24..0x2A, which the
                field board ignores (FC-053).
            DriverError: the serial port cannot be opened or fails.
        """
        if cmd not in READ_ONLY_COMMANDS:
            self._check_control(f"command {describe(cmd)}")
        async with self._lock:
            return await self._exchange(request(cmd, data))

    # -- control ----------------------------------------------------------------------------

    async def start_port(self, port: int, minutes: int) -> None:
        """Start charging ``port`` for ``minutes`` (0x02); the session is tracked from now.

        Raises:
            ControlDisabled: without ``control_enabled`` (nothing sent).
            ValueError: port outside 1..254 or minutes outside 1..65535.
            CommandRejected: the board answered "failed" (e.g. the port is busy).
            DeviceTimeout, DecodeError, DriverError: as :meth:`read_ports`.
        """
        self._check_control(f"start port {port}")
        frame = request_start(port, minutes)
        async with self._lock:
            answer = await self._exchange(frame, port=port)
            _, accepted = self._decoded(parse_start_result, answer)
            if not accepted:
                raise CommandRejected(
                    f"{self._who}: start port {port} for {minutes} min rejected "
                    f"(result 0x{answer.data[1]:02X})"
                )
            self._opened(port, self._sent_t)

    async def stop_port(self, port: int) -> None:
        """Stop ``port`` (0x0B).  A session the driver was tracking on it ends now with
        ``EndReason.REMOTE_STOP`` and is returned by the next :meth:`poll_reports`; the
        board's own stop report for it, if any, is acknowledged and dropped.

        Raises:
            ControlDisabled: without ``control_enabled`` (nothing sent).
            ValueError: port outside 1..254.
            DeviceTimeout, DecodeError, DriverError: as :meth:`read_ports`.
        """
        self._check_control(f"stop port {port}")
        frame = request_stop(port)
        async with self._lock:
            answer = await self._exchange(frame, port=port)
            self._decoded(parse_stop_result, answer)
            t = self._clock.now()
            session = self._open.pop(port, None)
            if session is not None:
                self._finished.append(
                    PileSession(self.device, port, session.start, t, session.close(t),
                                EndReason.REMOTE_STOP)
                )
                self._stopped.add(port)

    async def set_max_power(self, watts: int) -> None:
        """Set the maximum power per port, W: reads the settings block (0x0C), changes its
        first field and writes it back (0x08), so the other settings stay as they were.

        Raises:
            ControlDisabled: without ``control_enabled`` (nothing sent).
            ValueError: ``watts`` outside 1..65535.
            CommandRejected: the board answered "failed".
            DeviceTimeout, DecodeError, DriverError: as :meth:`read_ports`.
        """
        self._check_control(f"set max power {watts} W")
        Settings().with_max_power(watts)  # validate before any I/O
        async with self._lock:
            current = self._decoded(parse_settings, await self._exchange(request_settings()))
            answer = await self._exchange(request_set_settings(current.with_max_power(watts)))
            if not self._decoded(parse_set_result, answer):
                raise CommandRejected(
                    f"{self._who}: set max power {watts} W rejected (result 0x{answer.data[0]:02X})"
                )

    # -- internals --------------------------------------------------------------------------

    def _check_control(self, what: str) -> None:
        if not self.control_enabled:
            raise ControlDisabled(f"{self._who}: {what} refused: control is not enabled")

    def _decoded(self, parser: Callable[[Frame], Any], frame: Frame) -> Any:
        try:
            return parser(frame)
        except PayloadError as exc:
            raise PayloadError(f"{self._who}: {exc}", exc.offset) from None

    def _opened(self, port: int, t: float) -> _Open:
        self._last_report.pop(port, None)
        self._stopped.discard(port)
        session = self._open[port] = _Open(start=t)
        return session

    def _track(self, port: int, state: PortState, power_w: float, t: float) -> float | None:
        session = self._open.get(port)
        if state is PortState.CHARGING:
            if session is None:
                session = self._opened(port, t)
            session.sample(t, power_w)
            return session.energy_kwh
        if session is not None:
            session.sample(t, 0.0)  # stopped before its report arrived
        return None

    def _handle_report(self, frame: Frame, t: float) -> None:
        try:
            report = parse_answer(Frame.command(frame.cmd, frame.data, frame.session_id))
        except PayloadError as exc:
            log.warning("%s: undecodable report acknowledged and dropped: %s", self._who, exc)
            return
        key = (frame.session_id, frame.data)
        if isinstance(report, FaultReport):
            if key == self._last_fault:
                return  # a resend (the same fault twice in a row counts once)
            self._last_fault = key
            self.faults.append(replace(report, received=t))
            log.warning("%s: fault report: port %s, %s", self._who, report.port, report.description)
            return
        if not isinstance(report, FinishReport):
            return
        if self._last_report.get(report.port) == key:
            return  # a resend of a report already handled
        self._last_report[report.port] = key
        if report.port in self._stopped and report.end_reason is EndReason.USER_STOP:
            self._stopped.discard(report.port)  # the board's report of our own stop
            return
        session = self._open.pop(report.port, None)
        start = None if session is None else session.start
        energy = None if session is None else session.close(t)
        self._finished.append(
            PileSession(self.device, report.port, start, t if start is None else max(t, start),
                        energy, report.end_reason)
        )

    async def _exchange(self, frame: Frame, *, port: int | None = None) -> Frame:
        return await asyncio.to_thread(self._exchange_blocking, frame, port)

    # blocking part (worker thread; the caller holds self._lock)

    def _open_serial(self) -> serial.SerialBase:
        if self._serial is None:
            try:
                # a device path, or a pyserial URL ("socket://host:port": a transparent
                # RS-485 gateway, where the line settings are the gateway's)
                self._serial = serial.serial_for_url(
                    self.port,
                    baudrate=BAUDRATE,
                    bytesize=serial.EIGHTBITS,
                    parity=serial.PARITY_NONE,
                    stopbits=serial.STOPBITS_ONE,
                    timeout=_READ_SLICE_S,
                    write_timeout=self.timeout_s,
                )
            except (*_PORT_ERRORS, ValueError) as exc:
                what = ("cannot connect to" if self.port.startswith(("socket://", "rfc2217://"))
                        else "cannot open serial port")
                raise DriverError(f"{self._who}: {what} {self.port} ({exc})") from None
            self._scanner.reset()
        return self._serial

    def _close_serial(self) -> None:
        ser, self._serial = self._serial, None
        if ser is not None:
            try:
                ser.close()
            except _PORT_ERRORS:
                pass

    def _io_failed(self, what: str, exc: Exception) -> DriverError:
        self._close_serial()
        return DriverError(f"{self._who}: serial {what} failed ({exc})")

    def _read(self, ser: serial.Serial) -> bytes:
        try:
            return ser.read(ser.in_waiting or 1)
        except _PORT_ERRORS as exc:
            raise self._io_failed("read", exc) from None

    def _write(self, ser: serial.Serial, data: bytes) -> None:
        try:
            ser.write(data)
        except _PORT_ERRORS as exc:
            raise self._io_failed("write", exc) from None

    def _take(self, frames: list[Frame], cmd: int | None, port: int | None) -> Frame | None:
        """Stash reports; return the first answer to ``cmd`` (for ``port``), if any."""
        found = None
        for frame in frames:
            if frame.cmd in REPORT_COMMANDS and not (frame.is_answer and frame.data == ACK_DATA):
                # a board report: EE by the rule, 66 tolerated; 66 + DATA 01 is an
                # acknowledgement (our own, echoed by an RS-485 adapter) and never a report
                self._reports.append((frame, self._clock.now()))
            elif (
                found is None
                and cmd is not None
                and frame.is_answer
                and frame.cmd == cmd
                and (port is None or (frame.data[:1] == bytes((port,))))
            ):
                found = frame
            else:
                log.debug("%s: stray frame ignored: %s", self._who, frame)
        return found

    def _drain(self, ser: serial.Serial) -> None:
        """Take in whatever is waiting (late answers are dropped, reports kept)."""
        while True:
            try:
                waiting = ser.in_waiting
            except _PORT_ERRORS as exc:
                raise self._io_failed("read", exc) from None
            if not waiting:
                return
            self._take(self._scanner.feed(self._read(ser)), None, None)

    def _exchange_blocking(self, frame: Frame, port: int | None) -> Frame:
        ser = self._open_serial()
        gap = self._last_io + INTER_REQUEST_GAP_S - time.monotonic()
        if gap > 0:
            time.sleep(gap)
        self._drain(ser)
        sc = self._scanner
        before = (sc.garbage_bytes, sc.sum_errors, sc.length_errors, len(sc.errors))
        self._write(ser, frame.encode())
        self._sent_t = self._clock.now()
        deadline = time.monotonic() + self.timeout_s
        try:
            while True:
                answer = self._take(sc.feed(self._read(ser)), frame.cmd, port)
                if answer is not None:
                    return answer
                if time.monotonic() >= deadline:
                    raise DeviceTimeout(self._timeout_message(frame, port, before))
        finally:
            self._last_io = time.monotonic()

    def _timeout_message(self, frame: Frame, port: int | None, before: tuple[int, ...]) -> str:
        sc = self._scanner
        what = f"command {describe(frame.cmd)}" + ("" if port is None else f" for port {port}")
        msg = f"{self._who}: no answer in {self.timeout_s:g} s to {what}"
        garbage, sums, lengths = (sc.garbage_bytes - before[0], sc.sum_errors - before[1],
                                  sc.length_errors - before[2])
        if garbage or sums or lengths:
            msg += (f"; meanwhile skipped {garbage} bytes: {sums} frames with a bad SUM, "
                    f"{lengths} with a bad LEN")
            if len(sc.errors) and (sums or lengths):
                msg += f" (last: {sc.errors[-1]})"
        return msg

    def _listen_blocking(self, wait_s: float) -> list[tuple[Frame, float]]:
        ser = self._open_serial()
        self._drain(ser)
        deadline = time.monotonic() + wait_s
        while not self._reports and time.monotonic() < deadline:
            self._take(self._scanner.feed(self._read(ser)), None, None)
        reports, self._reports = self._reports, []
        for report, _ in reports:
            self._write(ser, acknowledge(report).encode())
        if reports:
            self._last_io = time.monotonic()
        return reports
