"""Agent configuration: one TOML file, validated at start (pydantic).

Errors name the file, the key and what is wrong (:class:`ConfigError`).  The shipped
example is ``docs/example-compound.toml``.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from agent.schema import NAME_PATTERN

Name = Annotated[str, Field(pattern=NAME_PATTERN)]


class ConfigError(ValueError):
    """Configuration invalid; the message names the file, the key and the problem."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MqttSettings(_Strict):
    """Broker connection.  Credentials and TLS are for deployment (see docs/mqtt.md)."""

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 1883
    username: str | None = None
    password: str | None = None
    tls: bool = False
    ca_file: str | None = None
    protocol: Literal["3.1.1", "5"] = "3.1.1"
    keepalive_s: Annotated[int, Field(ge=5, le=3600)] = 30


class BusSettings(_Strict):
    """One physical or TCP bus: one request at a time on it.

    ``tcp`` is ``HOST:PORT`` of a Modbus TCP device or gateway.  ``pause_s`` is the
    silence kept between two requests on the bus (field-vectors C-08: some meters need
    100 ms or more).
    """

    name: Name
    tcp: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:\[\]-]+:[0-9]{1,5}$")]
    pause_s: Annotated[float, Field(ge=0, le=10)] = 0.0

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.tcp.rpartition(":")
        return host.strip("[]"), int(port)


class DeviceSettings(_Strict):
    """One device on a bus.

    ``interval_s`` is the poll period in clock seconds; ``timeout_s`` the real-time
    limit of one request.  ``household`` links a meter to the household whose load it
    measures (its power feeds that household's charging detector).
    """

    name: Name
    bus: Name
    profile: Name
    device_id: Annotated[int, Field(ge=1, le=247)] = 1
    household: Name | None = None
    interval_s: Annotated[float, Field(gt=0, le=86_400)] = 60.0
    timeout_s: Annotated[float, Field(gt=0, le=30)] = 0.5
    retries: Annotated[int, Field(ge=0, le=5)] = 0


class AgentConfig(_Strict):
    """The whole agent configuration."""

    gateway: Name
    tz: str = "Asia/Shanghai"
    mqtt: MqttSettings = MqttSettings()
    buses: list[BusSettings]
    devices: list[DeviceSettings]
    #: Longest wait before retrying a device that stopped answering (clock s).
    max_backoff_s: Annotated[float, Field(gt=0)] = 900.0
    #: Publish telemetry every Nth successful poll of a device (the detector sees all).
    telemetry_every: Annotated[int, Field(ge=1, le=1000)] = 1

    @model_validator(mode="after")
    def _references(self) -> AgentConfig:
        bus_names = [b.name for b in self.buses]
        if len(set(bus_names)) != len(bus_names):
            raise ValueError("bus names must be unique")
        dev_names = [d.name for d in self.devices]
        if len(set(dev_names)) != len(dev_names):
            raise ValueError("device names must be unique")
        for i, dev in enumerate(self.devices):
            if dev.bus not in bus_names:
                raise ValueError(f"devices[{i}] ({dev.name}): unknown bus {dev.bus!r}")
        return self


def parse_config(data: dict, source: str = "<config>") -> AgentConfig:
    """Validate a configuration mapping.

    Raises:
        ConfigError: naming ``source``, the key path and the problem.
    """
    try:
        return AgentConfig.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"]) or "(top level)"
            problems.append(f"{source}: {key}: {err['msg']}")
        raise ConfigError("\n".join(problems)) from None


def load_config(path: str | Path) -> AgentConfig:
    """Read and validate a TOML configuration file.

    Raises:
        ConfigError: the file is missing, is not TOML, or does not validate.
    """
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_config(data, str(path))
