"""Modbus RTU: frame codec, reply scanner and byte links (serial port, TCP socket).

Own implementation rather than pymodbus's RTU framer, because the framer drops a frame
with a bad CRC (and everything buffered with it) without telling the caller
(pymodbus 3.16 ``FramerRTU.decode`` returns an empty frame), so a noisy line would look
like a silent device: no CRC-error count per device, no specific error.  Here every
malformed frame is rejected with its own :class:`RtuFrameError` subclass, and the bus
(:class:`drivers.modbus.RtuBus`) counts them per device.

Frame (Modbus over serial line v1.02 §2.5.1; field-vectors.md "Protocol conventions")::

    device id (1) | function code (1) | data (0..252) | CRC-16 (2, low byte first)

* read request (function 3 or 4): ``id fc addr_hi addr_lo count_hi count_lo crc crc``;
* normal reply: ``id fc byte_count data[byte_count] crc crc`` (byte_count = 2 x count);
* exception reply: ``id fc|0x80 exception_code crc crc`` (Modbus application protocol
  v1.1b3 §7), e.g. FC-036 ``01 83 02 C0 F1``.

Field pitfalls handled (domain-facts.md §5, field-vectors.md C-08):

* noise and garbage before a reply: the scanner hunts for a frame that starts with the
  expected device id and function code and has the expected length and a valid CRC;
* a late reply of another device (a timed-out request) is skipped: its device id differs;
* a buffer holding two frames is split by length and CRC, not rejected (C-08);
* RS-485 adapters that echo their own transmission: with ``echo`` the request bytes
  read back first are dropped before parsing (:class:`ReplyScanner`);
* inter-frame silence of 3.5 character times, 1.75 ms above 19200 baud
  (:func:`frame_gap_s`; Modbus over serial line v1.02 §2.5.1.1, C-08).
"""

from __future__ import annotations

import asyncio
import os
import socket
import termios
import time
from dataclasses import dataclass

import serial

from drivers.reading import DecodeError, DeviceTimeout, DriverError

__all__ = [
    "ByteCountError",
    "CrcError",
    "DeviceIdError",
    "EchoError",
    "FunctionCodeError",
    "IncompleteFrame",
    "Link",
    "ReplyScanner",
    "RtuFrameError",
    "RtuRequest",
    "RtuResponse",
    "SerialLink",
    "TcpLink",
    "char_bits",
    "crc16",
    "decode_request",
    "decode_response",
    "encode_exception",
    "encode_request",
    "encode_response",
    "frame_gap_s",
    "lookup_failure",
    "request_length",
]

#: Largest byte count of a read reply: 125 registers (Modbus application protocol §6.3),
#: so a reply is at most 255 bytes, within the 256-byte RTU frame (serial line v1.02 §2.5.1).
MAX_BYTE_COUNT = 250
#: Device ids a server may have (Modbus over serial line v1.02 §2.2: 1..247).
DEVICE_IDS = range(1, 248)


# -- CRC ---------------------------------------------------------------------------------


def _crc_table() -> tuple[int, ...]:
    # CRC-16/MODBUS: reflected polynomial 0xA001, init 0xFFFF (field-vectors.md
    # "Protocol conventions"; Modbus over serial line v1.02 §6.2.2)
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC_TABLE = _crc_table()


def crc16(data: bytes | bytearray | memoryview) -> int:
    """CRC-16/MODBUS of ``data``; sent low byte first (``crc.to_bytes(2, "little")``).

    ``crc16(bytes.fromhex("010400000002")) == 0xCB71`` (FC-030: ``... 71 CB``).
    """
    crc = 0xFFFF
    for byte in data:
        crc = (crc >> 8) ^ _CRC_TABLE[(crc ^ byte) & 0xFF]
    return crc


def _with_crc(body: bytes) -> bytes:
    return body + crc16(body).to_bytes(2, "little")


# -- errors ------------------------------------------------------------------------------


class RtuFrameError(DecodeError):
    """A malformed RTU frame; ``offset`` is the byte where the problem was found."""

    def __init__(self, message: str, offset: int = 0) -> None:
        super().__init__(message)
        self.offset = offset


