"""Simulated Modbus devices over TCP (pymodbus server): any profile, live values, faults.

One :class:`MeterServer` is one TCP endpoint, like an RS-485 gateway with several devices
behind it.  Every device answers with its profile's register map (``drivers/profiles``),
encoded by the same :class:`drivers.profile.Profile` the driver decodes with, so a read
returns exactly the wire encoding of the device's values at ``clock.now()``.  Values come
from a :class:`~simulators.trace.LoadTrace` (household meters: energy export 0, energy
total = import) or from any function ``values(t) -> {name: value}`` of the clock time
(piles, fire detectors: names as :func:`drivers.reading.quantity_unit`, plus the
profile's ``[[info]]`` names; NaN encodes a sentinel "not available").

A device answers only the reads its profile plans (the registers of each planned read,
with the function code of that read; anything else is exception 2, illegal address), so
a driver that reads across unknown registers fails here as it may on the device.

``framer="socket"`` is Modbus TCP; unknown device ids get exception 11 (gateway target
device failed to respond).  ``framer="rtu"`` sends RTU frames over TCP, like a transparent
RS-485 gateway; unknown ids are silent, as on the line.  Byte-level faults (bad CRC,
garbage, echo, paced bytes) are in :mod:`simulators.rtu_pty`, which also serves a pty.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Mapping
from typing import Any

from pymodbus.constants import ExcCodes
from pymodbus.exceptions import NoSuchIdException
from pymodbus.framer import FramerType
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from drivers.profile import Profile, load_profile
from flylead.clock import Clock
from simulators.trace import LoadTrace

#: Faults :meth:`MeterServer.set_fault` accepts: ``None`` healthy, ``"silent"`` no reply,
#: ``"exception"`` exception 4 (server device failure), ``"slow"`` reply after
#: ``delay_s`` real seconds.
FAULTS = (None, "silent", "exception", "slow")

#: A device's values: a household load trace, or a function of the clock time (UTC s).
ValueSource = LoadTrace | Callable[[float], Mapping[str, Any]]


class DeviceModel:
    """The register space of one simulated device: what it answers to a read.

    Args:
        profile: the device's profile.
        source: its values (:data:`ValueSource`).
        clock: the shared clock.
    """

    def __init__(self, profile: Profile, source: ValueSource, clock: Clock) -> None:
        self.profile = profile
        self._source = source
        self._clock = clock
        #: the planned reads (polled and identification): function code -> [(start, end)]
        self.spans: dict[int, list[tuple[int, int]]] = {}
        requests = sorted(
            [*profile.plan(), *profile.plan(info=True)], key=lambda r: (r.function_code, r.address)
        )
        for request in requests:
            spans = self.spans.setdefault(request.function_code, [])
            end = request.address + request.count
            if spans and request.address <= spans[-1][1]:  # overlapping reads: one span
                spans[-1] = (spans[-1][0], max(spans[-1][1], end))
            else:
                spans.append((request.address, end))

    def values(self) -> dict[str, Any]:
        """The device's values now."""
        if isinstance(self._source, LoadTrace):
            values: dict[str, Any] = self._source.at(self._clock.now())
            values.setdefault("energy_export", 0.0)
            values.setdefault("energy_total", values["energy_import"] + values["energy_export"])
            return values
        return dict(self._source(self._clock.now()))

    def registers(self, function_code: int) -> dict[int, int]:
        """Address -> word of every value of ``function_code`` now (the rest reads 0)."""
        words: dict[int, int] = {}
        for (fc, address), regs in self.profile.encode(self.values()).items():
            if fc == function_code:
                for i, word in enumerate(regs):
                    words[address + i] = word
        return words

    def read(self, function_code: int, address: int, count: int) -> list[int] | int:
        """The registers a read gets, or the Modbus exception code it gets (1 illegal
        function, 2 illegal data address, 3 illegal data value; application protocol §7)."""
        if function_code not in (3, 4) or function_code not in self.spans:
            return 1
        if not 1 <= count <= 125:
            return 3
        if not any(start <= address and address + count <= end for start, end in self.spans[function_code]):
            return 2
        words = self.registers(function_code)
        return [words.get(a, 0) for a in range(address, address + count)]


class FaultSwitch:
    """``set_fault`` for a simulator holding ``_models`` and ``_faults`` by device id; the
    subclass names its faults (``fault_names``) and how an unknown id reads (``unknown_id``)."""

    fault_names: tuple[str | None, ...] = FAULTS
    unknown_id = "no meter with device id {}"
    _models: Mapping[int, Any]
    _faults: dict[int, str | None]

    def set_fault(self, device_id: int, fault: str | None) -> None:
        """Inject a fault (see the module's ``FAULTS``).

        Raises:
            ValueError: unknown device id or fault.
        """
        if device_id not in self._models:
            raise ValueError(self.unknown_id.format(device_id))
        if fault not in self.fault_names:
            raise ValueError(f"fault must be one of {self.fault_names}, got {fault!r}")
        self._faults[device_id] = fault


