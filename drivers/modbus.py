"""Modbus buses: one request at a time per bus, typed readings out, health per device.

A bus is one physical or TCP line with one or more devices on it, each described by a
:class:`DeviceSpec` and read with :meth:`ModbusBus.read`:

* :class:`ModbusTcpBus`: Modbus TCP (MBAP) to a meter or gateway, through pymodbus (the
  only module that imports pymodbus: its API moves between minor releases,
  domain-facts.md §5, style-anchors.md);
* :class:`RtuBus`: Modbus RTU over a serial port or over TCP to a transparent RS-485
  gateway (:mod:`drivers.rtu`: own framing, so CRC and framing errors are counted);
* :func:`open_bus` makes either from a kind and a target.

Field pitfalls handled here (domain-facts.md §5, field-vectors.md C-08):

* a dead device must not stall the bus: every request has its own timeout (real
  seconds), nothing retries behind the caller's back, a device's read stops at its first
  failed request, so it costs the others at most ``timeout_s`` x (``retries`` + 1); the
  agent backs a failing device off (``agent/runner.py``), helped by
  ``consecutive_failures`` in :meth:`ModbusBus.health`;
* a late reply or garbage never reaches another device's reading: Modbus TCP closes the
  connection after a timeout (a late frame goes to a dead socket; pymodbus 3.16 discards
  its whole receive buffer past 260 bytes, so transaction ids alone are not enough), RTU
  flushes what arrived before each request and accepts only a frame with the expected
  device id, function code, length and CRC;
* some devices need a pause between requests or after connecting (``pause_s``), and a
  serial line 3.5 character times of silence between frames.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException

from drivers.profile import Profile, ProfileError, ReadRequest, list_profiles, load_profile
from drivers.reading import DecodeError, DeviceException, DeviceTimeout, DriverError, Reading
from drivers.rtu import (
    CrcError,
    Link,
    ReplyScanner,
    RtuFrameError,
    RtuRequest,
    SerialLink,
    TcpLink,
    encode_request,
    lookup_failure,
)
from flylead.clock import Clock

#: Default TCP connect timeout, real seconds (pymodbus's own default is 3 s).
CONNECT_TIMEOUT_S = 3.0

#: Modbus exception codes (Modbus application protocol v1.1b3 §7), for messages.
EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}

#: Keys of each device's entry in :meth:`ModbusBus.health` (all floats):
#: ``requests`` sent (retries included); ``responses`` valid normal replies;
#: ``exceptions`` exception replies; ``timeouts`` requests without a reply;
#: ``crc_errors`` requests whose reply had a bad CRC; ``frame_errors`` other malformed
#: replies (byte count, length); ``discarded_bytes`` bytes flushed before a request or
#: skipped before a reply (late replies, noise, echo); ``latency_mean_s`` and
#: ``latency_max_s`` over answered requests (real s); ``consecutive_failures`` failed
#: reads in a row (0 after a good one).
HEALTH_KEYS = (
    "requests", "responses", "exceptions", "timeouts", "crc_errors", "frame_errors",
    "discarded_bytes", "latency_mean_s", "latency_max_s", "consecutive_failures",
)

# pymodbus's internal response timeout is set this much above the device's, so that
# ours always fires first and gives one clean DeviceTimeout.
_PYMODBUS_MARGIN_S = 0.25

#: While a Modbus TCP request waits for its answer, check this often (real s) whether the
#: device closed the connection (pymodbus would wait out the whole timeout).
_WATCH_S = 0.02

#: After a malformed candidate reply, stop waiting once the line has been quiet this long
#: (real s): a device sends one reply per request, so nothing better is coming; 50 ms is
#: above 3.5 characters at 1200 baud (32 ms), the slowest rate of the bundled devices.
SETTLE_S = 0.05


@dataclass(frozen=True)
class DeviceSpec:
    """One device on a bus.

    Attributes:
        name: device name used in readings, errors and health, e.g. ``"meter-h01"``.
        profile: profile name or path (:func:`drivers.profile.load_profile`), e.g. ``"sdm120"``.
        device_id: Modbus device (unit) id, 1..247 (Modbus over serial line v1.02 §2.2).
        timeout_s: longest wait for one answer, real seconds, > 0.
        retries: further attempts after a timeout or a corrupt reply (each costs up to
            ``timeout_s``), >= 0.
        max_gap: override of the profile's ``max_gap`` for this device's read plan.

    Raises:
        ValueError: a field is out of range.
    """

    name: str
    profile: str
    device_id: int = 1
    timeout_s: float = 0.5
    retries: int = 0
    max_gap: int | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("DeviceSpec name must not be empty")
        if not 1 <= self.device_id <= 247:
            raise ValueError(f"{self.name}: device_id must be 1..247, got {self.device_id}")
        if not self.timeout_s > 0:
            raise ValueError(f"{self.name}: timeout_s must be > 0, got {self.timeout_s}")
        if self.retries < 0:
            raise ValueError(f"{self.name}: retries must be >= 0, got {self.retries}")
        if self.max_gap is not None and self.max_gap < 0:
            raise ValueError(f"{self.name}: max_gap must be >= 0, got {self.max_gap}")


@dataclass
class _Health:
    requests: int = 0
    responses: int = 0
    exceptions: int = 0
    timeouts: int = 0
    crc_errors: int = 0
    frame_errors: int = 0
    discarded_bytes: int = 0
    latency_sum: float = 0.0
    latency_max: float = 0.0
    answered: int = 0
    consecutive_failures: int = 0

    def latency(self, seconds: float) -> None:
        self.answered += 1
        self.latency_sum += seconds
        self.latency_max = max(self.latency_max, seconds)

    def as_dict(self) -> dict[str, float]:
        mean = self.latency_sum / self.answered if self.answered else 0.0
        return {
            "requests": float(self.requests),
            "responses": float(self.responses),
            "exceptions": float(self.exceptions),
            "timeouts": float(self.timeouts),
            "crc_errors": float(self.crc_errors),
            "frame_errors": float(self.frame_errors),
            "discarded_bytes": float(self.discarded_bytes),
            "latency_mean_s": mean,
            "latency_max_s": self.latency_max,
            "consecutive_failures": float(self.consecutive_failures),
        }


class ModbusBus:
    """What every bus does: plans, one request at a time, pauses, retries, health.

    Requests are serialised (one outstanding request per bus, like the RS-485 line behind
    a gateway) and separated by at least ``pause_s`` real seconds (and a serial line's
    inter-frame silence).  Each device's profile is loaded and planned once.

    Args:
        clock: stamps readings (``clock.now()`` when a device's first request is sent).
        name: bus name for logs.
        pause_s: minimum real seconds between the end of one request (or the connect) and
            the start of the next, >= 0 (Eastron: >= 0.1 s, field-vectors.md C-08).

    Raises:
        ValueError: ``pause_s`` negative.
    """

    def __init__(self, *, clock: Clock, name: str, pause_s: float = 0.0) -> None:
        if pause_s < 0:
            raise ValueError(f"pause_s must be >= 0, got {pause_s}")
        self.name = name
        self._clock = clock
        self._pause_s = pause_s
        self._lock = asyncio.Lock()
        self._last_io = float("-inf")  # monotonic end of the last request or connect
        self._plans: dict[tuple[str, int | None], tuple[Profile, list[ReadRequest]]] = {}
        self._health: dict[str, _Health] = {}

    async def __aenter__(self) -> ModbusBus:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    async def connect(self) -> None:
        """Open the connection or port (done on demand by :meth:`read` too).

        Raises:
            DeviceTimeout: no TCP connection within the connect timeout.
            DriverError: connection refused, host unreachable, port cannot be opened.
        """
        async with self._lock:
            await self._open(f"bus {self.name}")

    async def close(self) -> None:
        """Close the connection or port; a later :meth:`read` opens it again."""

    async def read(self, device: DeviceSpec) -> Reading:
        """Read every value of ``device``'s profile (its planned reads, in order).

        Returns:
            a :class:`Reading` stamped with ``clock.now()`` when the first request was
            sent, ``latency_s`` = real seconds until the last answer.

        Raises:
            DeviceTimeout: no answer within ``device.timeout_s`` (after ``retries``), or no
                connection.
            DeviceException: the device answered with a Modbus exception (``.code``).
            DecodeError: a malformed answer (:class:`drivers.rtu.CrcError` and the other
                :class:`drivers.rtu.RtuFrameError` kinds on RTU; a wrong register count)
                or undecodable registers.
            DriverError: connection refused or lost, port failure.
            drivers.profile.ProfileError: the device's profile is invalid (configuration).
        """
        profile, plan = self._plan(device)
        who = self._who(device)
        health = self._health_of(device)
        blocks: dict[tuple[int, int], list[int]] = {}
        try:
            async with self._lock:
                t = started = 0.0
                for i, request in enumerate(plan):
                    await self._pause()
                    if i == 0:
                        t = self._clock.now()
                        started = time.monotonic()
                    words = await self._request(device, request, who, health)
                    blocks[(request.function_code, request.address)] = words
                latency = time.monotonic() - started
            values = profile.decode(blocks, device=who)
        except DriverError:
            health.consecutive_failures += 1
            raise
        health.consecutive_failures = 0
        return Reading(device.name, t, values, latency)

    async def read_registers(
        self, device: DeviceSpec, function_code: int, address: int, count: int
    ) -> list[int]:
        """One read of ``count`` registers (a probe, a benchmark baseline, a tool).

        Raises:
            ValueError: function code not 3/4, count outside 1..125, address out of range.
            as :meth:`read` otherwise.
        """
        if function_code not in (3, 4) or not 1 <= count <= 125 or not 0 <= address <= 0x10000 - count:
            raise ValueError(
                f"{device.name}: bad read function {function_code} 0x{address:04X} count {count}"
            )
        health = self._health_of(device)
        try:
            async with self._lock:
                await self._pause()
                words = await self._request(
                    device, ReadRequest(function_code, address, count), self._who(device), health
                )
        except DriverError:
            health.consecutive_failures += 1
            raise
        health.consecutive_failures = 0
        return words

    async def read_info(self, device: DeviceSpec) -> dict[str, str | int | float]:
        """The profile's ``[[info]]`` entries (identification: model, serial number).

        Raises:
            as :meth:`read`.
        """
        profile = self._plan(device)[0]
        blocks = {}
        for request in profile.plan(info=True):
            blocks[(request.function_code, request.address)] = await self.read_registers(
                device, request.function_code, request.address, request.count
            )
        return profile.decode_info(blocks, device=self._who(device))

    def health(self) -> dict[str, dict[str, float]]:
        """Per device name: the counters of :data:`HEALTH_KEYS` since the bus was made."""
        return {name: h.as_dict() for name, h in self._health.items()}

    # -- for subclasses ----------------------------------------------------------------

    def where(self) -> str:
        """Where the bus goes, for messages (``"host:port"``, ``"serial /dev/ttyUSB0"``)."""
        raise NotImplementedError

    async def _open(self, who: str) -> None:
        raise NotImplementedError

    async def _exchange(
        self, device: DeviceSpec, request: ReadRequest, who: str, health: _Health
    ) -> list[int]:
        """One attempt of ``request`` (caller holds the lock and has paused)."""
        raise NotImplementedError

    def _gap_s(self) -> float:
        """Least silence between frames on the line (s)."""
        return 0.0

    def _line_quiet_since(self) -> float:
        return self._last_io

    # -- internals ---------------------------------------------------------------------

    def _who(self, device: DeviceSpec) -> str:
        return f"{device.name} (device id {device.device_id} at {self.where()})"

    def _health_of(self, device: DeviceSpec) -> _Health:
        health = self._health.get(device.name)
        if health is None:
            health = self._health[device.name] = _Health()
        return health

    def _plan(self, device: DeviceSpec) -> tuple[Profile, list[ReadRequest]]:
        key = (device.profile, device.max_gap)
        entry = self._plans.get(key)
        if entry is None:
            profile = load_profile(device.profile)
            entry = self._plans[key] = (profile, profile.plan(max_gap=device.max_gap))
        return entry

    async def _pause(self) -> None:
        quiet = max(self._last_io, self._line_quiet_since())
        wait = quiet + max(self._pause_s, self._gap_s()) - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)

    async def _request(
        self, device: DeviceSpec, request: ReadRequest, who: str, health: _Health
    ) -> list[int]:
        for attempt in range(device.retries + 1):
            if attempt:
                await self._pause()
            health.requests += 1
            started = time.monotonic()
            try:
                words = await self._exchange(device, request, who, health)
            except DeviceTimeout:
                health.timeouts += 1
                if attempt == device.retries:
                    raise
                continue
            except RtuFrameError as exc:  # noise on the line: worth another attempt
                if isinstance(exc, CrcError):
                    health.crc_errors += 1
                else:
                    health.frame_errors += 1
                if attempt == device.retries:
                    raise
                continue
            except DeviceException:
                health.exceptions += 1
                health.latency(time.monotonic() - started)
                raise
            except DecodeError:
                health.frame_errors += 1
                raise
            finally:
                self._last_io = time.monotonic()
            health.responses += 1
            health.latency(time.monotonic() - started)
            return words
        raise AssertionError("unreachable")

    @staticmethod
    def _what(request: ReadRequest) -> str:
        return (
            f"function {request.function_code} read of 0x{request.address:04X} "
            f"count {request.count}"
        )

    @staticmethod
    def _exception(who: str, code: int, what: str) -> DeviceException:
        name = EXCEPTION_NAMES.get(code, "unknown")
        return DeviceException(f"{who}: exception {code} ({name}) to {what}", code)


class ModbusTcpBus(ModbusBus):
    """One Modbus TCP connection shared by the devices behind it (pymodbus client).

    The connection is re-opened before a request if it dropped, and closed after a
    timeout so that a late answer cannot be taken for the next request's.  A connection
    the device closes while a request waits (devices that close after every reply) is
    noticed within :data:`_WATCH_S` and the request sent once more on a new connection.

    Args:
        host, port: TCP endpoint of the meter or gateway.
        clock, name, pause_s: as :class:`ModbusBus` (name default ``"host:port"``).
        connect_timeout_s: TCP connect timeout, real seconds.

    Raises:
        ValueError: ``pause_s`` negative or ``connect_timeout_s`` not positive.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        clock: Clock,
        name: str | None = None,
        pause_s: float = 0.0,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
    ) -> None:
        super().__init__(clock=clock, name=name or f"{host}:{port}", pause_s=pause_s)
        if not connect_timeout_s > 0:
            raise ValueError(f"connect_timeout_s must be > 0, got {connect_timeout_s}")
        self.host = host
        self.port = port
        self._connect_timeout_s = connect_timeout_s
        self._client: AsyncModbusTcpClient | None = None

    def where(self) -> str:
        return f"{self.host}:{self.port}"

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    async def _open(self, who: str) -> AsyncModbusTcpClient:
        """Open the connection if it is not open (caller holds the lock)."""
        client = self._client
        if client is not None and _is_open(client):
            return client
        if client is not None and client.connected:  # closed under pymodbus: start afresh
            self._client = None
            client.close()
            client = None
        if client is None:
            client = self._client = AsyncModbusTcpClient(
                self.host,
                port=self.port,
                name=self.name,
                timeout=self._connect_timeout_s,
                retries=0,
                reconnect_delay=0,  # no background reconnects: we reconnect on demand
            )
        _set_response_timeout(client, self._connect_timeout_s)
        started = time.monotonic()
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                ok = await client.connect()
        except TimeoutError:
            ok = False
        finally:
            self._last_io = time.monotonic()
        if not ok:
            client.close()
            if time.monotonic() - started >= 0.9 * self._connect_timeout_s:
                raise DeviceTimeout(
                    f"{who}: no TCP connection to {self.host}:{self.port} "
                    f"in {self._connect_timeout_s:g} s"
                )
            # pymodbus reports every connect failure alike: tell a name that does not
            # resolve from a refused or unreachable address
            problem = await _lookup_problem(self.host, self.port, self._connect_timeout_s)
            if problem is not None:
                raise DriverError(f"{who}: no TCP connection to {self.host}:{self.port}: {problem}")
            raise DriverError(
                f"{who}: TCP connection to {self.host}:{self.port} refused or unreachable"
            )
        return client

    async def _exchange(
        self, device: DeviceSpec, request: ReadRequest, who: str, health: _Health
    ) -> list[int]:
        what = self._what(request)
        response = await self._call(device, request, who, what)
        if response is None:
            # The device closed the connection without answering.  A device that closes
            # after each reply does so while the next request is already on its way: that
            # request went to a dead socket and never reached the device, so it is sent
            # once more on a new connection (a read changes nothing; not counted again).
            await self._open(who)
            await self._pause()
            response = await self._call(device, request, who, what)
            if response is None:
                raise DriverError(
                    f"{who}: connection closed by the device during {what} "
                    "(no answer on a new connection either)"
                )
        count = request.count
        if response.isError():
            raise self._exception(who, int(response.exception_code), what)
        registers = list(response.registers)
        if len(registers) != count:
            raise DecodeError(f"{who}: {what} answered {len(registers)} registers")
        return registers

    async def _call(self, device: DeviceSpec, request: ReadRequest, who: str, what: str):
        """Send ``request`` once and wait for its answer (pymodbus response), or None when
        the connection closes before an answer came (the connection is closed then).

        pymodbus keeps waiting for the answer when the peer closes the connection under
        a pending request, so the connection is watched every :data:`_WATCH_S`.
        """
        fc, address, count = request.function_code, request.address, request.count
        client = await self._open(who)
        _set_response_timeout(client, device.timeout_s + _PYMODBUS_MARGIN_S)
        call = client.read_input_registers if fc == 4 else client.read_holding_registers
        task = asyncio.ensure_future(call(address, count=count, device_id=device.device_id))
        deadline = time.monotonic() + device.timeout_s
        try:
            while not task.done():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                await asyncio.wait((task,), timeout=min(_WATCH_S, remaining))
                if not task.done() and not _is_open(client):
                    await self.close()
                    return None
            if not task.done():
                await self.close()  # a late answer must not reach the next request
                raise DeviceTimeout(f"{who}: no answer in {device.timeout_s:g} s to {what}")
            return task.result()
        except ConnectionException as exc:
            await self.close()
            raise DriverError(f"{who}: connection lost during {what} ({exc})") from None
        except ModbusException as exc:
            raise DriverError(f"{who}: {what} failed ({exc})") from None
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task


