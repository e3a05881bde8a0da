"""Hostile and malformed messages from gateways that are allowed on the broker: borrowed
msg_ids, lax types, impossible alerts, far-future times, changed alert identities, deep
nesting.

Broker: a private anonymous Mosquitto per test (MQTT 5, loopback, free port), so that the
ingest can subscribe to every gateway (``+``) without other tests' traffic.
"""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.schema import AckCmd, ack_topic, alert_topic, status_topic, telemetry_topic
from broker import Ingest, SqliteStore
from tests.conftest import T0, MsgFactory
from tests.test_broker_acl import MOSQUITTO, _free_port
from tests.test_ingest import Publisher

WAIT_S = 10.0


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[tuple[str, int]]:
    """(host, port) of a private anonymous Mosquitto on loopback."""
    if not Path(MOSQUITTO).exists():
        pytest.fail(f"{MOSQUITTO} missing: run .ci/services.sh (installs mosquitto)")
    port = _free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"private mosquitto not listening on {port}: {proc.stderr.read().decode()}")
            time.sleep(0.05)
    yield "127.0.0.1", port
    proc.terminate()
    try:
        proc.wait(WAIT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(WAIT_S)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    s = SqliteStore(tmp_path / "hostile.sqlite")
    yield s
    s.close()


def _ingest(store: SqliteStore, broker: tuple[str, int], uid: str, **kw) -> Ingest:  # noqa: ANN003
    ingest = Ingest(store, *broker, client_id=f"ingest-{uid}", protocol="5", session_expiry_s=0, **kw)
    ingest.start()
    return ingest


def _settle(ingest: Ingest, n: int) -> None:
    """Wait until ``n`` messages arrived (any outcome), then store them."""
    assert ingest.wait_for(lambda: ingest.accepted + ingest.rejected + ingest.duplicates >= n, WAIT_S), ingest
    ingest.flush()


def _alert_json(**fields) -> bytes:  # noqa: ANN003
    base = dict(v=1, msg_id="gw1:abcd1234:43", gateway="gw1", ts=T0 + 60, alert_id="gw1:h1:ebike_charging:1",
                kind="ebike_charging", state="open", household="h1", device="meter-h1", start=T0,
                confidence=0.9)
    return json.dumps(base | fields).encode()


def _rejection_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "flylead.ingest" and "rejected" in r.getMessage()]


# -- 1. msg_id must be the topic gateway's ------------------------------------------------


def test_borrowed_msg_id_is_rejected_and_cannot_shadow_the_owner(
        broker: tuple[str, int], store: SqliteStore, uid: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "flylead.ingest")
    ingest = _ingest(store, broker, uid)
    pub = Publisher(*broker, f"pub-{uid}")
    try:
        # gw2 sends, on its own topics, messages that carry gw1's next msg_id
        squat_t = dict(v=1, msg_id="gw1:abcd1234:43", gateway="gw2", ts=T0, device="m2",
                       values={"active_power": 1.0})
        pub.raw(telemetry_topic("gw2", "m2"), json.dumps(squat_t).encode())
        pub.raw(alert_topic("gw2", "h1"), _alert_json(gateway="gw2", alert_id="gw2:x"))
        # a msg_id that merely starts with the gateway's name is not the gateway's either
        pub.raw(telemetry_topic("gw1", "m2"), json.dumps(squat_t | {"gateway": "gw1", "msg_id": "gw10:a:1"}).encode())
        # a desk acknowledgement (msg_id desk:...) goes to the gateway's cmd topic: never seen here
        ack = AckCmd(v=1, msg_id="desk:12:9f1c2a3b4d5e", gateway="gw1", ts=T0 + 400, alert_id="gw1:fd-1:residual_current:1",
                     device="fd-1", hazard="residual_current", by="li", at=T0 + 395, case=12)
        pub.raw(ack_topic("gw1"), ack.model_dump_json().encode())
        # gw1's real alert with that msg_id comes later: stored, not a duplicate
        pub.raw(alert_topic("gw1", "h1"), _alert_json())
        _settle(ingest, 4)
        assert dict(ingest.rejections) == {"mismatch": 3}
        assert (ingest.accepted, ingest.duplicates, ingest.stored) == (1, 0, 1)
        [stored] = store.alerts()
        assert (stored.msg_id, stored.gateway, stored.alert_id) == ("gw1:abcd1234:43", "gw1", "gw1:h1:ebike_charging:1")
        assert store.telemetry_count() == 0
        lines = _rejection_lines(caplog)
        assert len(lines) == 3 and all("(mismatch, " in line for line in lines)
        assert "msg_id 'gw1:abcd1234:43' does not start with 'gw2:'" in lines[0]
        assert "msg_id 'gw10:a:1' does not start with 'gw1:'" in lines[2]
    finally:
        ingest.stop()
        pub.close()
    assert ingest.subscriptions == ["flylead/v1/+/telemetry/+", "flylead/v1/+/alert/+",
                                    "flylead/v1/+/health/+", "flylead/v1/+/status"]  # no cmd/#


