"""Acknowledgement of latched hazard alerts, desk -> gateway over MQTT (docs/hazards.md).

The desk (a real DeskDB and AckSender) rectifies a case; the acknowledgement goes through a
real broker (the Mosquitto on 127.0.0.1:1883, and the embedded amqtt broker of the demo) to
a real Agent with its Publisher, whose hazard engine is fed residual-current readings at
exact times of a step clock.  Then the same against the agent's own poll loop over Modbus
with hostile payloads.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid

import paho.mqtt.client as mqtt
import pytest

from agent.config import MqttSettings, parse_config
from agent.publisher import Publisher
from agent.runner import Agent
from agent.schema import MAX_CMD_BYTES, AckCmd, ack_topic
from broker.desk.acks import AckSender
from broker.desk.db import DeskDB
from broker.desk.registry import parse_registry
from drivers import Reading
from flylead.clock import SimClock, iso
from tests.clocks import StepClock

T0 = 1_795_795_200.0  # 2026-11-26T00:00:00Z
P = 5.0  # poll period of the fire detector, s
DEV = "fd-1"


def config(gateway: str, interval_s: float = P, port: int = 502):
    return parse_config({
        "gateway": gateway, "buses": [{"name": "b", "tcp": f"127.0.0.1:{port}"}],
        "devices": [{"name": DEV, "bus": "b", "profile": "fire_detector", "device_id": 4,
                     "household": "h03", "interval_s": interval_s, "timeout_s": 0.5}],
    })


@pytest.fixture(params=["mosquitto", "amqtt"])
def broker_at(request: pytest.FixtureRequest) -> tuple[str, int]:
    """(host, port) of a real broker: the Mosquitto on 127.0.0.1:1883, then the demo's
    embedded amqtt broker."""
    if request.param == "mosquitto":
        return request.getfixturevalue("mosquitto")
    b = request.getfixturevalue("embedded_broker")
    return b.host, b.port


class Rig:
    """An agent on a step clock and a desk, both connected to the broker."""

    def __init__(self, host: str, port: int, tmp_path) -> None:
        self.gateway = f"gw-{uuid.uuid4().hex[:8]}"
        self.clock = StepClock(T0)
        self.cfg = config(self.gateway)
        self.pub = Publisher(self.gateway, MqttSettings(host=host, port=port))
        self.pub.connect()
        self.agent = Agent(self.cfg, self.clock, self.pub)
        self.dev = self.cfg.devices[0]
        self.desk = DeskDB(tmp_path / "desk.sqlite")
        self.desk.add_user("li", "a-long-password", "village", "east")
        self.registry = parse_registry({
            "villages": {"east": {"name": "East"}},
            "compounds": {"sunrise": {"village": "east", "gateways": [self.gateway], "households": ["h03"]}}})
        self.sender = AckSender(self.desk, host, port, retry_s=60.0)
        self.sender.start(timeout_s=5.0)
        assert self.sender.connected

    def feed(self, t0: float, t1: float, ma: float) -> None:
        """Polls every P s at t0, t0 + P, ... < t1, residual current ``ma``."""
        t = t0
        while t < t1:
            self.clock.t = t
            self.agent.watch.observe(self.dev, Reading(DEV, t, {"residual_current": ma}), charging_active=False)
            t += P

    def brief(self) -> list[tuple[str, str, float | None]]:
        """(state, first word of detail, end) of each alert message the agent sent."""
        return [(a.state, a.detail.split(";")[0], a.end) for a in self.agent.alerts]

    def rectify(self) -> int:
        """The desk takes the alerts in and walks the case to rectified; the case id."""
        self.desk.sync_alerts(list(self.agent.alerts), self.registry)
        (case,) = self.desk.cases()
        self.desk.transition(case.id, "dispatch", "li", worker="Zhang")
        self.desk.transition(case.id, "verify", "li")
        self.desk.transition(case.id, "rectify", "li", note="outdoor lead\nremoved")
        return case.id

    async def deliver(self, n_outcomes: int = 1) -> None:
        """Publish the desk's due acknowledgements and wait until the agent handled them."""
        # the sender's own thread may have taken it first (it looks at the queue every
        # 10 s and on connect): either way each due acknowledgement is published once
        await asyncio.to_thread(self.sender.send_due)
        assert self.sender.published >= n_outcomes and self.sender.failures == 0
        assert all(a.state in ("sent", "done") for a in self.desk.acks()), self.desk.acks()
        deadline = time.monotonic() + 5.0
        while len(self.agent.commands) < n_outcomes and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert len(self.agent.commands) == n_outcomes, list(self.agent.commands)

    def close(self) -> None:
        self.sender.stop()
        self.pub.close()


