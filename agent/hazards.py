"""The agent's cable-hazard and pile side: rules per device, events to alert messages.

Wires :mod:`detectors.hazards` (electrical-fire detector rules, overload, device fault and
offline) and :mod:`detectors.piles` (pile sessions, home-charging suppression) into the
poll loop: :meth:`HazardWatch.observe` after each good reading, :meth:`HazardWatch.missed`
after each failed poll.  Each event becomes one :class:`~agent.schema.AlertMsg` (opened and
escalated notify; acknowledged and latched update; resolved closes, with why).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from agent.config import AgentConfig, DeviceSettings
from agent.schema import AlertMsg
from detectors.hazards import FireSettings, HazardEvent, HazardMonitor, OverloadSettings
from detectors.piles import PileLink, PileTracker, PortSession, SuppressionDecision, suppress_home_charging
from drivers import Reading

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
