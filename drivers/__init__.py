"""drivers: meter profiles as data and the Modbus TCP bus that reads them.

Small public surface; pymodbus is used only inside :mod:`drivers.modbus`.  Profile types
(:class:`drivers.profile.Profile`, ``ReadRequest``) live in :mod:`drivers.profile`.
"""

from drivers.modbus import DeviceSpec, ModbusTcpBus
from drivers.profile import ProfileError, list_profiles, load_profile
from drivers.reading import DecodeError, DeviceException, DeviceTimeout, DriverError, Reading

__all__ = [
    "DecodeError",
    "DeviceException",
    "DeviceSpec",
    "DeviceTimeout",
    "DriverError",
    "ModbusTcpBus",
    "ProfileError",
    "Reading",
    "list_profiles",
    "load_profile",
]