def test_latched_alarm_is_closed_by_the_desk_acknowledgement(broker_at, tmp_path):
    """Raised at T0+80, cleared at T0+180 but latched, acknowledged from the desk at
    T0+400 (gateway clock): closed at T0+400, the reason naming who, when and the desk case."""
    rig = Rig(*broker_at, tmp_path)

    async def scenario():
        rig.agent.listen_commands()
        rig.feed(T0, T0 + 60, 150.0)
        rig.feed(T0 + 60, T0 + 120, 350.0)  # >= 300 mA from T0+60: raised 20 s later
        rig.feed(T0 + 120, T0 + 400, 150.0)  # < 285 mA from T0+120: clear after 60 s
        assert rig.brief() == [("open", "opened", None), ("open", "latched", None)]
        opened, latched = rig.agent.alerts
        assert opened.start == latched.start == T0 + 80 and latched.ts == T0 + 180
        rig.feed(T0 + 400, T0 + 600, 150.0)  # cleared long since, still latched
        assert len(rig.agent.alerts) == 2
        rig.clock.t = T0 + 600.0
        case_id = rig.rectify()
        (ack,) = rig.desk.acks(case_id)
        assert (ack.state, ack.hazard, ack.device, ack.username, ack.alert_id) == (
            "pending", "residual_current", DEV, "li", f"{rig.gateway}:{DEV}:residual_current:{int(T0 + 80)}")
        assert ack.note == "rectified: outdoor lead removed"
        await rig.deliver()
        return case_id

    try:
        case_id = asyncio.run(scenario())
        (outcome,) = rig.agent.commands
        assert (outcome.t, outcome.status) == (T0 + 600, "applied")
        closed = rig.agent.alerts[-1]
        assert rig.brief()[-1] == ("closed", "resolved", T0 + 600)
        assert closed.alert_id == rig.agent.alerts[0].alert_id and closed.start == T0 + 80
        assert f"ack=li@{iso(T0 + 600)}" in closed.detail
        assert f"resolved at {iso(T0 + 600)}; cleared at {iso(T0 + 180)}" in closed.detail
        assert f"acknowledged by li at {iso(T0 + 600)} (desk case {case_id}, " in closed.detail
        assert "rectified: outdoor lead removed)" in closed.detail
        assert rig.agent.watch.monitor.open_alerts() == []
        # the desk sees the closed alert at its next sync: the acknowledgement is done
        assert rig.desk.acks(case_id)[0].state == "sent"
        rig.desk.sync_alerts(list(rig.agent.alerts), rig.registry)
        assert rig.desk.acks(case_id)[0].state == "done"
        assert rig.desk.case(case_id).alert_state == "closed"
        assert rig.desk.due_acks(time.time() + 3600, 60.0, 86400.0) == []
    finally:
        rig.close()


