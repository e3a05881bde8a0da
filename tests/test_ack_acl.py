"""Command topics through Mosquitto's ACL (a private broker with flylead's template):
each gateway reads only its own ``flylead/v1/{gw}/cmd/#`` and writes no command; the desk
user writes commands and nothing else; the agent subscribes again after the broker
restarts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.config import MqttSettings, parse_config
from agent.publisher import Publisher
from agent.runner import Agent
from agent.schema import AckCmd, ack_topic
from broker.credentials import read_acl
from tests.test_broker_acl import NOT_AUTHORIZED, WAIT_S, Client, PrivateMosquitto

USERS = {"gw-a": "gateway", "gw-b": "gateway", "flylead-desk": "desk", "ops": "monitor"}
T0 = 1_795_795_200.0


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateMosquitto]:
    with PrivateMosquitto(tmp_path_factory.mktemp("mosquitto-cmd"), USERS) as b:
        yield b


def ack(gateway: str, msg_id: str) -> bytes:
    return AckCmd(v=1, msg_id=msg_id, gateway=gateway, ts=T0, alert_id=f"{gateway}:fd-1:residual_current:1",
                  device="fd-1", hazard="residual_current", by="li", at=T0).model_dump_json().encode()


def test_acl_file_lines(broker: PrivateMosquitto) -> None:
    acl = read_acl(broker.acl)
    assert acl["gw-a"] == ["topic write flylead/v1/gw-a/status", "topic write flylead/v1/gw-a/telemetry/+",
                           "topic write flylead/v1/gw-a/alert/+", "topic write flylead/v1/gw-a/health/+",
                           "topic read flylead/v1/gw-a/cmd/#"]
    assert acl["flylead-desk"] == ["topic write flylead/v1/+/cmd/#"]


def test_gateway_reads_only_its_own_commands(broker: PrivateMosquitto) -> None:
    desk = Client(broker, "flylead-desk")
    a, b = Client(broker, "gw-a"), Client(broker, "gw-b")
    try:
        a.subscribe("flylead/v1/gw-a/cmd/ack")
        for topic in ("flylead/v1/gw-a/cmd/ack", "flylead/v1/+/cmd/#", "flylead/v1/#", "#"):
            b.subscribe(topic)  # granted or not, nothing of gw-a's may be delivered
        assert desk.publish(ack_topic("gw-a"), ack("gw-a", "desk:1:a")) == 0
        assert desk.publish(ack_topic("gw-a"), ack("gw-a", "desk:1:b")) == 0
        assert [t for t, _ in a.wait_messages(2)] == ["flylead/v1/gw-a/cmd/ack"] * 2
        time.sleep(0.3)
        assert b.messages == []
    finally:
        for c in (desk, a, b):
            c.close()


def test_gateways_cannot_write_commands_and_the_desk_nothing_else(broker: PrivateMosquitto) -> None:
    ops = Client(broker, "ops")
    a, desk = Client(broker, "gw-a"), Client(broker, "flylead-desk")
    try:
        ops.subscribe("flylead/v1/#")
        assert a.publish("flylead/v1/gw-a/cmd/ack", ack("gw-a", "forged:1")) == NOT_AUTHORIZED
        assert a.publish("flylead/v1/gw-b/cmd/ack", ack("gw-b", "forged:2")) == NOT_AUTHORIZED
        assert a.publish("flylead/v1/gw-a/other/x", b"not in the scheme") == NOT_AUTHORIZED
        assert desk.publish("flylead/v1/gw-a/alert/h01", b"forged alert") == NOT_AUTHORIZED
        assert desk.publish("flylead/v1/gw-a/status", b"offline") == NOT_AUTHORIZED
        # the desk reads nothing, not even the commands it sends
        desk.subscribe("flylead/v1/#")
        assert a.publish("flylead/v1/gw-a/status", b"marker") == 0
        assert desk.publish(ack_topic("gw-b"), ack("gw-b", "desk:2:a")) == 0
        got = ops.wait_messages(2)
        time.sleep(0.2)
        assert [t for t, _ in ops.messages] == [t for t, _ in got] == ["flylead/v1/gw-a/status",
                                                                       "flylead/v1/gw-b/cmd/ack"]
        assert desk.messages == []
    finally:
        for c in (ops, a, desk):
            c.close()


def test_agent_subscribes_again_after_the_broker_restarts(broker: PrivateMosquitto) -> None:
    """The agent as gw-a (its ACL), a clean session: after a broker restart it reconnects,
    subscribes again, and a command sent then reaches it."""
    cfg = parse_config({"gateway": "gw-a", "buses": [{"name": "b", "tcp": "127.0.0.1:502"}],
                        "devices": [{"name": "fd-1", "bus": "b", "profile": "fire_detector", "interval_s": 5}]})
    pub = Publisher("gw-a", MqttSettings(host=broker.host, port=broker.port, username="gw-a",
                                         password=broker.passwords["gw-a"]))
    pub.connect()

    class Clock:
        speed = 1.0

        @staticmethod
        def now() -> float:
            return T0

    agent = Agent(cfg, Clock(), pub)

    async def wait(pred, what: str) -> None:
        deadline = time.monotonic() + 3 * WAIT_S
        while not pred():
            assert time.monotonic() < deadline, what
            await asyncio.sleep(0.02)

    async def scenario() -> None:
        agent.listen_commands()
        desk = Client(broker, "flylead-desk")
        await wait(lambda: pub.subscribes == 1, "no subscription")
        await asyncio.sleep(0.2)  # the SUBACK
        assert desk.publish(ack_topic("gw-a"), ack("gw-a", "desk:3:before")) == 0
        await wait(lambda: len(agent.commands) == 1, "no command before the restart")
        desk.close()
        await asyncio.to_thread(broker.restart)
        await wait(lambda: pub.connects == 2 and pub.subscribes == 2, "no reconnect")
        await asyncio.sleep(0.2)
        desk = Client(broker, "flylead-desk")
        assert desk.publish(ack_topic("gw-a"), ack("gw-a", "desk:3:after")) == 0
        await wait(lambda: len(agent.commands) == 2, "no command after the restart")
        desk.close()

    try:
        asyncio.run(scenario())
    finally:
        pub.close()
    assert [(c.msg_id, c.status) for c in agent.commands] == [("desk:3:before", "refused"),
                                                              ("desk:3:after", "refused")]
    assert all("no open alert 'gw-a:fd-1:residual_current:1'" in c.detail for c in agent.commands)
    assert pub.received == 2


def test_add_gateway_writes_the_command_read_line(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from flylead.cli import app

    runner = CliRunner()
    out = runner.invoke(app, ["broker", "add-gateway", "gw-z", "--passwd-file", str(tmp_path / "p"),
                              "--acl-file", str(tmp_path / "acl")])
    assert out.exit_code == 0, out.output
    desk = runner.invoke(app, ["broker", "add-user", "flylead-desk", "--role", "desk", "--passwd-file",
                               str(tmp_path / "p"), "--acl-file", str(tmp_path / "acl")])
    assert desk.exit_code == 0, desk.output
    text = (tmp_path / "acl").read_text()
    assert "user gw-z\ntopic write flylead/v1/gw-z/status\n" in text
    assert "topic read flylead/v1/gw-z/cmd/#\n" in text
    assert "user flylead-desk\ntopic write flylead/v1/+/cmd/#\n" in text
