"""The gateway agent: poll devices on schedule, detect charging, publish over MQTT.

One asyncio task per bus, so one request at a time per bus and a dead bus never touches
another.  Within a bus, devices are polled in order of their due time; a device that stops
answering is retried after an exponentially growing pause (capped at
``AgentConfig.max_backoff_s``), so on a shared bus it costs the others at most one timeout
per retry.  Due times advance by whole intervals from the schedule, not from when a read
finished, so polling does not drift.

Commands: the agent subscribes to its own ``flylead/v1/{gw}/cmd/ack``; each message is
handed from paho's network thread to the agent's event loop and handled there
(:meth:`Agent.handle_command`), in the same thread as the polls, so the hazard rules are
never touched from two threads.  A refused command is logged with its reason and counted;
it never stops the agent.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from agent.buses import BusReader, open_reader
from agent.commands import CommandError, CommandInbox, DuplicateCommand
from agent.config import AgentConfig, DeviceSettings
from agent.hazards import HazardWatch
from agent.publisher import Publisher
from agent.schema import AlertMsg, TelemetryMsg, alert_topic, health_topic, telemetry_topic
from detectors import ChargingSession, StreamingDetector
from drivers import DriverError, Reading
from flylead.clock import Clock

log = logging.getLogger("flylead.agent")

_DECISION_WORDS = {"suppress": "suppressed", "downgrade": "downgraded"}
#: Commands that arrive before the agent's loop runs are kept (at most this many) and
#: handled when it starts; more are dropped with a warning (the desk sends again).
MAX_EARLY_COMMANDS = 64
#: Largest doubling in :func:`backoff_s`: 2**60 intervals is beyond any ``max_backoff_s``
#: (at most a day) for any interval >= 0.1 s, and keeps the float far from overflow however
#: many polls fail in a row (2 ** 1024 does not fit a float).
MAX_BACKOFF_DOUBLINGS = 60


def backoff_s(interval_s: float, failures: int, max_backoff_s: float) -> float:
    """Pause before retrying a device after ``failures`` failed polls in a row (>= 1):
    ``interval_s`` doubled for each failure after the first, at most ``max_backoff_s``.
    Finite for any ``failures`` (a device dead for weeks must not crash the agent)."""
    doublings = min(max(failures - 1, 0), MAX_BACKOFF_DOUBLINGS)
    return min(interval_s * 2.0 ** doublings, max_backoff_s)


@dataclass(frozen=True)
class CommandOutcome:
    """What became of one command: ``t`` (agent clock, UTC epoch s), ``msg_id`` (None when
    unreadable), ``status`` (``applied`` or ``refused``), ``detail`` (the events or why)."""

    t: float
    msg_id: str | None
    status: str
    detail: str


@dataclass
class DeviceState:
    """Schedule and health of one device."""

    settings: DeviceSettings
    next_due: float = 0.0
    failures: int = 0
    polls: int = 0
    ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    poll_times: list[float] = field(default_factory=list)  # clock s of successful reads (bounded)
    #: The last failed poll raised something unexpected (not a DriverError): its traceback
    #: was logged, the retries of the same streak log one line each.
    unexpected: bool = False

    MAX_KEPT_TIMES = 10_000


@dataclass
class HouseholdState:
    """Charging detection for one household."""

    detector: StreamingDetector
    open_alert_id: str | None = None
    open_start: float | None = None


class Agent:
    """Polls the configured devices and publishes what it sees.

    Args:
        config: validated agent configuration.
        clock: shared clock (wall clock in production).
        publisher: connected :class:`~agent.publisher.Publisher`.
        on_reading: optional hook called with each successful reading (tests, demo).
    """

    def __init__(
        self,
        config: AgentConfig,
        clock: Clock,
        publisher: Publisher,
        *,
        on_reading: Callable[[Reading], None] | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.publisher = publisher
        self.on_reading = on_reading
        self.devices = {d.name: DeviceState(d) for d in config.devices}
        self.households: dict[str, HouseholdState] = {}
        for dev in config.devices:
            if dev.household and dev.household not in self.households:
                self.households[dev.household] = HouseholdState(StreamingDetector(tz=config.tz))
        self._buses: dict[str, BusReader] = {}
        self._started = clock.now()
        #: Alerts handed to the outbox, newest last (bounded: the last 10,000).
        self.alerts: deque[AlertMsg] = deque(maxlen=10_000)
        self.watch = HazardWatch(config, self._emit_alert)
        self.inbox = CommandInbox(config.gateway)
        #: What became of the commands received, newest last (the last 1,000).
        self.commands: deque[CommandOutcome] = deque(maxlen=1000)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._early: deque[tuple[str, bytes]] = deque()
        publisher.subscribe(self.inbox.topic, self._on_command)

    # ---------------------------------------------------------------- polling
    async def run(self, until: float | None = None) -> None:
        """Poll until the clock reads ``until`` (UTC epoch s), or forever if None."""
        self.listen_commands()
        now = self.clock.now()
        self._started = now
        n = len(self.devices)
        for k, state in enumerate(self.devices.values()):
            spread = k / n * state.settings.interval_s if self.config.spread_polls else 0.0
            state.next_due = now + spread
        tasks = [asyncio.create_task(self._health_loop(until))]
        for bus in self.config.buses:
            self._buses[bus.name] = open_reader(bus, self.clock)
            members = [s for s in self.devices.values() if s.settings.bus == bus.name]
            if members:
                tasks.append(asyncio.create_task(self._poll_bus(bus.name, members, until)))
        try:
            await asyncio.gather(*tasks[1:])
        finally:
            for t in tasks:
                t.cancel()
            for b in self._buses.values():
                await b.close()
            if until is not None:
                self._flush_detectors()
            self._loop = None

    # -------------------------------------------------------------- commands
    def listen_commands(self) -> None:
        """Handle commands in the running event loop from now on (``run`` calls it), and
        those that arrived before.  Must be called from within the loop."""
        self._loop = asyncio.get_running_loop()
        while self._early:
            self.handle_command(*self._early.popleft())

    def _on_command(self, topic: str, payload: bytes) -> None:
        """paho's network thread: hand the message to the agent's loop."""
        loop = self._loop
        if loop is not None:
            try:
                loop.call_soon_threadsafe(self.handle_command, topic, payload)
                return
            except RuntimeError:  # the loop closed meanwhile
                pass
        if len(self._early) < MAX_EARLY_COMMANDS:
            self._early.append((topic, payload))
        else:
            log.warning("command on %s dropped: the agent is not running and %d wait already",
                        topic, len(self._early))

    def handle_command(self, topic: str, payload: bytes) -> CommandOutcome:
        """Validate and apply one command (an acknowledgement) at the clock's now.

        Never raises: a refused command is logged (warning, with the reason) and recorded
        in :attr:`commands`, like an applied one.
        """
        t = self.clock.now()
        msg_id = None
        try:
            cmd = self.inbox.parse(topic, payload)
            msg_id = cmd.msg_id
            self.inbox.remember(cmd.msg_id)
            events = self.watch.acknowledge(cmd, t)
            outcome = CommandOutcome(t, msg_id, "applied", ", ".join(
                f"{e.action} {self.watch.alert_id(e.alert_id)}" for e in events) or "no change")
            log.info("ack %s by %s: %s", cmd.msg_id, cmd.by, outcome.detail)
        except DuplicateCommand as exc:  # expected: QoS 1 redelivery, the desk's resend
            outcome = CommandOutcome(t, msg_id, "refused", str(exc))
            log.info("command refused: %s", exc)
        except CommandError as exc:
            outcome = CommandOutcome(t, msg_id, "refused", str(exc))
            log.warning("command refused: %s", exc)
        except Exception as exc:  # a bug must not stop the agent
            outcome = CommandOutcome(t, msg_id, "refused", f"internal error: {exc!r}")
            log.exception("command on %s: unexpected error", topic)
        self.commands.append(outcome)
        return outcome

    async def _poll_bus(self, bus_name: str, members: list[DeviceState], until: float | None) -> None:
        bus = self._buses[bus_name]
        while until is None or self.clock.now() < until:
            now = self.clock.now()
            for member in members:  # the wall clock was stepped back (NTP): re-anchor
                if member.next_due > now + self.config.max_backoff_s + member.settings.interval_s:
                    log.warning("%s: clock stepped back %.0f s; rescheduling",
                                member.settings.name, member.next_due - now)
                    member.next_due = now
            state = min(members, key=lambda s: s.next_due)
            if until is not None and state.next_due >= until:
                await self.clock.sleep_until(until)
                break
            await self.clock.sleep_until(state.next_due)
            try:
                await self._poll_device(bus, state)
            except Exception:  # processing a reading failed: log it, keep the bus going
                log.exception("%s: unexpected error after polling", state.settings.name)
                if state.next_due <= self.clock.now():
                    state.next_due = self.clock.now() + state.settings.interval_s

    async def _poll_device(self, bus: BusReader, state: DeviceState) -> None:
        dev = state.settings
        state.polls += 1
        try:
            reading = await bus.read(dev)
        except Exception as exc:  # a bug in one device's path must not stop the bus
            self._failed_poll(state, exc)
            return
        state.unexpected = False
        if state.failures:
            log.warning("%s answers again after %d failed poll%s", dev.name, state.failures,
                        "" if state.failures == 1 else "s")
        state.failures = 0
        state.ok += 1
        if len(state.poll_times) < state.MAX_KEPT_TIMES:
            state.poll_times.append(reading.t)
        # next slot on the schedule grid strictly after now: no drift, no burst after a stall
        now = self.clock.now()
        missed = max(0, math.floor((now - state.next_due) / dev.interval_s))
        state.next_due += (missed + 1) * dev.interval_s
        self._handle_reading(dev, reading, state.ok)
        hh = self.households.get(dev.household) if dev.household else None
        self.watch.observe(dev, reading, charging_active=None if hh is None else hh.detector.active is not None)

    def _failed_poll(self, state: DeviceState, exc: Exception) -> None:
        """A poll that gave no reading: count it, back the device off, tell the hazard
        rules (``device_offline``).  A :class:`DriverError` is the device's or the line's
        fault; anything else is a bug in the device's path (a driver letting a raw OS error
        through, say), logged with its traceback at the first failure of a streak and
        otherwise handled the same, so one bad device neither stops the agent nor goes
        quiet (no offline alert) for ``max_backoff_s``."""
        dev = state.settings
        kind = type(exc).__name__
        state.errors[kind] = state.errors.get(kind, 0) + 1
        state.failures += 1
        backoff = backoff_s(dev.interval_s, state.failures, self.config.max_backoff_s)
        state.next_due = self.clock.now() + backoff
        if not isinstance(exc, DriverError):
            if not state.unexpected:
                log.error("%s: unexpected error while polling (retry in %g s)", dev.name, backoff,
                          exc_info=exc)
            else:
                log.info("%s: unexpected error while polling: %r (%d failed polls in a row; "
                         "retry in %g s)", dev.name, exc, state.failures, backoff)
            state.unexpected = True
        else:
            state.unexpected = False
            # log the change of state, not every retry: the first failure and the recovery
            # are warnings, the retries in between are info
            if state.failures == 1:
                log.warning("%s (retry in %g s)", exc, backoff)
            else:
                log.info("%s (%d failed polls in a row; retry in %g s)", exc, state.failures, backoff)
        self.watch.missed(dev, self.clock.now())

    # ------------------------------------------------------------ processing
    def _handle_reading(self, dev: DeviceSettings, reading: Reading, ok_count: int) -> None:
        if self.on_reading is not None:
            self.on_reading(reading)
        if not reading.values:
            return
        if (ok_count - 1) % self.config.telemetry_every == 0:
            self.publisher.publish(
                telemetry_topic(self.config.gateway, dev.name),
                TelemetryMsg(
                    msg_id=self.publisher.next_msg_id(), gateway=self.config.gateway,
                    ts=reading.t, device=dev.name, household=dev.household,
                    values=reading.values,
                ),
            )
        if dev.household and "active_power" in reading.values:
            hh = self.households[dev.household]
            ended = hh.detector.update(reading.t, reading.values["active_power"])
            for session in ended:
                self._publish_session(dev, hh, session, closed=True)
            active = hh.detector.active
            if active is not None and hh.open_alert_id is None:
                self._publish_session(dev, hh, active, closed=False)
            elif active is None and not ended and hh.open_alert_id is not None:
                self._withdraw(dev, hh, reading.t)

    def _publish_session(
        self, dev: DeviceSettings, hh: HouseholdState, session: ChargingSession, *, closed: bool
    ) -> None:
        household = dev.household or dev.name
        if hh.open_alert_id is not None and closed:
            alert_id = hh.open_alert_id
        else:
            alert_id = f"{household}:ebike_charging:{int(session.start)}"
        confidence = min(max(session.confidence, 0.0), 1.0)
        detail = _evidence_text(session)
        decision = self.watch.charging_decision(household, session.start, session.end)
        if decision.action != "keep":  # the household charged at its own pile meanwhile
            confidence *= decision.confidence_factor
            detail = f"{_DECISION_WORDS[decision.action]}: {decision.reason}; {detail}"
            if decision.action == "suppress" and not closed:
                return  # no open alert to notify; the closed record says why
        self._emit_alert(
            alert_id=alert_id, kind="ebike_charging", state="closed" if closed else "open",
            household=household, device=dev.name, start=session.start,
            end=session.end if closed else None, energy_kwh=round(session.energy_kwh, 4),
            peak_w=round(session.peak_w, 1), confidence=confidence, profile=session.profile,
            detail=detail,
        )
        hh.open_alert_id = None if closed else alert_id
        hh.open_start = None if closed else session.start

    def _withdraw(self, dev: DeviceSettings, hh: HouseholdState, t: float) -> None:
        """Close an open charging alert whose session no longer qualifies once more data
        came in (the detector dropped it): a closed record that says so, confidence 0."""
        self._emit_alert(
            alert_id=hh.open_alert_id, kind="ebike_charging", state="closed",
            household=dev.household or dev.name, device=dev.name, start=hh.open_start or t, end=t,
            energy_kwh=0.0, confidence=0.0, profile="unknown",
            detail="withdrawn: the session no longer qualifies with more data",
        )
        hh.open_alert_id = hh.open_start = None

    def _emit_alert(self, *, alert_id: str, household: str, confidence: float, detail: str = "",
                    **fields) -> AlertMsg:
        """Build one alert message (gateway-prefixed id, 500-character detail), queue it in
        the outbox as an alert (committed at once) and keep it in :attr:`alerts`."""
        msg = AlertMsg(
            msg_id=self.publisher.next_msg_id(), gateway=self.config.gateway, ts=self.clock.now(),
            alert_id=f"{self.config.gateway}:{alert_id}"[:96], household=household,
            confidence=round(min(max(confidence, 0.0), 1.0), 3), detail=detail[:500], **fields,
        )
        self.publisher.publish(alert_topic(self.config.gateway, household), msg, kind="alert")
        self.alerts.append(msg)
        log.info("%s %s alert %s for %s", msg.state, msg.kind, msg.alert_id, household)
        return msg

    def _flush_detectors(self) -> None:
        """End of a bounded run: close sessions still in progress."""
        by_household = {d.household: d for d in self.config.devices if d.household}
        for household, hh in self.households.items():
            for session in hh.detector.flush():
                self._publish_session(by_household[household], hh, session, closed=True)

    def health(self) -> dict[str, dict[str, float | int]]:
        """Per-device counters: polls, ok, consecutive failures, errors by kind."""
        return {
            name: {"polls": s.polls, "ok": s.ok, "failures": s.failures, **s.errors}
            for name, s in self.devices.items()
        }

    # ----------------------------------------------------------------- health
    async def _health_loop(self, until: float | None) -> None:
        while until is None or self.clock.now() < until:
            await self.clock.sleep(self.config.health_interval_s)
            self.publish_health()

    def publish_health(self) -> None:
        """Publish the gateway's health and each device's bus health (health topic)."""
        gw, now = self.config.gateway, self.clock.now()
        outbox = self.publisher.outbox
        self.publisher.publish(health_topic(gw, "gateway"), TelemetryMsg(
            msg_id=self.publisher.next_msg_id(), gateway=gw, ts=now, device="gateway",
            values={"uptime": round(now - self._started, 1), "outbox_depth": float(outbox.depth),
                    "outbox_dropped": float(outbox.dropped)},
        ), kind="health")
        bus_health: dict[str, dict[str, float]] = {}
        for reader in self._buses.values():
            bus_health.update(reader.health())
        for name, state in self.devices.items():
            h = bus_health.get(name, {})
            errors = sum(h.get(k, 0) for k in ("crc_errors", "frame_errors", "exceptions", "errors"))
            values = {"polls": float(state.polls), "polls_ok": float(state.ok),
                      "bus_requests": float(h.get("requests", 0)), "bus_responses": float(h.get("responses", 0)),
                      "bus_timeouts": float(h.get("timeouts", 0)), "bus_errors": float(errors)}
            if "latency_mean_s" in h:
                values["bus_latency_mean"] = float(h["latency_mean_s"])
                values["bus_latency_max"] = float(h["latency_max_s"])
            self.publisher.publish(health_topic(gw, name), TelemetryMsg(
                msg_id=self.publisher.next_msg_id(), gateway=gw, ts=now, device=name,
                household=state.settings.household, values=values,
            ), kind="health")


def _evidence_text(session: ChargingSession) -> str:
    parts = [f"{k}={v:.3g}" for k, v in sorted(session.evidence.items())]
    return "; ".join(parts)[:500]