class IncompleteFrame(RtuFrameError):
    """Fewer bytes than the frame needs."""


class CrcError(RtuFrameError):
    """The CRC does not match (``computed``, ``received`` as 16-bit values)."""

    def __init__(self, message: str, offset: int, computed: int, received: int) -> None:
        super().__init__(message, offset)
        self.computed = computed
        self.received = received


class ByteCountError(RtuFrameError):
    """A byte count that is zero, odd, above 250, disagrees with the frame length, or is
    not the one the request asked for."""


class FunctionCodeError(RtuFrameError):
    """A function code this codec does not parse (or not the one asked for)."""


class DeviceIdError(RtuFrameError):
    """A device id outside 1..247 in a reply."""


class EchoError(RtuFrameError):
    """An echoing adapter read back something other than the request."""


# -- codec -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RtuRequest:
    """A request of functions 1..6: ``count`` is the quantity (functions 1..4) or the
    value written (5, 6)."""

    device_id: int
    function_code: int
    address: int
    count: int


@dataclass(frozen=True, slots=True)
class RtuResponse:
    """A reply to a read: ``registers`` (normal reply) or ``exception_code`` (exception
    reply; ``function_code`` is then the function asked for, without 0x80)."""

    device_id: int
    function_code: int
    registers: tuple[int, ...] = ()
    exception_code: int | None = None


def encode_request(device_id: int, function_code: int, address: int, count: int) -> bytes:
    """Read request frame (functions 3 and 4; also 1..6, whose layout is the same).

    ``encode_request(1, 4, 0, 2) == bytes.fromhex("01 04 00 00 00 02 71 CB")`` (FC-030).

    Raises:
        ValueError: device id outside 0..247, function outside 1..6, or address/count
            outside 0..65535.
    """
    if not 0 <= device_id <= 247:
        raise ValueError(f"device id must be 0..247, got {device_id}")
    if not 1 <= function_code <= 6:
        raise ValueError(f"function code must be 1..6, got {function_code}")
    if not (0 <= address <= 0xFFFF and 0 <= count <= 0xFFFF):
        raise ValueError(f"address and count must be 0..65535, got {address}, {count}")
    return _with_crc(bytes((device_id, function_code)) + address.to_bytes(2, "big") + count.to_bytes(2, "big"))


def encode_response(device_id: int, function_code: int, registers: list[int] | tuple[int, ...]) -> bytes:
    """Normal reply to a read of ``len(registers)`` registers.

    Raises:
        ValueError: more than 125 registers or a register outside 0..65535.
    """
    if len(registers) * 2 > MAX_BYTE_COUNT:
        raise ValueError(f"at most 125 registers per reply, got {len(registers)}")
    data = b"".join(int(r).to_bytes(2, "big") for r in registers)
    return _with_crc(bytes((device_id, function_code, len(data))) + data)


def encode_exception(device_id: int, function_code: int, code: int) -> bytes:
    """Exception reply: ``id fc|0x80 code crc`` (FC-036 ``01 83 02 C0 F1``)."""
    return _with_crc(bytes((device_id, function_code | 0x80, code)))


def _check_crc(frame: bytes | bytearray, offset: int = 0) -> None:
    computed = crc16(frame[:-2])
    received = int.from_bytes(frame[-2:], "little")
    if computed != received:
        raise CrcError(
            f"CRC {received:04X}H received, {computed:04X}H computed over "
            f"{len(frame) - 2} bytes ({bytes(frame[:12]).hex(' ')}{' ...' if len(frame) > 12 else ''})",
            offset + len(frame) - 2,
            computed,
            received,
        )


