"""The whole pipeline: simulated meters → agent → MQTT → ingest → store, end to end.

These tests check the plumbing exactly (every alert the agent published is in the store,
once; telemetry from every household arrives; a dead meter does not hold up the others)
and the detection against the ground truth at the level the detector reaches today (see
tests/test_detector.py for its measured figures).
"""

import asyncio
import json
import urllib.parse
import urllib.request
import uuid
from collections import Counter

from flylead.clock import parse_iso
from flylead.demo import DemoOptions, run_demo

VICTORIA = "http://127.0.0.1:8428"
HOURS = 48
POLLS = HOURS * 60  # one poll a simulated minute


def export_series(match: str) -> list[dict]:
    url = f"{VICTORIA}/api/v1/export?" + urllib.parse.urlencode({"match[]": match})
    with urllib.request.urlopen(url, timeout=10) as resp:
        return [json.loads(line) for line in resp.read().decode().splitlines() if line.strip()]


def check_common(result) -> None:
    # every alert message the agent published reached the store exactly once
    assert result.sent_alert_msgs, "the agent published no alert"
    assert Counter(result.stored_alert_msgs) == Counter(result.sent_alert_msgs)
    assert result.ingest["rejected"] == 0
    # every alert kind of the compound shows up (issue 5): the fire detector's rain and
    # overloaded-lead scenarios and silence, the overloaded household circuit, charging
    kinds = {a["kind"] for a in result.alerts}
    assert kinds >= {"residual_current", "cable_temperature", "overload", "device_offline", "ebike_charging"}
    charging = [a for a in result.alerts if a["kind"] == "ebike_charging"]
    # the real household (no e-bike) raised nothing, and charging was found; how well is
    # measured offline on fixed polls (tests/test_detector.py), not in this timing-bound run
    assert all(a["household"] != "h08" for a in charging)
    assert result.metrics["recall"] > 0.0


def test_demo_embedded_broker_and_store():
    """README's demo path: embedded broker, embedded SQLite store, default seed."""
    result = asyncio.run(run_demo(DemoOptions(speed=1440.0)))
    check_common(result)
    assert len(result.truth) == 5
    for i in range(1, 9):  # on 2 cores a loaded machine skips some slots (1440x alone: >= 96 %); none is bunched
        assert result.health[f"meter-h0{i}"]["ok"] >= POLLS * 0.7, result.health


def test_pipeline_real_mosquitto_and_influx_store_with_a_dead_meter(mosquitto, victoria):
    """Real Mosquitto on 127.0.0.1:1883 (MQTT 5), VictoriaMetrics (InfluxDB v2 write API)
    on :8428; the real household's meter goes silent half-way and the others keep their
    schedule."""
    gateway = f"it-{uuid.uuid4().hex[:8]}"
    opts = DemoOptions(
        speed=1440.0, gateway=gateway, broker=("127.0.0.1", 1883), mqtt_protocol="5",
        store_url="influxdb://127.0.0.1:8428/flylead?org=flylead&token=test",
        kill_meter="h08",
    )
    result = asyncio.run(run_demo(opts))
    check_common(result)

    # every closed charging alert is in the InfluxDB-compatible store, with its values
    series = export_series(f'{{__name__=~"alert_.*",gateway="{gateway}",state="closed",kind="ebike_charging"}}')
    stored: dict[str, dict[str, float]] = {}
    for s in series:
        field = s["metric"]["__name__"].removeprefix("alert_")
        stored.setdefault(s["metric"]["alert_id"], {})[field] = s["values"][-1]
    closed = sorted(stored.values(), key=lambda v: v["start"])
    ebike = closed
    charging = [a for a in result.alerts if a["kind"] == "ebike_charging" and a["state"] == "closed"]
    assert len(ebike) == len(charging)
    for fields, alert in zip(ebike, charging):
        assert abs(fields["start"] - parse_iso(alert["start"])) < 1.0
        assert abs(fields["energy_kwh"] - alert["energy_kwh"]) < 0.001

    # telemetry reached the store for every household
    tele = export_series(f'{{__name__="telemetry_active_power",gateway="{gateway}"}}')
    assert {s["metric"].get("household") for s in tele} >= {f"h0{i}" for i in range(1, 9)}

    # the dead meter was backed off; the others were polled on schedule to the end
    health = result.health
    assert health["meter-h08"].get("DeviceTimeout", 0) >= 1
    assert health["meter-h08"]["ok"] <= POLLS // 2 + 5
    for i in range(1, 8):
        assert health[f"meter-h0{i}"]["ok"] >= POLLS * 0.7, health[f"meter-h0{i}"]


def test_short_demo_without_sessions_runs_and_scores_nothing():
    """Two simulated hours hold no charging session: the demo still runs end to end."""
    result = asyncio.run(run_demo(DemoOptions(hours=2.0, speed=2880.0)))
    assert result.truth == []
    assert (result.metrics["tp"], result.metrics["fp"], result.metrics["fn"]) == (0, 0, 0)
    # nothing to score is null in the report (the console prints n/a), never a perfect 1.0
    assert (result.metrics["precision"], result.metrics["recall"], result.metrics["f1"]) == (None, None, None)
    assert Counter(result.stored_alert_msgs) == Counter(result.sent_alert_msgs)
