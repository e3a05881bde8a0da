"""Ingest end to end: paho publishers → real broker → Ingest → SqliteStore.

Brokers: the EmbeddedBroker (MQTT 3.1.1, the ingest's default subscriptions) and the
Mosquitto on 127.0.0.1:1883 (MQTT 5, subscriptions of one unique gateway, so that other
tests' traffic on the shared broker cannot change the counts asserted here).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.schema import (
    MAX_PAYLOAD_BYTES,
    AlertMsg,
    TelemetryMsg,
    alert_topic,
    status_topic,
    telemetry_topic,
)
from broker import EmbeddedBroker, Ingest, SqliteStore, StoreError
from tests.conftest import T0, MsgFactory

WAIT_S = 10.0


class Publisher:
    """A paho 2.x client that publishes at QoS 1 and waits for the broker's PUBACK."""

    def __init__(self, host: str, port: int, client_id: str) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
        self.client.connect(host, port, keepalive=10)
        self.client.loop_start()

    def raw(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(WAIT_S)
        assert info.is_published(), f"no PUBACK for {topic}"

    def msg(self, m: TelemetryMsg | AlertMsg) -> None:
        topic = (telemetry_topic(m.gateway, m.device) if isinstance(m, TelemetryMsg)
                 else alert_topic(m.gateway, m.household))
        self.raw(topic, m.model_dump_json().encode())

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    s = SqliteStore(tmp_path / "ingest.sqlite")
    yield s
    s.close()


def _json(obj: dict) -> bytes:
    return json.dumps(obj).encode()


def hostile(msgs: MsgFactory) -> tuple[list[tuple[str, bytes]], dict[str, int]]:
    """(topic, payload) pairs under ``msgs.gateway``'s topics that must all be rejected,
    and the expected count per rejection reason."""
    gw = msgs.gateway
    good = json.loads(msgs.telemetry("meter-1").model_dump_json())
    alert = json.loads(msgs.alert("hostile").model_dump_json())
    tel = telemetry_topic(gw, "meter-1")
    cases = [
        # too_large: valid JSON padded past the limit
        (tel, msgs.telemetry("meter-1").model_dump_json().encode() + b" " * MAX_PAYLOAD_BYTES),
        # invalid_json
        (tel, b"\xff\xfe\x00not json"),
        (tel, b'{"msg_id": "x", '),
        (tel, b""),
        # schema: wrong types, NaN, infinite, unknown quantity, extra field, bad names
        (tel, _json({**good, "msg_id": "t-str", "values": {"voltage": "high"}})),
        (tel, json.dumps({**good, "msg_id": "t-nan", "values": {"voltage": float("nan")}}).encode()),
        (tel, json.dumps({**good, "msg_id": "t-inf", "values": {"voltage": float("inf")}}).encode()),
        (tel, _json({**good, "msg_id": "t-unknown", "values": {"volume": 11}})),
        (tel, _json({**good, "msg_id": "t-empty", "values": {}})),
        (tel, _json({**good, "msg_id": "t-extra", "sql": "'; DROP TABLE telemetry; --"})),
        (tel, _json({**good, "msg_id": "t-ts", "ts": 1e12})),
        (tel, _json({**good, "msg_id": "t-v2", "v": 2})),
        (tel, _json({**good, "msg_id": "bad id with spaces"})),
        (tel, _json([good])),
        (alert_topic(gw, "hh-1"), _json({**alert, "msg_id": "a-kind", "kind": "fire"})),
        (alert_topic(gw, "hh-1"), _json({**alert, "msg_id": "a-conf", "confidence": 1.5})),
        (alert_topic(gw, "hh-1"), _json({**alert, "msg_id": "a-quote", "alert_id": 'x"y'})),
        # gateway names with " , = space + : invalid names in the payload
        *[(tel, _json({**good, "msg_id": f"t-gw{i}", "gateway": bad}))
          for i, bad in enumerate(['gw"1', "gw,1", "gw=1", "gw 1", "gw+1", "gw\n1", ""])],
        # strict types: no coercion of bools and strings to numbers
        (tel, _json({**good, "msg_id": f"{gw}:t-bool", "values": {"voltage": True}})),
        (tel, _json({**good, "msg_id": f"{gw}:t-strts", "ts": str(good["ts"])})),
        # mismatch: valid payload, but topic says otherwise
        (telemetry_topic(gw, "meter-2"), _json({**good, "msg_id": f"{gw}:t-dev"})),
        (alert_topic(gw, "hh-2"), _json({**alert, "msg_id": f"{gw}:a-hh"})),
        # mismatch: another gateway's msg_id
        (tel, _json({**good, "msg_id": f"x{gw}:1"})),
        # bad_status
        (status_topic(gw), b'{"state": "on fire"}'),
        (status_topic(gw), b"online"),
    ]
    expected = {"too_large": 1, "invalid_json": 3, "schema": 22, "mismatch": 3, "bad_status": 2}
    assert sum(expected.values()) == len(cases)
    return cases, expected


def run_scenario(pub: Publisher, ingest: Ingest, store: SqliteStore, msgs: MsgFactory,
                 extra_hostile: list[tuple[str, bytes]] = ()) -> None:
    """Publish valid, duplicate and hostile messages of one gateway; check the outcome."""
    before = (ingest.accepted, ingest.rejected, ingest.duplicates, dict(ingest.rejections))
    telemetry = [msgs.telemetry(f"meter-{i % 3}", ts=T0 + i, active_power=100.0 + i) for i in range(30)]
    alerts = [msgs.alert("a1", start=T0), msgs.alert("a1", "closed", start=T0, energy_kwh=0.5),
              msgs.alert("a2", start=T0 + 60, kind="overload", peak_w=3900.0)]
    cases, expected = hostile(msgs)
    pub.raw(status_topic(msgs.gateway), b'{"state": "online", "agent": "0.1"}', retain=False)
    for m in telemetry + alerts:
        pub.msg(m)
    for topic, payload in cases + list(extra_hostile):
        pub.raw(topic, payload)
    for m in telemetry[:5] + alerts:  # the same messages again (publisher retry)
        pub.msg(m)

    n_hostile = len(cases) + len(extra_hostile)
    assert ingest.wait_for(lambda: ingest.rejected - before[1] >= n_hostile
                           and ingest.duplicates - before[2] >= 8
                           and ingest.accepted - before[0] >= 33, WAIT_S), ingest
    ingest.flush()
    assert ingest.accepted - before[0] == 33
    assert ingest.duplicates - before[2] == 8
    assert ingest.rejected - before[1] == n_hostile
    reasons = {k: v - before[3].get(k, 0) for k, v in ingest.rejections.items()}
    for reason, count in expected.items():
        reasons[reason] -= count
    assert {k: v for k, v in reasons.items() if v} == ({"bad_topic": len(extra_hostile)}
                                                      if extra_hostile else {})

    mine = [a for a in store.alerts() if a.gateway == msgs.gateway]
    assert mine == alerts  # each valid alert exactly once, open and closed, ordered by start
    assert [store.telemetry_count(f"meter-{i}") for i in range(3)] == [10, 10, 10]
    assert ingest.gateway_status[msgs.gateway] == "online"


def test_ingest_embedded_broker(embedded_broker: EmbeddedBroker, store: SqliteStore,
                                msgs: MsgFactory, uid: str) -> None:
    pub = Publisher(embedded_broker.host, embedded_broker.port, f"pub-{uid}")
    ingest = Ingest(store, embedded_broker.host, embedded_broker.port, client_id=f"ingest-{uid}")
    ingest.start()
    try:
        # Topic ids that are not names: rejected before any parsing of the payload.
        body = msgs.telemetry().model_dump_json().encode()
        bad_topics = [(f"flylead/v1/{bad}/telemetry/meter-1", body)
                      for bad in ['gw"x', "gw,x", "gw=x", "gw x", "-gw"]]
        bad_topics.append((f"flylead/v1/{msgs.gateway}/telemetry/meter 1", body))
        run_scenario(pub, ingest, store, msgs, bad_topics)
        assert store.telemetry_count() == 30 and len(store.alerts()) == 3  # nothing else
    finally:
        ingest.stop()
        pub.close()
    assert ingest.stored == 33 and ingest.pending == 0


def test_ingest_mosquitto_mqtt5(mosquitto: tuple[str, int], store: SqliteStore,
                                msgs: MsgFactory, uid: str) -> None:
    host, port = mosquitto
    pub = Publisher(host, port, f"pub-{uid}")
    ingest = Ingest(store, host, port, client_id=f"ingest-{uid}", protocol="5",
                    gateway=msgs.gateway, session_expiry_s=10)
    ingest.start()
    try:
        run_scenario(pub, ingest, store, msgs)
        assert store.telemetry_count() == 30 and len(store.alerts()) == 3
    finally:
        ingest.stop()
        pub.close()


class FlakyStore(SqliteStore):
    """A real SqliteStore whose first ``failures`` writes raise StoreError."""

    def __init__(self, path: Path, failures: int) -> None:
        super().__init__(path)
        self.failures = failures
        self.attempts = 0

    def write(self, msgs: Sequence[TelemetryMsg | AlertMsg]) -> None:
        self.attempts += 1
        if self.attempts <= self.failures:
            raise StoreError(f"{self!r}: injected failure {self.attempts}")
        super().write(msgs)


def test_store_failure_is_retried_without_loss(embedded_broker: EmbeddedBroker, tmp_path: Path,
                                               msgs: MsgFactory, uid: str) -> None:
    store = FlakyStore(tmp_path / "flaky.sqlite", failures=2)
    pub = Publisher(embedded_broker.host, embedded_broker.port, f"pub-{uid}")
    with Ingest(store, embedded_broker.host, embedded_broker.port, client_id=f"ingest-{uid}") as ingest:
        for i in range(20):
            pub.msg(msgs.telemetry(ts=T0 + i))
        # retries after 0.5 s and 1 s of backoff
        assert ingest.wait_for(lambda: ingest.stored == 20, WAIT_S), ingest
    pub.close()
    assert store.attempts >= 3 and store.telemetry_count() == 20
    store.close()


def test_unstored_messages_are_redelivered_after_restart(mosquitto: tuple[str, int], tmp_path: Path,
                                                         msgs: MsgFactory, uid: str) -> None:
    """Nothing is acked before it is stored: a dead store plus a restart loses nothing."""
    host, port = mosquitto
    dead = FlakyStore(tmp_path / "dead.sqlite", failures=10**9)
    opts = dict(client_id=f"ingest-{uid}", protocol="5", gateway=msgs.gateway, session_expiry_s=30)
    first = Ingest(dead, host, port, **opts)
    first.start()
    pub = Publisher(host, port, f"pub-{uid}")
    sent = [msgs.telemetry(ts=T0 + i) for i in range(15)] + [msgs.alert("a1")]
    for m in sent:
        pub.msg(m)
    assert first.wait_for(lambda: first.accepted == 16 and dead.attempts >= 1, WAIT_S), first
    first.stop(timeout=0.2)  # cannot flush: the store is down
    assert first.stored == 0

    good = SqliteStore(tmp_path / "good.sqlite")
    second = Ingest(good, host, port, **opts)  # same client id: same broker session
    second.start()
    try:
        assert second.wait_for(lambda: second.stored == 16, WAIT_S), second
        assert good.telemetry_count() == 15 and good.alerts() == [sent[-1]]
    finally:
        second.stop()
        pub.close()
        good.close()
        dead.close()


def test_ingest_reconnects_after_broker_restart(store: SqliteStore, msgs: MsgFactory, uid: str) -> None:
    with EmbeddedBroker() as b:
        ingest = Ingest(store, b.host, b.port, client_id=f"ingest-{uid}")
        ingest.start()
        b.stop()
        assert ingest.wait_for(lambda: not ingest.connected, WAIT_S)
        b.start()  # same port
        try:
            assert ingest.wait_for(lambda: ingest.connected, WAIT_S), "no reconnect"
            pub = Publisher(b.host, b.port, f"pub-{uid}")
            pub.msg(msgs.telemetry())
            assert ingest.wait_for(lambda: ingest.stored == 1, WAIT_S)
            pub.close()
        finally:
            ingest.stop()


def test_start_fails_loudly_without_broker(store: SqliteStore) -> None:
    with EmbeddedBroker() as b:
        port = b.port
    ingest = Ingest(store, "127.0.0.1", port, client_id="nobody-home")
    with pytest.raises(TimeoutError, match=f"127.0.0.1:{port}"):
        ingest.start(timeout=0.5)


def test_mqtt5_is_refused_by_embedded_broker(embedded_broker: EmbeddedBroker, store: SqliteStore) -> None:
    ingest = Ingest(store, embedded_broker.host, embedded_broker.port, protocol="5")
    with pytest.raises(TimeoutError, match="MQTT 5"):
        ingest.start(timeout=1.0)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="protocol"):
        Ingest(None, "h", 1, protocol="4")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="gateway"):
        Ingest(None, "h", 1, gateway="a/b")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="batch_size"):
        Ingest(None, "h", 1, batch_size=0)  # type: ignore[arg-type]


def test_status_messages_track_gateways(embedded_broker: EmbeddedBroker, store: SqliteStore,
                                        uid: str) -> None:
    pub = Publisher(embedded_broker.host, embedded_broker.port, f"pub-{uid}")
    gw = f"gw-{uid}"
    pub.raw(status_topic(gw), b'{"state": "online"}', retain=True)
    with Ingest(store, embedded_broker.host, embedded_broker.port, client_id=f"ingest-{uid}") as ingest:
        assert ingest.wait_for(lambda: ingest.gateway_status.get(gw) == "online", WAIT_S)  # retained
        pub.raw(status_topic(gw), b'{"state": "offline"}', retain=True)
        assert ingest.wait_for(lambda: ingest.gateway_status.get(gw) == "offline", WAIT_S)
        pub.raw(status_topic(gw), b"", retain=True)  # retained status cleared
        assert ingest.wait_for(lambda: gw not in ingest.gateway_status, WAIT_S)
        assert ingest.rejected == 0 and ingest.accepted == 0
    pub.close()
