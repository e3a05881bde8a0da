"""The agent's cable-hazard and pile side: rules per device, events to alert messages.

Wires :mod:`detectors.hazards` (electrical-fire detector rules, overload, device fault and
offline) and :mod:`detectors.piles` (pile sessions, home-charging suppression) into the
poll loop: :meth:`HazardWatch.observe` after each good reading, :meth:`HazardWatch.missed`
after each failed poll, :meth:`HazardWatch.acknowledge` for an acknowledgement from the desk
(:class:`~agent.schema.AckCmd`).  Each event becomes one :class:`~agent.schema.AlertMsg`
(opened and escalated notify; acknowledged and latched update; resolved closes, with why).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from agent.commands import CommandError
from agent.config import AgentConfig, DeviceSettings
from agent.schema import AckCmd, AlertMsg
from detectors.hazards import FireSettings, HazardEvent, HazardMonitor, OverloadSettings
from detectors.piles import PileLink, PileTracker, PortSession, SuppressionDecision, suppress_home_charging
from drivers import Reading
from flylead.clock import iso

#: Ended pile sessions kept for the suppression check (a compound's piles over ~2 days).
MAX_PILE_SESSIONS = 2000


class HazardWatch:
    """Hazard rules and pile tracking for every configured device.

    Args:
        config: the agent configuration (roles come from the device profiles).
        make_alert: builds and publishes one AlertMsg from keyword fields (the agent's).
    """

    def __init__(self, config: AgentConfig, make_alert: Callable[..., AlertMsg]) -> None:
        self.monitor = HazardMonitor(tz=config.tz)
        self.gateway = config.gateway
        self.devices = {d.name: d for d in config.devices}
        self.make_alert = make_alert
        self.trackers: dict[str, PileTracker] = {}
        self.pile_sessions: deque[PortSession] = deque(maxlen=MAX_PILE_SESSIONS)
        self.links = [PileLink(l.household, l.pile, port=l.port, user=l.user) for l in config.pile_links]
        for dev in config.devices:
            self._add(dev)

    def _add(self, dev: DeviceSettings) -> None:
        common = {"household": dev.household, "poll_period_s": dev.interval_s}
        if dev.role == "fire_detector":
            self.monitor.add_device(dev.name, fire=FireSettings(
                residual_setting_ma=dev.residual_setting_ma,
                temperature_setting_c=dev.temperature_setting_c), **common)
        elif dev.role == "pile":
            self.monitor.add_device(dev.name, faults=False, **common)
            self.trackers[dev.name] = PileTracker(dev.name)
        else:
            overload = OverloadSettings(dev.breaker_rating_a) if dev.breaker_rating_a else None
            self.monitor.add_device(dev.name, overload=overload, faults=False, **common)

    def observe(self, dev: DeviceSettings, reading: Reading, *, charging_active: bool | None) -> None:
        """A good reading: rules, pile sessions; publishes what happened."""
        tracker = self.trackers.get(dev.name)
        if tracker is not None:
            self.pile_sessions.extend(tracker.update_values(reading.t, reading.values))
        for event in self.monitor.observe(dev.name, reading.t, reading.values,
                                          charging_active=charging_active):
            self._publish(dev, event)

    def missed(self, dev: DeviceSettings, t: float) -> None:
        """A failed poll (timeout, exception, bad frame) at ``t``."""
        for event in self.monitor.missed(dev.name, t):
            self._publish(dev, event)

    def alert_id(self, engine_id: str) -> str:
        """The alert id as published: the engine's id prefixed with the gateway (≤ 96
        characters, as :class:`~agent.schema.AlertMsg` allows)."""
        return f"{self.gateway}:{engine_id}"[:96]

    def acknowledge(self, cmd: AckCmd, t: float) -> list[HazardEvent]:
        """Apply the desk's acknowledgement ``cmd`` at ``t`` (the agent's clock, UTC epoch s)
        and publish what happened.

        The latch is reset only when the alarm's condition has cleared: then the alert is
        resolved at ``t``, its reason naming who acknowledged and when.  While the condition
        still holds the acknowledgement is recorded (event ``acknowledged``, the alert stays
        open) and the alert resolves when the condition clears (docs/hazards.md).

        Returns:
            the :class:`~detectors.hazards.HazardEvent` list (``resolved`` or ``acknowledged``).

        Raises:
            CommandError: no open alert has ``cmd.alert_id`` (resolved already, never
                existed, or opened before a restart of the agent), its device or hazard
                differ from the command's, it does not latch (nothing to acknowledge), or
                it was acknowledged already.
        """
        match = [a for a in self.monitor.open_alerts() if self.alert_id(a.alert_id) == cmd.alert_id]
        if not match:
            raise CommandError(f"ack {cmd.msg_id}: no open alert {cmd.alert_id!r} on this gateway "
                               "(resolved already, unknown, or from before a restart)")
        a = match[0]
        if (a.device, a.hazard) != (cmd.device, cmd.hazard):
            raise CommandError(f"ack {cmd.msg_id}: alert {cmd.alert_id!r} is device {a.device!r} hazard "
                               f"{a.hazard!r}, the command names {cmd.device!r} / {cmd.hazard!r}")
        if not a.latched:
            raise CommandError(f"ack {cmd.msg_id}: alert {cmd.alert_id!r} ({a.hazard}, {a.rule}) does not "
                               "latch: it resolves on its own, nothing to acknowledge")
        if a.acknowledged_at is not None:
            raise CommandError(f"ack {cmd.msg_id}: alert {cmd.alert_id!r} was acknowledged by "
                               f"{a.acknowledged_by} at {iso(a.acknowledged_at)} already")
        where = f"desk case {cmd.case}" if cmd.case is not None else "desk"
        note = f"{where}, {iso(cmd.at)}" + (f": {cmd.note}" if cmd.note else "")
        events = self.monitor.acknowledge(t, cmd.by, device=a.device, hazard=a.hazard, note=note)
        dev = self.devices[a.device]
        for event in events:
            self._publish(dev, event)
        return events

    def charging_decision(self, household: str, start: float, end: float) -> SuppressionDecision:
        """Whether a home-charging alert of ``household`` over [start, end] overlaps its own
        pile session (suppress or downgrade) or not (keep)."""
        running = [s for tracker in self.trackers.values() for s in tracker.open_sessions()]
        return suppress_home_charging(start, end, household, self.links, [*self.pile_sessions, *running])

    def _publish(self, dev: DeviceSettings, e: HazardEvent) -> None:
        self.make_alert(
            alert_id=e.alert_id, kind=e.kind, state=e.state, household=e.household or dev.name,
            device=dev.name, start=e.start, end=e.end, confidence=e.confidence, detail=e.detail(),
        )
