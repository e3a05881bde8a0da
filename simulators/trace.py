"""Load traces and ground truth: what the load models produce and the simulated meters serve.

A :class:`LoadTrace` is one household's active power on a regular time grid.  The meter
simulators look the value up at the shared clock's ``now()`` and integrate it for the energy
register, so a meter read at any moment answers consistently with the trace.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

#: Nominal supply, GB/T 12325-2008 (220 V single phase, 50 Hz in China).
NOMINAL_VOLTAGE_V = 220.0
NOMINAL_FREQUENCY_HZ = 50.0


@dataclass(frozen=True, slots=True)
class TrueSession:
    """One real (simulated or injected) e-bike charging session: the ground truth.

    Attributes:
        household: household id.
        start, end: UTC epoch s.
        energy_kwh: energy drawn from the wall during the session (kWh).
        peak_w: highest charger power at the wall (W).
        profile: ``"lead_acid"`` or ``"lithium"``.
    """

    household: str
    start: float
    end: float
    energy_kwh: float
    peak_w: float
    profile: str


@dataclass(slots=True)
class LoadTrace:
    """Active power of one household on a regular grid.

    Attributes:
        household: household id (also used as the meter's device name suffix).
        start: UTC epoch s of sample 0.
        step_s: sample spacing (s), > 0.
        power_w: shape (n,), float64, W, finite and >= 0.
        voltage_v: shape (n,), float64, V, or None for a nominal 220 V with small noise.
        power_factor: shape (n,), float64 in (0, 1], or None for 0.95.
    """

    household: str
    start: float
    step_s: float
    power_w: np.ndarray
    voltage_v: np.ndarray | None = None
    power_factor: np.ndarray | None = None
    _energy_kwh: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        p = np.asarray(self.power_w, dtype=np.float64)
        if p.ndim != 1 or p.size == 0:
            raise ValueError(f"{self.household}: power_w must be 1-D and non-empty")
        if not np.all(np.isfinite(p)):
            raise ValueError(f"{self.household}: power_w has NaN or inf")
        if not self.step_s > 0:
            raise ValueError(f"{self.household}: step_s must be > 0")
        self.power_w = p
        # energy at the END of each sample interval, kWh (cumulative)
        self._energy_kwh = np.cumsum(p) * (self.step_s / 3_600_000.0)

    @property
    def end(self) -> float:
        """UTC epoch s just after the last sample."""
        return self.start + self.power_w.size * self.step_s

    def index(self, t: float) -> int:
        """Sample index covering time ``t`` (clamped to the trace)."""
        i = int(math.floor((t - self.start) / self.step_s))
        return min(max(i, 0), self.power_w.size - 1)

    def at(self, t: float) -> dict[str, float]:
        """Meter quantities at time ``t`` (UTC epoch s).

        Returns:
            ``voltage`` (V), ``current`` (A), ``active_power`` (W), ``apparent_power``
            (VA), ``reactive_power`` (var), ``power_factor``, ``frequency`` (Hz),
            ``energy_import`` (kWh, integrated from the trace start, exact within the
            current sample).
        """
        i = self.index(t)
        p = float(self.power_w[i])
        v = float(self.voltage_v[i]) if self.voltage_v is not None else NOMINAL_VOLTAGE_V
        pf = float(self.power_factor[i]) if self.power_factor is not None else 0.95
        s = p / pf if pf > 0 else p
        q = math.sqrt(max(s * s - p * p, 0.0))
        frac = min(max((t - self.start) / self.step_s - i, 0.0), 1.0)
        e_before = float(self._energy_kwh[i - 1]) if i > 0 else 0.0
        energy = e_before + p * frac * self.step_s / 3_600_000.0
        return {
            "voltage": v,
            "current": s / v if v > 0 else 0.0,
            "active_power": p,
            "apparent_power": s,
            "reactive_power": q,
            "power_factor": pf,
            "frequency": NOMINAL_FREQUENCY_HZ,
            "energy_import": energy,
        }


@dataclass(slots=True)
class Scenario:
    """A set of households and the truth about them.

    Attributes:
        start, end: UTC epoch s of the simulated period.
        traces: one :class:`LoadTrace` per household.
        truth: every charging session in the traces.
        tz: IANA zone of the compound (night-time is local), e.g. ``"Asia/Shanghai"``.
    """

    start: float
    end: float
    traces: list[LoadTrace]
    truth: list[TrueSession]
    tz: str = "Asia/Shanghai"
