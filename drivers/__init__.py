"""drivers: device profiles as data, Modbus buses (TCP, RTU on serial, RTU over TCP) that
read them, DL/T 645 (:mod:`drivers.dlt645`), and typed readings.

Small public surface; pymodbus is used only inside :mod:`drivers.modbus`.  Profile types
(:class:`drivers.profile.Profile`, ``ReadRequest``, ``RegisterType``) live in
:mod:`drivers.profile`, the RTU codec and its frame errors in :mod:`drivers.rtu`.
"""

from drivers.modbus import DeviceSpec, ModbusBus, ModbusTcpBus, RtuBus, open_bus, scan_bus
from drivers.profile import ProfileError, list_profiles, load_profile
from drivers.reading import (
    DecodeError,
    DeviceException,
    DeviceTimeout,
    DriverError,
    Reading,
    quantity_unit,
)

__all__ = [
    "DecodeError",
    "DeviceException",
    "DeviceSpec",
    "DeviceTimeout",
    "DriverError",
    "ModbusBus",
    "ModbusTcpBus",
    "ProfileError",
    "Reading",
    "RtuBus",
    "list_profiles",
    "load_profile",
    "open_bus",
    "quantity_unit",
    "scan_bus",
]