def test_acknowledgement_while_over_threshold_keeps_the_alarm_open(mosquitto, tmp_path):
    """Acknowledged at T0+150 while 350 mA still flows: recorded, the alert stays open;
    it closes when the leakage has been below the band for 60 s (T0+205 + 60)."""
    rig = Rig(*mosquitto, tmp_path)

    async def scenario():
        rig.agent.listen_commands()
        rig.feed(T0, T0 + 60, 150.0)
        rig.feed(T0 + 60, T0 + 150, 350.0)
        rig.clock.t = T0 + 150.0
        case_id = rig.rectify()
        await rig.deliver()
        assert rig.brief() == [("open", "opened", None), ("open", "acknowledged", None)]
        rig.feed(T0 + 150, T0 + 205, 350.0)
        rig.feed(T0 + 205, T0 + 264, 150.0)
        assert len(rig.agent.alerts) == 2  # below the band for 55 s: not yet
        rig.feed(T0 + 265, T0 + 300, 150.0)
        return case_id

    try:
        case_id = asyncio.run(scenario())
        acked = rig.agent.alerts[1]
        assert acked.ts == T0 + 150 and acked.end is None
        assert f"acknowledged by li at {iso(T0 + 150)} (desk case {case_id}, " in acked.detail
        assert "condition still present, resolves once it clears" in acked.detail
        assert rig.brief()[-1] == ("closed", "resolved", T0 + 265)
        closed = rig.agent.alerts[-1]
        assert f"resolved at {iso(T0 + 265)}; cleared at {iso(T0 + 265)}" in closed.detail
        assert f"acknowledged by li at {iso(T0 + 150)}" in closed.detail
        # the "acknowledged" message already tells the desk the gateway took it
        rig.desk.sync_alerts(list(rig.agent.alerts)[:2], rig.registry)
        assert rig.desk.acks(case_id)[0].state == "done"
    finally:
        rig.close()


def test_rectify_queues_acknowledgements_only_for_open_latching_alerts(tmp_path, msgs):
    """Overload and charging alerts do not latch, a closed alert has nothing left to
    acknowledge: only the open residual-current case queues one, and verify does not."""
    desk = DeskDB(tmp_path / "desk.sqlite")
    gw = msgs.gateway
    reg = parse_registry({"villages": {"east": {}}, "compounds": {"c": {"village": "east", "gateways": [gw],
                                                                         "households": ["h1", "h2", "h3", "h4"]}}})
    alerts = [
        msgs.alert(f"{gw}:fd-1:residual_current:{int(T0)}", household="h1", device="fd-1", kind="residual_current"),
        msgs.alert(f"{gw}:m2:overload:{int(T0)}", household="h2", device="m2", kind="overload"),
        msgs.alert(f"{gw}:fd-3:cable_temperature.2:{int(T0)}", "closed", household="h3", device="fd-3",
                   kind="cable_temperature"),
        msgs.alert(f"{gw}:fd-4:cable_temperature.3:{int(T0)}", household="h4", device="fd-4", kind="cable_temperature"),
    ]
    desk.sync_alerts(alerts, reg, now=T0)
    cases = sorted(desk.cases(), key=lambda c: c.id)
    for case in cases:
        for step, at in (("dispatch", T0 + 60), ("verify", T0 + 120)):
            desk.transition(case.id, step, "wang", worker="Zhang", at=at)
    assert desk.acks() == []
    for case in cases:
        desk.transition(case.id, "rectify", "wang", at=T0 + 180)
    got = [(a.alert_id, a.hazard, a.at, a.state, a.note) for a in desk.acks()]
    assert got == [(f"{gw}:fd-1:residual_current:{int(T0)}", "residual_current", T0 + 180, "pending", "rectified"),
                   (f"{gw}:fd-4:cable_temperature.3:{int(T0)}", "cable_temperature.3", T0 + 180, "pending",
                    "rectified")]
    first = desk.acks()[0]
    # due now; once published, due again only after retry_s; expired after max_age_s
    assert [a.id for a in desk.due_acks(T0 + 200, 300.0, 86400.0)] == [first.id, first.id + 1]
    desk.ack_sent(first.id, T0 + 200)
    assert [a.id for a in desk.due_acks(T0 + 499, 300.0, 86400.0)] == [first.id + 1]
    assert [a.id for a in desk.due_acks(T0 + 500, 300.0, 86400.0)] == [first.id, first.id + 1]
    assert desk.due_acks(T0 + 180 + 86401, 300.0, 86400.0) == []
    assert [a.state for a in desk.acks()] == ["expired", "expired"]


# -- hostile commands against the running agent --------------------------------------------


