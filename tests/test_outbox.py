"""Store-and-forward: the SQLite outbox and the publisher that drains it.

Fault tests run a private Mosquitto on a free loopback port, so stopping it touches no
other test.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from agent.config import MqttSettings
from agent.outbox import Outbox
from agent.publisher import Publisher
from agent.schema import AlertMsg, TelemetryMsg, alert_topic, telemetry_topic

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


# ------------------------------------------------------------------------ outbox alone


def test_fifo_commit_and_ack(tmp_path):
    box = Outbox(tmp_path / "o.sqlite")
    for i in range(5):
        box.put("telemetry", "t/a", f"m{i}")
    assert box.peek() == []  # nothing accepted before commit
    assert box.commit() == 5
    entries = box.peek(limit=10)
    assert [e.payload for e in entries] == [b"m0", b"m1", b"m2", b"m3", b"m4"]
    assert box.peek(after_seq=entries[1].seq, limit=2)[0].payload == b"m2"
    box.ack([entries[0].seq, entries[2].seq, 999_999])
    assert [e.payload for e in box.peek()] == [b"m1", b"m3", b"m4"]
    assert box.depth == 3


def test_full_outbox_drops_oldest_telemetry_never_alerts(tmp_path):
    path = tmp_path / "o.sqlite"
    box = Outbox(path, max_messages=4)
    box.put("alert", "a", "A1")
    for i in range(3):
        box.put("telemetry", "t", f"T{i}")
    box.commit()
    box.put("telemetry", "t", "T3")
    box.put("alert", "a", "A2")
    box.commit()
    # 6 accepted, bound 4: the two oldest telemetry points went
    assert [e.payload for e in box.peek()] == [b"A1", b"T2", b"T3", b"A2"]
    assert box.dropped == 2
    # alerts alone may exceed the bound: never dropped
    for i in range(5):
        box.put("alert", "a", f"B{i}")
    box.commit()
    assert box.count("alert") == 7 and box.count("telemetry") == 0
    assert box.dropped == 4
    box.close()
    assert Outbox(path, max_messages=4).dropped == 4  # the count survives a restart


def test_committed_messages_survive_sigkill(tmp_path):
    path = tmp_path / "o.sqlite"
    code = (
        "import sys, time; from agent.outbox import Outbox;"
        f"b = Outbox({str(path)!r});"
        "[b.put('telemetry', 't', f'm{i}') for i in range(500)]; b.commit();"
        "b.put('telemetry', 't', 'not-committed');"
        "print('committed', flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "committed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        proc.kill()
    box = Outbox(path)
    payloads = [e.payload for e in box.peek(limit=1000)]
    assert payloads == [f"m{i}".encode() for i in range(500)]


def test_bad_bound_and_bad_file(tmp_path):
    with pytest.raises(ValueError, match="max_messages must be > 0"):
        Outbox(tmp_path / "x.sqlite", max_messages=0)
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(Exception, match="not a database"):
        Outbox(junk)


# -------------------------------------------------------------- with a private broker


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivateMosquitto:
    """A mosquitto on its own loopback port; stop() and start() simulate an outage."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.conf = tmp / "mosquitto.conf"
        self.conf.write_text(
            # persistence, as a deployed broker has it: what the broker acknowledged and still
            # holds for the receiver's persistent session survives the simulated outage
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
            f"persistence_location {tmp}/\nmax_queued_messages 100000\n"
        )
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        pytest.fail(f"private mosquitto did not listen on 127.0.0.1:{self.port}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


@pytest.fixture
def private_broker(tmp_path):
    if not Path(MOSQUITTO).exists():
        pytest.fail("mosquitto is not installed: run .ci/services.sh")
    broker = PrivateMosquitto(tmp_path)
    broker.start()
    yield broker
    broker.stop()


class Receiver:
    """Persistent-session QoS 1 subscriber that records payloads in arrival order."""

    def __init__(self, port: int, topic: str) -> None:
        self.got: list[dict] = []
        self.ready = threading.Event()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"rx-{uuid.uuid4().hex[:6]}",
                             clean_session=False)
        self.c.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self.c.on_subscribe = lambda *_: self.ready.set()
        # status messages (no msg_id) are not counted
        self.c.on_message = lambda c, u, m: "msg_id" in (d := json.loads(m.payload)) and self.got.append(d)
        self.c.reconnect_delay_set(0.1, 0.5)
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        assert self.ready.wait(5)

    def wait(self, n: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while len({m["msg_id"] for m in self.got}) < n and time.monotonic() < deadline:
            time.sleep(0.05)

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def telemetry(pub: Publisher, gw: str, i: int) -> TelemetryMsg:
    return TelemetryMsg(msg_id=pub.next_msg_id(), gateway=gw, ts=1.8e9 + i, device="m1",
                        values={"active_power": float(i)})


def alert(pub: Publisher, gw: str, i: int) -> AlertMsg:
    return AlertMsg(msg_id=pub.next_msg_id(), gateway=gw, ts=1.8e9 + i, alert_id=f"{gw}:h1:{i}",
                    kind="ebike_charging", state="closed", household="h1", device="m1",
                    start=1.8e9, end=1.8e9 + i, confidence=0.9)


def test_broker_outage_loses_nothing_and_keeps_order(private_broker, tmp_path):
    gw = "gw-outage"
    rx = Receiver(private_broker.port, f"flylead/v1/{gw}/#")
    pub = Publisher(gw, MqttSettings(port=private_broker.port), Outbox(tmp_path / "o.sqlite"),
                    commit_interval_s=0.05)
    pub.connect()
    for i in range(100):
        pub.publish(telemetry_topic(gw, "m1"), telemetry(pub, gw, i))
    assert pub.drain(10)
    rx.wait(100)
    private_broker.stop()  # the uplink goes away
    for i in range(100, 400):
        pub.publish(telemetry_topic(gw, "m1"), telemetry(pub, gw, i))
        if i % 50 == 0:
            pub.publish(alert_topic(gw, "h1"), alert(pub, gw, i), kind="alert")
    time.sleep(0.5)
    assert pub.outbox.depth >= 300 - 256  # what paho does not hold waits on disk
    private_broker.start()
    assert pub.drain(30), f"{pub.unacked} messages not acknowledged after the broker came back"
    rx.wait(406)
    pub.close()
    rx.close()
    tele = [m for m in rx.got if "values" in m]
    values = [m["values"]["active_power"] for m in tele]
    unique = list(dict.fromkeys(values))  # duplicates (same msg_id) are allowed, loss is not
    assert unique == [float(i) for i in range(400)]
    assert sorted({m["alert_id"] for m in rx.got if "alert_id" in m}) == sorted(
        f"{gw}:h1:{i}" for i in range(100, 400, 50))
    first = {}
    for m in rx.got:  # a duplicate carries the same msg_id and is the same message
        assert first.setdefault(m["msg_id"], m) == m


def test_agent_killed_then_restarted_delivers_what_the_outbox_accepted(private_broker, tmp_path):
    gw = "gw-kill"
    box = tmp_path / "o.sqlite"
    rx = Receiver(private_broker.port, f"flylead/v1/{gw}/#")
    private_broker.stop()  # broker down, so everything piles up in the outbox
    code = (
        "import time; from agent.config import MqttSettings; from agent.outbox import Outbox;"
        "from agent.publisher import Publisher; from agent.schema import *;"
        f"p = Publisher({gw!r}, MqttSettings(port={private_broker.port}), Outbox({str(box)!r}));"
        "p.connect(wait=False);"
        "[p.publish(telemetry_topic(p.gateway, 'm1'), TelemetryMsg(msg_id=p.next_msg_id(),"
        " gateway=p.gateway, ts=1.8e9 + i, device='m1', values={'active_power': float(i)}))"
        " for i in range(300)];"
        "p.commit(); time.sleep(0.5); print('accepted', p.outbox.depth, flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline().split()
        assert line == ["accepted", "300"]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        proc.kill()
    private_broker.start()
    rx2 = Receiver(private_broker.port, f"flylead/v1/{gw}/#")
    pub = Publisher(gw, MqttSettings(port=private_broker.port), Outbox(box))
    pub.connect()
    assert pub.drain(20)
    rx2.wait(300)
    pub.close()
    rx.close()
    rx2.close()
    values = [m["values"]["active_power"] for m in rx2.got if "values" in m]
    assert list(dict.fromkeys(values)) == [float(i) for i in range(300)]


def test_failed_commit_keeps_the_messages_for_the_next(tmp_path):
    """A commit that fails (SQLite full: max_page_count reached, as on a full SD card) rolls
    back, keeps every buffered message ahead of newer ones and counts nothing; once there is
    room, the next commit writes them all in order."""
    box = Outbox(tmp_path / "o.db")
    box.put("telemetry", "t/1", b"one")
    assert box.commit() == 1
    pages = box._db.execute("PRAGMA page_count").fetchone()[0]
    box._db.execute(f"PRAGMA max_page_count = {pages}")
    box.put("telemetry", "t/2", b"x" * 20_000)  # needs new pages
    box.put("alert", "a/1", b"alarm")
    with pytest.raises(sqlite3.OperationalError, match="full"):
        box.commit()
    assert (box.depth, box.buffered, box.dropped) == (1, 2, 0)
    box.put("telemetry", "t/3", b"three")
    box._db.execute("PRAGMA max_page_count = 1073741823")
    assert box.commit() == 3
    assert [(e.topic, len(e.payload)) for e in box.peek()] == [
        ("t/1", 3), ("t/2", 20_000), ("a/1", 5), ("t/3", 5)]