class RtuBus(ModbusBus):
    """Modbus RTU devices on one line: a serial port or a transparent RS-485 gateway.

    Before each request the bytes received since the last one are flushed (a late reply
    of a timed-out device, noise); the reply is the first frame with the request's device
    id, function code, length and a valid CRC (:class:`drivers.rtu.ReplyScanner`).  When
    only corrupt candidates came, the request fails with the last one's error
    (:class:`drivers.rtu.CrcError`, :class:`drivers.rtu.ByteCountError`) once the line has
    been quiet :data:`SETTLE_S`, rather than waiting for the whole timeout.

    Args:
        link: :class:`drivers.rtu.SerialLink` or :class:`drivers.rtu.TcpLink`.
        clock, name, pause_s: as :class:`ModbusBus` (name default: the link).
        echo: the RS-485 adapter echoes its own transmission: drop the request bytes read
            back before parsing the reply.
    """

    def __init__(
        self,
        link: Link,
        *,
        clock: Clock,
        name: str | None = None,
        pause_s: float = 0.0,
        echo: bool = False,
    ) -> None:
        super().__init__(clock=clock, name=name or link.description, pause_s=pause_s)
        self.link = link
        self.echo = echo

    def where(self) -> str:
        return self.link.description

    async def close(self) -> None:
        self.link.close()

    async def _open(self, who: str) -> None:
        if self.link.is_open:
            return
        try:
            await self.link.open()
        except DeviceTimeout as exc:
            raise DeviceTimeout(f"{who}: {exc}") from None
        except DriverError as exc:
            raise DriverError(f"{who}: {exc}") from None
        finally:
            self._last_io = time.monotonic()

    def _gap_s(self) -> float:
        return self.link.gap_s

    def _line_quiet_since(self) -> float:
        return self.link.last_rx

    async def _exchange(
        self, device: DeviceSpec, request: ReadRequest, who: str, health: _Health
    ) -> list[int]:
        link, what = self.link, self._what(request)
        await self._open(who)
        try:
            stale = link.take()
        except DriverError:  # the link failed while idle (gateway dropped us): reopen once
            await self._open(who)
            stale = b""
        health.discarded_bytes += len(stale)
        frame = encode_request(device.device_id, request.function_code, request.address, request.count)
        scanner = ReplyScanner(
            RtuRequest(device.device_id, request.function_code, request.address, request.count),
            echo=frame if self.echo else None,
        )
        try:
            link.write(frame)
            deadline = time.monotonic() + link.tx_time(len(frame)) + device.timeout_s
            while True:
                data = link.take()
                if data and scanner.feed(data) is not None:
                    break
                now = time.monotonic()
                until = deadline
                if scanner.errors:
                    until = min(deadline, link.last_rx + SETTLE_S)
                if now >= until:
                    break
                await link.wait(until)
        except DriverError as exc:
            raise DriverError(f"{who}: {what}: {exc}") from None
        reply = scanner.reply
        health.discarded_bytes += scanner.noise
        if reply is None:
            if scanner.errors:
                error = scanner.errors[-1]
                error.args = (f"{who}: {what}: {error.args[0]}",)
                raise error
            notes = []
            if scanner.echo_error is not None:
                notes.append(str(scanner.echo_error))
            if scanner.noise:
                notes.append(f"{scanner.noise} bytes of noise")
            note = f" ({'; '.join(notes)})" if notes else ""
            raise DeviceTimeout(f"{who}: no answer in {device.timeout_s:g} s to {what}{note}")
        if reply.exception_code is not None:
            raise self._exception(who, reply.exception_code, what)
        return list(reply.registers)


