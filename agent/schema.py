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
    flylead/v1/{gw}/cmd/ack             QoS 1, desk -> gateway: AckCmd (a person acknowledged
                                        a latched hazard alert; the only topic a gateway reads)

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


def cmd_topic(gateway: str, command: str) -> str:
    """A command to one gateway (server side -> gateway): ``flylead/v1/{gw}/cmd/{command}``."""
    return f"{TOPIC_ROOT}/{gateway}/cmd/{command}"


def ack_topic(gateway: str) -> str:
    """Where the desk sends :class:`AckCmd` to ``gateway``."""
    return cmd_topic(gateway, "ack")


#: Subscriptions of the server side.
TELEMETRY_SUBSCRIPTION = f"{TOPIC_ROOT}/+/telemetry/+"
ALERT_SUBSCRIPTION = f"{TOPIC_ROOT}/+/alert/+"
STATUS_SUBSCRIPTION = f"{TOPIC_ROOT}/+/status"
HEALTH_SUBSCRIPTION = f"{TOPIC_ROOT}/+/health/+"
#: Topics the desk's broker user may write (every gateway's commands, nothing else).
CMD_WRITE_FILTER = f"{TOPIC_ROOT}/+/cmd/#"

#: Alert kinds whose alarm levels latch until acknowledged (detectors/hazards.py: the
#: electrical-fire detector's alarms, GB 14287 practice, domain-facts.md §4).  The desk sends
#: an acknowledgement only for these.
LATCHING_KINDS = ("residual_current", "cable_temperature")
#: Largest command payload the agent accepts (bytes); an acknowledgement is about 400 bytes.
MAX_CMD_BYTES = 2048
#: A hazard of detectors.hazards: ``residual_current``, ``cable_temperature.N``, ...
HAZARD_PATTERN = r"^[a-z][a-z_]{0,31}(\.[0-9]{1,3})?$"


_ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,96}$"


class _Msg(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)

    v: Literal[1] = SCHEMA_VERSION
    msg_id: Annotated[str, Field(pattern=_ID_PATTERN)]
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


class AckCmd(_Msg):
    """Desk -> gateway, on ``flylead/v1/{gw}/cmd/ack`` (QoS 1): a person acknowledged one
    latched hazard alert of this gateway (docs/mqtt.md, docs/hazards.md).

    Strict: no type coercion (``"ts": "1795..."`` is refused), no unknown fields.

    Attributes:
        msg_id: unique per acknowledgement, the same on every resend of it (the agent
            ignores a msg_id it has handled: replays and QoS 1 duplicates are harmless).
        gateway: the gateway addressed (must be the receiving gateway).
        ts: when the command was made, UTC epoch s (the desk's clock).
        alert_id: the alert as the gateway published it (gateway-prefixed).
        device, hazard: the alert's device and hazard (``residual_current``,
            ``cable_temperature.N``); must match the open alert.
        by: who acknowledged (a desk user name).
        at: when they did, UTC epoch s (the desk's clock).
        note: free text, at most 200 characters, no control characters.
        case: the desk case id, if any.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    v: Literal[1]  # required: a command without its version is refused
    alert_id: Annotated[str, Field(pattern=_ID_PATTERN)]
    device: Name
    hazard: Annotated[str, Field(pattern=HAZARD_PATTERN)]
    by: Name
    at: EpochS
    note: Annotated[str, Field(max_length=200, pattern=r"^[^\x00-\x1f\x7f]*$")] = ""
    case: Annotated[int, Field(ge=1, le=2**53)] | None = None
