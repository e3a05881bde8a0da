"""Pile sessions (exact start, end, energy; C-05 counter pitfalls; faults), utilisation, and
pile-aware suppression of home-charging alerts; the pile simulator over the real Modbus map."""

from __future__ import annotations

import asyncio
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from detectors.piles import (
    PileLink,
    PileSettings,
    PileTracker,
    PortSample,
    PortSession,
    compound_utilisation,
    port_samples,
    suppress_home_charging,
    utilisation,
)
from drivers import DeviceSpec, ModbusTcpBus
from drivers.pile import PileSession, PortReading
from simulators.meter import MeterServer
from simulators.pile import PileSim, PlannedSession, pile_usage
from tests.clocks import StepClock

pytestmark = pytest.mark.timeout(60)

ZONE = ZoneInfo("Asia/Shanghai")
T0 = datetime(2025, 6, 1, 12, 0, tzinfo=ZONE).timestamp()
H = 3600.0


def track(samples_by_t, settings=None, pile="pile-1"):
    tracker = PileTracker(pile, settings)
    ended = []
    for t, samples in samples_by_t:
        ended += tracker.update(t, samples)
    return tracker, ended


def counter_series(port, t_start, t_end, power_w, polls, base=100.0):
    """Port samples at ``polls`` of a charger drawing ``power_w`` over [t_start, t_end),
    with the exact counter."""
    out = []
    for t in polls:
        energy = power_w * max(0.0, min(t, t_end) - t_start) / 3.6e6
        state = "charging" if t_start <= t < t_end else "idle"
        out.append((t, [PortSample(port, state, power_w if state == "charging" else 0.0, base + energy)]))
    return out


# -- sessions --------------------------------------------------------------------------------------


def test_session_start_end_and_counter_energy_exact():
    polls = [T0 + 60 * i for i in range(20)]
    # the charger really runs 276 s .. 858 s: first charging poll +300, first idle poll +900
    tracker, ended = track(counter_series(1, T0 + 276, T0 + 858, 150.0, polls))
    assert len(ended) == 1
    s = ended[0]
    assert (s.pile, s.port, s.start, s.end, s.last_charging) == ("pile-1", 1, T0 + 300, T0 + 900, T0 + 840)
    # the counter step since the last idle poll belongs to the session: all 582 s are counted
    assert s.energy_kwh == pytest.approx(150.0 * 582 / 3.6e6, abs=1e-9)
    assert (s.energy_source, s.peak_w, s.end_reason, s.faults, s.duration_s) == ("counter", 150.0, "unknown", (), 600)
    assert tracker.open_sessions() == []


def test_running_session_is_open_with_energy_so_far():
    polls = [T0 + 60 * i for i in range(10)]
    tracker, ended = track(counter_series(3, T0 + 120, T0 + 10 * H, 200.0, polls))
    assert ended == []
    (running,) = tracker.open_sessions()
    assert running.end is None and running.start == T0 + 120 and running.end_reason == ""
    assert running.energy_kwh == pytest.approx(200.0 * (540 - 120) / 3.6e6, abs=1e-6)  # kept to 1 mWh


def sequence(port, values, step, *, charging=None):
    """Samples of one port: counter ``values`` every ``step`` s; charging except the first
    and last sample unless ``charging`` says otherwise."""
    n = len(values)
    out = []
    for i, v in enumerate(values):
        on = charging[i] if charging is not None else 0 < i < n - 1
        out.append((T0 + i * step, [PortSample(port, "charging" if on else "idle", 100.0 if on else 0.0, v)]))
    return out


def test_counter_drop_for_one_poll_is_a_bad_read():
    """field-vectors.md C-05, kodebach/hacs-idm-heatpump #322: 40482.83, 0.0, 40482.83,
    then 40484.52.  The 0 is not rebased on (that would book 40 483 kWh)."""
    settings = PileSettings(max_port_power_w=2000.0)  # hourly polls, 1.69 kWh in an hour
    _, (s,) = track(sequence(1, [40482.83, 40482.83, 0.0, 40482.83, 40484.52, 40484.52], H), settings)
    assert s.energy_kwh == pytest.approx(1.69, abs=1e-9)
    assert (s.bad_reads, s.counter_resets) == (1, 0)


def test_confirmed_counter_reset_restarts_from_zero():
    values = [12.000, 12.010, 12.020, 0.005, 0.015, 0.025, 0.035, 0.035]
    _, (s,) = track(sequence(2, values, 60.0))
    # +0.010 +0.010, then three polls below: a reset from 0 (0.005 kWh fits one poll), so
    # 0.025 was counted after it, then +0.010; what ran between 12.020 and the reset is lost
    assert s.energy_kwh == pytest.approx(0.055, abs=1e-9)
    assert (s.counter_resets, s.bad_reads) == (1, 0)