def decode_response(frame: bytes | bytearray) -> RtuResponse:
    """Parse one complete reply frame to a read (function 3 or 4) or an exception reply
    to any function.

    Raises:
        IncompleteFrame: fewer than 5 bytes, or fewer than the byte count needs.
        DeviceIdError: device id 0 or above 247.
        FunctionCodeError: not a read reply (3, 4) nor an exception reply (0x80 set).
        ByteCountError: byte count zero, odd or above 250, or bytes after the frame.
        CrcError: CRC mismatch.
    """
    frame = bytes(frame)
    if len(frame) < 5:
        raise IncompleteFrame(f"{len(frame)} bytes, a reply has at least 5", len(frame))
    device_id, fc = frame[0], frame[1]
    if device_id not in DEVICE_IDS:
        raise DeviceIdError(f"device id {device_id} in a reply (1..247 only)", 0)
    if fc & 0x80:
        if len(frame) != 5:
            raise ByteCountError(f"exception reply of {len(frame)} bytes (5 expected)", 5)
        _check_crc(frame)
        return RtuResponse(device_id, fc & 0x7F, exception_code=frame[2])
    if fc not in (3, 4):
        raise FunctionCodeError(f"function code {fc} is not a read reply (3, 4)", 1)
    n = frame[2]
    if n == 0 or n % 2 or n > MAX_BYTE_COUNT:
        raise ByteCountError(f"byte count {n} (even, 2..{MAX_BYTE_COUNT} expected)", 2)
    if len(frame) < 5 + n:
        raise IncompleteFrame(f"{len(frame)} bytes, byte count {n} needs {5 + n}", len(frame))
    if len(frame) > 5 + n:
        raise ByteCountError(f"{len(frame)} bytes, byte count {n} gives {5 + n}", 5 + n)
    _check_crc(frame)
    registers = tuple(int.from_bytes(frame[i : i + 2], "big") for i in range(3, 3 + n, 2))
    return RtuResponse(device_id, fc, registers)


def request_length(buf: bytes | bytearray) -> int | None:
    """Length of the request frame at the start of ``buf`` (as a server sees it), or
    ``None`` if more bytes are needed to tell.

    Functions 1..6 are 8 bytes; 15 and 16 are 9 + their byte count (Modbus application
    protocol §6.11, §6.12).

    Raises:
        FunctionCodeError: another function code (its length cannot be known).
    """
    if len(buf) < 2:
        return None
    fc = buf[1]
    if 1 <= fc <= 6:
        return 8
    if fc in (15, 16):
        return None if len(buf) < 7 else 9 + buf[6]
    raise FunctionCodeError(f"function code {fc}: request length unknown", 1)


def decode_request(frame: bytes | bytearray) -> RtuRequest:
    """Parse one complete request of functions 1..6 (8 bytes).

    Raises:
        IncompleteFrame / ByteCountError: not 8 bytes.
        FunctionCodeError: function outside 1..6.
        CrcError: CRC mismatch.
    """
    frame = bytes(frame)
    if len(frame) >= 2 and not 1 <= frame[1] <= 6:
        raise FunctionCodeError(f"function code {frame[1]} (1..6 parsed)", 1)
    if len(frame) < 8:
        raise IncompleteFrame(f"{len(frame)} bytes, a request has 8", len(frame))
    if len(frame) > 8:
        raise ByteCountError(f"{len(frame)} bytes, a request has 8", 8)
    _check_crc(frame)
    return RtuRequest(
        frame[0], frame[1], int.from_bytes(frame[2:4], "big"), int.from_bytes(frame[4:6], "big")
    )


# -- the reply scanner -------------------------------------------------------------------