class MeterServer(FaultSwitch):
    """Modbus TCP server on host:port serving simulated devices (device id -> values)
    with a profile's register map.

    Args:
        meters: Modbus device id (1..247) -> :data:`ValueSource` (a household's
            :class:`LoadTrace`, or ``values(t)``).
        profile: profile name or path for every device, or device id -> profile.
        clock: the shared clock (simulated time of every answer).
        host: address to listen on; loopback by default.
        port: TCP port; 0 picks a free one (read :attr:`port` after :meth:`start`).
        framer: ``"socket"`` (Modbus TCP) or ``"rtu"`` (RTU frames over TCP).
        delay_s: reply delay of the ``"slow"`` fault, real s.

    Attributes:
        port: the listening port once started.
        requests: device id -> requests received (faulted ones included).

    Raises:
        ValueError: no meters, a device id outside 1..247, a profile missing for a device,
            or an unknown framer.
        drivers.profile.ProfileError: invalid profile.
    """

    def __init__(
        self,
        meters: Mapping[int, ValueSource],
        *,
        profile: str | Mapping[int, str] = "sdm120",
        clock: Clock,
        host: str = "127.0.0.1",
        port: int = 0,
        framer: str = "socket",
        delay_s: float = 1.0,
    ) -> None:
        if not meters:
            raise ValueError("MeterServer needs at least one meter")
        for device_id in meters:
            if not 1 <= device_id <= 247:
                raise ValueError(f"device id must be 1..247, got {device_id}")
        if framer not in ("socket", "rtu"):
            raise ValueError(f"framer must be 'socket' or 'rtu', got {framer!r}")
        profiles = {i: profile for i in meters} if isinstance(profile, str) else dict(profile)
        missing = set(meters) - set(profiles)
        if missing:
            raise ValueError(f"no profile for device id(s) {sorted(missing)}")
        self.host = host
        self.port = port
        self.framer = framer
        self.delay_s = delay_s
        self.requests: dict[int, int] = {device_id: 0 for device_id in meters}
        self._models = {
            i: DeviceModel(_load(profiles[i]), source, clock) for i, source in meters.items()
        }
        self._faults: dict[int, str | None] = {}
        self._server: ModbusTcpServer | None = None

    async def start(self) -> None:
        """Start listening; afterwards :attr:`port` is the real port.

        Raises:
            RuntimeError: already started, or the address cannot be bound.
        """
        if self._server is not None:
            raise RuntimeError(f"meter server {self.host}:{self.port} already started")
        devices = [
            SimDevice(
                id=device_id,
                simdata=_blocks(model),
                action=functools.partial(self._answer, device_id),
            )
            for device_id, model in self._models.items()
        ]
        # id 0 stands for every other id: a TCP gateway answers exception 11, a line is
        # silent; its blocks span every address so that pymodbus calls the action first
        everything = [SimData(0, count=0x10000, datatype=DataType.REGISTERS, readonly=True)]
        unused = [SimData(0, datatype=DataType.BITS)]
        other = _unknown_device if self.framer == "socket" else _absent_device
        devices.append(
            SimDevice(id=0, simdata=(unused, list(unused), everything, list(everything)), action=other)
        )
        server = ModbusTcpServer(
            context=devices,
            address=(self.host, self.port),
            framer=FramerType.SOCKET if self.framer == "socket" else FramerType.RTU,
            ignore_missing_devices=True,  # lets a "silent" device send nothing at all
        )
        await server.serve_forever(background=True)
        self._server = server
        self.port = server.transport.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and drop every client connection."""
        server, self._server = self._server, None
        if server is not None:
            await server.shutdown()

    async def _answer(
        self,
        device_id: int,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        """pymodbus SimDevice action: write live values into ``registers`` (whose first
        element is address ``start_address``) before pymodbus slices the answer."""
        self.requests[device_id] += 1
        fault = self._faults.get(device_id)
        if fault == "silent":
            raise NoSuchIdException(f"device {device_id} silent (injected fault)")
        if fault == "exception":
            return ExcCodes.DEVICE_FAILURE
        if fault == "slow":
            await asyncio.sleep(self.delay_s)
        if set_values is not None or function_code not in (3, 4):
            return ExcCodes.ILLEGAL_FUNCTION
        for reg_address, word in self._models[device_id].registers(function_code).items():
            offset = reg_address - start_address
            if 0 <= offset < len(registers):
                registers[offset] = word
        return None


def _load(profile: str | Profile) -> Profile:
    return profile if isinstance(profile, Profile) else load_profile(profile)


def _blocks(model: DeviceModel) -> tuple[list[SimData], list[SimData], list[SimData], list[SimData]]:
    """pymodbus register blocks (coils, discrete inputs, holding, input): the planned
    reads of each function code.  pymodbus needs at least one block per kind, so a kind
    the profile does not use gets one register at 0xFFFF nobody reads."""
    def regs(fc: int) -> list[SimData]:
        spans = model.spans.get(fc) or [(0xFFFF, 0x10000)]
        return [
            SimData(start, count=end - start, datatype=DataType.REGISTERS, readonly=True)
            for start, end in spans
        ]

    unused = [SimData(0, datatype=DataType.BITS)]
    return (unused, list(unused), regs(3), regs(4))


async def _unknown_device(*_args: object) -> ExcCodes:
    return ExcCodes.GATEWAY_NO_RESPONSE


async def _absent_device(*_args: object) -> ExcCodes:
    raise NoSuchIdException("no device with that id on the line")


def constant_values(values: Mapping[str, Any]) -> Callable[[float], dict[str, Any]]:
    """A :data:`ValueSource` that always returns ``values`` (NaN allowed for sentinels)."""
    frozen = dict(values)
    return lambda _t: dict(frozen)