def _raw_publisher(host: str, port: int) -> mqtt.Client:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"hostile-{uuid.uuid4().hex[:8]}")
    c.connect(host, port)
    c.loop_start()
    return c


def test_hostile_commands_are_refused_and_the_agent_keeps_polling(mosquitto, caplog):
    """A fire detector served over Modbus TCP, polled by the agent's own loop: during a
    latched alarm, hostile payloads arrive on the agent's cmd topic.  Each is refused with
    a logged reason; polling goes on; the one valid acknowledgement closes the alarm once,
    and its replay changes nothing."""
    from simulators.fire_detector import FireDetectorSim
    from simulators.meter import MeterServer

    caplog.set_level(logging.INFO, logger="flylead.agent")
    start = float(int(time.time()))
    speed = 40.0
    clock = SimClock(start, speed=speed)
    base = FireDetectorSim(DEV, household="h03", start=start, hours=1.0, noise_ma=0.0).build()

    def values(t: float) -> dict:
        v = base.values(t)
        v["residual_current"] = 400.0 if start + 10 <= t < start + 60 else 150.0
        return v

    gateway = f"gw-{uuid.uuid4().hex[:8]}"
    topic = ack_topic(gateway)
    seen = threading.Event()

    async def scenario():
        server = MeterServer({4: values}, profile={4: "fire_detector"}, clock=clock)
        await server.start()
        cfg = config(gateway, interval_s=P, port=server.port)
        pub = Publisher(gateway, MqttSettings(host=mosquitto[0], port=mosquitto[1]))
        pub.connect()
        agent = Agent(cfg, clock, pub)
        clock.restart()
        run = asyncio.create_task(agent.run(until=start + 480))
        while not any(a.detail.startswith("latched") for a in agent.alerts):
            await asyncio.sleep(0.02)
        opened = agent.alerts[0]
        ok_before = agent.devices[DEV].ok
        good = dict(v=1, msg_id="desk:9:abc", gateway=gateway, ts=time.time(), alert_id=opened.alert_id,
                    device=DEV, hazard="residual_current", by="li", at=time.time() - 1, note="lead removed",
                    case=9)
        hostile = [
            b"not json",
            b"\xff\xfe\x00",
            b"[1, 2]",
            json.dumps(dict(good, note="x" * 10)).encode() + b" " * MAX_CMD_BYTES,
            json.dumps(dict(good, msg_id="h1", ts=str(good["ts"]))).encode(),
            json.dumps(dict(good, msg_id="h2", case=True)).encode(),
            json.dumps({k: v for k, v in dict(good, msg_id="h3").items() if k != "v"}).encode(),
            json.dumps(dict(good, msg_id="h4", extra="x")).encode(),
            json.dumps(dict(good, msg_id="h5", note="a\u0007b")).encode(),
            json.dumps(dict(good, msg_id="h6", gateway="gw-other")).encode(),
            json.dumps(dict(good, msg_id="h7", alert_id=f"{gateway}:{DEV}:residual_current:123")).encode(),
            json.dumps(dict(good, msg_id="h8", device="fd-2")).encode(),
            json.dumps(dict(good, msg_id="h9", at=good["ts"] + 60)).encode(),
            json.dumps(dict(good, msg_id="h10", by="li; DROP TABLE")).encode(),
        ]
        client = _raw_publisher(*mosquitto)
        for payload in [*hostile, json.dumps(good).encode(), json.dumps(good).encode()]:
            client.publish(topic, payload, qos=1).wait_for_publish(5)
        deadline = time.monotonic() + 10
        while len(agent.commands) < len(hostile) + 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        ok_after_commands = agent.devices[DEV].ok
        await asyncio.sleep(1.0)  # 40 s of clock: 8 more polls
        ok_later = agent.devices[DEV].ok
        client.loop_stop()
        client.disconnect()
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
        pub.close()
        await server.stop()
        seen.set()
        return agent, ok_before, ok_after_commands, ok_later

    agent, ok_before, ok_after, ok_later = asyncio.run(scenario())
    assert seen.is_set()
    outcomes = list(agent.commands)
    reasons = [o.detail for o in outcomes]
    assert [o.status for o in outcomes] == ["refused"] * 14 + ["applied", "refused"]
    expected = [
        "not UTF-8 JSON", "not UTF-8 JSON", "a JSON object expected, got list",
        f"more than {MAX_CMD_BYTES}", "not a valid ack: ts: Input should be a valid number",
        "not a valid ack: case: Input should be a valid integer", "not a valid ack: v: Field required",
        "not a valid ack: extra: Extra inputs are not permitted", "not a valid ack: note: String should match pattern",
        "addressed to gateway 'gw-other'", "no open alert", "the command names 'fd-2' / 'residual_current'",
        "after the command was made", "not a valid ack: by: String should match pattern",
    ]
    for reason, want in zip(reasons, expected, strict=False):
        assert want in reason, (want, reason)
    assert outcomes[14].detail == f"resolved {agent.alerts[0].alert_id}"
    assert "msg_id handled before" in reasons[15]
    refused_logs = [r for r in caplog.records if r.getMessage().startswith("command refused:")]
    assert len(refused_logs) == 15
    closed = [a for a in agent.alerts if a.state == "closed"]
    assert len(closed) == 1 and "acknowledged by li" in closed[0].detail
    assert ok_later > ok_after >= ok_before  # polling went on throughout


