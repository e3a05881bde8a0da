"""MQTT → store: the server side of the topic scheme in :mod:`agent.schema`.

:class:`Ingest` subscribes (QoS 1) to every gateway's telemetry, alerts and status,
validates each payload with the same pydantic models the agent builds them with (in
pydantic's strict mode, plus the checks below), drops duplicates by ``msg_id`` and writes
batches to a :class:`~broker.store.Store`.

Delivery guarantee — at least once into the store, exactly once in effect:

* QoS 1 messages are acknowledged to the broker only after the batch that holds them is
  stored (paho manual acks, sent in arrival order).  If the store is down, the batch is
  kept and retried with backoff; nothing accepted is dropped.  If the process dies, the
  broker redelivers the unacknowledged messages to the next session with the same
  client id (persistent session), and the stores ignore what they already hold.
* The broker stops sending once its in-flight window of unacknowledged messages is full,
  which bounds memory while the store is down.  Mosquitto's window is 20 messages for
  MQTT 3.1.1 clients (``max_inflight_messages``); with MQTT 5 the ingest announces a
  Receive Maximum of ``batch_size``.  amqtt has no window, so :data:`MAX_PENDING` bounds
  the queue: when it is full the MQTT callback waits, which stops reading the socket.
* Because a broker with a small window stops sending before a batch is full, a batch is
  also flushed when no message has arrived for :data:`IDLE_FLUSH_S`.
* A deployment must let the broker queue enough messages for an ingest outage or a
  burst: Mosquitto drops messages for a client beyond ``max_queued_messages`` (default
  1000) queued behind its in-flight window.  Use MQTT 5 with Mosquitto (the window is
  then ``batch_size``, not 20) and raise ``max_queued_messages``.
* amqtt (the embedded demo broker) keeps no session for anonymous clients, so messages
  published while the ingest is disconnected from it are lost; and it stops waiting for
  a PUBACK after 5 s without resending, so there the ingest's own retry loop is what
  keeps data through a store outage (the batch stays in memory).

Load sharing: with ``shared_group`` set, telemetry and alerts are subscribed as MQTT 5
shared subscriptions (``$share/{group}/flylead/v1/...``): the broker hands each message to
one member of the group, so several ingest processes (each with its own client id) split
the load.  A message redelivered after a member disconnects may reach another member;
the stores ignore a ``msg_id`` they already hold, so it is still stored once.  Status
messages stay on an ordinary subscription, so every member tracks every gateway's status
(and gets the retained ones, which MQTT 5 never sends to shared subscriptions).

Rejected messages (counted in :attr:`Ingest.rejected`, by reason in
:attr:`Ingest.rejections`, logged as a warning on logger ``flylead.ingest`` with topic,
reason and cause, at most one line per reason every :data:`_LOG_EVERY_S` after the first
ten; never raised; not stored):

    too_large     payload over :data:`agent.schema.MAX_PAYLOAD_BYTES`
    bad_topic     topic outside the scheme
    invalid_json  not UTF-8 JSON (also nesting deeper than the JSON parser allows)
    schema        JSON that fails TelemetryMsg/AlertMsg validation in strict mode: a wrong
                  type is refused, never coerced (``"220"``, ``true`` for a number,
                  ``"ts": "1795838400"``, ``"v": true`` or ``1.0``; a JSON integer is
                  accepted for a float field), NaN, unknown names or fields...; and an
                  alert whose ``end`` is before its ``start``, or whose ``end`` is present
                  while ``open`` / missing while ``closed``
    mismatch      topic gateway/device/household differ from the payload's; a ``msg_id``
                  that does not start with ``{gateway}:`` (so one gateway cannot use up
                  another's ids in the dedupe); an ``alert_id`` already known (to this
                  ingest or in the store) with another household, device or kind (not
                  ``start``: the agent refines a charging session's start between the
                  open and the closed message of one alert_id)
    future        ``ts``, ``start`` or ``end`` more than ``max_future_s`` ahead of this
                  host's wall clock (only when ``max_future_s`` is set; off by default)
    bad_status    status payload not {"state": "online"|"offline", ...} (also nesting
                  too deep for the JSON parser)
    internal      a bug in this module (logged with traceback)

A message the store refuses (:meth:`broker.store.SqliteStore.write` returns it: an
``alert_id`` whose identity differs from the stored one, e.g. written meanwhile by another
ingest of a shared group) is counted and logged as ``mismatch`` too, after it was counted
in :attr:`Ingest.accepted`.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import BaseModel, ConfigDict, StrictInt, ValidationError

from agent.schema import (
    ALERT_SUBSCRIPTION,
    HEALTH_SUBSCRIPTION,
    MAX_PAYLOAD_BYTES,
    NAME_PATTERN,
    STATUS_SUBSCRIPTION,
    TELEMETRY_SUBSCRIPTION,
    TOPIC_ROOT,
    AlertMsg,
    TelemetryMsg,
    alert_topic,
    health_topic,
    status_topic,
    telemetry_topic,
)
from broker.store import Store

__all__ = ["Ingest"]

log = logging.getLogger("flylead.ingest")

#: msg_ids remembered for dedupe: at 100 msg/s a day's traffic is 8.6 M, but duplicates
#: arrive within seconds (publisher retries, broker redelivery); 100k ids cost ~10 MB.
DEDUPE_SIZE = 100_000
#: Messages held in memory before the MQTT callback waits (see module docstring);
#: ~0.2 GB worst case at ~2 kB per parsed message.
MAX_PENDING = 100_000
#: Flush when nothing has arrived for this long (real s): the broker may be waiting for
#: our acks.  Short enough to keep throughput with a 20-message window.
IDLE_FLUSH_S = 0.005
#: Store retry backoff (real s): first delay, doubled per failure up to the maximum.
RETRY_FIRST_S = 0.5
RETRY_MAX_S = 30.0
#: MQTT keepalive (s) and paho's reconnect delay bounds (s).
KEEPALIVE_S = 30
RECONNECT_MIN_S = 1
RECONNECT_MAX_S = 30
#: MQTT 5 session expiry (s): how long the broker keeps our subscriptions and queued
#: messages while the ingest is away; a day covers a restart or a night's outage.
SESSION_EXPIRY_S = 86_400
#: Real seconds between two log lines for the same rejection reason (after the first
#: ten), so a flood of hostile messages cannot flood the log.
_LOG_EVERY_S = 10.0

_NAME = re.compile(NAME_PATTERN)
_STATUS_STATES = ("online", "offline")

#: An alert's identity: (household, device, kind), fixed once a gateway's alert_id is known.
#: ``start`` is not part of it: the agent's charging alerts keep the alert_id of the open
#: message (made from the start known then) when the closed message reports a refined start.
AlertIdentity = tuple[str, str, str]


class _Version(BaseModel):
    """``v`` as JSON gives it: the schema's ``Literal[1]`` also matches ``true`` and ``1.0``
    (Python equality), even in strict mode; this one accepts only the JSON integer."""

    model_config = ConfigDict(extra="ignore", strict=True)

    v: StrictInt = 1


def alert_identity(msg: AlertMsg) -> AlertIdentity:
    """What a later message of the same gateway and ``alert_id`` may not change."""
    return (msg.household, msg.device, msg.kind)


@dataclass(slots=True)
class _Entry:
    """One received message waiting for its batch to be stored and acknowledged."""

    generation: int  # connection it arrived on; acks for older connections are dropped
    mid: int
    qos: int
    msg: TelemetryMsg | AlertMsg | None  # None: nothing to store (rejected, duplicate, status)


class _Rejected(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class Ingest:
    """Subscribe, validate, dedupe, batch, store, acknowledge.

    Args:
        store: where accepted messages go (not closed by :meth:`stop`).
        host, port: MQTT broker.
        client_id: MQTT client id; the persistent session is keyed by it, so run one
            ingest per client id.
        username, password: MQTT credentials (None: anonymous).
        batch_size: messages per store write (and MQTT 5 Receive Maximum).
        flush_interval_s: longest real time a message waits for its batch.
        protocol: ``"3.1.1"`` (default; amqtt speaks only 3.1.1) or ``"5"``.
        gateway: subscribe to this gateway's topics only; ``"+"`` (default) means all.
        session_expiry_s: MQTT 5 session expiry (ignored with 3.1.1, whose persistent
            sessions never expire).
        shared_group: share telemetry and alert subscriptions with the other ingests of
            this group (a name, see module docstring); None (default): receive everything.
        max_future_s: reject (reason ``future``) a message whose ``ts``, or an alert whose
            ``start`` or ``end``, is more than this many seconds ahead of this host's wall
            clock (``time.time()``); a finite number >= 0.  None (default): no such check,
            because the demo and the tests run gateways on an accelerated simulated clock
            whose times may lie ahead of the wall clock (flylead/clock.py).  Set it in a
            deployment whose gateways keep real time (e.g. 300).

    Attributes (read from any thread):
        accepted: valid new telemetry and alert messages queued for the store.
        stored: messages written to the store (not those the store refused).
        rejected: messages refused (see module docstring), by reason in ``rejections``.
        duplicates: valid messages dropped because their msg_id was already accepted.

    Raises:
        ValueError: bad argument (the message names it).
    """

    def __init__(
        self,
        store: Store,
        host: str,
        port: int,
        *,
        client_id: str = "flylead-ingest",
        username: str | None = None,
        password: str | None = None,
        batch_size: int = 500,
        flush_interval_s: float = 0.5,
        protocol: Literal["3.1.1", "5"] = "3.1.1",
        gateway: str = "+",
        session_expiry_s: int = SESSION_EXPIRY_S,
        shared_group: str | None = None,
        max_future_s: float | None = None,
    ) -> None:
        if protocol not in ("3.1.1", "5"):
            raise ValueError(f"Ingest protocol must be '3.1.1' or '5', got {protocol!r}")
        if not 1 <= batch_size <= 65_535:
            raise ValueError(f"Ingest batch_size must be 1..65535, got {batch_size}")
        if not flush_interval_s > 0:
            raise ValueError(f"Ingest flush_interval_s must be > 0, got {flush_interval_s}")
        if gateway != "+" and not _NAME.match(gateway):
            raise ValueError(f"Ingest gateway must be '+' or match {NAME_PATTERN}, got {gateway!r}")
        if not client_id:
            raise ValueError("Ingest client_id must not be empty (it keys the persistent session)")
        if shared_group is not None and not _NAME.match(shared_group):
            raise ValueError(f"Ingest shared_group must match {NAME_PATTERN}, got {shared_group!r}")
        if max_future_s is not None and (isinstance(max_future_s, bool)
                                         or not isinstance(max_future_s, int | float)
                                         or not math.isfinite(max_future_s) or max_future_s < 0):
            raise ValueError(f"Ingest max_future_s must be None or a finite number >= 0, got {max_future_s!r}")
        self.max_future_s = None if max_future_s is None else float(max_future_s)
        self.store = store
        self.host, self.port, self.client_id = host, port, client_id
        self.batch_size, self.flush_interval_s = batch_size, flush_interval_s
        self.protocol, self.session_expiry_s = protocol, session_expiry_s
        if gateway == "+":
            self.subscriptions = [TELEMETRY_SUBSCRIPTION, ALERT_SUBSCRIPTION, HEALTH_SUBSCRIPTION,
                                  STATUS_SUBSCRIPTION]
        else:
            self.subscriptions = [telemetry_topic(gateway, "+"), alert_topic(gateway, "+"),
                                  health_topic(gateway, "+"), status_topic(gateway)]
        self.shared_group = shared_group
        if shared_group is not None:  # status stays unshared (see module docstring)
            self.subscriptions[:3] = [f"$share/{shared_group}/{t}" for t in self.subscriptions[:3]]

        self.accepted = 0
        self.stored = 0
        self.rejected = 0
        self.duplicates = 0
        self.rejections: Counter[str] = Counter()
        self._status: dict[str, str] = {}

        self._cond = threading.Condition()  # guards everything below
        self._pending: list[_Entry] = []
        self._seen: OrderedDict[str, None] = OrderedDict()
        # (gateway, alert_id) -> identity of the first accepted message (bounded like _seen)
        self._alert_ids: OrderedDict[tuple[str, str], AlertIdentity] = OrderedDict()
        self._enqueued = 0  # entries ever queued
        self._done = 0  # entries ever processed (stored and acked)
        self._oldest = 0.0  # monotonic arrival of _pending[0]
        self._newest = 0.0  # monotonic arrival of _pending[-1]
        self._flush_now = False
        self._closing = False
        self._store_error: str | None = None

        self._ack_lock = threading.Lock()  # orders acks against connection changes
        self._generation = 0
        self._subscribed = threading.Event()
        self._sub_mid: int | None = None
        self._last_error = "no connection attempt yet"
        self._log_times: dict[str, tuple[int, float]] = {}

        self._flusher: threading.Thread | None = None
        self._client = self._make_client(username, password)

    # -- MQTT client ------------------------------------------------------------------

    def _make_client(self, username: str | None, password: str | None) -> mqtt.Client:
        if self.protocol == "5":
            client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id,
                                 protocol=MQTTProtocolVersion.MQTTv5, manual_ack=True)
        else:
            client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id,
                                 clean_session=False, protocol=MQTTProtocolVersion.MQTTv311,
                                 manual_ack=True)
        if username is not None:
            client.username_pw_set(username, password)
        client.reconnect_delay_set(RECONNECT_MIN_S, RECONNECT_MAX_S)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        return client

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                    properties: Any) -> None:
        if reason.is_failure:
            self._last_error = f"broker refused the connection: {reason}"
            log.error("ingest %s: %s:%d refused the connection: %s",
                      self.client_id, self.host, self.port, reason)
            return
        with self._ack_lock:
            self._generation += 1
        log.info("ingest %s connected to %s:%d (session present: %s)", self.client_id,
                 self.host, self.port, getattr(flags, "session_present", "?"))
        # Subscribing again with a resumed session is harmless and covers a lost one.
        result, mid = client.subscribe([(t, 1) for t in self.subscriptions])
        if result != mqtt.MQTT_ERR_SUCCESS:
            self._last_error = f"subscribe failed: {mqtt.error_string(result)}"
        self._sub_mid = mid

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        self._last_error = f"cannot connect to {self.host}:{self.port}"

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                       properties: Any) -> None:
        with self._ack_lock:
            self._generation += 1  # unacked messages will be redelivered; never ack them now
        self._subscribed.clear()
        if not self._closing:
            self._last_error = f"disconnected: {reason}"
            log.warning("ingest %s lost %s:%d (%s); paho reconnects", self.client_id,
                        self.host, self.port, reason)

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int,
                      reasons: list[Any], properties: Any) -> None:
        failed = [f"{t}: {r}" for t, r in zip(self.subscriptions, reasons, strict=False)
                  if r.is_failure]
        if failed:
            self._last_error = f"broker refused subscriptions {failed}"
            log.error("ingest %s: %s", self.client_id, self._last_error)
            return
        self._subscribed.set()

    # -- message handling -------------------------------------------------------------

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        """paho callback: classify, queue, wake the flusher.  Never raises."""
        msg: TelemetryMsg | AlertMsg | None = None
        try:
            msg = self._parse(message.topic, message.payload)
        except _Rejected as exc:
            self._reject(exc.reason, message.topic, str(exc))
        except Exception:  # a bug here must not kill paho's network thread
            self.rejected += 1
            self.rejections["internal"] += 1
            log.exception("ingest %s: failed on a message on %r", self.client_id, message.topic)
        known: AlertIdentity | None = None
        if isinstance(msg, AlertMsg):
            known = self._known_identity(msg)
        conflict: str | None = None
        with self._cond:
            if msg is not None:
                if msg.msg_id in self._seen:
                    self._seen.move_to_end(msg.msg_id)
                    self.duplicates += 1
                    msg = None
                elif isinstance(msg, AlertMsg) and (conflict := self._check_identity(msg, known)):
                    msg = None
                else:
                    self._seen[msg.msg_id] = None
                    if len(self._seen) > DEDUPE_SIZE:
                        self._seen.popitem(last=False)
                    self.accepted += 1
            while len(self._pending) >= MAX_PENDING and not self._closing:
                self._cond.wait(1.0)
            now = time.monotonic()
            if not self._pending:
                self._oldest = now
            self._newest = now
            self._pending.append(_Entry(self._generation, message.mid, message.qos, msg))
            self._enqueued += 1
            if len(self._pending) == 1 or len(self._pending) >= self.batch_size:
                self._cond.notify_all()  # the flusher sleeps without timeout when idle
        if conflict is not None:
            self._reject("mismatch", message.topic, conflict)

    def _known_identity(self, msg: AlertMsg) -> AlertIdentity | None:
        """The identity this ingest or the store knows for ``msg``'s alert, or None.

        The store is asked (its optional ``alert_identity`` method) only for an alert_id
        this ingest has not seen since it started; if the store cannot answer, only this
        ingest's memory counts (the store's own check in ``write`` remains)."""
        key = (msg.gateway, msg.alert_id)
        with self._cond:
            if key in self._alert_ids:
                return self._alert_ids[key]
        lookup = getattr(self.store, "alert_identity", None)
        if lookup is None:
            return None
        try:
            return lookup(msg.gateway, msg.alert_id)
        except Exception as exc:  # StoreError: the store is down; its write checks again
            log.debug("ingest %s: store cannot tell alert %s's identity: %s", self.client_id,
                      msg.alert_id, exc)
            return None

    def _check_identity(self, msg: AlertMsg, known: AlertIdentity | None) -> str | None:
        """Why ``msg`` contradicts its alert's known identity, or None (and remember it).

        Call with ``_cond`` held; ``known`` from :meth:`_known_identity`."""
        key = (msg.gateway, msg.alert_id)
        known = self._alert_ids.get(key, known)
        mine = alert_identity(msg)
        if known is not None and tuple(known) != mine:
            fields = ("household", "device", "kind")
            diff = ", ".join(f"{f} {n!r} (known {k!r})"
                             for f, k, n in zip(fields, known, mine, strict=True) if k != n)
            return f"msg_id {msg.msg_id!r}: alert_id {msg.alert_id!r} already known with other identity: {diff}"
        self._alert_ids[key] = mine
        self._alert_ids.move_to_end(key)
        if len(self._alert_ids) > DEDUPE_SIZE:
            self._alert_ids.popitem(last=False)
        return None

    def _parse(self, topic: str, payload: bytes) -> TelemetryMsg | AlertMsg | None:
        """The message to store, None for a status message; _Rejected if invalid."""
        if len(payload) > MAX_PAYLOAD_BYTES:
            raise _Rejected("too_large", f"{len(payload)} bytes > {MAX_PAYLOAD_BYTES}")
        parts = topic.split("/")
        root = "/".join(parts[:2])
        if root != TOPIC_ROOT or len(parts) not in (4, 5) or not _NAME.match(parts[2]):
            raise _Rejected("bad_topic", "not in the topic scheme")
        gateway = parts[2]
        if len(parts) == 4 and parts[3] == "status":
            self._handle_status(gateway, payload)
            return None
        if len(parts) != 5 or parts[3] not in ("telemetry", "alert", "health") or not _NAME.match(parts[4]):
            raise _Rejected("bad_topic", "not in the topic scheme")
        model = AlertMsg if parts[3] == "alert" else TelemetryMsg  # health: telemetry-shaped
        try:
            msg = model.model_validate_json(payload, strict=True)
            _Version.model_validate_json(payload)
        except ValidationError as exc:
            first = exc.errors()[0]
            if first["type"] == "json_invalid":
                raise _Rejected("invalid_json", first["msg"]) from None
            where = ".".join(str(x) for x in first["loc"]) or "payload"
            raise _Rejected("schema", f"{exc.error_count()} errors, first {where}: {first['msg']}") from None
        if msg.gateway != gateway:
            raise _Rejected("mismatch", f"payload gateway {msg.gateway!r}")
        if not msg.msg_id.startswith(f"{gateway}:"):
            raise _Rejected("mismatch", f"msg_id {msg.msg_id!r} does not start with {gateway + ':'!r}")
        if isinstance(msg, TelemetryMsg) and msg.device != parts[4]:
            raise _Rejected("mismatch", f"payload device {msg.device!r}")
        if isinstance(msg, AlertMsg):
            if msg.household != parts[4]:
                raise _Rejected("mismatch", f"payload household {msg.household!r}")
            if msg.end is not None and msg.end < msg.start:
                raise _Rejected("schema", f"alert {msg.alert_id!r}: end {msg.end} before start {msg.start}")
            if (msg.end is None) != (msg.state == "open"):
                raise _Rejected("schema", f"alert {msg.alert_id!r}: state {msg.state!r} with end {msg.end}"
                                " (end is set exactly when closed)")
        if self.max_future_s is not None:
            limit = time.time() + self.max_future_s
            times = {"ts": msg.ts}
            if isinstance(msg, AlertMsg):
                times |= {"start": msg.start, "end": msg.end}
            for name, t in times.items():
                if t is not None and t > limit:
                    raise _Rejected("future", f"msg_id {msg.msg_id!r}: {name} {t} is {t - limit + self.max_future_s:.0f} s"
                                    f" ahead of this host's clock (max_future_s {self.max_future_s:g})")
        return msg

    def _handle_status(self, gateway: str, payload: bytes) -> None:
        if payload == b"":  # retained status cleared: the gateway was decommissioned
            self._status.pop(gateway, None)
            return
        try:
            state = json.loads(payload)["state"]
        except (ValueError, TypeError, KeyError, RecursionError) as exc:  # RecursionError: nesting
            raise _Rejected("bad_status", f"no JSON state: {type(exc).__name__}") from None
        if not isinstance(state, str):  # never str() a nested structure (recursion, log size)
            raise _Rejected("bad_status", f"state is a JSON {type(state).__name__}, not a string")
        if state not in _STATUS_STATES:
            raise _Rejected("bad_status", f"state {state[:40]!r} not in {_STATUS_STATES}")
        if self._status.get(gateway) != state:
            log.info("gateway %s is %s", gateway, state)
        self._status[gateway] = state

    def _reject(self, reason: str, topic: str, detail: str) -> None:
        with self._cond:
            self.rejected += 1
            self.rejections[reason] += 1
            count, last = self._log_times.get(reason, (0, 0.0))
            now = time.monotonic()
            loud = count < 10 or now - last >= _LOG_EVERY_S
            self._log_times[reason] = (count + 1, now if loud else last)
        if loud:
            log.warning("ingest rejected a message on %r (%s, %d so far): %s",
                        topic[:200], reason, self.rejections[reason], detail[:300])

    # -- flusher ----------------------------------------------------------------------

    def _due_in(self, now: float) -> float | None:
        """Seconds until the pending batch must be written (0: now; None: nothing pending)."""
        if not self._pending:
            return None
        if self._flush_now or self._closing or len(self._pending) >= self.batch_size:
            return 0.0
        return max(0.0, min(self._oldest + self.flush_interval_s, self._newest + IDLE_FLUSH_S) - now)

    def _run_flusher(self) -> None:
        delay = RETRY_FIRST_S
        while True:
            with self._cond:
                while True:
                    due = self._due_in(time.monotonic())
                    if due == 0.0:
                        break
                    if due is None and self._closing:
                        return
                    self._cond.wait(due)
                batch = self._pending[: self.batch_size]
            msgs = [e.msg for e in batch if e.msg is not None]
            refused: list[TelemetryMsg | AlertMsg] = []
            try:
                if msgs:
                    refused = list(self.store.write(msgs) or ())
            except Exception as exc:
                with self._cond:
                    self._store_error = f"{type(exc).__name__}: {exc}"
                    if self._closing:  # stop() gave up waiting; the rest is unacked
                        return
                log.error("ingest %s: store write of %d messages failed, retrying in %.1fs: %s",
                          self.client_id, len(msgs), delay, exc)
                with self._cond:
                    self._cond.wait_for(lambda: self._closing, delay)
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            delay = RETRY_FIRST_S
            for m in refused:  # the store's identity check (SqliteStore.write)
                with self._cond:
                    if isinstance(m, AlertMsg):  # let the next message be compared with the store
                        self._alert_ids.pop((m.gateway, m.alert_id), None)
                topic = alert_topic(m.gateway, m.household) if isinstance(m, AlertMsg) else "?"
                self._reject("mismatch", topic, f"msg_id {m.msg_id!r}: refused by the store "
                             "(alert_id stored with another household, device or kind)")
            self._ack(batch)
            with self._cond:
                del self._pending[: len(batch)]
                if self._pending:
                    self._oldest = time.monotonic()
                self._done += len(batch)
                self.stored += len(msgs) - len(refused)
                self._store_error = None
                if self._done >= self._enqueued:
                    self._flush_now = False
                self._cond.notify_all()

    def _ack(self, batch: list[_Entry]) -> None:
        """Acknowledge ``batch`` in arrival order, skipping other connections' messages."""
        with self._ack_lock:
            for e in batch:
                if e.qos > 0 and e.generation == self._generation:
                    self._client.ack(e.mid, e.qos)

    # -- public -----------------------------------------------------------------------

    @property
    def gateway_status(self) -> dict[str, str]:
        """gateway id -> last status state (``online``/``offline``); a copy."""
        return dict(self._status)

    @property
    def connected(self) -> bool:
        """True while connected and subscribed."""
        return self._subscribed.is_set()

    @property
    def pending(self) -> int:
        """Messages received but not yet stored and acknowledged."""
        return len(self._pending)

    def start(self, timeout: float = 10.0) -> None:
        """Connect, subscribe and start the flusher; return once subscribed.

        Args:
            timeout: real seconds to wait for the subscription.

        Raises:
            RuntimeError: already started.
            TimeoutError: not subscribed within ``timeout``; names the broker and the
                last error.  The client is stopped again.
        """
        if self._flusher is not None:
            raise RuntimeError(f"ingest {self.client_id} already started")
        self._closing = False
        self._flusher = threading.Thread(target=self._run_flusher,
                                         name=f"ingest-flush-{self.client_id}", daemon=True)
        self._flusher.start()
        properties = None
        if self.protocol == "5":
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = self.session_expiry_s
            properties.ReceiveMaximum = self.batch_size
        self._client.connect_async(self.host, self.port, keepalive=KEEPALIVE_S,
                                   clean_start=False, properties=properties)
        self._client.loop_start()
        if not self._subscribed.wait(timeout):
            error = self._last_error
            self.stop(timeout=0)
            raise TimeoutError(
                f"ingest {self.client_id}: not subscribed on {self.host}:{self.port} "
                f"(MQTT {self.protocol}) within {timeout}s; last error: {error}"
            )

    def flush(self, timeout: float = 10.0) -> None:
        """Store and acknowledge everything received so far; wait for it.

        Raises:
            TimeoutError: not done within ``timeout`` real seconds (e.g. the store is
                down: the message says why); the messages stay queued.
        """
        with self._cond:
            target = self._enqueued
            self._flush_now = True
            self._cond.notify_all()
            if not self._cond.wait_for(lambda: self._done >= target, timeout):
                left = target - self._done
                raise TimeoutError(
                    f"ingest {self.client_id}: {left} messages not stored after {timeout}s"
                    f"; store error: {self._store_error or 'none'}"
                )

    def stop(self, timeout: float = 10.0) -> None:
        """Flush (up to ``timeout`` real s), disconnect and end the flusher.  Idempotent.

        Messages that could not be stored in time are logged and left unacknowledged;
        the broker redelivers them to the next session with this client id.
        """
        if self._flusher is None:
            return
        try:
            if timeout > 0:
                self.flush(timeout)
        except TimeoutError as exc:
            log.error("%s; unacknowledged, the broker redelivers them", exc)
        with self._cond:
            self._closing = True  # the flusher tries the rest once more, then ends
            self._cond.notify_all()
        self._client.disconnect()
        self._client.loop_stop()
        self._flusher.join(RETRY_MAX_S)
        self._flusher = None
        with self._cond:
            # Unstored messages were not acked: forget their ids so that the broker's
            # redelivery to a restarted ingest is not mistaken for duplicates.
            for e in self._pending:
                if e.msg is not None:
                    self._seen.pop(e.msg.msg_id, None)
            self._done += len(self._pending)
            self._pending.clear()

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
        """Poll ``predicate`` every 10 ms until true or ``timeout`` real s; its last value."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                return predicate()
            time.sleep(0.01)
        return True

    def __enter__(self) -> Ingest:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return (f"Ingest({self.client_id!r} on {self.host}:{self.port}, accepted={self.accepted}, "
                f"stored={self.stored}, rejected={self.rejected}, duplicates={self.duplicates})")