#: Bus kinds :func:`open_bus` makes.
BUS_KINDS = ("tcp", "rtu-tcp", "serial")


def open_bus(
    kind: str,
    target: str,
    *,
    clock: Clock,
    name: str | None = None,
    pause_s: float = 0.0,
    baudrate: int = 9600,
    parity: str = "N",
    bytesize: int = 8,
    stopbits: int = 1,
    echo: bool = False,
    connect_timeout_s: float = CONNECT_TIMEOUT_S,
) -> ModbusBus:
    """Make a bus (it connects on first use).

    Args:
        kind: ``"tcp"`` (Modbus TCP, target ``HOST:PORT``), ``"rtu-tcp"`` (RTU frames
            over TCP to a transparent gateway, ``HOST:PORT``) or ``"serial"`` (RTU on a
            serial port, target its path).
        target: see ``kind``.
        clock, name, pause_s: as :class:`ModbusBus`.
        baudrate, parity, bytesize, stopbits: serial line (default 9600 8N1, the
            bundled meters' setting, domain-facts.md §5; the Modbus default is 8E1).
        echo: the serial adapter echoes its transmission (RTU only).
        connect_timeout_s: TCP connect timeout, real s.

    Raises:
        ValueError: unknown kind, a target that is not ``HOST:PORT``, or bad settings.
    """
    if kind not in BUS_KINDS:
        raise ValueError(f"bus kind must be one of {BUS_KINDS}, got {kind!r}")
    if kind == "serial":
        link: Link = SerialLink(target, baudrate=baudrate, parity=parity, bytesize=bytesize, stopbits=stopbits)
        return RtuBus(link, clock=clock, name=name, pause_s=pause_s, echo=echo)
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{kind} target must be HOST:PORT, got {target!r}")
    host = host.strip("[]")
    if kind == "tcp":
        return ModbusTcpBus(host, int(port), clock=clock, name=name, pause_s=pause_s,
                            connect_timeout_s=connect_timeout_s)
    link = TcpLink(host, int(port), connect_timeout_s=connect_timeout_s)
    return RtuBus(link, clock=clock, name=name, pause_s=pause_s, echo=echo)


