"""Shared fixtures.

Service fixtures use the real servers that .ci/services.sh starts on loopback; when one is
missing the test FAILS (never skips) and says to run that script.
"""

from __future__ import annotations

import itertools
import socket
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from agent.schema import AlertMsg, TelemetryMsg

VICTORIA_URL = "http://127.0.0.1:8428"
MOSQUITTO = ("127.0.0.1", 1883)


# -- external services ----------------------------------------------------------------


@pytest.fixture(scope="session")
def victoria() -> str:
    """Base URL of the VictoriaMetrics on 127.0.0.1:8428 (fails if it is not up)."""
    try:
        with urllib.request.urlopen(f"{VICTORIA_URL}/health", timeout=2) as r:
            r.read()
    except OSError as exc:
        pytest.fail(f"VictoriaMetrics not answering {VICTORIA_URL}/health ({exc}): run .ci/services.sh")
    return VICTORIA_URL


@pytest.fixture(scope="session")
def mosquitto() -> tuple[str, int]:
    """(host, port) of the Mosquitto on 127.0.0.1:1883 (fails if nothing listens)."""
    try:
        socket.create_connection(MOSQUITTO, timeout=2).close()
    except OSError as exc:
        pytest.fail(f"no MQTT broker on {MOSQUITTO[0]}:{MOSQUITTO[1]} ({exc}): run .ci/services.sh")
    return MOSQUITTO


# -- in-process servers -----------------------------------------------------------------


@pytest.fixture
def embedded_broker() -> Iterator[object]:
    """A running :class:`broker.EmbeddedBroker` on a free loopback port."""
    from broker import EmbeddedBroker

    with EmbeddedBroker() as b:
        yield b


# -- helpers ------------------------------------------------------------------------------


@pytest.fixture
def uid() -> str:
    """A short id unique to this test run, for gateway names, client ids and tags."""
    return uuid.uuid4().hex[:10]


#: 2026-01-15T12:00:00Z, UTC epoch s: a fixed, recent message time.
T0 = 1_768_478_400.0


class MsgFactory:
    """Valid schema-v1 messages of one gateway, each with a new msg_id.

    Times are UTC epoch s from :data:`T0` unless given.
    """

    def __init__(self, gateway: str) -> None:
        self.gateway = gateway
        self._n = itertools.count()

    def _id(self) -> str:
        return f"{self.gateway}:{next(self._n)}"

    def telemetry(self, device: str = "meter-1", *, ts: float | None = None,
                  household: str | None = "hh-1", **values: float) -> TelemetryMsg:
        return TelemetryMsg(msg_id=self._id(), gateway=self.gateway, device=device,
                            household=household, ts=T0 if ts is None else ts,
                            values=values or {"active_power": 512.5, "voltage": 231.25})

    def alert(self, alert_id: str, state: str = "open", *, start: float = T0,
              household: str = "hh-1", device: str = "meter-1", kind: str = "ebike_charging",
              **fields: Any) -> AlertMsg:
        ts = fields.pop("ts", start if state == "open" else start + 3600.0)
        if state == "closed":
            fields.setdefault("end", start + 3600.0)
        return AlertMsg(msg_id=self._id(), gateway=self.gateway, alert_id=alert_id, kind=kind,
                        state=state, household=household, device=device, start=start, ts=ts,
                        confidence=fields.pop("confidence", 0.875), **fields)


@pytest.fixture
def msgs(uid: str) -> MsgFactory:
    """A :class:`MsgFactory` for a gateway named after this test's :func:`uid`."""
    return MsgFactory(f"gw-{uid}")
