"""Field faults of the agent that once crashed it or silenced a device, against real
simulators (pymodbus meter over TCP, Modbus RTU and DL/T 645 meters on ptys), no broker
needed: messages wait in an outbox.

* a device failing more than 1,024 polls in a row made the backoff overflow
  (``interval * 2 ** 1024`` is no float) and stopped the whole agent;
* a DL/T 645 port that died mid-run (USB adapter unplugged; here: the pty simulator
  killed) raised a raw ``termios.error``: no ``device_offline`` alert, no bus error
  counted, a 900 s pause; and any such unexpected error did the same;
* a configuration without devices made ``flylead agent`` exit 0 at once, silently.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import drivers.dlt645
from agent.config import MqttSettings, parse_config
from agent.outbox import Outbox
from agent.publisher import Publisher
from agent.runner import MAX_BACKOFF_DOUBLINGS, Agent, backoff_s
from flylead.clock import SimClock
from simulators.dlt645_meter import Dlt645MeterSim
from simulators.meter import MeterServer
from simulators.trace import LoadTrace
from tests.test_rtu import line_sim

pytestmark = pytest.mark.timeout(90)

ROOT = Path(__file__).resolve().parents[1]
START = 1_795_795_200.0  # 2026-11-27T00:00Z
DLT_ADDRESS = "000000000161"
DLT_VALUES = {"voltage": 230.4, "current": 5.123, "active_power": 1180.3, "reactive_power": 387.5,
              "apparent_power": 1242.4, "power_factor": 0.95, "frequency": 50.02,
              "energy_import": 1234.56, "energy_export": 7.89}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def offline_publisher(gateway: str, tmp_path: Path) -> Publisher:
    """A publisher whose broker is not there: everything waits in the outbox."""
    pub = Publisher(gateway, MqttSettings(port=free_port()), Outbox(tmp_path / "o.sqlite"),
                    commit_interval_s=0.05)
    pub.connect(wait=False)
    return pub


async def wait_for(condition, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


# -- 1. backoff after many failures ---------------------------------------------------------


def test_backoff_doubles_then_caps_and_never_overflows():
    assert [backoff_s(10.0, n, 900.0) for n in (1, 2, 3, 4, 5, 6, 7)] == [
        10.0, 20.0, 40.0, 80.0, 160.0, 320.0, 640.0]
    assert backoff_s(10.0, 8, 900.0) == 900.0
    # the old formula, interval * 2 ** (failures - 1), at 1,025 failures in a row:
    with pytest.raises(OverflowError, match="int too large to convert to float"):
        _ = 10.0 * 2 ** (1025 - 1)
    for failures in (1025, 1026, 5000, 10**6, 10**12):
        assert backoff_s(60.0, failures, 900.0) == 900.0
    # a day-long cap is reached from the smallest interval long before the doublings stop
    assert backoff_s(0.1, MAX_BACKOFF_DOUBLINGS + 1, 86_400.0) == 86_400.0
    assert backoff_s(0.1, 10**9, 86_400.0) == 86_400.0
    assert backoff_s(0.5, 1, 0.2) == 0.2  # the cap wins even on the first failure


def test_dead_device_past_1025_failures_does_not_stop_the_agent(tmp_path):
    """A meter on a port that does not exist fails every 0.1 simulated s (max_backoff_s);
    the healthy meter on another bus keeps being read after the dead one's 1,025th
    failure, and the agent is still running."""
    clock = SimClock(START, speed=1000.0)  # 0.1 simulated s = 0.1 real ms

    async def scenario():
        meter = MeterServer({1: LoadTrace("h1", START - 60, 60.0, np.full(24 * 60, 250.0))},
                            profile="sdm120", clock=clock)
        await meter.start()
        cfg = parse_config({
            "gateway": "gw-dead", "health_interval_s": 3600.0, "max_backoff_s": 0.1,
            "buses": [{"name": "good", "tcp": f"127.0.0.1:{meter.port}"},
                      {"name": "gone", "serial": str(tmp_path / "ttyUSB-unplugged")}],
            "devices": [
                {"name": "alive", "bus": "good", "profile": "sdm120", "interval_s": 5.0, "timeout_s": 2.0},
                {"name": "dead", "bus": "gone", "profile": "sdm120", "interval_s": 0.1},
            ],
        })
        pub = offline_publisher("gw-dead", tmp_path)
        agent = Agent(cfg, clock, pub)
        clock.restart()
        run = asyncio.create_task(agent.run(until=START + 86_400.0))
        alive, dead = agent.devices["alive"], agent.devices["dead"]
        try:
            passed = await wait_for(lambda: dead.failures >= 1100 or run.done(), 60.0)
            ok_then = alive.ok
            more = await wait_for(lambda: alive.ok >= ok_then + 5 or run.done(), 30.0)
            crashed = run.exception() if run.done() else None
            still_running = not run.done()
            dead_failures = dead.failures
        finally:
            run.cancel()
            await asyncio.gather(run, return_exceptions=True)
            pub.close(timeout_s=0.2)
            await meter.stop()
        return agent, passed, more, crashed, still_running, ok_then, dead_failures

    agent, passed, more, crashed, still_running, ok_then, dead_failures = asyncio.run(scenario())
    assert crashed is None
    assert passed and still_running
    assert dead_failures >= 1100
    assert agent.devices["dead"].ok == 0
    assert agent.devices["dead"].errors == {"DriverError": agent.devices["dead"].failures}
    assert more and agent.devices["alive"].ok >= ok_then + 5  # read on after failure 1,025
    assert agent.devices["alive"].failures == 0
    offline = [a for a in agent.alerts if a.kind == "device_offline"]
    assert [(a.device, a.state) for a in offline] == [("dead", "open")]


# -- 2. a serial port that dies mid-run ------------------------------------------------------


def serial_config(dlt_path: str, rtu_path: str) -> object:
    return parse_config({
        "gateway": "gw-pty", "health_interval_s": 3600.0, "max_backoff_s": 8.0,
        "buses": [{"name": "dl", "protocol": "dlt645", "serial": dlt_path},
                  {"name": "rs", "serial": rtu_path}],
        "devices": [
            {"name": "dl1", "bus": "dl", "profile": "dlt645", "address": DLT_ADDRESS,
             "interval_s": 2.0, "timeout_s": 1.0},
            {"name": "rtu1", "bus": "rs", "profile": "sdm120", "device_id": 1,
             "interval_s": 2.0, "timeout_s": 1.0},
        ],
    })


def run_and_kill(tmp_path: Path, *, caplog=None):
    """Poll a DL/T 645 meter and a Modbus RTU meter (each on its own pty) until both were
    read twice, kill both simulators, run until both are reported offline."""
    clock = SimClock(START, speed=20.0)
    dlt = Dlt645MeterSim(DLT_ADDRESS, lambda: dict(DLT_VALUES))
    rtu = line_sim("pty", ids=(1,))
    dlt.start()
    rtu.start()
    paths = {"dl1": dlt.path, "rtu1": rtu.path}

    async def scenario():
        pub = offline_publisher("gw-pty", tmp_path)
        agent = Agent(serial_config(dlt.path, rtu.path), clock, pub)
        clock.restart()
        run = asyncio.create_task(agent.run(until=START + 3600.0))
        dl1, rtu1 = agent.devices["dl1"], agent.devices["rtu1"]
        try:
            read = await wait_for(lambda: (dl1.ok >= 2 and rtu1.ok >= 2) or run.done(), 30.0)
            dlt.stop()  # the USB adapters are unplugged
            rtu.stop()
            killed = clock.now()
            offline = await wait_for(lambda: run.done() or {
                a.device for a in agent.alerts if a.kind == "device_offline"} >= {"dl1", "rtu1"}, 40.0)
            agent.publish_health()
            crashed = run.exception() if run.done() else None
        finally:
            run.cancel()
            await asyncio.gather(run, return_exceptions=True)
            pub.close(timeout_s=0.2)
        return agent, read, offline, killed, crashed, pub

    try:
        return paths, *asyncio.run(scenario())
    finally:
        dlt.stop()
        rtu.stop()


def test_dlt645_port_dies_mid_run_goes_offline_like_modbus_rtu(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="flylead.agent")
    paths, agent, read, offline, killed, crashed, _pub = run_and_kill(tmp_path)
    assert crashed is None
    assert read, "both meters were read before the ports died"
    assert offline, "both meters went offline"
    dl1, rtu1 = agent.devices["dl1"], agent.devices["rtu1"]
    # the dead port is a driver error naming the port, for both protocols alike
    for state in (dl1, rtu1):
        assert state.ok >= 2 and state.failures >= 3
        assert state.errors.get("DriverError", 0) >= 1, state.errors
        # (a timeout only if another process got the freed pty number meanwhile)
        assert set(state.errors) <= {"DriverError", "DeviceTimeout"}, state.errors
    alerts = {a.device: a for a in agent.alerts if a.kind == "device_offline"}
    assert alerts["dl1"].state == alerts["rtu1"].state == "open"
    assert alerts["dl1"].ts >= killed + 30.0 - 2.0  # 30 s without a reading (3 misses)
    assert not [r for r in caplog.records if "unexpected error" in r.getMessage()]
    dl_warnings = [r.getMessage() for r in caplog.records
                   if r.levelno == logging.WARNING and r.getMessage().startswith("dl1 ")]
    assert dl_warnings and paths["dl1"] in dl_warnings[0]
    assert f"serial port {paths['dl1']} failed during read of DI" in dl_warnings[0]
    # the failed reads count as bus errors in the health counters (bus_errors)
    health = agent._buses["dl"].health()["dl1"]
    assert health["errors"] == dl1.errors["DriverError"]
    assert health["errors"] + health["timeouts"] == dl1.failures
    assert health["responses"] == dl1.ok


def test_unexpected_error_still_counts_a_missed_poll_with_normal_backoff(tmp_path, caplog, monkeypatch):
    """The driver as it was (termios.error not caught): the runner's catch-all logs the
    traceback once, backs the device off normally (not max_backoff_s, 900 s) and counts
    the missed polls, so device_offline is raised."""
    caplog.set_level(logging.INFO, logger="flylead.agent")
    monkeypatch.setattr(drivers.dlt645, "_PORT_ERRORS", (drivers.dlt645.serial.SerialException, OSError))
    paths, agent, read, offline, killed, crashed, _pub = run_and_kill(tmp_path)
    assert crashed is None
    assert read and offline
    dl1 = agent.devices["dl1"]
    assert dl1.errors.get("error", 0) >= 1  # termios.error
    assert dl1.failures >= 3
    alerts = {a.device: a for a in agent.alerts if a.kind == "device_offline"}
    assert alerts["dl1"].state == "open"
    # retried after 2, 4, 8, 8 ... s (max_backoff_s 8), not after 900 s
    assert alerts["dl1"].ts - killed < 60.0
    tracebacks = [r for r in caplog.records if r.exc_info and r.getMessage().startswith("dl1: unexpected error")]
    assert len(tracebacks) == 1
    assert "termios.error" in caplog.text or "Input/output error" in caplog.text


# -- 4. nothing to poll ----------------------------------------------------------------------


def test_agent_without_devices_exits_2_saying_nothing_to_poll(tmp_path):
    """A configuration with no devices is refused when read (check-config and agent alike),
    not run to exit 0 at once without a word."""
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        'gateway = "gw-empty"\nbuses = []\ndevices = []\n'
        f'[mqtt]\nport = {free_port()}\n'
        f'[outbox]\npath = "{tmp_path / "outbox.sqlite"}"\n'
    )
    for command in ("agent", "check-config"):
        args = ["--config", str(cfg)] if command == "agent" else [str(cfg)]
        proc = subprocess.run([sys.executable, "-m", "flylead.cli", command, *args],
                              cwd=ROOT, capture_output=True, text=True, timeout=60, env={**os.environ})
        assert proc.returncode == 2, proc.stderr
        assert "no [[devices]] configured: the agent would have nothing to poll" in proc.stderr + proc.stdout
        assert "Traceback" not in proc.stderr
    with pytest.raises(ValueError, match="nothing to poll"):
        parse_config({"gateway": "gw-empty", "buses": [], "devices": []})