async def _lookup_problem(host: str, port: int, timeout_s: float) -> str | None:
    """Why ``host`` has no address (:func:`drivers.rtu.lookup_failure`), or None when it
    has one or the look-up does not finish within ``timeout_s``."""
    try:
        async with asyncio.timeout(timeout_s):
            await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        return lookup_failure(host, exc)
    except (TimeoutError, OSError, UnicodeError):
        return None
    return None


def _is_open(client: AsyncModbusTcpClient) -> bool:
    """The client's connection is up.  ``client.connected`` alone is not enough: when the
    device closes the connection at once, pymodbus 3.16's ``connect()`` sets the closed
    transport back after ``connection_lost`` cleared it, so the asyncio transport's own
    state is checked too (skipped if pymodbus moves it)."""
    if not client.connected:
        return False
    transport = getattr(getattr(client, "ctx", None), "transport", None)
    is_closing = getattr(transport, "is_closing", None)
    return not (callable(is_closing) and is_closing())


def _set_response_timeout(client: AsyncModbusTcpClient, seconds: float) -> None:
    """Set pymodbus's own connect/response timeout (pymodbus 3.16 keeps it in
    ``client.ctx.comm_params.timeout_connect``; ignored if that moves)."""
    params = getattr(getattr(client, "ctx", None), "comm_params", None)
    if params is not None and hasattr(params, "timeout_connect"):
        params.timeout_connect = seconds


