"""A simulated 10-port e-bike charging pile over the project's reference Modbus map
(``drivers/profiles/ebike_pile.toml``), with usage, a fault, counter pitfalls and ground truth.

:meth:`PileTrace.values` is a :class:`simulators.meter.MeterServer` value source::

    trace = pile_usage(start, 48, seed=1)
    server = MeterServer({3: trace.values}, profile={3: "ebike_pile"}, clock=clock)

Values sit on a regular grid (``step_s``, default 5 s): each port's state code (1 idle,
2 charging, 4 fault: FC-050), power (chargers of :mod:`simulators.loads`, domain-facts.md
§2), voltage, current, a cumulative energy counter (kWh, integrated exactly from the
power, so it reads the same at any time) and fault flags; the pile's total power and its
own meter.  Counters are rounded to the register resolution (0.001 kWh per port, 0.01
kWh for the pile) in :meth:`PileTrace.reading`, as the wire rounds them.

Field pitfalls on purpose (field-vectors.md C-05): :meth:`PileSim.counter_glitch` (a
counter reads 0 for one poll) and :meth:`PileSim.counter_reset` (a counter restarts from 0).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np

from simulators.loads import lead_acid_session, lithium_session

#: Ports of the pile (FC-051: the captured board has 10).
PORTS = 10
#: Supply, GB/T 12325 nominal (as simulators.trace).
VOLTAGE_V, FREQUENCY_HZ = 220.0, 50.0
#: Port state codes (FC-050).
IDLE, CHARGING, DISABLED, FAULT = 1, 2, 3, 4
#: How long a port stays in the fault state after an over-power stop, s (chosen).
FAULT_HOLD_S = 600.0


@dataclass(frozen=True, slots=True)
class PlannedSession:
    """A session to put on a port.

    Attributes:
        port: 1..ports; start, end: UTC epoch s (snapped to the grid).
        profile: ``lead_acid`` or ``lithium`` charger.
        user: who charges (a household id for pile links), or None.
        fault: the session ends at ``end`` with an over-power stop (FC-053: the board stops a
            port above its maximum power): state 4 and ``fault_over_power.N`` for
            :data:`FAULT_HOLD_S`.
    """

    port: int
    start: float
    end: float
    profile: str = "lead_acid"
    user: str | None = None
    fault: bool = False


@dataclass(frozen=True, slots=True)
class TruePileSession:
    """Ground truth of one session (times on the grid, UTC epoch s; energy the exact
    integral of the port power, kWh)."""

    pile: str
    port: int
    start: float
    end: float
    energy_kwh: float
    peak_w: float
    user: str | None
    end_reason: str
    faults: tuple[str, ...] = ()


@dataclass(slots=True)
class PileTrace:
    """A pile's values on a grid (build with :class:`PileSim` or :func:`pile_usage`).

    Attributes:
        pile: device name; start: UTC epoch s of sample 0; step_s: spacing, s.
        power_w: shape (ports, n), W.  state: shape (ports, n), codes 1..4.
        counter_kwh: shape (ports, n), each port's counter at each grid time, kWh, as served
            (resets and glitches applied).
        flags: (port, flag name) -> shape (n,) bool.
        truth: sessions, by start.
    """

    pile: str
    start: float
    step_s: float
    power_w: np.ndarray
    state: np.ndarray
    counter_kwh: np.ndarray
    pile_offset_kwh: float
    flags: dict[tuple[int, str], np.ndarray]
    truth: list[TruePileSession] = field(default_factory=list)

    @property
    def ports(self) -> int:
        return self.power_w.shape[0]

    @property
    def end(self) -> float:
        return self.start + self.power_w.shape[1] * self.step_s

    def times(self) -> np.ndarray:
        return self.start + np.arange(self.power_w.shape[1]) * self.step_s

    def index(self, t: float) -> int:
        i = int(math.floor((t - self.start) / self.step_s + 1e-9))
        return min(max(i, 0), self.power_w.shape[1] - 1)

    def values(self, t: float) -> dict[str, float | str]:
        """Every value of the ``ebike_pile`` profile at ``t``: a ``MeterServer`` source."""
        i = self.index(t)
        out: dict[str, float | str] = {}
        total_w, total_kwh = 0.0, self.pile_offset_kwh
        for k in range(self.ports):
            port = k + 1
            p = float(self.power_w[k, i])
            state = int(self.state[k, i])
            v = VOLTAGE_V if state == CHARGING else 0.0
            out[f"port_state.{port}"] = float(state)
            out[f"voltage.{port}"] = v
            out[f"current.{port}"] = p / v if v > 0 else 0.0
            out[f"active_power.{port}"] = p
            out[f"energy_import.{port}"] = float(self.counter_kwh[k, i])
            for name in ("fault_over_current", "fault_over_power", "fault_over_temperature", "fault_relay"):
                arr = self.flags.get((port, name))
                out[f"{name}.{port}"] = 1.0 if arr is not None and arr[i] else 0.0
            total_w += p
            total_kwh += float(self.counter_kwh[k, i])
        out.update({"voltage": VOLTAGE_V, "frequency": FREQUENCY_HZ, "active_power": total_w,
                    "energy_import": total_kwh, "fault_over_temperature": 0.0, "fault_supply": 0.0,
                    "fault_meter": 0.0, "model": "EP-10"})
        return out

    def reading(self, t: float) -> dict[str, float]:
        """What the driver decodes at ``t`` (values at register resolution, no info)."""
        out = {}
        for k, v in self.values(t).items():
            if k == "model":
                continue
            base = k.partition(".")[0]
            per_unit = {"energy_import": 1000 if "." in k else 100, "active_power": 10 if "." in k else 1,
                        "current": 1000, "voltage": 10, "frequency": 100}.get(base)
            out[k] = round(float(v) * per_unit) / per_unit if per_unit else float(v)  # as the driver divides
        return out


class PileSim:
    """Builds a :class:`PileTrace`: sessions, faults, counter pitfalls, then :meth:`build`.

    Args:
        pile: device name; start: UTC epoch s; hours: length, h; ports: number of ports.
        step_s: grid spacing, s; seed: seed of the chargers' draws and the counters' offsets.

    Raises:
        ValueError: non-positive hours, step or ports.
    """

    def __init__(self, pile: str = "pile-1", *, start: float, hours: float = 48.0, ports: int = PORTS,
                 step_s: float = 5.0, seed: int = 1) -> None:
        if not hours > 0 or not step_s > 0 or ports < 1:
            raise ValueError("hours, step_s and ports must be > 0")
        self.pile, self.start, self.step_s, self.ports = pile, float(start), float(step_s), ports
        self.n = int(round(hours * 3600.0 / step_s))
        self._rng = np.random.default_rng([seed, 6051])
        self._offsets = np.round(self._rng.uniform(10.0, 500.0, ports), 3)  # counters in service
        self._pile_offset = round(float(self._rng.uniform(1000.0, 5000.0)), 2)
        self._planned: list[PlannedSession] = []
        self._glitches: list[tuple[int, float]] = []
        self._resets: list[tuple[int, float]] = []

    def _i(self, t: float) -> int:
        return min(max(int(math.ceil((t - self.start) / self.step_s - 1e-9)), 0), self.n)

    def add(self, session: PlannedSession) -> None:
        """Put a session on its port.

        Raises:
            ValueError: bad port or times, or it overlaps another session on that port
                (including the fault hold after a faulted one).
        """
        if not 1 <= session.port <= self.ports or not session.end > session.start:
            raise ValueError(f"bad session {session}")
        for other in self._planned:
            if other.port != session.port:
                continue
            other_end = other.end + (FAULT_HOLD_S if other.fault else 0.0)
            end = session.end + (FAULT_HOLD_S if session.fault else 0.0)
            if session.start < other_end and other.start < end:
                raise ValueError(f"session {session} overlaps {other}")
        self._planned.append(session)

    def free(self, port: int, start: float, end: float) -> bool:
        """Whether ``port`` has no session over [start, end)."""
        for o in self._planned:
            if o.port == port and start < o.end + (FAULT_HOLD_S if o.fault else 0.0) and o.start < end:
                return False
        return True

    def counter_glitch(self, port: int, t: float) -> None:
        """The port's counter reads 0 for the one sample at ``t`` (C-05 bad read)."""
        self._glitches.append((port, t))

    def counter_reset(self, port: int, t: float) -> None:
        """The port's counter restarts from 0 at ``t`` (C-05 confirmed reset)."""
        self._resets.append((port, t))

    def build(self) -> PileTrace:
        n, step = self.n, self.step_s
        power = np.zeros((self.ports, n))
        state = np.full((self.ports, n), IDLE, dtype=np.int8)
        flags: dict[tuple[int, str], np.ndarray] = {}
        truth = []
        planned = sorted(self._planned, key=lambda s: (s.start, s.port))
        spans = []
        for s in planned:
            k, a, b = s.port - 1, self._i(s.start), self._i(s.end)
            if b <= a:
                continue
            draw = lead_acid_session if s.profile == "lead_acid" else lithium_session
            p = draw((b - a) * step, step, self._rng)[: b - a]
            power[k, a:a + p.size] = p
            state[k, a:b] = CHARGING
            faults: tuple[str, ...] = ()
            if s.fault:
                hold = self._i(s.end + FAULT_HOLD_S)
                state[k, b:hold] = FAULT
                flag = flags.setdefault((s.port, "fault_over_power"), np.zeros(n, bool))
                flag[b:hold] = True
                faults = ("fault_over_power",)
            spans.append((s, k, a, b, faults))
        # exact counters: energy at each grid time (power held over each step)
        energy = np.concatenate([np.zeros((self.ports, 1)), np.cumsum(power, axis=1)[:, :-1]], axis=1) * step / 3.6e6
        counter = energy + self._offsets[:, None]
        for s, k, a, b, faults in spans:
            e = float(energy[k, b] - energy[k, a]) if b < n else float(energy[k, -1] + power[k, -1] * step / 3.6e6
                                                                     - energy[k, a])
            truth.append(TruePileSession(
                self.pile, s.port, self.start + a * step, self.start + b * step, e,
                float(power[k, a:b].max()), s.user, "over_power" if s.fault else "full", faults))
        for port, t in sorted(self._resets):
            i = self._i(t)
            counter[port - 1, i:] -= counter[port - 1, i]
        for port, t in self._glitches:
            i = self._i(t)
            if i < n:
                counter[port - 1, i] = 0.0
        return PileTrace(self.pile, self.start, step, power, state, counter, self._pile_offset, flags,
                         sorted(truth, key=lambda x: (x.start, x.port)))