def test_counter_moved_back_is_rebased_not_double_booked():
    """C-05, 0xAHA/Growatt_ModbusTCP #417: 20292.8 -> 20292.7 and staying there."""
    values = [20292.80, 20292.80, 20292.70, 20292.70, 20292.70, 20292.75, 20292.80, 20292.80]
    _, (s,) = track(sequence(1, values, 600.0))
    assert s.energy_kwh == pytest.approx(0.10, abs=1e-9)
    assert s.counter_resets == 1


def test_counter_spike_up_is_rejected():
    values = [100.000, 100.010, 999.999, 100.020, 100.030, 100.030]
    _, (s,) = track(sequence(1, values, 60.0))
    assert s.energy_kwh == pytest.approx(0.030, abs=1e-9)
    assert s.bad_reads == 1


def test_integrated_and_reported_energy_from_port_readings():
    """Piles without a counter (drivers.pile.PortReading, the Dianchuan driver's type)."""
    def polls(energy):
        out = []
        for k in range(12):
            on = 1 <= k <= 10
            e = (energy * k / 10) if (on and energy is not None) else None
            out.append((T0 + 60 * k, [PortReading(4, "charging" if on else "idle", 150.0 if on else 0.0,
                                                  600.0 if on else 0.0, e)]))
        return out
    _, (s,) = track(polls(None))
    # trapezoids: 150 W over 540 s, then 150 -> 0 W over the last 60 s
    assert (s.energy_source, s.energy_kwh) == ("integrated", pytest.approx((150 * 540 + 75 * 60) / 3.6e6))
    _, (s,) = track(polls(0.05))
    assert (s.energy_source, s.energy_kwh) == ("reported", 0.05)


def test_fault_ends_a_session_with_its_reason():
    def poll(t, state, power, counter, faults=()):
        return (t, [PortSample(7, state, power, counter, None, faults)])
    over_power = [poll(T0, "idle", 0, 5.0), poll(T0 + 60, "charging", 180, 5.001),
                  poll(T0 + 120, "charging", 900, 5.005), poll(T0 + 180, "fault", 0, 5.010, ("fault_over_power",)),
                  poll(T0 + 240, "idle", 0, 5.010)]
    tracker, (s,) = track(over_power)
    assert (s.end, s.end_reason, s.faults, s.peak_w) == (T0 + 180, "over_power", ("fault_over_power",), 900)
    assert s.energy_kwh == pytest.approx(0.010, abs=1e-9)
    relay = [poll(T0, "idle", 0, 5.0), poll(T0 + 60, "charging", 180, 5.001), poll(T0 + 120, "fault", 0, 5.002)]
    _, (s,) = track(relay)
    assert (s.end_reason, s.faults) == ("port_fault", ())
    # a fault flag outside any session is kept for the operator
    tracker, _ = track([poll(T0, "fault", 0, 5.0, ("fault_relay",))])
    assert tracker.port_faults == [(T0, 7, ("fault_relay",))]


def test_missing_port_readings_change_nothing():
    full = counter_series(1, T0 + 100, T0 + 700, 150.0, [T0 + 60 * i for i in range(15)])
    gappy = [(t, [] if T0 + 300 <= t <= T0 + 500 else s) for t, s in full]
    _, (a,) = track(full)
    _, (b,) = track(gappy)
    assert (b.start, b.end, b.energy_kwh) == (a.start, a.end, a.energy_kwh)


def test_port_samples_from_a_modbus_reading():
    values = {"voltage": 226.5, "active_power": 300.0, "port_state.3": 2.0, "active_power.3": 149.5,
              "energy_import.3": 12.345, "fault_over_power.3": 1.0, "fault_relay.3": 0.0,
              "port_state.10": 4.0, "fault_relay.10": 1.0, "current.10": 0.0}
    assert port_samples(values) == [
        PortSample(3, "charging", 149.5, 12.345, None, ("fault_over_power",)),
        PortSample(10, "fault", None, None, None, ("fault_relay",)),
    ]
    with pytest.raises(ValueError):
        port_samples({"port_state.1": 9.0})


# -- utilisation ----------------------------------------------------------------------------------


def ps(pile, port, start, end, energy=None, user=None):
    return PortSession(pile, port, start, end, end or start, energy, "counter", None, user=user)