# -- bus scan ----------------------------------------------------------------------------

#: Plausible range of whole-device values by base quantity, for :func:`scan_bus`.
#: Voltage 80..300 V brackets 220 V mains with sags and the 230/240 V of other grids;
#: frequency 45..65 Hz brackets 50 and 60 Hz; the detector settings are the product
#: ranges of domain-facts.md §4; port states the codes of FC-050.  A register map read
#: from the wrong model gives zeros (FC-031: an SDM answers a foreign map with zeros) or
#: nonsense (C-06, C-10), which these ranges reject.
PLAUSIBLE: dict[str, tuple[float, float]] = {
    "voltage": (80.0, 300.0),
    "frequency": (45.0, 65.0),
    "power_factor": (-1.0, 1.0),
    "current": (-100.0, 100.0),
    "active_power": (-25_000.0, 25_000.0),
    "apparent_power": (-25_000.0, 25_000.0),
    "reactive_power": (-25_000.0, 25_000.0),
    "energy_import": (0.0, 1e8),
    "energy_export": (0.0, 1e8),
    "energy_total": (0.0, 1e8),
    "residual_current": (0.0, 3000.0),
    "cable_temperature": (-40.0, 200.0),
    "residual_current_setting": (20.0, 1000.0),
    "temperature_setting": (55.0, 140.0),
    "port_state": (1.0, 4.0),
}