def pile_usage(start: float, hours: float = 48.0, *, pile: str = "pile-1", ports: int = PORTS, seed: int = 1,
               step_s: float = 5.0, planned: Iterable[PlannedSession] = (), fault_port: int | None = 7,
               evening_share: float = 0.6, day_share: float = 0.2, tz: str = "Asia/Shanghai",
               users: Sequence[str] = ()) -> PileTrace:
    """A pile in use: ``planned`` sessions first, then seeded random ones around them.

    Random use (chosen to look like a compound's evening peak, domain-facts.md §2: charging
    mostly at night, 6-10 h lead-acid sessions): each port, each local evening, a session
    with probability ``evening_share`` starting 18:00-23:00 and lasting 4-9 h; each day, a
    1-3 h session with probability ``day_share`` starting 09:00-15:00.  Three in four
    chargers are lead-acid.  The first random session on ``fault_port`` ends in an
    over-power stop halfway.  Sessions that would not fit in the period or would overlap
    are left out.  ``users`` are drawn for random sessions when given.
    """
    sim = PileSim(pile, start=start, hours=hours, ports=ports, step_s=step_s, seed=seed)
    for s in planned:
        sim.add(s)
    rng = np.random.default_rng([seed, 6050])
    zone = ZoneInfo(tz)
    day0 = datetime.fromtimestamp(start, zone).replace(hour=0, minute=0, second=0, microsecond=0)
    end = start + hours * 3600.0
    faulted = fault_port is None
    for day in range(int(hours // 24) + 2):
        for port in range(1, ports + 1):
            for share, h0, h1, d0, d1 in ((day_share, 9.0, 15.0, 1.0, 3.0), (evening_share, 18.0, 23.0, 4.0, 9.0)):
                go, hour, dur = rng.random() < share, rng.uniform(h0, h1), rng.uniform(d0, d1)
                profile = "lead_acid" if rng.random() < 0.75 else "lithium"
                user = str(rng.choice(users)) if users else None
                a = (day0 + timedelta(days=day, hours=hour)).timestamp()
                b = a + dur * 3600.0
                fault = not faulted and port == fault_port
                if fault:
                    b = a + dur * 1800.0
                if not go or a < start or b + FAULT_HOLD_S > end or not sim.free(port, a, b + FAULT_HOLD_S):
                    continue
                sim.add(PlannedSession(port, a, b, profile, user, fault))
                faulted = faulted or fault
    return sim.build()
