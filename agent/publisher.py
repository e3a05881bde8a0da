"""MQTT side of the agent: paho-mqtt 2.x client, fed from the durable outbox.

Flow: :meth:`Publisher.publish` puts a message into the :class:`~agent.outbox.Outbox`;
the sender thread commits the outbox in batches (alerts at once), hands committed messages
to paho in order, at most :data:`WINDOW` unacknowledged at a time, and deletes each from the
outbox when the broker's PUBACK arrives.  While the broker is away paho keeps the window
and resends it in order after reconnecting; the rest waits in SQLite.  After a restart,
whatever the outbox still holds is sent again with its original ``msg_id``.

Commands: :meth:`Publisher.subscribe` registers a handler for one exact topic (the agent's
``flylead/v1/{gw}/cmd/ack``).  The agent's session is clean (nothing is kept for it while
it is away), so every subscription is made again in ``on_connect``, after each reconnect.
Handlers run in paho's network thread; an exception in one is logged, never raised into
paho.

Status: on connect the agent publishes ``{"state": "online"}`` retained on its status
topic; the broker publishes the last will ``{"state": "offline"}`` (retained, QoS 1) if
the agent vanishes, and :meth:`Publisher.close` publishes it on a clean stop.  The will
travels in the CONNECT packet, so it is set anew before every connection attempt
(``on_pre_connect``): its ``ts`` is when the connection that ended was opened, never
the agent's start time.

Outbox faults: a failed commit or ack (disk full, I/O error) is retried, acks included
(the broker does not send a PUBACK twice), every ``commit_interval_s``; the first failure
is logged as an error, then at most one line every :data:`ERROR_LOG_EVERY_S`, and the
recovery as a warning.
"""

from __future__ import annotations

import itertools
import json
import logging
import sqlite3
import ssl
import threading
import time
import uuid
from collections.abc import Callable

import paho.mqtt.client as mqtt
from pydantic import BaseModel

from agent.config import MqttSettings
from agent.outbox import Kind, Outbox
from agent.schema import status_topic

log = logging.getLogger("flylead.agent.mqtt")

#: Longest pause between reconnect attempts (s); paho doubles from 1 s up to this.
MAX_RECONNECT_DELAY_S = 60
#: Messages handed to paho and not yet acknowledged, at most.  Bounds the gateway's RAM
#: while the broker is away (the rest stays on disk); chosen, ~100 kB of payloads.
WINDOW = 256
#: While the outbox keeps failing, at most one error line this often (s).
ERROR_LOG_EVERY_S = 60.0


class PublishError(RuntimeError):
    """The broker could not be reached or refused the connection."""