@dataclass(frozen=True)
class ProfileMatch:
    """How one profile fared on one device id.

    Attributes:
        profile: profile name.
        plausible: every checked value lies in :data:`PLAUSIBLE` and at least one was
            checked.
        checked: values checked against a range.
        values: the decoded values (empty if the read failed).
        reason: why not plausible (the error, or the first value out of range).
    """

    profile: str
    plausible: bool
    checked: int
    values: dict[str, float] = field(default_factory=dict)
    reason: str = ""


@dataclass(frozen=True)
class ScanHit:
    """A device id that answered, and the profiles tried on it.

    Attributes:
        device_id: the Modbus device id.
        probe: what the first probe got (``"registers"`` or ``"exception N"``).
        matches: one per profile tried.
        best: the plausible profile with the most checked values, or None.
    """

    device_id: int
    probe: str
    matches: tuple[ProfileMatch, ...]
    best: str | None


def _check_plausible(values: dict[str, float]) -> tuple[int, str]:
    """(values checked, first problem or "").  Channel values (ports, sensors) are not
    range-checked except port states: an idle port reads 0 V."""
    checked = 0
    for name, value in values.items():
        base, _, channel = name.partition(".")
        limits = PLAUSIBLE.get(base)
        if limits is None or (channel and base != "port_state"):
            continue
        checked += 1
        if not limits[0] <= value <= limits[1]:
            return checked, f"{name} = {value:g} outside {limits[0]:g}..{limits[1]:g}"
    return checked, "" if checked else "no value to check"


