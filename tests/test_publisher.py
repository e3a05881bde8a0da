"""The agent's MQTT side against the real Mosquitto on 127.0.0.1:1883."""

import json
import subprocess
import sys
import threading
import time
import uuid

import paho.mqtt.client as mqtt
import pytest

from agent.config import MqttSettings
from agent.publisher import Publisher, PublishError
from agent.schema import TelemetryMsg, status_topic, telemetry_topic

BROKER = MqttSettings(host="127.0.0.1", port=1883)


class Collector:
    """A plain paho subscriber that records (topic, payload, retain)."""

    def __init__(self, topic: str) -> None:
        self.messages: list[tuple[str, dict, bool]] = []
        self.ready = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"t-{uuid.uuid4().hex[:8]}")
        self.client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *_: self.ready.set()
        self.client.on_message = lambda c, u, m: self.messages.append(
            (m.topic, json.loads(m.payload), m.retain))
        self.client.connect("127.0.0.1", 1883)
        self.client.loop_start()
        assert self.ready.wait(5), "subscriber did not get SUBACK from 127.0.0.1:1883"

    def wait_for(self, pred, timeout=5.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [m for m in self.messages if pred(m)]
            if found:
                return found
            time.sleep(0.02)
        raise AssertionError(f"no matching message; got {self.messages}")

    def close(self):
        self.client.loop_stop()
        self.client.disconnect()


def test_status_online_retained_then_offline_on_close(mosquitto):
    gw = f"t{uuid.uuid4().hex[:8]}"
    pub = Publisher(gw, BROKER)
    pub.connect()
    for i in range(5):
        pub.publish(telemetry_topic(gw, "m1"), TelemetryMsg(
            msg_id=pub.next_msg_id(), gateway=gw, ts=1.8e9 + i, device="m1",
            values={"active_power": 100.0 + i}))
    assert pub.drain(5)
    assert (pub.published, pub.unacked) == (5, 0)
    # a late subscriber still sees the retained online status
    late = Collector(status_topic(gw))
    online = late.wait_for(lambda m: m[1]["state"] == "online")
    assert online[0][2] is True
    pub.close()
    late.wait_for(lambda m: m[1]["state"] == "offline")
    late.close()


def test_last_will_when_agent_dies(mosquitto):
    gw = f"t{uuid.uuid4().hex[:8]}"
    code = (
        "import time; from agent.config import MqttSettings; from agent.publisher import Publisher;"
        f"p = Publisher({gw!r}, MqttSettings()); p.connect(); print('up', flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "up"
        watcher = Collector(status_topic(gw))
        watcher.wait_for(lambda m: m[1]["state"] == "online")
        proc.kill()  # SIGKILL: no DISCONNECT, the broker must publish the will
        offline = watcher.wait_for(lambda m: m[1]["state"] == "offline", timeout=10)
        assert offline[0][1]["gateway"] == gw
        watcher.close()
        again = Collector(status_topic(gw))  # and the will was retained
        assert again.wait_for(lambda m: m[2] is True)[0][1]["state"] == "offline"
        again.close()
    finally:
        proc.kill()
        proc.wait()


def test_unreachable_broker_is_a_clear_error():
    pub = Publisher("gwx", MqttSettings(host="127.0.0.1", port=1))
    with pytest.raises(PublishError, match="127.0.0.1:1: not connected within 1"):
        pub.connect(timeout_s=1.0)


def test_broker_down_at_start_is_logged_once_as_a_warning(caplog):
    """An agent started while its broker refuses (``wait=False``: it runs on, the outbox
    holds the messages) says so: a warning at the first failed attempt, info after it."""
    pub = Publisher("gwx", MqttSettings(host="127.0.0.1", port=1))
    with caplog.at_level("INFO", logger="flylead.agent.mqtt"):
        pub.connect(wait=False)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len([r for r in caplog.records if "cannot reach" in r.message]) < 2:
            time.sleep(0.05)
        pub.close(timeout_s=0.5)
    tries = [r for r in caplog.records if "cannot reach broker 127.0.0.1:1" in r.message]
    assert [r.levelname for r in tries[:2]] == ["WARNING", "INFO"]
    assert "(attempt 1)" in tries[0].message and "messages wait in the outbox" in tries[0].message


def test_outbox_full_is_survived_and_nothing_is_lost(mosquitto, tmp_path, caplog):
    """The outbox's disk fills up (SQLite max_page_count): commits fail and are logged with
    the file named, the sender keeps running, and once there is room every message reaches
    the real broker in order."""
    from agent.outbox import Outbox

    gw = f"t{uuid.uuid4().hex[:8]}"
    sub = Collector(telemetry_topic(gw, "m1"))
    box = Outbox(tmp_path / "outbox.sqlite")
    pub = Publisher(gw, BROKER, box, commit_interval_s=0.05)
    pub.connect()
    pages = box._db.execute("PRAGMA page_count").fetchone()[0]
    box._db.execute(f"PRAGMA max_page_count = {pages}")
    with caplog.at_level("ERROR", logger="flylead.agent.mqtt"):
        for i in range(30):
            pub.publish(telemetry_topic(gw, "m1"), TelemetryMsg(
                msg_id=pub.next_msg_id(), gateway=gw, ts=1.8e9 + i, device="m1",
                values={"active_power": 100.0 + i}))
        deadline = time.monotonic() + 5
        while pub.outbox_errors < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
    time.sleep(0.2)
    assert pub.outbox_errors >= 2 and sub.messages == []  # nothing accepted, nothing sent
    assert any("outbox.sqlite" in r.getMessage() and "full" in r.getMessage() for r in caplog.records)
    box._db.execute("PRAGMA max_page_count = 1073741823")
    got = sub.wait_for(lambda m: m[1]["ts"] == 1.8e9 + 29, timeout=10)
    assert got
    assert [m[1]["values"]["active_power"] for m in sub.messages] == [100.0 + i for i in range(30)]
    pub.close()
    sub.close()


def test_last_will_carries_the_time_of_the_last_reconnect(tmp_path):
    """The will's ts is when the connection that ended was opened, not when the agent
    started: connect, wait, restart the broker (the agent reconnects), then the agent's
    connection dies without DISCONNECT (SIGKILL): the retained offline ts is not before the
    reconnect."""
    from tests.test_outbox import PrivateMosquitto

    broker = PrivateMosquitto(tmp_path)
    broker.start()
    gw = f"t{uuid.uuid4().hex[:8]}"
    code = (
        "import time; from agent.config import MqttSettings; from agent.publisher import Publisher;"
        f"p = Publisher({gw!r}, MqttSettings(port={broker.port})); p.connect();"
        "print('up', time.time(), flush=True); time.sleep(120)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    got: list[dict] = []
    watcher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"w-{uuid.uuid4().hex[:8]}")
    watcher.on_connect = lambda c, *_: c.subscribe(status_topic(gw), qos=1)
    watcher.on_message = lambda c, u, m: got.append(json.loads(m.payload))
    watcher.reconnect_delay_set(0.1, 0.5)

    def wait_for(pred, timeout=15.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [m for m in got if pred(m)]
            if found:
                return found[-1]
            time.sleep(0.05)
        raise AssertionError(f"no matching status; got {got}")

    try:
        word, started = proc.stdout.readline().split()
        assert word == "up"
        watcher.connect("127.0.0.1", broker.port)
        watcher.loop_start()
        wait_for(lambda m: m["state"] == "online")
        time.sleep(2.0)
        broker.stop()
        restarted = time.time()
        broker.start()  # the agent reconnects within its 1 s first reconnect delay
        got.clear()
        wait_for(lambda m: m["state"] == "online" and m["ts"] >= restarted)
        proc.kill()  # no DISCONNECT: the broker publishes the will
        proc.wait(10)
        offline = wait_for(lambda m: m["state"] == "offline")
        assert offline["ts"] >= restarted > float(started) + 2.0
        assert offline["ts"] <= time.time()
    finally:
        proc.kill()
        proc.wait()
        watcher.loop_stop()
        watcher.disconnect()
        broker.stop()
