"""Agent benchmark: 64 simulated devices polled every second, and alerts through the outbox.

Reports, for the agent process alone (the simulated meters run in a child process):
- CPU share of one core and peak RSS while polling 64 SDM120 meters (8 Modbus TCP buses of
  8 device ids) every second on the wall clock, publishing every reading over MQTT QoS 1;
- alerts per second through the durable outbox (one commit and fsync per alert) to the
  broker, as a ratio to plain paho QoS 1 publishing in the same process (the baseline).

Targets (issue 6): under 10 % of one core and under 80 MB RSS on the CI machine.

Usage: .venv/bin/python bench/bench_agent.py [--seconds 30] [--broker 127.0.0.1:1883]
Writes bench/results/agent.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.config import MqttSettings, parse_config  # noqa: E402
from agent.outbox import Outbox  # noqa: E402
from agent.publisher import Publisher  # noqa: E402
from agent.runner import Agent  # noqa: E402
from agent.schema import AlertMsg, alert_topic  # noqa: E402
from flylead.clock import WallClock  # noqa: E402

BUSES, PER_BUS = 8, 8

SIMULATORS = r"""
import asyncio, sys, time
import numpy as np
from flylead.clock import WallClock
from simulators.meter import MeterServer
from simulators.trace import LoadTrace

async def main():
    clock = WallClock()
    servers = []
    for b in range(%(buses)d):
        meters = {i: LoadTrace(f"b{b}m{i}", time.time() - 60, 60.0, np.full(10_000, 100.0 + i))
                  for i in range(1, %(per_bus)d + 1)}
        s = MeterServer(meters, profile="sdm120", clock=clock)
        await s.start()
        servers.append(s)
    print(" ".join(str(s.port) for s in servers), flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def bench_polling(ports: list[int], broker: tuple[str, int], seconds: float, tmp: Path) -> dict:
    config = parse_config({
        "gateway": "bench-gw",
        "mqtt": {"host": broker[0], "port": broker[1]},
        "buses": [{"name": f"bus{b}", "tcp": f"127.0.0.1:{p}"} for b, p in enumerate(ports)],
        "devices": [
            {"name": f"m{b}-{i}", "bus": f"bus{b}", "profile": "sdm120", "device_id": i,
             "household": f"h{b}-{i}", "interval_s": 1.0, "timeout_s": 0.5}
            for b in range(len(ports)) for i in range(1, PER_BUS + 1)
        ],
    }, "<bench>")
    pub = Publisher("bench-gw", config.mqtt, Outbox(tmp / "outbox.sqlite"))
    pub.connect()
    agent = Agent(config, WallClock(), pub)
    wall0, cpu0 = time.monotonic(), cpu_s()
    asyncio.run(agent.run(until=time.time() + seconds))
    wall, cpu = time.monotonic() - wall0, cpu_s() - cpu0
    pub.drain(30)
    pub.close()
    polls = sum(s.ok for s in agent.devices.values())
    return {
        "devices": len(config.devices),
        "seconds": round(wall, 1),
        "polls_ok": polls,
        "polls_expected": int(len(config.devices) * seconds),
        "cpu_share_of_one_core": round(cpu / wall, 3),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "published": pub.published,
    }


def bench_alerts(broker: tuple[str, int], n: int, tmp: Path) -> dict:
    """Alerts/s through the outbox vs raw paho QoS 1 publish-and-wait in the same process."""
    # baseline: plain paho, QoS 1, wait for each PUBACK-complete batch at the end
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-raw")
    client.max_inflight_messages_set(256)
    client.connect(*broker)
    client.loop_start()
    payload = b'{"bench": true}' * 20
    t0 = time.monotonic()
    infos = [client.publish("flylead/v1/bench-raw/alert/h1", payload, qos=1) for _ in range(n)]
    for info in infos:
        info.wait_for_publish(30)
    raw = n / (time.monotonic() - t0)
    client.loop_stop()
    client.disconnect()

    pub = Publisher("bench-alerts", MqttSettings(host=broker[0], port=broker[1]),
                    Outbox(tmp / "alerts.sqlite"))
    pub.connect()
    t0 = time.monotonic()
    for i in range(n):
        pub.publish(alert_topic("bench-alerts", "h1"), AlertMsg(
            msg_id=pub.next_msg_id(), gateway="bench-alerts", ts=1.8e9 + i,
            alert_id=f"bench:{i}", kind="ebike_charging", state="closed", household="h1",
            device="m1", start=1.8e9, end=1.8e9 + i, confidence=0.9), kind="alert")
    assert pub.drain(120)
    outbox = n / (time.monotonic() - t0)
    pub.close()
    return {"alerts": n, "raw_paho_per_s": round(raw), "outbox_per_s": round(outbox),
            "ratio_to_raw": round(outbox / raw, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--alerts", type=int, default=2000)
    ap.add_argument("--broker", default="127.0.0.1:1883")
    args = ap.parse_args()
    host, port = args.broker.rsplit(":", 1)
    broker = (host, int(port))
    sims = subprocess.Popen(
        [sys.executable, "-c", SIMULATORS % {"buses": BUSES, "per_bus": PER_BUS}],
        stdout=subprocess.PIPE, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        ports = [int(p) for p in sims.stdout.readline().split()]
        with tempfile.TemporaryDirectory() as tmp:
            polling = bench_polling(ports, broker, args.seconds, Path(tmp))
            alerts = bench_alerts(broker, args.alerts, Path(tmp))
    finally:
        sims.kill()
        sims.wait()
    result = {"polling": polling, "alerts": alerts, "cpu_count": os.cpu_count()}
    out = ROOT / "bench" / "results" / "agent.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"64 devices, 1 s polls, {polling['seconds']} s: {polling['polls_ok']}/{polling['polls_expected']} "
          f"polls, CPU {polling['cpu_share_of_one_core'] * 100:.1f} % of one core, "
          f"peak RSS {polling['peak_rss_mb']:.0f} MB")
    print(f"alerts: outbox {alerts['outbox_per_s']}/s vs raw paho {alerts['raw_paho_per_s']}/s "
          f"(ratio {alerts['ratio_to_raw']})")
    print(f"written to {out}")


if __name__ == "__main__":
    threading.excepthook = lambda a: None  # paho's thread on interpreter exit
    main()
