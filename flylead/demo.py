"""The end-to-end demo: simulated meters → agent → MQTT → ingest → store, on one clock.

Everything speaks its real protocol: each household is a Modbus TCP meter (pymodbus server
on 127.0.0.1), the agent reads it with the Modbus driver, publishes over MQTT (embedded
amqtt broker by default, or any broker given), the ingest subscribes and writes to the
store (embedded SQLite by default, or InfluxDB), and the alert table is read back from
what the ingest stored.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import tempfile
import multiprocessing
import urllib.parse
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from agent.config import AgentConfig, MqttSettings, parse_config
from agent.publisher import Publisher
from agent.runner import Agent
from agent.schema import AlertMsg, TelemetryMsg
from broker import EmbeddedBroker, Ingest, SqliteStore, Store, StoreError, open_store
from detectors.evaluate import match_sessions
from flylead.clock import SimClock, iso
from simulators.fire_detector import FireDetectorTrace, fire_scenario, with_extra_load
from simulators.meter import MeterServer
from simulators.pile import PileTrace, PlannedSession, pile_usage
from simulators.scenario import demo_scenario
from simulators.trace import Scenario

log = logging.getLogger("flylead.demo")

#: Demo poll period of the household meters (simulated s): one reading a minute, the
#: resolution of the bundled real household and of common utility load profiles.
DEMO_POLL_INTERVAL_S = 60.0
#: Meter models served by the simulated households, in turn (both float32 ABCD maps).
DEMO_PROFILES = ("sdm120", "ddsu666")
#: Poll period of the fire detector (simulated s): with the rules' 20 s sustain it keeps
#: the GB 14287 budget of an alarm within 30 s (docs/hazards.md).
DEMO_FIRE_POLL_S = 10.0
#: Answer timeout of the fire detector in the demo (real s).  At 1440x the agent's usual
#: 0.5 s would span 12 simulated minutes per missed poll, so the scripted silence would be
#: over before the offline rule's third miss; 0.1 s (2.4 simulated minutes) keeps it
#: visible, and a loopback answer takes a few ms.
DEMO_FIRE_TIMEOUT_S = 0.1
#: The overloaded household's breaker (A; a common 16 A household circuit breaker).
DEMO_BREAKER_A = 16.0
#: The pile port the linked household uses.
DEMO_PILE_PORT = 4


class DemoError(RuntimeError):
    """The demo could not run: a broker or store unreachable, a bad store URL."""


def _reachable(host: str, port: int, what: str, timeout_s: float = 3.0) -> None:
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as exc:
        raise DemoError(f"{what} {host}:{port} is not reachable ({exc.strerror or exc})") from None


@dataclass
class DemoOptions:
    """Settings of one demo run.

    Attributes:
        seed: scenario seed.
        hours: simulated hours (s of clock = hours * 3600).
        speed: simulated seconds per real second (1440: a day per minute).
        broker: ``(host, port)`` of an external broker, or None for the embedded one.
        store_url: store URL (see :func:`broker.open_store`), or None for a temporary SQLite.
        gateway: gateway id used in topics.
        mqtt_protocol: ``"3.1.1"`` or ``"5"``.
    """

    seed: int = 1
    hours: float = 48.0
    speed: float = 1440.0
    broker: tuple[str, int] | None = None
    store_url: str | None = None
    gateway: str = "demo-gw"
    mqtt_protocol: str = "3.1.1"
    kill_meter: str | None = None  # household whose meter goes silent half-way (tests)


@dataclass
class DemoResult:
    """What the demo found, ready for the table and the JSON report."""

    alerts: list[dict]
    truth: list[dict]
    metrics: dict[str, float | None]
    health: dict[str, dict] = field(default_factory=dict)
    ingest: dict[str, int] = field(default_factory=dict)
    #: msg_id of every alert message the agent published, and of every one in the store
    sent_alert_msgs: list[str] = field(default_factory=list)
    stored_alert_msgs: list[str] = field(default_factory=list)

    def report(self) -> dict:
        return {"alerts": self.alerts, "truth": self.truth, "metrics": self.metrics}


class _TeeStore:
    """Writes every batch to the demo's SQLite (read back for the table) and to the
    store the user chose, if any; a failure of either fails the batch, so the ingest
    keeps it and retries (stores ignore messages they already hold)."""

    def __init__(self, local: SqliteStore, other: Store | None) -> None:
        self.local, self.other = local, other

    def write(self, msgs: Sequence[TelemetryMsg | AlertMsg]) -> None:
        if self.other is not None:
            self.other.write(msgs)
        self.local.write(msgs)

    def close(self) -> None:
        if self.other is not None:
            self.other.close()
        self.local.close()


class _DeviceProcess:
    """The simulated devices run in their own process, as real meters run on their own
    hardware: the agent's process only polls.  (In a thread they competed with the agent
    for the interpreter lock: at 1440x a meter needing five requests a poll then missed
    about one slot in eight.)

    The child rebuilds the same compound from ``(seed, hours)``, serves every device on
    127.0.0.1 and reports the ports; it follows the parent's clock (``SimClock`` anchored
    at the same ``time.monotonic()``, one clock for the whole machine on Linux) and plays
    the fire detector's scripted silences itself.

    Raises:
        DemoError: the devices did not start (the child's error is named).
    """

    def __init__(self, seed: int, hours: float, speed: float, start_timeout_s: float = 120.0) -> None:
        ctx = multiprocessing.get_context("spawn")  # no fork of a process with threads
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_device_main, args=(child, seed, hours, speed),
                                 name="flylead-devices", daemon=True)
        self._proc.start()
        child.close()
        if not self._conn.poll(start_timeout_s):
            self.close()
            raise DemoError(f"the simulated devices did not start within {start_timeout_s:.0f} s")
        kind, value = self._conn.recv()
        if kind != "ports":
            self.close()
            raise DemoError(f"the simulated devices did not start: {value}")
        self.ports: dict[str, int] = value

    def start_clock(self, t0_monotonic: float) -> None:
        """Anchor the devices' clock where the agent's was restarted."""
        self._conn.send(("start", t0_monotonic))

    def silence(self, device: str) -> None:
        """Make ``device`` stop answering (a meter that dies)."""
        self._conn.send(("silent", device))

    def close(self) -> None:
        if self._proc.is_alive():
            try:
                self._conn.send(("stop", None))
            except (BrokenPipeError, OSError):
                pass
            self._proc.join(15)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(5)
        self._conn.close()


def _device_main(conn, seed: int, hours: float, speed: float) -> None:  # the child process
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        compound = build_compound(seed, hours)
        asyncio.run(_serve_devices(conn, compound, SimClock(compound.scenario.start, speed)))
    except Exception as exc:  # the parent names it
        try:
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
        except (BrokenPipeError, OSError):
            pass


async def _serve_devices(conn, compound: Compound, clock: SimClock) -> None:
    scenario = compound.scenario
    servers: dict[str, MeterServer] = {}
    for i, trace in enumerate(scenario.traces):
        servers[trace.household] = MeterServer({1: trace}, profile=DEMO_PROFILES[i % len(DEMO_PROFILES)],
                                               clock=clock)
    servers[compound.fire.device] = MeterServer({1: compound.fire.values}, profile="fire_detector", clock=clock)
    servers["pile-1"] = MeterServer({1: compound.pile.values}, profile="ebike_pile", clock=clock)
    silences = None
    try:
        for server in servers.values():
            await server.start()
        conn.send(("ports", {name: server.port for name, server in servers.items()}))
        while True:
            kind, value = await asyncio.to_thread(conn.recv)
            if kind == "start":
                clock.restart(at=value)
                silences = asyncio.create_task(
                    _play_silences(compound.fire, servers[compound.fire.device], clock, scenario.end))
            elif kind == "silent":
                servers[value].set_fault(1, "silent")
            else:
                break
    except EOFError:  # the parent went away
        pass
    finally:
        if silences is not None:
            silences.cancel()
        for server in servers.values():
            await server.stop()


def _alert_row(a: AlertMsg) -> dict:
    row = _session_row(a.kind, a.household, a.start, a.end, a.energy_kwh, a.confidence)
    row["state"] = a.state
    row["note"] = a.detail.split(":", 1)[0] if a.detail.startswith(("suppressed", "downgraded", "withdrawn")) else (
        a.detail.split(";", 1)[0] if a.kind != "ebike_charging" else "")
    return row


def _session_row(kind: str, household: str, start: float, end: float | None,
                 energy_kwh: float | None, confidence: float) -> dict:
    return {
        "kind": kind,
        "household": household,
        "start": iso(start),
        "end": iso(end) if end is not None else None,
        "energy_kwh": round(float(energy_kwh or 0.0), 3),
        "confidence": round(float(confidence), 3),
    }


@dataclass
class Compound:
    """The simulated compound: the households' scenario plus the cable-hazard devices."""

    scenario: Scenario
    fire: FireDetectorTrace
    pile: PileTrace
    overload_household: str
    pile_user: str | None


def build_compound(seed: int, hours: float) -> Compound:
    """Households (:func:`demo_scenario`), one electrical-fire detector at a charging
    household (rain on its outdoor lead during its first session, an overloaded extension
    lead, a sensor fault, a silence), a 10-port pile where a linked household charges while
    its home session runs (suppressed alert), and an overloaded household circuit."""
    scenario = demo_scenario(seed=seed, hours=hours)
    by_hh = {t.household: t for t in scenario.traces}
    fire_hh = next((s.household for s in scenario.truth), "h06")
    fire = fire_scenario(scenario.start, hours, seed=seed, device=f"fd-{fire_hh}", household=fire_hh,
                         charging=[(s.start, s.end) for s in scenario.truth if s.household == fire_hh],
                         tz=scenario.tz)
    # the pile user: a household whose first lithium session at home overlaps a session at
    # its own pile port
    linked = next((s for s in scenario.truth if s.profile == "lithium"),
                  scenario.truth[-1] if scenario.truth else None)
    planned = [] if linked is None else [
        PlannedSession(port=DEMO_PILE_PORT, start=linked.start - 600.0,
                       end=min(linked.end + 7200.0, scenario.end - 3600.0),
                       profile="lead_acid", user=linked.household)]
    pile = pile_usage(scenario.start, hours, pile="pile-1", seed=seed, planned=planned, tz=scenario.tz)
    # an overloaded circuit: a 3.5 kW heater on an extension lead, day 1 19:00-20:30 local
    over_hh = "h04"
    day1 = datetime.fromtimestamp(scenario.start, ZoneInfo(scenario.tz)).replace(
        hour=19, minute=0, second=0, microsecond=0) + timedelta(days=1)
    loaded, _ = with_extra_load(by_hh[over_hh], day1.timestamp(), day1.timestamp() + 5400.0, 3500.0,
                                breaker_rating_a=DEMO_BREAKER_A)
    scenario.traces = [loaded if t.household == over_hh else t for t in scenario.traces]
    return Compound(scenario, fire, pile, over_hh, linked.household if linked else None)


def agent_config_for(compound: Compound, ports: dict[str, int], gateway: str,
                     mqtt: MqttSettings) -> AgentConfig:
    """Agent configuration for the simulated compound: one bus per device."""
    scenario = compound.scenario
    buses, devices = [], []
    for i, trace in enumerate(scenario.traces):
        hh = trace.household
        buses.append({"name": f"bus-{hh}", "tcp": f"127.0.0.1:{ports[hh]}"})
        devices.append({
            "name": f"meter-{hh}", "bus": f"bus-{hh}", "profile": DEMO_PROFILES[i % len(DEMO_PROFILES)],
            "device_id": 1, "household": hh, "interval_s": DEMO_POLL_INTERVAL_S, "timeout_s": 0.5,
            **({"breaker_rating_a": DEMO_BREAKER_A} if hh == compound.overload_household else {}),
        })
    fd = compound.fire.device
    buses += [{"name": "bus-fd", "tcp": f"127.0.0.1:{ports[fd]}"},
              {"name": "bus-pile", "tcp": f"127.0.0.1:{ports['pile-1']}"}]
    devices += [
        {"name": fd, "bus": "bus-fd", "profile": "fire_detector", "household": compound.fire.household,
         "interval_s": DEMO_FIRE_POLL_S, "timeout_s": DEMO_FIRE_TIMEOUT_S},
        {"name": "pile-1", "bus": "bus-pile", "profile": "ebike_pile", "interval_s": DEMO_POLL_INTERVAL_S,
         "timeout_s": 0.5},
    ]
    links = ([{"household": compound.pile_user, "pile": "pile-1", "port": DEMO_PILE_PORT}]
             if compound.pile_user else [])
    return parse_config(
        {"gateway": gateway, "tz": scenario.tz, "mqtt": mqtt.model_dump(), "health_interval_s": 3600.0,
         "spread_polls": True,
         "buses": buses, "devices": devices, "pile_links": links},
        "<demo>",
    )


async def _play_silences(fire: FireDetectorTrace, server: MeterServer, clock: SimClock, until: float) -> None:
    """The fire detector's scripted silences: its server stops answering while they last."""
    while clock.now() < until:
        server.set_fault(1, "silent" if fire.is_silent(clock.now()) else None)
        await clock.sleep(DEMO_FIRE_POLL_S / 2)


async def run_demo(opts: DemoOptions) -> DemoResult:
    """Run the whole pipeline for ``opts.hours`` simulated hours and evaluate it.

    Raises:
        RuntimeError: a component could not start (the message names which).
    """
    if opts.broker is not None:
        _reachable(*opts.broker, "MQTT broker")
    if opts.store_url and opts.store_url.startswith(("influxdb://", "influxdbs://")):
        url = urllib.parse.urlsplit(opts.store_url)
        _reachable(url.hostname or "", url.port or 8086, "store")
    try:
        other_store = open_store(opts.store_url) if opts.store_url else None
    except (ValueError, StoreError) as exc:
        raise DemoError(str(exc)) from None
    compound = build_compound(opts.seed, opts.hours)
    scenario = compound.scenario
    clock = SimClock(scenario.start, opts.speed)
    tmpdir = tempfile.TemporaryDirectory(prefix="flylead-demo-")
    local = SqliteStore(Path(tmpdir.name) / "demo.sqlite")
    store = _TeeStore(local, other_store)
    embedded = None
    ingest = publisher = devices = None
    try:
        devices = _DeviceProcess(opts.seed, opts.hours, opts.speed)
        if opts.broker is None:
            embedded = EmbeddedBroker()
            embedded.start()
            host, port = embedded.host, embedded.port
        else:
            host, port = opts.broker
        ingest = Ingest(store, host, port, client_id=f"flylead-ingest-{uuid.uuid4().hex[:6]}",
                        protocol=opts.mqtt_protocol, gateway=opts.gateway)
        ingest.start()
        mqtt = MqttSettings(host=host, port=port, protocol=opts.mqtt_protocol)
        config = agent_config_for(compound, devices.ports, opts.gateway, mqtt)
        publisher = Publisher(opts.gateway, mqtt)
        publisher.connect()
        agent = Agent(config, clock, publisher)

        clock.restart()
        devices.start_clock(clock.anchor)
        run = asyncio.create_task(agent.run(until=scenario.end))
        if opts.kill_meter:
            await clock.sleep((scenario.end - scenario.start) / 2)
            devices.silence(opts.kill_meter)
        await run
        if not await asyncio.to_thread(publisher.drain, 30.0):
            log.warning("%d messages not acknowledged by the broker", publisher.unacked)
        # everything the broker acknowledged must have reached the ingest and the store
        arrived = await asyncio.to_thread(
            ingest.wait_for, lambda: ingest.accepted + ingest.duplicates >= publisher.published, 30.0)
        if not arrived:
            log.warning("ingest has %d of %d messages", ingest.accepted, publisher.published)
        await asyncio.to_thread(ingest.flush, 30.0)
        health = agent.health()
        every_stored = local.alerts()
        latest = {a.alert_id: a for a in sorted(every_stored, key=lambda a: a.ts)}
        shown = sorted(latest.values(), key=lambda a: (a.start, a.household))
        stored = [a for a in shown if a.kind == "ebike_charging" and a.state == "closed"
                  and not a.detail.startswith("withdrawn")]
        sent = list(agent.alerts)
    finally:
        if publisher is not None:
            publisher.close()
        if ingest is not None:
            ingest.stop()
        if devices is not None:
            devices.close()
        if embedded is not None:
            embedded.stop()
        store.close()

    metrics = match_sessions(stored, scenario.truth)
    result = DemoResult(
        alerts=[_alert_row(a) for a in shown],
        truth=[_session_row("ebike_charging", s.household, s.start, s.end, s.energy_kwh, 1.0)
               for s in scenario.truth],
        # nothing to score (no alert, or no true session): null, as the console's "n/a"
        metrics={"precision": metrics.precision if metrics.tp + metrics.fp else None,
                 "recall": metrics.recall if metrics.tp + metrics.fn else None,
                 "f1": metrics.f1 if metrics.tp + metrics.fp + metrics.fn else None,
                 "tp": metrics.tp, "fp": metrics.fp, "fn": metrics.fn},
        health=health,
        ingest={"accepted": ingest.accepted, "rejected": ingest.rejected,
                "duplicates": ingest.duplicates},
        sent_alert_msgs=[a.msg_id for a in sent],
        stored_alert_msgs=[a.msg_id for a in every_stored],
    )
    tmpdir.cleanup()
    return result


def write_report(result: DemoResult, path: str | Path) -> None:
    """Write the JSON report (keys ``alerts``, ``truth``, ``metrics``)."""
    Path(path).write_text(json.dumps(result.report(), indent=2) + "\n", encoding="utf-8")