def test_utilisation_share_of_port_hours():
    sessions = [
        ps("p1", 1, T0, T0 + 5 * H, 0.5),            # 5 h, ended inside
        ps("p1", 2, T0 + 8 * H, T0 + 12 * H, 0.4),   # 2 h inside, ended after
        ps("p2", 1, T0 + 9 * H, None),               # running: 0.5 h until now
        ps("p2", 2, T0 - 3 * H, T0 - 1 * H, 0.3),    # before the period
        ps("p3", 1, T0, T0 + H, 0.1),                # another pile
    ]
    u = utilisation(sessions, {"p1": 2, "p2": 2}, T0, T0 + 10 * H, now=T0 + 9.5 * H)
    assert (u.ports, u.port_hours, u.in_use_hours, u.sessions, u.energy_kwh) == (4, 40.0, 7.5, 3, 0.5)
    assert u.share == pytest.approx(7.5 / 40)
    assert u.per_pile == {"p1": pytest.approx(7 / 20), "p2": pytest.approx(0.5 / 20)}
    per = compound_utilisation(sessions, {"A": {"p1": 2}, "B": {"p2": 2}}, T0, T0 + 10 * H, now=T0 + 9.5 * H)
    assert per["A"].share == pytest.approx(0.35) and per["B"].share == pytest.approx(0.025)
    # drivers.pile.PileSession works too; an unknown start counts the session, not hours
    legacy = [PileSession("p1", 1, T0, T0 + 2 * H, 0.2, "full"), PileSession("p1", 2, None, T0 + H, None, "unknown")]
    u = utilisation(legacy, {"p1": 2}, T0, T0 + 4 * H)
    assert (u.in_use_hours, u.sessions, u.share) == (2.0, 2, 0.25)
    with pytest.raises(ValueError):
        utilisation([], {"p1": 2}, T0, T0)


# -- suppression -------------------------------------------------------------------------------------

NIGHT0 = datetime(2025, 6, 1, 22, 0, tzinfo=ZONE).timestamp()  # home session 22:00 .. 06:00
NIGHT1 = NIGHT0 + 8 * H
LINK = [PileLink("h02", "pile-1", port=4), PileLink("h05", "pile-2", user="card-17")]


def decide(pile_sessions, household="h02", links=LINK):
    return suppress_home_charging(NIGHT0, NIGHT1, household, links, pile_sessions)


def test_suppress_when_the_linked_pile_session_covers_the_home_session():
    d = decide([ps("pile-1", 4, NIGHT0 - 600, NIGHT1 + 600, 1.02)])
    assert (d.action, d.overlap_fraction, d.confidence_factor) == ("suppress", 1.0, 0.0)
    assert d.reason.startswith("suppressed: the household's linked pile session (pile-1 port 4 ")
    assert "1.02 kWh" in d.reason and "100%" in d.reason and "at the pile" in d.reason
    # still running at the pile
    assert decide([ps("pile-1", 4, NIGHT0 - 1800, None)]).action == "suppress"
    # the drivers' finished-session type
    assert decide([PileSession("pile-1", 4, NIGHT0, NIGHT1, 0.9, "full")]).action == "suppress"


def test_downgrade_on_partial_overlap_keep_on_a_sliver():
    d = decide([ps("pile-1", 4, NIGHT0 + 4 * H, NIGHT1 + H)])
    # 02:00 widened by 5 min: 4 h 5 min of the 8 h
    assert d.action == "downgrade" and d.overlap_s == pytest.approx(4 * H + 300)
    assert d.confidence_factor == 0.5 and "51%" in d.reason and "second e-bike" in d.reason
    d = decide([ps("pile-1", 4, NIGHT1 + 180, NIGHT1 + H)])
    # 06:03 widened to 05:58: 2 min
    assert d.action == "keep" and d.overlap_s == pytest.approx(120) and "only 2 min" in d.reason


def test_keep_without_a_link_or_a_matching_session():
    assert decide([], household="h01").reason == "kept: household h01 has no pile link"
    d = decide([ps("pile-1", 5, NIGHT0, NIGHT1), ps("pile-2", 4, NIGHT0, NIGHT1)])
    assert d.action == "keep" and d.reason.startswith("kept: no session of linked pile-1 port 4 overlaps")
    assert decide([ps("pile-1", 4, NIGHT0 - 4 * H, NIGHT0 - 2 * H)]).action == "keep"


def test_links_by_user():
    assert decide([ps("pile-2", 9, NIGHT0, NIGHT1, user="card-17")], household="h05").action == "suppress"
    assert decide([ps("pile-2", 9, NIGHT0, NIGHT1, user="card-99")], household="h05").action == "keep"
    with pytest.raises(ValueError, match="needs a port or a user"):
        PileLink("h09", "pile-1")
    with pytest.raises(ValueError):
        suppress_home_charging(NIGHT1, NIGHT0, "h02", LINK, [])


# -- the simulator ------------------------------------------------------------------------------------


