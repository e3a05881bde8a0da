"""The MQTT topic scheme and message schema, version 1 (documented in docs/mqtt.md).

Topics (``{gw}`` is the gateway id, ``{device}`` a device name, ``{hh}`` a household id;
all three match :data:`NAME_PATTERN`)::

    flylead/v1/{gw}/status              retained, QoS 1: {"state": "online"|"offline", ...}
                                        (the broker publishes "offline" as the last will)
    flylead/v1/{gw}/telemetry/{device}  QoS 1: TelemetryMsg
    flylead/v1/{gw}/alert/{hh}          QoS 1: AlertMsg
    flylead/v1/{gw}/health/{device}     QoS 1: TelemetryMsg of health quantities (uptime,
                                        outbox, per-device bus counters); device "gateway"
                                        for the gateway itself

Every message carries ``msg_id``, unique per message and kept on redelivery, so the server
can drop duplicates.  The agent builds messages with these models and the ingest validates
incoming payloads with the same models, so the two cannot drift apart.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from drivers.reading import quantity_unit

SCHEMA_VERSION = 1
TOPIC_ROOT = f"flylead/v{SCHEMA_VERSION}"
#: Ids used in topics and as store tags: no MQTT wildcards, no separators, no quotes.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
#: Largest payload the ingest accepts (bytes); a telemetry message is about 400 bytes.
MAX_PAYLOAD_BYTES = 16_384

Name = Annotated[str, Field(pattern=NAME_PATTERN)]
#: UTC epoch seconds between 2000-01-01 and 2100-01-01.
EpochS = Annotated[float, Field(ge=946_684_800.0, lt=4_102_444_800.0, allow_inf_nan=False)]

ALERT_KINDS = (
    "ebike_charging",
    "residual_current",
    "cable_temperature",
    "overload",
    "device_offline",
)


def status_topic(gateway: str) -> str:
    return f"{TOPIC_ROOT}/{gateway}/status"


def telemetry_topic(gateway: str, device: str) -> str:
    return f"{TOPIC_ROOT}/{gateway}/telemetry/{device}"


def alert_topic(gateway: str, household: str) -> str:
    return f"{TOPIC_ROOT}/{gateway}/alert/{household}"


def health_topic(gateway: str, device: str) -> str:
    """Health of the gateway itself (``device`` = ``gateway``) or of one device's bus."""
    return f"{TOPIC_ROOT}/{gateway}/health/{device}"


#: Subscriptions of the server side.
TELEMETRY_SUBSCRIPTION = f"{TOPIC_ROOT}/+/telemetry/+"
ALERT_SUBSCRIPTION = f"{TOPIC_ROOT}/+/alert/+"
STATUS_SUBSCRIPTION = f"{TOPIC_ROOT}/+/status"
HEALTH_SUBSCRIPTION = f"{TOPIC_ROOT}/+/health/+"


class _Msg(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)

    v: Literal[1] = SCHEMA_VERSION
    msg_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,96}$")]
    gateway: Name
    ts: EpochS


class TelemetryMsg(_Msg):
    """One reading of one device.

    ``values`` maps quantity names of :data:`drivers.reading.UNITS` to finite numbers in
    their SI unit (W, V, A, kWh, Hz).
    """

    device: Name
    household: Name | None = None
    values: dict[str, Annotated[float, Field(allow_inf_nan=False)]]

    @field_validator("values")
    @classmethod
    def _known_quantities(cls, values: dict[str, float]) -> dict[str, float]:
        unknown = []
        for name in sorted(values):
            try:
                quantity_unit(name)
            except ValueError:
                unknown.append(name)
        if unknown:
            raise ValueError(f"unknown quantities {unknown}")
        if len(values) == 0:
            raise ValueError("no values")
        return values


class AlertMsg(_Msg):
    """An alert about one household or device.

    ``state`` is ``open`` while the hazard lasts (for charging: once a session is
    confirmed) and ``closed`` when it has ended; both carry the same ``alert_id``.
    Times are UTC epoch s; ``end`` is None while open.
    """

    alert_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,96}$")]
    kind: Literal[
        "ebike_charging",
        "residual_current",
        "cable_temperature",
        "overload",
        "device_offline",
    ]
    state: Literal["open", "closed"]
    household: Name
    device: Name
    start: EpochS
    end: EpochS | None = None
    energy_kwh: Annotated[float, Field(ge=0, le=1e6, allow_inf_nan=False)] | None = None
    peak_w: Annotated[float, Field(ge=0, le=1e7, allow_inf_nan=False)] | None = None
    confidence: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
    profile: Literal["lead_acid", "lithium", "unknown"] | None = None
    detail: Annotated[str, Field(max_length=500)] = ""