# -- 2. strict types, consistent alerts ----------------------------------------------------


LAX_TELEMETRY = {
    "bool-value": {"values": {"voltage": True}},
    "str-value": {"values": {"voltage": "220"}},
    "str-ts": {"ts": str(int(T0))},
    "bool-v": {"v": True},
    "float-v": {"v": 1.0},
    "str-v": {"v": "1"},
}
LAX_ALERT = {
    "bool-confidence": {"confidence": True},
    "str-energy": {"energy_kwh": "1e3"},
    "str-start": {"start": str(T0)},
    "end-before-start": {"state": "closed", "end": T0 - 1.0},
    "open-with-end": {"state": "open", "end": T0 + 3600.0},
    "closed-without-end": {"state": "closed"},
}


def test_lax_types_and_impossible_alerts_are_rejected(
        broker: tuple[str, int], store: SqliteStore, uid: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "flylead.ingest")
    ingest = _ingest(store, broker, uid)
    pub = Publisher(*broker, f"pub-{uid}")
    good_t = dict(v=1, msg_id="gw1:r:0", gateway="gw1", ts=T0, device="m1",
                  values={"voltage": 220, "active_power": 128.5})  # JSON integers for floats: fine
    try:
        for i, fields in enumerate(LAX_ALERT.values()):
            pub.raw(alert_topic("gw1", "h1"), _alert_json(msg_id=f"gw1:a:{i}", alert_id=f"gw1:a{i}", **fields))
        for i, fields in enumerate(LAX_TELEMETRY.values()):
            pub.raw(telemetry_topic("gw1", "m1"), json.dumps(good_t | {"msg_id": f"gw1:t:{i}"} | fields).encode())
        pub.raw(telemetry_topic("gw1", "m1"), json.dumps(good_t).encode())
        pub.raw(alert_topic("gw1", "h1"), _alert_json(state="closed", end=T0, ts=T0))  # end == start: fine
        _settle(ingest, len(LAX_TELEMETRY) + len(LAX_ALERT) + 2)
        assert dict(ingest.rejections) == {"schema": len(LAX_TELEMETRY) + len(LAX_ALERT)}
        assert (ingest.accepted, ingest.stored) == (2, 2)
        assert store.telemetry_count() == 1 and [a.msg_id for a in store.alerts()] == ["gw1:abcd1234:43"]
        lines = _rejection_lines(caplog)  # the first ten of a reason are all logged
        assert "first confidence: Input should be a valid number" in lines[0]
        assert "first energy_kwh: Input should be a valid number" in lines[1]
        assert "alert 'gw1:a3': end 1768478399.0 before start 1768478400.0" in lines[3]
        assert "state 'open' with end 1768482000.0 (end is set exactly when closed)" in lines[4]
        assert "state 'closed' with end None (end is set exactly when closed)" in lines[5]
        assert "first values.voltage: Input should be a valid number" in lines[6]
        assert "first v: Input should be a valid integer" in lines[9]
    finally:
        ingest.stop()
        pub.close()


# -- 3. times ahead of the server clock --------------------------------------------------


