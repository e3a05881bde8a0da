"""One reader per configured bus, whatever protocol its devices speak.

Every reader has ``read(device) -> Reading``, ``health() -> {device: counters}`` and
``close()``; the scheduler does not care whether a bus carries Modbus (TCP, RTU over TCP,
RTU on a serial port), DL/T 645-2007 meters or a Dianchuan charging board.
"""

from __future__ import annotations

from typing import Protocol

from agent.config import BusSettings, DeviceSettings
from drivers import DeviceSpec, Reading
from drivers.dianchuan import DianchuanPile
from drivers.dlt645 import WILDCARD_ADDRESS, Dlt645Client
from drivers.modbus import open_bus
from drivers.pile import port_values
from drivers.reading import DeviceTimeout, DriverError
from flylead.clock import Clock


class BusReader(Protocol):
    async def read(self, device: DeviceSettings) -> Reading: ...

    def health(self) -> dict[str, dict[str, float]]: ...

    async def close(self) -> None: ...


class ModbusReader:
    """Modbus devices through :func:`drivers.modbus.open_bus` (planned reads, bus health)."""

    def __init__(self, bus: BusSettings, clock: Clock) -> None:
        self._bus = open_bus(
            bus.kind, bus.target, clock=clock, name=bus.name, pause_s=bus.pause_s,
            baudrate=bus.baudrate or 9600, parity=bus.parity or "N", echo=bus.echo,
        )

    async def read(self, device: DeviceSettings) -> Reading:
        return await self._bus.read(DeviceSpec(
            name=device.name, profile=device.profile, device_id=device.device_id,
            timeout_s=device.timeout_s, retries=device.retries,
        ))

    def health(self) -> dict[str, dict[str, float]]:
        return self._bus.health()

    async def close(self) -> None:
        await self._bus.close()


def _serial_url(bus: BusSettings) -> str:
    return bus.serial if bus.serial is not None else f"socket://{bus.rtu_tcp}"


class _CountingReader:
    """Request/timeout/error counters for the serial protocols' clients."""

    def __init__(self) -> None:
        self._health: dict[str, dict[str, float]] = {}

    def _count(self, device: str, key: str) -> None:
        h = self._health.setdefault(device, {"requests": 0, "responses": 0, "timeouts": 0, "errors": 0})
        h[key] += 1

    def health(self) -> dict[str, dict[str, float]]:
        return {k: dict(v) for k, v in self._health.items()}

    async def _counted(self, device: str, coro):
        self._count(device, "requests")
        try:
            result = await coro
        except DeviceTimeout:
            self._count(device, "timeouts")
            raise
        except DriverError:
            self._count(device, "errors")
            raise
        self._count(device, "responses")
        return result


class Dlt645Reader(_CountingReader):
    """DL/T 645-2007 meters on one RS-485 line (2400 8E1 by default, domain-facts §6)."""

    def __init__(self, bus: BusSettings, clock: Clock) -> None:
        super().__init__()
        self._client = Dlt645Client(_serial_url(bus), clock=clock, baudrate=bus.baudrate or 2400,
                                    parity=bus.parity or "E")

    async def read(self, device: DeviceSettings) -> Reading:
        address = (device.address or WILDCARD_ADDRESS).upper()
        return await self._counted(device.name, self._client.read(address, device=device.name))

    async def close(self) -> None:
        await self._client.close()


class DianchuanReader(_CountingReader):
    """A Dianchuan/Dongjun 10-port charging board (9600 8N1, field-vectors FC-050); its
    ports become ``port_state.N``, ``active_power.N`` and ``remaining_time.N`` values, the
    names the Modbus pile profile uses.  Read-only: no control command is ever sent."""

    def __init__(self, bus: BusSettings, clock: Clock) -> None:
        super().__init__()
        self._bus, self._clock = bus, clock
        self._piles: dict[str, object] = {}

    async def read(self, device: DeviceSettings) -> Reading:
        pile = self._piles.get(device.name)
        if pile is None:
            pile = DianchuanPile(_serial_url(self._bus), device=device.name, clock=self._clock,
                                 timeout_s=device.timeout_s)
            self._piles[device.name] = pile
        t = self._clock.now()
        ports = await self._counted(device.name, pile.read_ports())
        return Reading(device.name, t, port_values(ports))

    async def close(self) -> None:
        for pile in self._piles.values():
            await pile.close()


def open_reader(bus: BusSettings, clock: Clock) -> BusReader:
    """The reader for ``bus.protocol``."""
    if bus.protocol == "dlt645":
        return Dlt645Reader(bus, clock)
    if bus.protocol == "dianchuan":
        return DianchuanReader(bus, clock)
    return ModbusReader(bus, clock)