class ReplyScanner:
    """Finds the reply to one read request in the bytes received after sending it.

    A candidate frame starts with the request's device id and either its function code
    (length 5 + 2 x count) or the function code with 0x80 (exception, 5 bytes); the first
    candidate with a valid CRC is the reply.  Other bytes (noise, a late reply of another
    device, another master's frames) are skipped.  Candidates with the right start and
    length but a bad CRC, or a valid frame with another byte count, are kept in
    :attr:`errors`; the caller raises the last one when no reply comes.

    Args:
        request: the request sent.
        echo: the request bytes, when the adapter echoes its own transmission: bytes
            equal to them at the start are dropped before parsing (a mismatch is recorded
            as :class:`EchoError` and everything is parsed).

    Attributes:
        reply: the reply once found.
        errors: rejected candidates (CRC and byte-count errors), oldest first.
        echo_error: set when the echo did not match.
        noise: bytes received that were neither the echo nor the reply (noise, late
            replies of other devices, rejected candidates).
    """

    _MAX_ERRORS = 8

    def __init__(self, request: RtuRequest, *, echo: bytes | None = None) -> None:
        self.request = request
        self.reply: RtuResponse | None = None
        self.errors: list[RtuFrameError] = []
        self.echo_error: EchoError | None = None
        self._received = 0
        self._echoed = 0
        self._reply_len = 0
        self._echo = echo
        self._buf = bytearray()
        self._pos = 0
        self._checked: set[int] = set()
        self._length = 5 + 2 * request.count

    def feed(self, data: bytes) -> RtuResponse | None:
        """Add received bytes; returns the reply once it is complete (then ignores more)."""
        if self.reply is not None:
            return self.reply
        self._buf += data
        self._received += len(data)
        if self._echo is not None:
            echo, buf = self._echo, self._buf
            n = min(len(buf), len(echo))
            if buf[:n] == echo[:n]:
                if n < len(echo):
                    return None
                del buf[: len(echo)]
                self._echoed = len(echo)
            else:
                self.echo_error = EchoError(
                    f"adapter echo expected {echo.hex(' ')}, received {bytes(buf[:n]).hex(' ')}", 0
                )
            self._echo = None
        self._scan()
        return self.reply

    def _scan(self) -> None:
        buf, req = self._buf, self.request
        first_incomplete = None
        pos = self._pos
        while pos < len(buf):
            if buf[pos] != req.device_id:
                pos += 1
                continue
            if len(buf) - pos < 3:
                if first_incomplete is None:
                    first_incomplete = pos
                break
            fc = buf[pos + 1]
            exception = fc == req.function_code | 0x80
            if exception:
                length = 5
            elif fc == req.function_code:
                length = 5 + buf[pos + 2]  # its own length; checked against the request below
            else:
                pos += 1
                continue
            if len(buf) - pos < length:
                if first_incomplete is None:
                    first_incomplete = pos
            elif pos not in self._checked:
                self._checked.add(pos)
                if self._accept(pos, length, exception):
                    return
            pos += 1
        self._pos = first_incomplete if first_incomplete is not None else len(buf)

    def _accept(self, pos: int, length: int, exception: bool) -> bool:
        req = self.request
        frame = bytes(self._buf[pos : pos + length])
        expected = exception or length == self._length
        try:
            _check_crc(frame, pos)
        except CrcError as exc:
            if expected:  # the reply's shape with a corrupt CRC; anything else is noise
                self._record(exc)
            return False
        if not expected:
            n = frame[2]
            self._record(ByteCountError(
                f"reply with byte count {n} ({n // 2} registers) to a read of "
                f"{req.count} registers", pos + 2))
            return False
        if exception:
            self.reply = RtuResponse(req.device_id, req.function_code, exception_code=frame[2])
        else:
            self.reply = RtuResponse(
                req.device_id,
                req.function_code,
                tuple(int.from_bytes(frame[i : i + 2], "big") for i in range(3, length - 2, 2)),
            )
        self._reply_len = length
        return True

    @property
    def noise(self) -> int:
        return self._received - self._echoed - self._reply_len

    def _record(self, exc: RtuFrameError) -> None:
        self.errors.append(exc)
        if len(self.errors) > self._MAX_ERRORS:
            del self.errors[0]


# -- serial line timing ------------------------------------------------------------------


def char_bits(bytesize: int = 8, parity: str = "E", stopbits: int = 1) -> int:
    """Bits on the line per byte: start + data + parity + stop (11 for 8E1 and 8N2, the
    Modbus RTU character; 10 for the common 8N1; Modbus over serial line v1.02 §2.5.1)."""
    return 1 + bytesize + (parity != "N") + stopbits


def frame_gap_s(baudrate: int, bits: int = 11) -> float:
    """Least silence between frames, s: 3.5 character times, fixed at 1.75 ms above
    19200 baud (Modbus over serial line v1.02 §2.5.1.1; field-vectors.md C-08)."""
    return 0.00175 if baudrate > 19200 else 3.5 * bits / baudrate


