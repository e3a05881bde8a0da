"""Charging piles, whatever protocol they speak: port readings and finished sessions.

A *pile* is one multi-port e-bike charging station (a board with, typically, 10 ports).
Drivers of pile protocols (:mod:`drivers.dianchuan` today, a Modbus pile profile later)
return these types, so detectors and the desk never see protocol details.

Units: power W, time s, energy kWh; timestamps UTC epoch s from the shared clock
(:mod:`flylead.clock`).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass


class PortState(enum.StrEnum):
    """What one charging port is doing."""

    IDLE = "idle"
    CHARGING = "charging"
    DISABLED = "disabled"
    FAULT = "fault"


class EndReason(enum.StrEnum):
    """Why a charging session ended.

    ``TIME_USED`` covers "the bought time or energy is used up"; ``USER_STOP`` a plug pulled
    or a stop button at the pile; ``REMOTE_STOP`` a stop sent by the gateway; ``FULL`` the
    pile's own full-charge stop; ``PORT_FAULT`` a port or pile fault; ``OVER_POWER`` a charger
    drawing more than the pile's per-port maximum; ``CARD_REFUND`` a card-refund stop;
    ``NO_CHARGER`` nothing plugged in after a start; ``UNKNOWN`` a code the driver does not
    know (the session still counts).
    """

    TIME_USED = "time_used"
    USER_STOP = "user_stop"
    REMOTE_STOP = "remote_stop"
    FULL = "full"
    PORT_FAULT = "port_fault"
    OVER_POWER = "over_power"
    CARD_REFUND = "card_refund"
    NO_CHARGER = "no_charger"
    UNKNOWN = "unknown"


def _check_port(who: str, port: int) -> None:
    if isinstance(port, bool) or not isinstance(port, int) or port < 1:
        raise ValueError(f"{who}: port must be an int >= 1, got {port!r}")


def _check_quantity(who: str, name: str, value: float | None, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if value is None or not math.isfinite(value) or value < 0:
        raise ValueError(f"{who}: {name} must be finite and >= 0, got {value!r}")


@dataclass(frozen=True, slots=True)
class PortReading:
    """One port of a pile at one poll.

    Attributes:
        port: port number, 1-based as printed on the pile.
        state: :class:`PortState`.
        power_w: instantaneous power, W (0 when not charging).
        remaining_s: charging time left, s (0 when not charging).
        energy_kwh: energy of the running session so far, kWh, as far as the driver has
            seen it; ``None`` when not charging or not known.

    Raises:
        ValueError: port < 1, or a negative or non-finite quantity.
    """

    port: int
    state: PortState
    power_w: float
    remaining_s: float
    energy_kwh: float | None = None

    def __post_init__(self) -> None:
        who = f"port reading of port {self.port}"
        _check_port(who, self.port)
        object.__setattr__(self, "state", PortState(self.state))
        _check_quantity(who, "power_w", self.power_w)
        _check_quantity(who, "remaining_s", self.remaining_s)
        _check_quantity(who, "energy_kwh", self.energy_kwh, optional=True)


@dataclass(frozen=True, slots=True)
class PileSession:
    """One finished charging session on one port.

    Attributes:
        pile: device name of the pile (configuration), e.g. ``"pile-b3"``.
        port: port number, 1-based.
        start: session start, UTC epoch s; ``None`` when the gateway never saw the session
            running (e.g. a coin session shorter than a poll interval).
        end: session end as the gateway learnt it (report or stop answer received),
            UTC epoch s.
        energy_kwh: energy delivered, kWh, or ``None`` when not known.
        end_reason: :class:`EndReason`.

    Raises:
        ValueError: port < 1, ``end`` before ``start``, or a negative or non-finite value.
    """

    pile: str
    port: int
    start: float | None
    end: float
    energy_kwh: float | None
    end_reason: EndReason

    def __post_init__(self) -> None:
        who = f"session of {self.pile} port {self.port}"
        if not self.pile:
            raise ValueError("pile session: pile name must not be empty")
        _check_port(who, self.port)
        object.__setattr__(self, "end_reason", EndReason(self.end_reason))
        if not math.isfinite(self.end):
            raise ValueError(f"{who}: end must be finite, got {self.end!r}")
        if self.start is not None:
            if not math.isfinite(self.start) or self.start > self.end:
                raise ValueError(
                    f"{who}: start {self.start!r} must be finite and <= end {self.end!r}")
        _check_quantity(who, "energy_kwh", self.energy_kwh, optional=True)

    @property
    def duration_s(self) -> float | None:
        """Session length, s, or ``None`` when the start is not known."""
        return None if self.start is None else self.end - self.start


def port_values(ports: list[PortReading]) -> dict[str, float]:
    """Port readings as channel values, the names the Modbus pile profile uses:
    ``port_state.N`` (code of :data:`drivers.reading.PORT_STATES`), ``active_power.N`` (W),
    ``remaining_time.N`` (s)."""
    from drivers.reading import PORT_STATES

    code = {state: c for c, state in PORT_STATES.items()}
    values: dict[str, float] = {}
    for p in ports:
        values[f"port_state.{p.port}"] = float(code[str(p.state)])
        values[f"active_power.{p.port}"] = float(p.power_w)
        values[f"remaining_time.{p.port}"] = float(p.remaining_s)
    return values