def test_far_future_times_are_rejected_when_max_future_s_is_set(
        broker: tuple[str, int], store: SqliteStore, uid: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "flylead.ingest")
    ingest = _ingest(store, broker, uid, max_future_s=600)
    pub = Publisher(*broker, f"pub-{uid}")
    now = time.time()
    t = dict(v=1, gateway="gw1", device="m1", values={"active_power": 1.0})
    try:
        pub.raw(telemetry_topic("gw1", "m1"), json.dumps(t | {"msg_id": "gw1:f:0", "ts": 4102000000.0}).encode())
        pub.raw(telemetry_topic("gw1", "m1"), json.dumps(t | {"msg_id": "gw1:f:1", "ts": now + 3600}).encode())
        pub.raw(alert_topic("gw1", "h1"), _alert_json(msg_id="gw1:f:2", ts=now, start=now - 60, state="closed",
                                                      end=now + 86_400))
        pub.raw(telemetry_topic("gw1", "m1"), json.dumps(t | {"msg_id": "gw1:f:3", "ts": now + 60}).encode())
        pub.raw(alert_topic("gw1", "h1"), _alert_json(msg_id="gw1:f:4", ts=now, start=now - 60))
        _settle(ingest, 5)
        assert dict(ingest.rejections) == {"future": 3}
        assert (ingest.accepted, ingest.stored) == (2, 2)
        assert store.telemetry_count() == 1 and [a.msg_id for a in store.alerts()] == ["gw1:f:4"]
        lines = _rejection_lines(caplog)
        assert "msg_id 'gw1:f:0': ts 4102000000.0 is" in lines[0] and "(max_future_s 600)" in lines[0]
        assert "msg_id 'gw1:f:2': end " in lines[2]
    finally:
        ingest.stop()
        pub.close()


def test_future_check_is_off_by_default(broker: tuple[str, int], store: SqliteStore, uid: str) -> None:
    """The demo and the tests run gateways on a simulated clock that may be ahead."""
    ingest = _ingest(store, broker, uid)
    pub = Publisher(*broker, f"pub-{uid}")
    try:
        pub.raw(telemetry_topic("gw1", "m1"), json.dumps(dict(v=1, msg_id="gw1:f:0", gateway="gw1", ts=4102000000.0,
                                                              device="m1", values={"active_power": 1.0})).encode())
        _settle(ingest, 1)
        assert ingest.max_future_s is None and ingest.rejected == 0 and store.telemetry_count() == 1
    finally:
        ingest.stop()
        pub.close()


@pytest.mark.parametrize("bad", [-1, float("inf"), float("nan"), "600", True])
def test_max_future_s_must_be_a_finite_non_negative_number(bad: object) -> None:
    with pytest.raises(ValueError, match="max_future_s"):
        Ingest(None, "h", 1, max_future_s=bad)  # type: ignore[arg-type]
    assert Ingest(None, "h", 1, max_future_s=0).max_future_s == 0.0  # type: ignore[arg-type]


# -- 4. an alert's identity is fixed -------------------------------------------------------


def test_alert_identity_cannot_be_changed_by_a_later_message(
        broker: tuple[str, int], store: SqliteStore, msgs: MsgFactory, uid: str,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "flylead.ingest")
    opened = msgs.alert("a1", household="hh-1", device="meter-1")
    changes = [msgs.alert("a1", household="hh-2", device="meter-1"),
               msgs.alert("a1", household="hh-1", device="meter-2"),
               msgs.alert("a1", household="hh-1", device="meter-1", kind="overload")]
    # start may change: the agent's charging detector refines a session's start between the
    # open and the closed message of one alert_id (seen in tests/test_pipeline.py's demo)
    closed = msgs.alert("a1", "closed", household="hh-1", device="meter-1", start=T0 + 900.0)
    ingest = _ingest(store, broker, uid)
    pub = Publisher(*broker, f"pub-{uid}")
    try:
        for m in [opened, *changes, closed]:
            pub.msg(m)
        _settle(ingest, 5)
        assert dict(ingest.rejections) == {"mismatch": 3}
        assert store.alerts() == [opened, closed]
        lines = _rejection_lines(caplog)
        assert "alert_id 'a1' already known with other identity: household 'hh-2' (known 'hh-1')" in lines[0]
        assert "device 'meter-2' (known 'meter-1')" in lines[1]
        assert "kind 'overload' (known 'ebike_charging')" in lines[2]
    finally:
        ingest.stop()
    # a new ingest (a restart, or another member of a shared group) asks the store
    again = _ingest(store, broker, f"{uid}-2")
    try:
        late = msgs.alert("a1", "closed", household="hh-9", device="meter-1")
        pub.msg(late)
        _settle(again, 1)
        assert dict(again.rejections) == {"mismatch": 1} and again.stored == 0
        assert store.alerts() == [opened, closed]
    finally:
        again.stop()
        pub.close()


