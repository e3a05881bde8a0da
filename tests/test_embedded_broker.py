"""EmbeddedBroker with real paho-mqtt 2.x clients (MQTT 3.1.1)."""

from __future__ import annotations

import queue
import socket
import threading

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.schema import status_topic
from broker import EmbeddedBroker

WAIT_S = 5.0


def _client(broker: EmbeddedBroker, name: str, **will: object) -> tuple[mqtt.Client, queue.Queue]:
    """A connected, running paho client; received messages arrive in the queue."""
    received: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
    connected = threading.Event()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=name)
    c.on_message = lambda _c, _u, m: received.put(m)
    c.on_connect = lambda *_: connected.set()
    if will:
        c.will_set(**will)
    c.connect(broker.host, broker.port, keepalive=10)
    c.loop_start()
    assert connected.wait(WAIT_S), f"{name} did not connect to {broker}"
    return c, received


def _subscribe(c: mqtt.Client, topic: str) -> None:
    done = threading.Event()
    c.on_subscribe = lambda *_: done.set()
    c.subscribe(topic, qos=1)
    assert done.wait(WAIT_S), f"no SUBACK for {topic}"


def _close(*clients: mqtt.Client) -> None:
    for c in clients:
        c.disconnect()
        c.loop_stop()


def test_port_zero_reports_real_port_and_stop_closes_it() -> None:
    b = EmbeddedBroker()
    assert b.port == 0
    with b:
        assert b.running and b.port > 0 and b.host == "127.0.0.1"
        socket.create_connection((b.host, b.port), timeout=1).close()
        with pytest.raises(RuntimeError, match="already running"):
            b.start()
    assert not b.running
    with pytest.raises(OSError):
        socket.create_connection((b.host, b.port), timeout=1).close()
    port = b.port
    with b:  # a restart reuses the port, so clients can reconnect
        assert b.port == port
    b.stop()  # idempotent


def test_start_on_taken_port_raises_naming_it() -> None:
    with EmbeddedBroker() as first:
        with pytest.raises(RuntimeError, match=f"127.0.0.1:{first.port}"):
            EmbeddedBroker(port=first.port).start()


def test_qos1_round_trip(embedded_broker: EmbeddedBroker, uid: str) -> None:
    sub, received = _client(embedded_broker, f"sub-{uid}")
    _subscribe(sub, f"t/{uid}/#")
    pub, _ = _client(embedded_broker, f"pub-{uid}")
    infos = [pub.publish(f"t/{uid}/{i % 3}", f"m{i}".encode(), qos=1) for i in range(50)]
    for info in infos:
        info.wait_for_publish(WAIT_S)  # PUBACK from the broker
        assert info.is_published()
    got = [received.get(timeout=WAIT_S) for _ in range(50)]
    assert [m.payload for m in got] == [f"m{i}".encode() for i in range(50)]
    assert {m.qos for m in got} == {1}
    assert received.empty()
    _close(sub, pub)


def test_retained_status_reaches_late_subscriber(embedded_broker: EmbeddedBroker, uid: str) -> None:
    topic = status_topic(f"gw-{uid}")
    pub, _ = _client(embedded_broker, f"pub-{uid}")
    pub.publish(topic, b'{"state": "online"}', qos=1, retain=True).wait_for_publish(WAIT_S)
    _close(pub)

    late, received = _client(embedded_broker, f"late-{uid}")
    _subscribe(late, topic)
    m = received.get(timeout=WAIT_S)
    assert (m.topic, m.payload, m.retain) == (topic, b'{"state": "online"}', True)
    _close(late)


def test_unclean_disconnect_publishes_retained_will(embedded_broker: EmbeddedBroker, uid: str) -> None:
    topic = status_topic(f"gw-{uid}")
    watcher, received = _client(embedded_broker, f"watch-{uid}")
    _subscribe(watcher, topic)

    # Connect without paho's loop thread so that nothing reconnects after the socket dies.
    gw = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"gw-{uid}")
    gw.will_set(topic, b'{"state": "offline"}', qos=1, retain=True)
    gw.connect(embedded_broker.host, embedded_broker.port, keepalive=10)
    while not gw.is_connected():
        gw.loop(0.1)
    assert received.empty()
    sock = gw.socket()
    sock.shutdown(socket.SHUT_RDWR)
    sock.close()

    m = received.get(timeout=WAIT_S)
    assert (m.topic, m.payload) == (topic, b'{"state": "offline"}')
    # ... and it is retained for whoever subscribes later.
    late, late_received = _client(embedded_broker, f"late-{uid}")
    _subscribe(late, topic)
    assert late_received.get(timeout=WAIT_S).payload == b'{"state": "offline"}'
    _close(watcher, late)


def test_clean_disconnect_does_not_publish_will(embedded_broker: EmbeddedBroker, uid: str) -> None:
    topic = status_topic(f"gw-{uid}")
    watcher, received = _client(embedded_broker, f"watch-{uid}")
    _subscribe(watcher, topic)
    gw, _ = _client(embedded_broker, f"gw-{uid}", topic=topic, payload=b"offline", qos=1)
    _close(gw)
    with pytest.raises(queue.Empty):
        received.get(timeout=0.5)
    _close(watcher)
