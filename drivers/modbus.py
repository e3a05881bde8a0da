"""Modbus TCP polling: one connection per bus, one request at a time, typed readings out.

This is the only module that imports pymodbus (its API moves between minor releases:
domain-facts.md §5, style-anchors.md).  A :class:`ModbusTcpBus` is one TCP connection,
to a meter or to an RS-485 gateway with several devices behind it; every device on it is
described by a :class:`DeviceSpec` and read with :meth:`ModbusTcpBus.read`.

Field pitfalls handled here (domain-facts.md §5, field-vectors.md C-08):

* a dead device must not stall the bus: every request has its own timeout (real seconds),
  pymodbus never retries on its own, and the next device is asked as soon as it expires;
* a late reply to a timed-out request is never taken for the next request's answer:
  after a timeout the connection is closed and the next request opens a new one, so a
  late frame goes to a dead socket.  Transaction ids alone are not enough with pymodbus
  3.16: it does skip frames with a foreign transaction or device id, but it discards its
  whole receive buffer once it exceeds 260 bytes, so a late 76-register answer arriving
  together with the next one loses both (found with the late-replying gateway in
  ``tests/test_modbus.py``);
* some devices need a pause between requests or after connecting (``pause_s``).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException

from drivers.profile import Profile, ReadRequest, load_profile
from drivers.reading import DecodeError, DeviceException, DeviceTimeout, DriverError, Reading
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

# pymodbus's internal response timeout is set this much above the device's, so that
# ours (asyncio.timeout) always fires first and gives one clean DeviceTimeout.
_PYMODBUS_MARGIN_S = 0.25


@dataclass(frozen=True)
class DeviceSpec:
    """One device on a bus.

    Attributes:
        name: device name used in readings and errors, e.g. ``"meter-h01"``.
        profile: profile name or path (:func:`drivers.profile.load_profile`), e.g. ``"sdm120"``.
        device_id: Modbus device (unit) id, 1..247 (Modbus over serial line v1.02 §2.2).
        timeout_s: longest wait for one answer, real seconds, > 0.
        retries: further attempts after a timeout (each costs up to ``timeout_s``), >= 0.

    Raises:
        ValueError: a field is out of range.
    """

    name: str
    profile: str
    device_id: int = 1
    timeout_s: float = 0.5
    retries: int = 0

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("DeviceSpec name must not be empty")
        if not 1 <= self.device_id <= 247:
            raise ValueError(f"{self.name}: device_id must be 1..247, got {self.device_id}")
        if not self.timeout_s > 0:
            raise ValueError(f"{self.name}: timeout_s must be > 0, got {self.timeout_s}")
        if self.retries < 0:
            raise ValueError(f"{self.name}: retries must be >= 0, got {self.retries}")


class ModbusTcpBus:
    """One Modbus TCP connection shared by the devices behind it.

    Requests are serialised (one outstanding request per bus, like the RS-485 line behind
    a gateway), separated by at least ``pause_s`` real seconds, and the connection is
    re-opened before a request if it dropped.  Each profile is loaded and planned once.

    Args:
        host, port: TCP endpoint of the meter or gateway.
        clock: stamps readings (``clock.now()`` when a device's first request is sent).
        name: bus name for logs (default ``"host:port"``).
        pause_s: minimum real seconds between the end of one request (or the connect) and
            the start of the next, >= 0 (Eastron: >= 0.1 s, field-vectors.md C-08).
        connect_timeout_s: TCP connect timeout, real seconds.
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
        if pause_s < 0:
            raise ValueError(f"pause_s must be >= 0, got {pause_s}")
        if not connect_timeout_s > 0:
            raise ValueError(f"connect_timeout_s must be > 0, got {connect_timeout_s}")
        self.host = host
        self.port = port
        self.name = name or f"{host}:{port}"
        self._clock = clock
        self._pause_s = pause_s
        self._connect_timeout_s = connect_timeout_s
        self._client: AsyncModbusTcpClient | None = None
        self._lock = asyncio.Lock()
        self._last_io = float("-inf")  # monotonic end of the last request or connect
        self._plans: dict[str, tuple[Profile, list[ReadRequest]]] = {}

    async def connect(self) -> None:
        """Open the TCP connection (done on demand by :meth:`read` too).

        Raises:
            DeviceTimeout: no connection within ``connect_timeout_s``.
            DriverError: connection refused or host unreachable.
        """
        async with self._lock:
            await self._connect(f"bus {self.name}")

    async def close(self) -> None:
        """Close the connection; a later :meth:`read` opens it again."""
        client, self._client = self._client, None
        if client is not None:
            client.close()

    async def read(self, device: DeviceSpec) -> Reading:
        """Read every quantity of ``device``'s profile.

        Returns:
            a :class:`Reading` stamped with ``clock.now()`` when the first request was
            sent, ``latency_s`` = real seconds until the last answer.

        Raises:
            DeviceTimeout: no answer within ``device.timeout_s`` (after ``retries``), or no
                connection.
            DeviceException: the device answered with a Modbus exception (``.code``).
            DecodeError: an answer of the wrong length or with undecodable registers.
            DriverError: connection refused or lost.
            drivers.profile.ProfileError: the device's profile is invalid (configuration).
        """
        profile, plan = self._plan(device.profile)
        who = self._who(device)
        blocks: dict[int, list[int]] = {}
        async with self._lock:
            t = 0.0
            started = 0.0
            for i, request in enumerate(plan):
                await self._pause()
                if i == 0:
                    t = self._clock.now()
                    started = time.monotonic()
                blocks[request.address] = await self._request(device, request, who)
            latency = time.monotonic() - started
        return Reading(device.name, t, profile.decode(blocks, device=who), latency)

    # -- internals ---------------------------------------------------------------------

    def _who(self, device: DeviceSpec) -> str:
        return f"{device.name} (device id {device.device_id} at {self.host}:{self.port})"

    def _plan(self, profile_name: str) -> tuple[Profile, list[ReadRequest]]:
        entry = self._plans.get(profile_name)
        if entry is None:
            profile = load_profile(profile_name)
            entry = self._plans[profile_name] = (profile, profile.plan())
        return entry

    async def _pause(self) -> None:
        wait = self._last_io + self._pause_s - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)

    async def _connect(self, who: str) -> AsyncModbusTcpClient:
        """Open the connection if it is not open (caller holds the lock)."""
        client = self._client
        if client is not None and client.connected:
            return client
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
            raise DriverError(
                f"{who}: TCP connection to {self.host}:{self.port} refused or unreachable"
            )
        return client

    async def _request(self, device: DeviceSpec, request: ReadRequest, who: str) -> list[int]:
        for attempt in range(device.retries + 1):
            if attempt:
                await self._pause()
            try:
                return await self._request_once(device, request, who)
            except DeviceTimeout:
                if attempt == device.retries:
                    raise
        raise AssertionError("unreachable")

    async def _request_once(self, device: DeviceSpec, request: ReadRequest, who: str) -> list[int]:
        fc, address, count = request.function_code, request.address, request.count
        what = f"function {fc} read of 0x{address:04X} count {count}"
        client = await self._connect(who)
        _set_response_timeout(client, device.timeout_s + _PYMODBUS_MARGIN_S)
        call = client.read_input_registers if fc == 4 else client.read_holding_registers
        try:
            async with asyncio.timeout(device.timeout_s):
                response = await call(address, count=count, device_id=device.device_id)
        except TimeoutError:
            await self.close()  # a late answer must not reach the next request
            raise DeviceTimeout(f"{who}: no answer in {device.timeout_s:g} s to {what}") from None
        except ConnectionException as exc:
            await self.close()
            raise DriverError(f"{who}: connection lost during {what} ({exc})") from None
        except ModbusException as exc:
            raise DriverError(f"{who}: {what} failed ({exc})") from None
        finally:
            self._last_io = time.monotonic()
        if response.isError():
            code = int(response.exception_code)
            name = EXCEPTION_NAMES.get(code, "unknown")
            raise DeviceException(f"{who}: exception {code} ({name}) to {what}", code)
        registers = list(response.registers)
        if len(registers) != count:
            raise DecodeError(f"{who}: {what} answered {len(registers)} registers")
        return registers


def _set_response_timeout(client: AsyncModbusTcpClient, seconds: float) -> None:
    """Set pymodbus's own connect/response timeout (pymodbus 3.16 keeps it in
    ``client.ctx.comm_params.timeout_connect``; ignored if that moves)."""
    params = getattr(getattr(client, "ctx", None), "comm_params", None)
    if params is not None and hasattr(params, "timeout_connect"):
        params.timeout_connect = seconds