def test_store_refuses_changed_identity_even_without_the_ingests_memory(
        broker: tuple[str, int], tmp_path: Path, msgs: MsgFactory, uid: str) -> None:
    """A store without ``alert_identity`` (here: hidden) still refuses in ``write``; the
    ingest counts that as a mismatch and not as stored."""

    class NoLookup(SqliteStore):
        alert_identity = None  # type: ignore[assignment]

    store = NoLookup(tmp_path / "nolookup.sqlite")
    opened = msgs.alert("a1")
    store.write([opened])
    ingest = _ingest(store, broker, uid)
    pub = Publisher(*broker, f"pub-{uid}")
    try:
        changed = msgs.alert("a1", "closed", household="hh-7")
        pub.raw(alert_topic(msgs.gateway, "hh-7"), changed.model_dump_json().encode())
        _settle(ingest, 1)
        assert ingest.wait_for(lambda: ingest.rejected == 1, WAIT_S)
        assert (ingest.accepted, ingest.stored, dict(ingest.rejections)) == (1, 0, {"mismatch": 1})
        assert store.alerts() == [opened]
    finally:
        ingest.stop()
        pub.close()
        store.close()


# -- 5. deep nesting ---------------------------------------------------------------------------


def test_deeply_nested_payloads_are_ordinary_rejections(
        broker: tuple[str, int], store: SqliteStore, uid: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "flylead.ingest")
    ingest = _ingest(store, broker, uid)
    pub = Publisher(*broker, f"pub-{uid}")
    try:
        deep = b"[" * 2000 + b"]" * 2000
        pub.raw(status_topic("gw9"), b'{"state": ' + deep + b"}")
        pub.raw(status_topic("gw9"), b'{"state": ' + b"[" * 500 + b"]" * 500 + b"}")  # parses; not a string
        pub.raw(telemetry_topic("gw9", "m1"), b'{"v": 1, "msg_id": ' + deep + b"}")
        _settle(ingest, 3)
        assert dict(ingest.rejections) == {"bad_status": 2, "invalid_json": 1}
        assert not [r for r in caplog.records if r.exc_info]  # no traceback
        lines = _rejection_lines(caplog)
        assert "no JSON state: RecursionError" in lines[0]
        assert "state is a JSON list, not a string" in lines[1]
        assert "recursion limit exceeded" in lines[2]
    finally:
        ingest.stop()
        pub.close()


def test_ingest_command_checks_the_future_by_default(broker: tuple[str, int], tmp_path: Path, uid: str) -> None:
    """`flylead ingest` (the production ingest) refuses a year-2099 timestamp with its
    default --max-future-s of a day and takes one an hour ahead; a negative value is refused
    before it starts."""
    import signal
    import sys

    from typer.testing import CliRunner

    from flylead.cli import app

    bad = CliRunner().invoke(app, ["ingest", "--max-future-s", "-1"])
    assert bad.exit_code == 2 and "--max-future-s" in bad.output
    db = tmp_path / "cli.sqlite"
    exe = Path(sys.executable).with_name("flylead")
    proc = subprocess.Popen([str(exe), "ingest", "--broker", f"{broker[0]}:{broker[1]}", "--store", f"sqlite:///{db}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pub = Publisher(*broker, f"pub-{uid}")
    try:
        deadline = time.monotonic() + WAIT_S
        while "ingest subscribed" not in proc.stderr.readline():
            assert proc.poll() is None and time.monotonic() < deadline, "flylead ingest did not subscribe"
        t = dict(v=1, gateway="gw1", device="m1", values={"active_power": 1.0})
        pub.raw(telemetry_topic("gw1", "m1"), json.dumps(t | {"msg_id": "gw1:c:0", "ts": 4102000000.0}).encode())
        pub.raw(telemetry_topic("gw1", "m1"), json.dumps(t | {"msg_id": "gw1:c:1", "ts": time.time() + 3600}).encode())
        time.sleep(1.5)
    finally:
        pub.close()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=WAIT_S)
    assert json.loads(out.strip().splitlines()[-1]) == {"accepted": 1, "rejected": 1, "duplicates": 0}
    s = SqliteStore(db)
    try:
        assert s.telemetry_count() == 1
    finally:
        s.close()