async def scan_bus(
    bus: ModbusBus,
    ids: Iterable[int],
    *,
    profiles: Sequence[str] | None = None,
    timeout_s: float = 0.3,
) -> list[ScanHit]:
    """Find the devices on a bus and which profile fits each.

    Each id gets one cheap probe (the first planned read of the first profile); an id that
    does not answer, or for which a gateway answers exception 10/11 (no such device), is
    absent and costs one timeout.  An id that answers (registers or another exception)
    is then read with every profile and the values checked against :data:`PLAUSIBLE`.

    Args:
        bus: an open or openable bus.
        ids: device ids to probe, each 1..247.
        profiles: profile names (default: every bundled one).
        timeout_s: per-request timeout, real s.

    Returns:
        the ids that answered, in probing order.

    Raises:
        DriverError: the bus itself failed (connection refused, port cannot be opened).
        ProfileError: an unknown profile.
    """
    names = list(profiles) if profiles is not None else list_profiles()
    loaded = [load_profile(name) for name in names]
    if not loaded:
        raise ProfileError("scan_bus needs at least one profile")
    probe = loaded[0].plan()[0]
    hits = []
    for device_id in ids:
        spec = DeviceSpec(f"scan-id{device_id}", names[0], device_id, timeout_s)
        try:
            await bus.read_registers(spec, probe.function_code, probe.address, probe.count)
            answer = "registers"
        except DeviceTimeout:
            continue
        except DeviceException as exc:
            if exc.code in (10, 11):
                continue
            answer = f"exception {exc.code}"
        except DecodeError as exc:
            answer = f"malformed reply ({type(exc).__name__})"
        matches = []
        for name in names:
            try:
                reading = await bus.read(DeviceSpec(f"scan-id{device_id}-{name}", name, device_id, timeout_s))
            except (DeviceTimeout, DeviceException, DecodeError) as exc:
                matches.append(ProfileMatch(name, False, 0, {}, str(exc)))
                continue
            checked, problem = _check_plausible(reading.values)
            matches.append(ProfileMatch(name, not problem, checked, dict(reading.values), problem))
        plausible = [m for m in matches if m.plausible]
        best = max(plausible, key=lambda m: m.checked).profile if plausible else None
        hits.append(ScanHit(device_id, answer, tuple(matches), best))
    return hits

