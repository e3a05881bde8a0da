"""Field faults of the whole agent against a private Mosquitto (issue 6).

The meters are pymodbus servers on loopback; the agent polls them on a simulated clock
(120x: ten simulated minutes take five real seconds).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from agent.config import MqttSettings, parse_config
from agent.outbox import Outbox
from agent.publisher import Publisher
from agent.runner import Agent
from flylead.clock import SimClock
from simulators.meter import MeterServer
from simulators.trace import LoadTrace
from tests.test_outbox import PrivateMosquitto, Receiver, private_broker  # noqa: F401 (fixture)

ROOT = Path(__file__).resolve().parents[1]


def ramp_trace(start: float, hours: float = 3.0) -> LoadTrace:
    """Power rising by 1 W a simulated minute: each reading says when it was taken."""
    n = int(hours * 60)
    return LoadTrace("h1", start, 60.0, 100.0 + np.arange(n, dtype=float))


def config(port: int, meter_port: int, **extra) -> object:
    return parse_config({
        "gateway": "gw-fault", "mqtt": {"port": port}, "health_interval_s": 300.0,
        "buses": [{"name": "b", "tcp": f"127.0.0.1:{meter_port}"}],
        "devices": [{"name": "m1", "bus": "b", "profile": "sdm120", "household": "h1",
                     "interval_s": 10.0, "timeout_s": 0.5}],
        **extra,
    })


def test_broker_down_ten_simulated_minutes_telemetry_complete_and_in_order(private_broker, tmp_path):
    start = 1_795_795_200.0  # 2026-11-27T00:00Z
    clock = SimClock(start, speed=120.0)
    rx = Receiver(private_broker.port, "flylead/v1/gw-fault/#")

    async def scenario():
        meter = MeterServer({1: ramp_trace(start)}, profile="sdm120", clock=clock)
        await meter.start()
        pub = Publisher("gw-fault", MqttSettings(port=private_broker.port),
                        Outbox(tmp_path / "o.sqlite"), commit_interval_s=0.05)
        pub.connect()
        taken: list[float] = []
        agent = Agent(config(private_broker.port, meter.port), clock, pub,
                      on_reading=lambda r: taken.append(r.values["active_power"]))
        clock.restart()
        run = asyncio.create_task(agent.run(until=start + 30 * 60))
        await clock.sleep_until(start + 10 * 60)
        private_broker.stop()  # ten simulated minutes without the broker
        await clock.sleep_until(start + 20 * 60)
        private_broker.start()
        await run
        drained = await asyncio.to_thread(pub.drain, 30.0)
        pub.close()
        await meter.stop()
        return taken, drained

    taken, drained = asyncio.run(scenario())
    assert drained
    rx.wait(len(taken))
    rx.close()
    got = [m["values"]["active_power"] for m in rx.got if m.get("device") == "m1" and "values" in m
           and "active_power" in m["values"]]
    assert len(taken) >= 170  # 30 simulated minutes at one poll per 10 s
    assert list(dict.fromkeys(got)) == list(dict.fromkeys(taken))  # complete, in order


def test_outbox_full_drops_oldest_telemetry_and_health_counts_it(private_broker, tmp_path):
    start = 1_795_795_200.0
    clock = SimClock(start, speed=120.0)
    private_broker.stop()  # uplink down from the start

    async def scenario():
        meter = MeterServer({1: ramp_trace(start)}, profile="sdm120", clock=clock)
        await meter.start()
        pub = Publisher("gw-fault", MqttSettings(port=private_broker.port),
                        Outbox(tmp_path / "o.sqlite", max_messages=50), commit_interval_s=0.05)
        pub.connect(wait=False)
        agent = Agent(config(private_broker.port, meter.port), clock, pub)
        clock.restart()
        await agent.run(until=start + 30 * 60)  # ~180 readings into a 50-message outbox
        await asyncio.to_thread(time.sleep, 0.3)  # let the sender commit
        agent.publish_health()
        pub.commit()
        await asyncio.to_thread(time.sleep, 0.3)
        return pub, agent

    pub, agent = asyncio.run(scenario())
    dropped = pub.outbox.dropped
    assert dropped >= 100
    private_broker.start()
    rx = Receiver(private_broker.port, "flylead/v1/gw-fault/#")
    assert pub.drain(30)
    rx.wait(50)
    pub.close()
    rx.close()
    gateway_health = [m for m in rx.got if m.get("device") == "gateway"]
    # the health message counted the drops made before it was built
    assert gateway_health and 100 <= gateway_health[-1]["values"]["outbox_dropped"] <= dropped
    powers = [m["values"]["active_power"] for m in rx.got if m.get("device") == "m1" and "active_power" in m["values"]]
    # 180 readings (power = 100 W + simulated minutes) into 50 places: the oldest went
    assert powers and min(powers) >= 100.0 + 20
    assert max(powers) == 100.0 + 29  # the newest were kept


def test_agent_process_sigterm_flushes_and_publishes_offline(private_broker, tmp_path):
    start = time.time()
    clock = SimClock(start, speed=1.0)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    meter = MeterServer({1: LoadTrace("h1", start - 60, 60.0, np.full(600, 250.0))}, profile="sdm120", clock=clock)
    asyncio.run_coroutine_threadsafe(meter.start(), loop).result(10)
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        'gateway = "gw-proc"\nhealth_interval_s = 1.0\n'
        f'[mqtt]\nport = {private_broker.port}\n'
        f'[outbox]\npath = "{tmp_path / "outbox.sqlite"}"\ncommit_interval_s = 0.1\n'
        f'[[buses]]\nname = "b"\ntcp = "127.0.0.1:{meter.port}"\n'
        '[[devices]]\nname = "m1"\nbus = "b"\nprofile = "sdm120"\nhousehold = "h1"\ninterval_s = 0.2\n'
    )
    rx = Receiver(private_broker.port, "flylead/v1/gw-proc/#")
    status: list[str] = []
    rx.c.message_callback_add("flylead/v1/gw-proc/status",
                              lambda c, u, m: status.append(__import__("json").loads(m.payload)["state"]))
    proc = subprocess.Popen([sys.executable, "-m", "flylead.cli", "agent", "--config", str(cfg), "--log-json"],
                            cwd=ROOT, stderr=subprocess.PIPE, text=True, env={**os.environ})
    try:
        rx.wait(10, timeout=20)
        assert len(rx.got) >= 10
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        proc.kill()
    time.sleep(0.3)
    rx.close()
    asyncio.run_coroutine_threadsafe(meter.stop(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    assert status[0] == "online" and status[-1] == "offline"
    assert Outbox(tmp_path / "outbox.sqlite").depth == 0  # flushed before exit
    assert any(m.get("device") == "gateway" for m in rx.got)  # health topic
    m1 = [m for m in rx.got if m.get("device") == "m1" and "active_power" in m.get("values", {})]
    assert m1 and all(m["values"]["active_power"] == 250.0 for m in m1)
