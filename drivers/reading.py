"""Typed readings: what every driver returns, whatever the protocol.

Quantity names are the same across device models for the same physical quantity, and each
has one unit (:data:`UNITS`, SI except where the field counts otherwise: energy in kWh as
meters count it, residual current in mA as fire detectors set and report it).  A reading's
timestamp is UTC epoch seconds taken from the shared clock when the request was sent.

Value names (one rule, :func:`quantity_unit`)::

    name    = base [ "." channel ]
    base    = a key of UNITS | "alarm_" word | "fault_" word
    channel = 1..999, no leading zero: the port, sensor or phase number printed on the device

So a pile's port 3 power is ``active_power.3``, a detector's second cable sensor is
``cable_temperature.2``, its over-temperature alarm on that sensor is
``alarm_cable_temperature.2`` and a pile's own supply fault is ``fault_supply``.  Names
without a channel are the device as a whole.  ``alarm_*`` and ``fault_*`` names are flags
(unit ``""``, value 0 or 1) decoded from a device's alarm and fault words; profiles name
them, so a new model's flags need no code.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass, field

#: base quantity -> unit.  Energy in kWh, as meters count it (IEC 62053-21 registers).
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
    # electrical-fire detectors (domain-facts.md §4): leakage is set and shown in mA
    "residual_current": "mA",
    "cable_temperature": "°C",
    # their alarm settings: 20..1000 mA and 55..140 °C on products (domain-facts.md §4)
    "residual_current_setting": "mA",
    "temperature_setting": "°C",
    # e-bike charging piles: port state code 1 idle, 2 charging, 3 disabled, 4 fault
    # (the codes of the Dianchuan board, field-vectors.md FC-050; see PORT_STATES)
    "port_state": "",
    # time a charging port has left of what was bought (Dianchuan 0x06, issue 8)
    "remaining_time": "s",
    # the gateway's own health (health topic, docs/mqtt.md): counts are plain numbers
    "uptime": "s",
    "outbox_depth": "",
    "outbox_dropped": "",
    "polls": "",
    "polls_ok": "",
    "bus_requests": "",
    "bus_responses": "",
    "bus_timeouts": "",
    "bus_errors": "",
    "bus_latency_mean": "s",
    "bus_latency_max": "s",
}

#: Prefixes of flag names (unit ``""``, value 0 or 1).
FLAG_PREFIXES = ("alarm_", "fault_")

#: ``port_state`` code -> :class:`drivers.pile.PortState` value (FC-050 codes).
PORT_STATES = {1: "idle", 2: "charging", 3: "disabled", 4: "fault"}

#: Highest channel number a name may carry.
MAX_CHANNEL = 999

_NAME = re.compile(r"^(?P<base>[a-z][a-z0-9_]*[a-z0-9])(?:\.(?P<channel>[1-9][0-9]{0,2}))?$")


@functools.lru_cache(maxsize=4096)
def quantity_unit(name: str) -> str:
    """Unit of a value name (see the module docstring for the rule).

    Examples: ``voltage`` -> ``"V"``, ``active_power.3`` -> ``"W"``,
    ``cable_temperature.2`` -> ``"°C"``, ``alarm_residual_current`` -> ``""``.

    Raises:
        ValueError: the name does not follow the rule or its base quantity is unknown.
    """
    match = _NAME.match(name) if isinstance(name, str) else None
    if match is None:
        raise ValueError(
            f"invalid quantity name {name!r}: expected base or base.N "
            "(lower-case base, channel N = 1..999)"
        )
    base = match["base"]
    unit = UNITS.get(base)
    if unit is not None:
        return unit
    for prefix in FLAG_PREFIXES:
        if base.startswith(prefix) and len(base) > len(prefix):
            return ""
    raise ValueError(
        f"unknown quantity {name!r}: base {base!r} is neither one of "
        f"{', '.join(UNITS)} nor a flag ({' or '.join(p + '*' for p in FLAG_PREFIXES)})"
    )


def split_channel(name: str) -> tuple[str, int | None]:
    """``"active_power.3"`` -> ``("active_power", 3)``; ``"voltage"`` -> ``("voltage", None)``.

    Raises:
        ValueError: as :func:`quantity_unit`.
    """
    quantity_unit(name)
    base, _, channel = name.partition(".")
    return base, int(channel) if channel else None


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
        values: value name (:func:`quantity_unit`) -> value in its unit; NaN values are
            dropped by the driver, never passed on.
        latency_s: request round trip, real seconds.

    Raises:
        ValueError: an unknown value name or a non-finite value.
    """

    device: str
    t: float
    values: dict[str, float] = field(default_factory=dict)
    latency_s: float = 0.0

    def __post_init__(self) -> None:
        for name, value in self.values.items():
            try:
                quantity_unit(name)
            except ValueError as exc:
                raise ValueError(f"reading of {self.device}: {exc}") from None
            if not math.isfinite(value):
                raise ValueError(f"reading of {self.device}: {name} is not finite ({value!r})")