# -- byte links --------------------------------------------------------------------------


class Link:
    """A byte stream to an RS-485 line: a serial port or a TCP socket to a transparent
    RS-485 gateway.  Received bytes collect in a buffer (:meth:`take`), so a bus can
    flush what arrived between two requests (a late reply, garbage) before it sends.

    Attributes:
        description: for messages, e.g. ``"serial /dev/ttyUSB0"``.
        last_rx: monotonic time of the last byte received (or of the last write).
        gap_s: silence to keep between frames, s (0 over TCP: the gateway keeps it).
    """

    description = "link"
    gap_s = 0.0

    def __init__(self) -> None:
        self._buf = bytearray()
        self._event = asyncio.Event()
        self._error: str | None = None
        self.last_rx = 0.0

    @property
    def is_open(self) -> bool:
        raise NotImplementedError

    async def open(self) -> None:
        """Open the link.

        Raises:
            DeviceTimeout: no TCP connection in time.
            DriverError: the port or host cannot be opened.
        """
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def write(self, data: bytes) -> None:
        """Send ``data`` (raises DriverError if the link failed)."""
        raise NotImplementedError

    def tx_time(self, n: int) -> float:
        """Seconds ``n`` bytes take on the line after :meth:`write` returns (0 over TCP)."""
        return 0.0

    def take(self) -> bytes:
        """Everything received so far (the buffer is emptied).

        Raises:
            DriverError: the link failed (the bytes received before are lost).
        """
        data = bytes(self._buf)
        self._buf.clear()
        self._event.clear()
        if self._error is not None:
            error, self._error = self._error, None
            self.close()
            raise DriverError(f"{self.description}: {error}")
        return data

    async def wait(self, deadline: float) -> None:
        """Wait until bytes arrive (after the last :meth:`take`) or ``deadline``
        (monotonic s)."""
        remaining = deadline - time.monotonic()
        if remaining <= 0 or self._event.is_set():
            return
        try:
            async with asyncio.timeout(remaining):
                await self._event.wait()
        except TimeoutError:
            pass

    def _received(self, data: bytes) -> None:
        self._buf += data
        self.last_rx = time.monotonic()
        self._event.set()

    def _failed(self, reason: str) -> None:
        if self._error is None:
            self._error = reason
        self._event.set()


class SerialLink(Link):
    """A serial port (pyserial) read with the event loop's reader callback.

    Args:
        port: device path, e.g. ``"/dev/ttyUSB0"`` or a pty.
        baudrate, parity, bytesize, stopbits: line settings (Modbus RTU default 9600 8E1,
            Modbus over serial line v1.02 §2.5.1; meters often ship 8N1: SDM120 2400 8N1,
            DDSU666 9600 8N1, domain-facts.md §5).

    Raises:
        ValueError: bad parity, bytesize, stopbits or baud rate.
    """

    def __init__(
        self, port: str, *, baudrate: int = 9600, parity: str = "E", bytesize: int = 8, stopbits: int = 1
    ) -> None:
        super().__init__()
        if parity not in ("N", "E", "O"):
            raise ValueError(f"{port}: parity must be N, E or O, got {parity!r}")
        if bytesize not in (7, 8) or stopbits not in (1, 2) or baudrate <= 0:
            raise ValueError(f"{port}: bad line settings {baudrate} {bytesize}{parity}{stopbits}")
        self.port = port
        self.settings = {"baudrate": baudrate, "parity": parity, "bytesize": bytesize, "stopbits": stopbits}
        self.description = f"serial {port} ({baudrate} {bytesize}{parity}{stopbits})"
        self._byte_s = char_bits(bytesize, parity, stopbits) / baudrate
        self.gap_s = frame_gap_s(baudrate, char_bits(bytesize, parity, stopbits))
        self._serial: serial.Serial | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def is_open(self) -> bool:
        return self._serial is not None

    async def open(self) -> None:
        if self._serial is not None:
            return
        try:
            port = serial.Serial(self.port, timeout=0, write_timeout=1.0, **self.settings)
        except (serial.SerialException, OSError, ValueError, termios.error) as exc:
            # termios.error is not an OSError: a pty, for one, refuses parity (EINVAL)
            raise DriverError(f"{self.description}: cannot open ({exc})") from None
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(port.fileno(), self._readable, port.fileno())
        self._serial = port
        self._error = None

    def close(self) -> None:
        port, self._serial = self._serial, None
        if port is None:
            return
        if self._loop is not None:
            try:
                self._loop.remove_reader(port.fileno())
            except (ValueError, OSError, RuntimeError):
                pass
        try:
            port.close()
        except (serial.SerialException, OSError, termios.error):
            pass

    def write(self, data: bytes) -> None:
        if self._serial is None:
            raise DriverError(f"{self.description}: not open")
        try:
            self._serial.write(data)
        except (serial.SerialException, OSError, termios.error) as exc:
            self.close()
            raise DriverError(f"{self.description}: write failed ({exc})") from None
        self.last_rx = time.monotonic()

    def tx_time(self, n: int) -> float:
        return n * self._byte_s

    def _readable(self, fd: int) -> None:
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            return
        except OSError as exc:
            data, reason = b"", f"read failed ({exc})"
        else:
            reason = "port closed (no data although readable)"
        if data:
            self._received(data)
            return
        if self._loop is not None:
            self._loop.remove_reader(fd)
        self._failed(reason)


