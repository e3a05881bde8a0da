"""Several ingests sharing the load through MQTT 5 shared subscriptions
(``$share/GROUP/...``), into one real SqliteStore file: every message stored exactly once,
also across duplicate deliveries and a broker restart.

Brokers: the Mosquitto on 127.0.0.1:1883 (anonymous; a unique group and gateway per test)
and a private Mosquitto with flylead's credentials, ACLs and persistence
(tests/test_broker_acl.py), restarted in the middle of a run.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.schema import TelemetryMsg, alert_topic, telemetry_topic
from broker import Ingest, SqliteStore
from tests.conftest import T0, MsgFactory
from tests.test_broker_acl import Client, PrivateMosquitto
from tests.test_ingest import Publisher

WAIT_S = 15.0


def _topic(m) -> str:  # noqa: ANN001
    return telemetry_topic(m.gateway, m.device) if isinstance(m, TelemetryMsg) else alert_topic(m.gateway, m.household)


def test_two_ingests_split_the_messages(mosquitto: tuple[str, int], tmp_path: Path,
                                        msgs: MsgFactory, uid: str) -> None:
    host, port = mosquitto
    path = tmp_path / "shared.sqlite"
    stores = [SqliteStore(path), SqliteStore(path)]  # as two processes would open the file
    ingests = [Ingest(s, host, port, client_id=f"ingest-{uid}-{i}", protocol="5", gateway=msgs.gateway,
                      shared_group=f"flylead-ingest-{uid}", session_expiry_s=10, batch_size=50)
               for i, s in enumerate(stores)]
    assert ingests[0].subscriptions[:2] == [f"$share/flylead-ingest-{uid}/flylead/v1/{msgs.gateway}/telemetry/+",
                                            f"$share/flylead-ingest-{uid}/flylead/v1/{msgs.gateway}/alert/+"]
    for ing in ingests:
        ing.start()
    pub = Publisher(host, port, f"pub-{uid}")
    try:
        telemetry = [msgs.telemetry(f"meter-{i % 4}", ts=T0 + i, active_power=float(i)) for i in range(200)]
        alerts = [msgs.alert(f"a{i}", start=T0 + 60 * i, household=f"hh-{i}") for i in range(10)]
        alerts += [msgs.alert(f"a{i}", "closed", start=T0 + 60 * i, household=f"hh-{i}") for i in range(10)]
        sent = telemetry + alerts
        for m in sent:
            pub.msg(m)
        for m in telemetry[:20] + alerts[:10]:  # publisher retries: duplicates
            pub.msg(m)
        deliveries = len(sent) + 30
        assert ingests[0].wait_for(lambda: sum(i.accepted + i.duplicates for i in ingests) == deliveries,
                                   WAIT_S), ingests
        for ing in ingests:
            ing.flush()
        # both members got a share; nothing was delivered twice to the group
        assert all(i.accepted > 0 for i in ingests), ingests
        assert sum(i.accepted + i.duplicates for i in ingests) == deliveries
        assert stores[0].telemetry_count() == 200
        assert [stores[0].telemetry_count(f"meter-{k}") for k in range(4)] == [50] * 4
        assert sorted(stores[0].alerts(), key=lambda a: a.msg_id) == sorted(alerts, key=lambda a: a.msg_id)
        assert sum(i.rejected for i in ingests) == 0
    finally:
        for ing in ingests:
            ing.stop()
        pub.close()
        for s in stores:
            s.close()


def test_shared_ingests_through_acl_and_broker_restart(tmp_path: Path) -> None:
    """Two ingests (user flylead-ingest, shared group) and a gateway (its own user, TLS)
    on a persistent private Mosquitto that is restarted mid-run: nothing lost, nothing
    stored twice."""
    broker = PrivateMosquitto(tmp_path / "mosq", {"gw-r": "gateway", "flylead-ingest": "ingest"},
                              persistence=True)
    broker.start()
    path = tmp_path / "restart.sqlite"
    stores = [SqliteStore(path), SqliteStore(path)]
    ingests = [Ingest(s, broker.host, broker.port, client_id=f"ingest-r{i}", protocol="5",
                      username="flylead-ingest", password=broker.passwords["flylead-ingest"],
                      shared_group="flylead-ingest", session_expiry_s=60, batch_size=20)
               for i, s in enumerate(stores)]
    gw = None
    try:
        for ing in ingests:
            ing.start()
        gw = Client(broker, "gw-r", tls=True)
        m = MsgFactory("gw-r")
        first = [m.telemetry(ts=T0 + i) for i in range(40)] + [m.alert("r1"), m.alert("r1", "closed")]
        for msg in first:
            assert gw.publish(_topic(msg), msg.model_dump_json().encode()) == 0
        assert ingests[0].wait_for(lambda: sum(i.stored for i in ingests) == 42, WAIT_S), ingests

        broker.restart()  # same ports; sessions come back from the persistence file
        assert ingests[0].wait_for(lambda: all(i.connected for i in ingests), WAIT_S), ingests
        second = [m.telemetry(ts=T0 + 100 + i) for i in range(40)] + [m.alert("r2"), m.alert("r2", "closed")]
        for msg in second + first[:10] + first[-2:]:  # with duplicates of before the restart
            assert gw.publish(_topic(msg), msg.model_dump_json().encode()) == 0
        # PUBACKs still in flight when the broker stopped make it redeliver those messages
        # after the restart (at least once), so the deliveries are at least these:
        total = len(first) + len(second) + 12
        assert ingests[0].wait_for(lambda: sum(i.accepted + i.duplicates for i in ingests) >= total
                                   and stores[0].telemetry_count() == 80, WAIT_S), ingests
        for ing in ingests:
            ing.flush()
        assert stores[0].telemetry_count() == 80
        stored = sorted(stores[0].alerts(), key=lambda a: a.msg_id)
        assert stored == sorted([first[-2], first[-1], second[-2], second[-1]], key=lambda a: a.msg_id)
        assert all(i.accepted > 0 for i in ingests), ingests
    finally:
        if gw is not None:
            gw.close()
        for ing in ingests:
            ing.stop()
        for s in stores:
            s.close()
        broker.stop()


def test_shared_group_must_be_a_name() -> None:
    with pytest.raises(ValueError, match="shared_group"):
        Ingest(None, "h", 1, shared_group="a/b")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="shared_group"):
        Ingest(None, "h", 1, shared_group="#")  # type: ignore[arg-type]
    plain = Ingest(None, "h", 1)  # type: ignore[arg-type]
    assert plain.subscriptions == ["flylead/v1/+/telemetry/+", "flylead/v1/+/alert/+",
                                   "flylead/v1/+/health/+", "flylead/v1/+/status"]
    shared = Ingest(None, "h", 1, shared_group="g1")  # type: ignore[arg-type]
    assert shared.subscriptions == ["$share/g1/flylead/v1/+/telemetry/+", "$share/g1/flylead/v1/+/alert/+",
                                    "$share/g1/flylead/v1/+/health/+", "flylead/v1/+/status"]