def test_rectify_on_the_web_page_publishes_the_acknowledgement(mosquitto, tmp_path, msgs):
    """The desk web app: an office user rectifies a residual-current case; the AckSender
    is woken and publishes the AckCmd to the gateway's cmd topic; the case page shows it."""
    import re

    from broker.desk.app import create_app

    gw = msgs.gateway
    desk = DeskDB(tmp_path / "desk.sqlite")
    desk.add_user("wang", "office-password", "office")
    reg = parse_registry({"villages": {"east": {}}, "compounds": {"c": {"village": "east", "gateways": [gw],
                                                                         "households": ["h1"]}}})
    alert_id = f"{gw}:fd-1:residual_current:{int(T0)}"
    desk.sync_alerts([msgs.alert(alert_id, household="h1", device="fd-1", kind="residual_current")], reg)
    (case,) = desk.cases()
    desk.transition(case.id, "dispatch", "wang", worker="Zhang")
    desk.transition(case.id, "verify", "wang")
    got: list[bytes] = []
    ready = threading.Event()
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"t-{uuid.uuid4().hex[:8]}")
    sub.on_connect = lambda c, *_: c.subscribe(ack_topic(gw), qos=1)
    sub.on_subscribe = lambda *_: ready.set()
    sub.on_message = lambda c, u, m: got.append(m.payload)
    sub.connect(*mosquitto)
    sub.loop_start()
    sender = AckSender(desk, *mosquitto, interval_s=600.0)  # only the wake-up can send in time
    sender.start(timeout_s=5.0)
    try:
        assert ready.wait(5)
        client = create_app(desk, reg, ack_sender=sender, config={"WTF_CSRF_ENABLED": False}).test_client()
        client.post("/login", data={"username": "wang", "password": "office-password"})
        before = time.time()
        r = client.post(f"/case/{case.id}/action", data={"action": "rectify", "note": "lead removed"})
        assert r.status_code == 303
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            time.sleep(0.02)
        (payload,) = got
        cmd = AckCmd.model_validate_json(payload)
        assert (cmd.gateway, cmd.alert_id, cmd.device, cmd.hazard, cmd.by, cmd.note, cmd.case) == (
            gw, alert_id, "fd-1", "residual_current", "wang", "rectified: lead removed", case.id)
        assert before <= cmd.at <= cmd.ts <= time.time()
        while desk.acks(case.id)[0].state != "sent" and time.monotonic() < deadline:
            time.sleep(0.02)  # the PUBACK may reach the sender after the subscriber got it
        page = client.get(f"/case/{case.id}").get_data(as_text=True)
        assert re.search(r'data-testid="ack-state">sent<', page)
    finally:
        sender.stop()
        sub.loop_stop()
        sub.disconnect()
