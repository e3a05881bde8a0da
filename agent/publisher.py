"""MQTT side of the agent: paho-mqtt 2.x client with status, last will and QoS 1.

On connect the agent publishes ``{"state": "online"}`` retained on its status topic; the
broker publishes the last will ``{"state": "offline"}`` (retained, QoS 1) if the agent
vanishes, and :meth:`Publisher.close` publishes it on a clean stop.  Messages are
published with QoS 1 and counted as delivered only when the broker acknowledges them
(PUBACK).  While disconnected, paho keeps QoS 1 messages and sends them after reconnect;
the persistent outbox (SQLite) is the gateway-agent issue's work.
"""

from __future__ import annotations

import itertools
import json
import logging
import ssl
import threading
import time
import uuid

import paho.mqtt.client as mqtt
from pydantic import BaseModel

from agent.config import MqttSettings
from agent.schema import status_topic

log = logging.getLogger("flylead.agent.mqtt")

#: Longest pause between reconnect attempts (s); paho doubles from 1 s up to this.
MAX_RECONNECT_DELAY_S = 60


class PublishError(RuntimeError):
    """The broker could not be reached or refused the connection."""


class Publisher:
    """Publishes the agent's messages to one broker.

    Args:
        gateway: gateway id, used in topics and (with a random suffix) as MQTT client id.
        settings: broker host, port, credentials, TLS, protocol.
    """

    def __init__(self, gateway: str, settings: MqttSettings) -> None:
        self.gateway = gateway
        self.settings = settings
        self._seq = itertools.count(1)
        self._run = uuid.uuid4().hex[:8]
        self._lock = threading.Lock()
        self._pending: set[int] = set()
        self._early: set[int] = set()
        self._connected = threading.Event()
        self.published = 0
        self.acked = 0
        protocol = mqtt.MQTTv5 if settings.protocol == "5" else mqtt.MQTTv311
        kwargs = {} if protocol == mqtt.MQTTv5 else {"clean_session": False}
        self._client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"flylead-agent-{gateway}",
            protocol=protocol,
            **kwargs,
        )
        if settings.username:
            self._client.username_pw_set(settings.username, settings.password)
        if settings.tls:
            self._client.tls_set(ca_certs=settings.ca_file, cert_reqs=ssl.CERT_REQUIRED)
        self._client.will_set(
            status_topic(gateway), self._status_payload("offline"), qos=1, retain=True
        )
        self._client.reconnect_delay_set(1, MAX_RECONNECT_DELAY_S)
        self._client.max_queued_messages_set(0)  # unbounded while offline (issue 6: outbox)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_publish = self._on_publish

    def _status_payload(self, state: str) -> str:
        return json.dumps({"v": 1, "gateway": self.gateway, "state": state, "ts": time.time()})

    def next_msg_id(self) -> str:
        """A message id unique to this gateway: ``{gateway}:{run}:{seq}``."""
        return f"{self.gateway}:{self._run}:{next(self._seq)}"

    # paho callbacks run in paho's network thread
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error("broker %s:%s refused connection: %s",
                      self.settings.host, self.settings.port, reason_code)
            return
        client.publish(status_topic(self.gateway), self._status_payload("online"), qos=1, retain=True)
        self._connected.set()
        log.info("connected to broker %s:%s", self.settings.host, self.settings.port)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self._connected.clear()
        if reason_code != 0:
            log.warning("disconnected from broker: %s; paho reconnects", reason_code)

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self._lock:
            self.acked += 1
            if mid in self._pending:
                self._pending.discard(mid)
            else:  # PUBACK arrived before publish() registered the mid
                self._early.add(mid)

    def connect(self, timeout_s: float = 10.0) -> None:
        """Connect and start paho's network thread.

        Raises:
            PublishError: not connected within ``timeout_s`` real seconds.
        """
        self._client.connect_async(self.settings.host, self.settings.port, self.settings.keepalive_s)
        self._client.loop_start()
        if not self._connected.wait(timeout_s):
            self._client.loop_stop()
            raise PublishError(
                f"MQTT broker {self.settings.host}:{self.settings.port}: "
                f"not connected within {timeout_s} s"
            )

    def publish(self, topic: str, msg: BaseModel) -> None:
        """Publish one message with QoS 1 (not retained)."""
        payload = msg.model_dump_json(exclude_none=True)
        # paho's lock is taken inside publish(); ours is not held across it, so the
        # network thread's PUBACK callback can never deadlock against this call.
        info = self._client.publish(topic, payload, qos=1)
        with self._lock:
            self.published += 1
            if info.mid in self._early:
                self._early.discard(info.mid)
            else:
                self._pending.add(info.mid)

    @property
    def unacked(self) -> int:
        """Messages published but not yet acknowledged by the broker."""
        with self._lock:
            return len(self._pending)

    def drain(self, timeout_s: float = 10.0) -> bool:
        """Wait until every published message is acknowledged; True if so."""
        deadline = time.monotonic() + timeout_s
        while self.unacked and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.unacked == 0

    def close(self, timeout_s: float = 10.0) -> None:
        """Flush, publish the retained offline status and disconnect."""
        self.drain(timeout_s)
        if self._connected.is_set():
            info = self._client.publish(
                status_topic(self.gateway), self._status_payload("offline"), qos=1, retain=True
            )
            info.wait_for_publish(timeout_s)
        self._client.disconnect()
        self._client.loop_stop()