def lookup_failure(host: str, exc: socket.gaierror) -> str:
    """A failed host-name look-up for a message: a name that does not exist (a typo, a
    gateway not in DNS or /etc/hosts) is said so, not "connection refused"."""
    if exc.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)):
        return f"host name {host!r} does not resolve (not in DNS or /etc/hosts: {exc.strerror})"
    return f"host name {host!r} could not be looked up ({exc.strerror or exc})"


class _TcpProtocol(asyncio.Protocol):
    """Feeds one connection's bytes to its link; a closed connection's late callbacks
    (after the link reconnected) are ignored."""

    def __init__(self, link: TcpLink) -> None:
        self.link = link

    def data_received(self, data: bytes) -> None:
        if self.link._protocol is self:
            self.link._received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.link._protocol is self:
            self.link._transport = self.link._protocol = None
            self.link._failed(f"connection lost ({exc or 'closed by peer'})")


class TcpLink(Link):
    """A TCP connection to a transparent RS-485 gateway (RTU frames over TCP).

    Args:
        host, port: the gateway.
        connect_timeout_s: TCP connect timeout, real s.
    """

    def __init__(self, host: str, port: int, *, connect_timeout_s: float = 3.0) -> None:
        super().__init__()
        self.host, self.port = host, port
        self.connect_timeout_s = connect_timeout_s
        self.description = f"RTU over TCP {host}:{port}"
        self._transport: asyncio.Transport | None = None
        self._protocol: _TcpProtocol | None = None

    @property
    def is_open(self) -> bool:
        return self._transport is not None

    async def open(self) -> None:
        if self._transport is not None:
            return
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                transport, protocol = await loop.create_connection(
                    lambda: _TcpProtocol(self), self.host, self.port
                )
        except TimeoutError:
            raise DeviceTimeout(
                f"{self.description}: no TCP connection in {self.connect_timeout_s:g} s"
            ) from None
        except socket.gaierror as exc:
            raise DriverError(f"{self.description}: {lookup_failure(self.host, exc)}") from None
        except OSError as exc:
            raise DriverError(f"{self.description}: connection refused or unreachable ({exc})") from None
        self._buf.clear()
        self._error = None
        self._transport = transport  # type: ignore[assignment]
        self._protocol = protocol

    def close(self) -> None:
        transport, self._transport, self._protocol = self._transport, None, None
        if transport is not None:
            transport.close()

    def write(self, data: bytes) -> None:
        if self._transport is None:
            raise DriverError(f"{self.description}: not connected")
        self._transport.write(data)
        self.last_rx = time.monotonic()