def poll_trace(trace, step=30.0, values=None):
    tracker = PileTracker(trace.pile)
    ended = []
    t = trace.start
    while t < trace.end:
        ended += tracker.update_values(t, (values or trace.reading)(t))
        t += step
    return tracker, ended


def test_simulated_pile_usage_is_recovered():
    start = datetime(2025, 6, 1, 12, 0, tzinfo=ZONE).timestamp()
    planned = [PlannedSession(4, start + 9 * H, start + 17 * H, user="h02")]
    trace = pile_usage(start, 48.0, seed=2, planned=planned)
    assert trace.ports == 10 and len(trace.truth) >= 8
    assert any(s.end_reason == "over_power" for s in trace.truth)
    assert any(s.user == "h02" and s.port == 4 for s in trace.truth)
    _, ended = poll_trace(trace)
    assert len(ended) == len(trace.truth)
    for s, truth in zip(sorted(ended, key=lambda x: (x.start, x.port)), trace.truth):
        assert s.port == truth.port
        assert 0 <= s.start - truth.start < 30 and 0 <= s.end - truth.end < 30
        assert s.energy_kwh == pytest.approx(truth.energy_kwh, abs=0.0011)  # 0.001 kWh register
        assert s.end_reason == ("over_power" if truth.end_reason == "over_power" else "unknown")
        assert s.faults == truth.faults
    u = utilisation(ended, {trace.pile: 10}, trace.start, trace.end)
    truth_u = utilisation([ps(x.pile, x.port, x.start, x.end, x.energy_kwh) for x in trace.truth],
                          {trace.pile: 10}, trace.start, trace.end)
    assert u.in_use_hours == pytest.approx(truth_u.in_use_hours, abs=len(ended) * 30 / H)
    assert u.energy_kwh == pytest.approx(truth_u.energy_kwh, abs=0.0011 * len(ended))


def test_simulated_counter_glitch_and_reset():
    sim = PileSim(start=T0, hours=6.0, seed=4)
    sim.add(PlannedSession(2, T0 + H, T0 + 4 * H, "lead_acid"))
    sim.counter_glitch(2, T0 + 2 * H)
    sim.add(PlannedSession(5, T0 + H, T0 + 4 * H, "lithium"))
    sim.counter_reset(5, T0 + 2 * H)
    trace = sim.build()
    _, ended = poll_trace(trace, step=60.0)
    by_port = {s.port: s for s in ended}
    truth = {s.port: s for s in trace.truth}
    assert by_port[2].bad_reads == 1 and by_port[2].counter_resets == 0
    assert by_port[2].energy_kwh == pytest.approx(truth[2].energy_kwh, abs=0.0011)
    # the reset loses at most the energy of one poll (< 250 W x 60 s) and books nothing twice
    assert by_port[5].counter_resets == 1
    assert 0 <= truth[5].energy_kwh - by_port[5].energy_kwh < 250 * 60 / 3.6e6 + 0.0011


def test_pile_served_over_modbus_tcp():
    """The pile over ebike_pile.toml (MeterServer, ModbusTcpBus): the same sessions as from
    the values directly, and the planned household session ready for suppression."""
    sim = PileSim("pile-b3", start=T0, hours=3.0, seed=9)
    sim.add(PlannedSession(4, T0 + 600, T0 + 2 * H, "lithium", user="h02"))
    sim.add(PlannedSession(9, T0 + 1200, T0 + 1.5 * H, "lead_acid", fault=True))
    trace = sim.build()
    clock = StepClock(T0)
    got = []

    async def main():
        server = MeterServer({3: trace.values}, profile={3: "ebike_pile"}, clock=clock)
        await server.start()
        tracker = PileTracker(trace.pile)
        try:
            async with ModbusTcpBus("127.0.0.1", server.port, clock=clock) as bus:
                spec = DeviceSpec(trace.pile, "ebike_pile", device_id=3, timeout_s=0.5)
                for i in range(int(3 * H / 120)):
                    clock.t = T0 + 120 * i
                    reading = await bus.read(spec)
                    assert reading.values == pytest.approx(trace.reading(clock.t))
                    got.extend(tracker.update_values(reading.t, reading.values))
        finally:
            await server.stop()

    asyncio.run(main())
    _, direct = poll_trace(trace, step=120.0)
    assert got == direct and len(got) == 2
    over_power = next(s for s in got if s.port == 9)
    assert (over_power.end_reason, over_power.faults) == ("over_power", ("fault_over_power",))
    home = next(s for s in got if s.port == 4)
    d = suppress_home_charging(home.start + 300, home.end - 300, "h02", [PileLink("h02", "pile-b3", port=4)], got)
    assert d.action == "suppress"