class Publisher:
    """Publishes the agent's messages to one broker through the outbox.

    Args:
        gateway: gateway id, used in topics and in the MQTT client id.
        settings: broker host, port, credentials, TLS, protocol.
        outbox: the durable queue; an in-memory one if None (demo, tests).
        commit_interval_s: real seconds between batched outbox commits of telemetry.
    """

    def __init__(
        self,
        gateway: str,
        settings: MqttSettings,
        outbox: Outbox | None = None,
        *,
        commit_interval_s: float = 1.0,
    ) -> None:
        self.gateway = gateway
        self.settings = settings
        self.outbox = outbox if outbox is not None else Outbox(":memory:")
        self.commit_interval_s = commit_interval_s
        self._seq = itertools.count(1)
        self._run = uuid.uuid4().hex[:8]
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._mid_seq: dict[int, int] = {}      # paho mid -> outbox seq, handed and unacked
        self._early: set[int] = set()           # PUBACKs that beat the mid registration
        self._status_mids: set[int] = set()     # status publishes: not outbox messages
        self._acked: list[int] = []             # outbox seqs to delete
        self._handed_seq = 0                    # highest outbox seq handed to paho
        self._commit_now = False
        self._stop = False
        self._connected = threading.Event()
        self._sender: threading.Thread | None = None
        #: exact topic -> handler(topic, payload) of :meth:`subscribe`
        self._subs: dict[str, Callable[[str, bytes], None]] = {}
        self.subscribes = 0  # SUBSCRIBE packets sent (one per topic per connection)
        self.received = 0  # messages handed to a handler
        self.published = 0
        self.acked = 0
        self.outbox_errors = 0  # failed outbox commits or acks (disk full, I/O error)
        self._errors_unlogged = 0  # failures since the last error line
        self._error_logged_at: float | None = None  # monotonic; None: the outbox works
        self._failing: set[str] = set()  # outbox operations failing now
        self.connects = 0
        protocol = mqtt.MQTTv5 if settings.protocol == "5" else mqtt.MQTTv311
        kwargs = {} if protocol == mqtt.MQTTv5 else {"clean_session": True}
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
        self._set_will()
        self._client.on_pre_connect = self._on_pre_connect
        self._client.reconnect_delay_set(1, MAX_RECONNECT_DELAY_S)
        self._client.max_inflight_messages_set(WINDOW)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_connect_fail = self._on_connect_fail
        self._connect_failures = 0
        self._client.on_publish = self._on_publish
        self._client.on_message = self._on_message
        self._client.on_subscribe = self._on_subscribe

    def _status_payload(self, state: str) -> str:
        return json.dumps({"v": 1, "gateway": self.gateway, "state": state, "ts": time.time()})

    def _set_will(self) -> None:
        self._client.will_set(status_topic(self.gateway), self._status_payload("offline"), qos=1, retain=True)

    def _on_pre_connect(self, client, userdata) -> None:
        """Before every connection attempt (paho's ``reconnect``, also the first): the will
        goes in the CONNECT packet, so its ``ts`` is now, not the agent's start."""
        self._set_will()

    def _publish_status(self, state: str) -> mqtt.MQTTMessageInfo:
        """Retained status (QoS 1); its PUBACK is not an outbox message's.  Our lock is not
        held across paho's publish (see :meth:`publish`); from ``on_connect`` the PUBACK
        cannot come before the mid is recorded, as both run in paho's network thread."""
        info = self._client.publish(status_topic(self.gateway), self._status_payload(state),
                                    qos=1, retain=True)
        with self._lock:
            self._status_mids.add(info.mid)
        return info

    def next_msg_id(self) -> str:
        """A message id unique to this gateway: ``{gateway}:{run}:{seq}``."""
        return f"{self.gateway}:{self._run}:{next(self._seq)}"

    # ------------------------------------------------- paho callbacks (network thread)
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error("broker %s:%s refused connection: %s", self.settings.host, self.settings.port, reason_code)
            return
        self._publish_status("online")
        with self._lock:  # with subscribe(): each topic is subscribed here, there, or both
            self._connected.set()
            topics = list(self._subs)
        for topic in topics:  # a clean session forgets subscriptions: make them again
            self._subscribe(topic)
        self.connects += 1
        self._connect_failures = 0
        log.info("connected to broker %s:%s", self.settings.host, self.settings.port)

    def _on_connect_fail(self, client, userdata) -> None:
        """A connection attempt failed (refused, unreachable, TLS): the first one of a run of
        failures as a warning, the retries after it as info; messages wait in the outbox."""
        self._connect_failures += 1
        level = logging.WARNING if self._connect_failures == 1 else logging.INFO
        log.log(level, "cannot reach broker %s:%s (attempt %d); retrying, at most %d s apart; "
                "messages wait in the outbox", self.settings.host, self.settings.port, self._connect_failures,
                MAX_RECONNECT_DELAY_S)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self._connected.clear()
        if reason_code != 0:
            log.warning("disconnected from broker %s:%s: %s; reconnecting",
                        self.settings.host, self.settings.port, reason_code)

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        # Never call paho from here: paho holds its message lock while calling us.
        with self._lock:
            if mid in self._status_mids:
                self._status_mids.discard(mid)
                return
            seq = self._mid_seq.pop(mid, None)
            if seq is None:
                # a PUBACK before the sender registered the mid (never a status message,
                # so a stale entry here cannot later ack a different message with this mid)
                self._early.add(mid)
                return
            self._acked.append(seq)
            self.acked += 1
            self._wake.notify_all()

    def _subscribe(self, topic: str) -> None:
        result, _mid = self._client.subscribe(topic, qos=1)
        if result != mqtt.MQTT_ERR_SUCCESS:
            log.warning("subscribe to %s failed (%s); tried again on the next connect", topic, result)
        else:
            self.subscribes += 1

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        for rc in reason_codes:
            if rc.is_failure:
                log.error("broker %s:%s refused a subscription: %s (check the gateway's ACL: "
                          "read on flylead/v1/%s/cmd/#)", self.settings.host, self.settings.port,
                          rc, self.gateway)

    def _on_message(self, client, userdata, message) -> None:
        with self._lock:
            handler = self._subs.get(message.topic)
        if handler is None:
            log.warning("message on %s, which this agent did not subscribe to: ignored", message.topic)
            return
        self.received += 1
        try:
            handler(message.topic, bytes(message.payload))
        except Exception:  # a handler bug must not stop paho's network thread
            log.exception("handler of %s failed", message.topic)

    # ------------------------------------------------------------------ sender
    def _send_loop(self) -> None:
        last_commit = time.monotonic()
        ack_retry_at = 0.0  # after a failed ack: not before this (monotonic)
        while True:
            with self._lock:
                if self._stop:
                    break
                self._wake.wait(0.05)
                commit_now, self._commit_now = self._commit_now, False
                # acks leave self._acked only once deleted from the outbox: a failed delete
                # is tried again (the broker never sends a PUBACK twice)
                acked = list(self._acked) if time.monotonic() >= ack_retry_at else []
                room = WINDOW - len(self._mid_seq)
                after = self._handed_seq
            if acked:
                try:
                    self.outbox.ack(acked)
                except sqlite3.Error as exc:
                    ack_retry_at = time.monotonic() + self.commit_interval_s
                    self._outbox_failed("deleting acknowledged messages", exc)
                else:
                    with self._lock:  # only appended to meanwhile: the first ones are done
                        del self._acked[:len(acked)]
                    self._outbox_ok("deleting acknowledged messages")
            if commit_now or time.monotonic() - last_commit >= self.commit_interval_s:
                last_commit = time.monotonic()
                try:
                    written = self.outbox.commit()
                except sqlite3.Error as exc:
                    # disk full, I/O error: the outbox keeps the messages buffered (bounded);
                    # retried at the next interval
                    self._outbox_failed("commit", exc)
                else:
                    if written:  # nothing to write proves nothing
                        self._outbox_ok("commit")
            # nothing new is handed to paho while offline: the outbox (bounded, with its
            # drop policy) keeps it; paho resends its own in-flight window on reconnect
            if room > 0 and self._connected.is_set():
                for entry in self.outbox.peek(after, room):
                    info = self._client.publish(entry.topic, entry.payload, qos=1)
                    with self._lock:
                        self._handed_seq = entry.seq
                        if info.mid in self._early:
                            self._early.discard(info.mid)
                            self._acked.append(entry.seq)
                            self.acked += 1
                        else:
                            self._mid_seq[info.mid] = entry.seq

    def _outbox_failed(self, what: str, exc: sqlite3.Error) -> None:
        """Count a failed outbox write; log the first, then one line per ERROR_LOG_EVERY_S."""
        self.outbox_errors += 1
        self._errors_unlogged += 1
        self._failing.add(what)
        now = time.monotonic()
        if self._error_logged_at is None or now - self._error_logged_at >= ERROR_LOG_EVERY_S:
            with self._lock:
                pending = len(self._acked)
            log.error("outbox %s: %s failed: %s (%d failures since the last report; retrying every %g s; "
                      "%d messages buffered in RAM, %d acknowledged ones not yet deleted)",
                      self.outbox.path, what, exc, self._errors_unlogged, self.commit_interval_s,
                      self.outbox.buffered, pending)
            self._error_logged_at, self._errors_unlogged = now, 0

    def _outbox_ok(self, what: str) -> None:
        """``what`` worked: once nothing fails any more, say so (after an error line)."""
        if what not in self._failing:
            return
        self._failing.discard(what)
        if not self._failing:
            log.warning("outbox %s: written again (%d failed writes in all so far)", self.outbox.path,
                        self.outbox_errors)
            self._error_logged_at, self._errors_unlogged = None, 0

    # ------------------------------------------------------------------ public
    def connect(self, timeout_s: float = 10.0, *, wait: bool = True) -> None:
        """Start paho's network thread and the sender.

        With ``wait`` False the agent starts even when the broker is down; messages wait
        in the outbox until it is back.

        Raises:
            PublishError: ``wait`` and not connected within ``timeout_s`` real seconds.
        """
        self._client.connect_async(self.settings.host, self.settings.port, self.settings.keepalive_s)
        self._client.loop_start()
        if wait and not self._connected.wait(timeout_s):
            self._client.loop_stop()
            raise PublishError(
                f"MQTT broker {self.settings.host}:{self.settings.port}: not connected within {timeout_s:g} s"
            )
        self._sender = threading.Thread(target=self._send_loop, name="flylead-sender", daemon=True)
        self._sender.start()

    def subscribe(self, topic: str, handler: Callable[[str, bytes], None]) -> None:
        """Receive the messages of one exact ``topic`` (QoS 1) with ``handler(topic,
        payload)``, called in paho's network thread (keep it short; hand work over to
        the caller's own thread).  Subscribed now if connected, and again on every
        (re)connect.

        Raises:
            ValueError: ``topic`` holds an MQTT wildcard (``+``, ``#``) or is empty.
        """
        if not topic or "+" in topic or "#" in topic:
            raise ValueError(f"subscribe needs an exact topic, got {topic!r}")
        with self._lock:
            self._subs[topic] = handler
            connected = self._connected.is_set()
        if connected:
            self._subscribe(topic)

    def publish(self, topic: str, msg: BaseModel, kind: Kind = "telemetry") -> None:
        """Queue one message (QoS 1, not retained).  Alerts are committed at once;
        telemetry with the next batch (``commit_interval_s``)."""
        self.outbox.put(kind, topic, msg.model_dump_json(exclude_none=True))
        with self._lock:
            self.published += 1
            if kind != "telemetry":
                self._commit_now = True
                self._wake.notify_all()

    def commit(self) -> None:
        """Ask the sender to commit the outbox now."""
        with self._lock:
            self._commit_now = True
            self._wake.notify_all()

    @property
    def unacked(self) -> int:
        """Messages queued or published but not yet acknowledged by the broker."""
        with self._lock:
            pending_acks = len(self._acked)
        return self.outbox.depth + self.outbox.buffered - pending_acks

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def drain(self, timeout_s: float = 10.0) -> bool:
        """Wait until every queued message is acknowledged; True if so."""
        self.commit()
        deadline = time.monotonic() + timeout_s
        while self.unacked and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.unacked == 0

    def close(self, timeout_s: float = 10.0) -> None:
        """Flush (up to ``timeout_s``), publish the retained offline status, disconnect.
        What could not be delivered stays in the outbox for the next start."""
        self.drain(timeout_s)
        with self._lock:
            self._stop = True
            self._wake.notify_all()
        if self._sender is not None:
            self._sender.join(timeout_s)
        if self._connected.is_set():
            self._publish_status("offline").wait_for_publish(timeout_s)
        self._client.disconnect()
        self._client.loop_stop()
        try:
            self.outbox.ack(self._acked)
            self._acked = []
        except sqlite3.Error as exc:  # they are sent again at the next start: duplicates, no loss
            log.error("outbox %s: deleting %d acknowledged messages failed at close: %s",
                      self.outbox.path, len(self._acked), exc)
        try:
            self.outbox.close()
        except sqlite3.Error as exc:
            log.error("outbox %s: last commit failed at close: %s", self.outbox.path, exc)
