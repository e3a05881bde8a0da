"""The desk's side of acknowledgements: publish queued acks to the gateways over MQTT.

:meth:`broker.desk.db.DeskDB.transition` queues an acknowledgement when a case of a latched
hazard alert is rectified (table ``acks``).  :class:`AckSender` publishes each as an
:class:`agent.schema.AckCmd` on ``flylead/v1/{gw}/cmd/ack`` at QoS 1, and publishes it again
(same ``msg_id``) every ``retry_s`` until the desk's sync sees the gateway took it: the
agent's session is clean, so a command published while a gateway is offline is lost by the
broker, and the resend covers that.  The agent ignores a ``msg_id`` it has handled, so a
resend that crosses the confirmation is harmless.

Broker user: role ``desk`` (``flylead broker add-user NAME --role desk``): write on
``flylead/v1/+/cmd/#`` and nothing else (docs/broker.md).
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
import uuid

import paho.mqtt.client as mqtt

from agent.schema import AckCmd, ack_topic
from broker.desk.db import Ack, DeskDB, DeskError

__all__ = ["AckSender", "DEFAULT_INTERVAL_S", "DEFAULT_MAX_AGE_S", "DEFAULT_RETRY_S", "ack_command"]

log = logging.getLogger("flylead.desk.acks")

#: Real seconds between two looks at the queue (a rectify also wakes the sender at once).
DEFAULT_INTERVAL_S = 10.0
#: Real seconds before an acknowledgement the gateway has not shown it took is sent again.
#: Chosen: 5 min, ten desk syncs: the gateway's confirmation (its alert message) normally
#: reaches the desk within a minute.
DEFAULT_RETRY_S = 300.0
#: Real seconds after which an acknowledgement is given up (``expired``).  Chosen: a week;
#: a gateway offline longer has lost its open alerts' context anyway (it restarted).
DEFAULT_MAX_AGE_S = 7 * 86_400.0
#: Real seconds to wait for the broker's PUBACK of one publish.
PUBACK_TIMEOUT_S = 5.0


def ack_command(ack: Ack, now: float) -> AckCmd:
    """The :class:`AckCmd` of a queued acknowledgement, made at ``now`` (UTC epoch s; never
    before the acknowledgement itself).

    Raises:
        pydantic.ValidationError: a stored field does not fit the schema.
    """
    return AckCmd(v=1, msg_id=ack.msg_id, gateway=ack.gateway, ts=max(now, ack.at),
                  alert_id=ack.alert_id, device=ack.device, hazard=ack.hazard, by=ack.username,
                  at=ack.at, note=ack.note, case=ack.case_id)


class AckSender:
    """Publishes the desk's queued acknowledgements (a paho 2.x client and a thread).

    The desk works without it (acknowledgements stay queued); the sender starts even when
    the broker is down and publishes once it is reachable.

    Args:
        desk: the desk database.
        host, port: the MQTT broker.
        username, password: the desk's broker user (role ``desk``).
        tls, ca_file: TLS to the broker, trusting ``ca_file`` (PEM).
        protocol: ``3.1.1`` or ``5``.
        interval_s, retry_s, max_age_s: see the module constants (real seconds).

    Raises:
        ValueError: a non-positive interval or an unknown protocol.
    """

    def __init__(self, desk: DeskDB, host: str = "127.0.0.1", port: int = 1883, *,
                 username: str | None = None, password: str | None = None, tls: bool = False,
                 ca_file: str | None = None, protocol: str = "3.1.1",
                 interval_s: float = DEFAULT_INTERVAL_S, retry_s: float = DEFAULT_RETRY_S,
                 max_age_s: float = DEFAULT_MAX_AGE_S) -> None:
        for name, value in (("interval_s", interval_s), ("retry_s", retry_s), ("max_age_s", max_age_s)):
            if not value > 0:
                raise ValueError(f"AckSender {name} must be > 0 s, got {value!r}")
        if protocol not in ("3.1.1", "5"):
            raise ValueError(f"AckSender protocol must be 3.1.1 or 5, got {protocol!r}")
        self.desk, self.host, self.port = desk, host, port
        self.interval_s, self.retry_s, self.max_age_s = interval_s, retry_s, max_age_s
        self.published = 0
        self.failures = 0
        self._connected = threading.Event()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._send_lock = threading.Lock()
        version = mqtt.MQTTv5 if protocol == "5" else mqtt.MQTTv311
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                   client_id=f"flylead-desk-{uuid.uuid4().hex[:8]}", protocol=version)
        if username:
            self._client.username_pw_set(username, password)
        if tls:
            self._client.tls_set(ca_certs=ca_file, cert_reqs=ssl.CERT_REQUIRED)
        self._client.reconnect_delay_set(1, 60)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:  # noqa: ANN001
        if reason_code.is_failure:
            log.error("desk acknowledgements: broker %s:%s refused the connection: %s",
                      self.host, self.port, reason_code)
            return
        self._connected.set()
        self._wake.set()  # send what waited while the broker was away

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:  # noqa: ANN001
        self._connected.clear()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def start(self, timeout_s: float = 0.0) -> None:
        """Connect in the background and start the sending thread; with ``timeout_s`` > 0
        wait up to that many real seconds for the connection (False: not connected)."""
        self._client.connect_async(self.host, self.port, keepalive=30)
        self._client.loop_start()
        self._thread = threading.Thread(target=self._run, name="desk-acks", daemon=True)
        self._thread.start()
        if timeout_s > 0:
            self._connected.wait(timeout_s)

    def wake(self) -> None:
        """Look at the queue now (the web app calls it after a rectify)."""
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.interval_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.send_due()
            except DeskError as exc:
                log.error("desk acknowledgements: %s", exc)

    def send_due(self, now: float | None = None) -> int:
        """Publish every due acknowledgement (pending, or sent ``retry_s`` ago and not yet
        confirmed); the number the broker acknowledged.  Nothing while disconnected.

        Raises:
            DeskError: the desk database cannot be read or written.
        """
        if not self._connected.is_set():
            return 0
        sent = 0
        with self._send_lock:  # the thread and a caller never publish the same ack twice at once
            now = time.time() if now is None else now
            for ack in self.desk.due_acks(now, self.retry_s, self.max_age_s):
                try:
                    payload = ack_command(ack, now).model_dump_json(exclude_none=True)
                except ValueError as exc:  # pydantic ValidationError
                    log.error("acknowledgement %s of case %s does not fit the schema, not sent: %s",
                              ack.msg_id, ack.case_id, exc)
                    continue
                info = self._client.publish(ack_topic(ack.gateway), payload, qos=1)
                try:
                    info.wait_for_publish(PUBACK_TIMEOUT_S)
                except (RuntimeError, ValueError) as exc:
                    log.warning("acknowledgement %s to %s not published: %s", ack.msg_id, ack.gateway, exc)
                if not info.is_published():
                    self.failures += 1
                    break  # the broker is away: the rest waits for the next round
                self.desk.ack_sent(ack.id, now)
                self.published += 1
                sent += 1
                log.info("acknowledgement %s (case %s, %s by %s) sent to %s", ack.msg_id, ack.case_id,
                         ack.alert_id, ack.username, ack.gateway)
        return sent

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the thread and disconnect."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        self._client.disconnect()
        self._client.loop_stop()
