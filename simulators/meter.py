"""Simulated Modbus TCP meters: live values from load traces, with injectable faults.

One :class:`MeterServer` is one TCP endpoint, like an RS-485 gateway with several meters
behind it.  Every meter answers with its profile's register map (``drivers/profiles``),
encoded by the same :class:`drivers.profile.Profile` the driver decodes with, so a read
returns exactly the float32 of ``trace.at(clock.now())`` (times the inverse scale).

A meter answers only the profile's function code and only the reads its profile plans
(the registers of each planned read; anything else is exception 2, illegal address),
so a driver that reads across unknown registers fails here as it may on the device.
Energy export is 0 and energy total equals energy import (the traces only draw power).
Unknown device ids get exception 11 (gateway target device failed to respond).
"""

from __future__ import annotations

import functools

from pymodbus.constants import ExcCodes
from pymodbus.exceptions import NoSuchIdException
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from drivers.profile import load_profile
from flylead.clock import Clock
from simulators.trace import LoadTrace

#: Faults :meth:`MeterServer.set_fault` accepts.
FAULTS = (None, "silent", "exception")


class MeterServer:
    """Modbus TCP server on host:port serving one or more simulated meters (device id ->
    LoadTrace) with a profile's register map, live values from ``trace.at(clock.now())``.

    Args:
        meters: Modbus device id (1..247) -> trace of that household.
        profile: profile name or path, e.g. ``"sdm120"`` or ``"ddsu666"``.
        clock: the shared clock (simulated time of every answer).
        host: address to listen on; loopback by default.
        port: TCP port; 0 picks a free one (read :attr:`port` after :meth:`start`).

    Attributes:
        port: the listening port once started.
        requests: device id -> requests received (faulted ones included).

    Raises:
        ValueError: no meters or a device id outside 1..247.
        drivers.profile.ProfileError: invalid profile.
    """

    def __init__(
        self,
        meters: dict[int, LoadTrace],
        *,
        profile: str = "sdm120",
        clock: Clock,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        if not meters:
            raise ValueError("MeterServer needs at least one meter")
        for device_id in meters:
            if not 1 <= device_id <= 247:
                raise ValueError(f"device id must be 1..247, got {device_id}")
        self.host = host
        self.port = port
        self.requests: dict[int, int] = {device_id: 0 for device_id in meters}
        self._meters = dict(meters)
        self._profile = load_profile(profile)
        self._quantities = {reg.quantity for reg in self._profile.registers}
        self._clock = clock
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
                simdata=self._blocks(),
                action=functools.partial(self._answer, device_id),
            )
            for device_id in self._meters
        ]
        devices.append(SimDevice(id=0, simdata=self._blocks(), action=_unknown_device))
        server = ModbusTcpServer(
            context=devices,
            address=(self.host, self.port),
            ignore_missing_devices=True,  # lets a "silent" meter send nothing at all
        )
        await server.serve_forever(background=True)
        self._server = server
        self.port = server.transport.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and drop every client connection."""
        server, self._server = self._server, None
        if server is not None:
            await server.shutdown()

    def set_fault(self, device_id: int, fault: str | None) -> None:
        """Inject a fault: ``None`` (healthy), ``"silent"`` (no reply at all) or
        ``"exception"`` (Modbus exception 4, server device failure).

        Raises:
            ValueError: unknown device id or fault.
        """
        if device_id not in self._meters:
            raise ValueError(f"no meter with device id {device_id}")
        if fault not in FAULTS:
            raise ValueError(f"fault must be one of {FAULTS}, got {fault!r}")
        self._faults[device_id] = fault

    def _blocks(self) -> list[SimData]:
        return [
            SimData(r.address, count=r.count, datatype=DataType.REGISTERS, readonly=True)
            for r in self._profile.plan()
        ]

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
        if function_code != self._profile.function_code or set_values is not None:
            return ExcCodes.ILLEGAL_FUNCTION
        values = self._meters[device_id].at(self._clock.now())
        values.setdefault("energy_export", 0.0)
        values.setdefault("energy_total", values["energy_import"] + values["energy_export"])
        live = {q: v for q, v in values.items() if q in self._quantities}
        for reg_address, words in self._profile.encode(live).items():
            offset = reg_address - start_address
            registers[offset : offset + len(words)] = words
        return None


async def _unknown_device(*_args: object) -> ExcCodes:
    return ExcCodes.GATEWAY_NO_RESPONSE
