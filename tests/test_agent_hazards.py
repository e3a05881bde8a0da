"""The agent's hazard side: pile sessions suppress the linked household's home charging."""

from agent.config import parse_config
from agent.hazards import HazardWatch
from drivers import Reading

T0 = 1_795_795_200.0


def watch_with_pile():
    cfg = parse_config({
        "gateway": "gw", "buses": [{"name": "b", "tcp": "127.0.0.1:502"}],
        "devices": [
            {"name": "pile-1", "bus": "b", "profile": "ebike_pile", "device_id": 3},
            {"name": "meter-h02", "bus": "b", "profile": "sdm120", "household": "h02", "breaker_rating_a": 16},
        ],
        "pile_links": [{"household": "h02", "pile": "pile-1", "port": 4}],
    })
    sent = []
    watch = HazardWatch(cfg, lambda **fields: sent.append(fields))
    return cfg, watch, sent


def pile_values(charging_port4: bool, energy: float) -> dict[str, float]:
    values = {}
    for port in range(1, 11):
        on = charging_port4 and port == 4
        values[f"port_state.{port}"] = 2.0 if on else 1.0
        values[f"active_power.{port}"] = 150.0 if on else 0.0
        values[f"energy_import.{port}"] = energy if port == 4 else 0.0
    return values


def test_home_charging_overlapping_own_pile_session_is_suppressed():
    cfg, watch, _ = watch_with_pile()
    pile = cfg.devices[0]
    for i in range(0, 8 * 60):  # a pile session on port 4 from T0 to T0 + 8 h, polled a minute
        t = T0 + 60.0 * i
        watch.observe(pile, Reading("pile-1", t, pile_values(True, 0.0025 * i)), charging_active=None)
    watch.observe(pile, Reading("pile-1", T0 + 8 * 3600.0, pile_values(False, 1.2)), charging_active=None)
    inside = watch.charging_decision("h02", T0 + 1800.0, T0 + 7 * 3600.0)
    assert inside.action == "suppress" and inside.confidence_factor == 0.0
    assert "pile-1" in inside.reason
    outside = watch.charging_decision("h02", T0 + 9 * 3600.0, T0 + 14 * 3600.0)
    assert outside.action == "keep"
    other = watch.charging_decision("h05", T0 + 1800.0, T0 + 7 * 3600.0)
    assert other.action == "keep"  # not linked to the pile


def test_overload_on_a_household_meter_becomes_an_alert():
    cfg, watch, sent = watch_with_pile()
    meter = cfg.devices[1]
    for i in range(40):  # 15 A on a 16 A breaker (>= 0.9 x rating) for 20 minutes
        watch.observe(meter, Reading("meter-h02", T0 + 30.0 * i, {"current": 15.0, "active_power": 3200.0}),
                      charging_active=False)
    opened = [a for a in sent if a["kind"] == "overload"]
    assert opened and opened[0]["state"] == "open" and opened[0]["household"] == "h02"
    assert opened[0]["start"] >= T0 + 600.0 - 30.0  # held near the rating for the configured 10 min
