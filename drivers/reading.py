"""Typed readings: what every driver returns, whatever the protocol.

Quantity names are the same across device models for the same physical quantity, and each
has one SI unit (listed in :data:`UNITS`).  A reading's timestamp is UTC epoch seconds
taken from the shared clock when the request was sent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

#: quantity name -> unit.  Energy in kWh, as meters count it (IEC 62053-21 registers).
UNITS: dict[str, str] = {
    "voltage": "V",
    "current": "A",
    "active_power": "W",
    "apparent_power": "VA",
    "reactive_power": "var",
    "power_factor": "",
    "frequency": "Hz",
    "energy_import": "kWh",
    "energy_export": "kWh",
    "energy_total": "kWh",
}


class DriverError(Exception):
    """Base of every error a driver raises; the message names the device and what failed."""


class DeviceTimeout(DriverError):
    """The device did not answer within its timeout."""


class DeviceException(DriverError):
    """The device answered with a Modbus exception response (code in ``.code``)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class DecodeError(DriverError):
    """A frame or register block could not be decoded."""


@dataclass(frozen=True, slots=True)
class Reading:
    """One poll of one device.

    Attributes:
        device: device name from configuration (e.g. ``"meter-h01"``).
        t: time the request was sent, UTC epoch s.
        values: quantity -> value in the unit of :data:`UNITS`; NaN values are dropped
            by the driver, never passed on.
        latency_s: request round trip, real seconds.
    """

    device: str
    t: float
    values: dict[str, float] = field(default_factory=dict)
    latency_s: float = 0.0

    def __post_init__(self) -> None:
        for name, value in self.values.items():
            if name not in UNITS:
                raise ValueError(f"reading of {self.device}: unknown quantity {name!r}")
            if not math.isfinite(value):
                raise ValueError(f"reading of {self.device}: {name} is not finite ({value!r})")
