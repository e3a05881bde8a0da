"""Agent configuration: one TOML file, validated at start (pydantic).

Errors name the file, the key and what is wrong (:class:`ConfigError`).  The shipped
example is ``docs/example-compound.toml``.
"""

from __future__ import annotations

import ipaddress
import os
import re
import ssl
import tomllib
from pathlib import Path
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from agent.schema import NAME_PATTERN
from drivers.profile import ProfileError, load_profile

Name = Annotated[str, Field(pattern=NAME_PATTERN)]
_HOST_PORT = r"^[A-Za-z0-9_.:\[\]-]+:[0-9]{1,5}$"


class ConfigError(ValueError):
    """Configuration invalid; the message names the file, the key and the problem."""


class _Strict(BaseModel):
    """No unknown keys; no silent conversion (``"60"`` or ``true`` for a number, ``1`` for a
    boolean are errors; a TOML integer for a float is fine); no NaN or infinity."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


def ca_file_problem(path: str | Path) -> str | None:
    """Why ``path`` is no usable CA bundle (a file of PEM certificates), or None.  Checked
    before connecting, so the error names the file instead of surfacing inside paho."""
    p = Path(path)
    if p.is_dir():
        return f"{path} is a directory, not a CA bundle file"
    if not p.is_file():
        return f"no such file: {path}"
    try:
        ssl.create_default_context(cafile=str(p))
    except (OSError, ssl.SSLError) as exc:
        return f"{path} is not a readable PEM certificate file ({exc})"
    return None


def _port_in_range(v: str | None) -> str | None:
    """``HOST:PORT`` with the port 1-65535 (the pattern checks the shape)."""
    if v is not None and not 1 <= int(v.rpartition(":")[2]) <= 65535:
        raise ValueError(f"port of {v!r} must be 1-65535")
    return v


class MqttSettings(_Strict):
    """Broker connection.  Credentials and TLS are for deployment (see docs/mqtt.md)."""

    host: Annotated[str, Field(min_length=1, max_length=253)] = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 1883
    username: str | None = None
    password: str | None = None
    tls: bool = False
    ca_file: str | None = None
    protocol: Literal["3.1.1", "5"] = "3.1.1"
    keepalive_s: Annotated[int, Field(ge=5, le=3600)] = 30

    @field_validator("host")
    @classmethod
    def _host_name_or_address(cls, v: str) -> str:
        """A DNS name, an IPv4 address or an IPv6 address (bare or in brackets), without a
        port (that is ``port``)."""
        bare = v[1:-1] if v.startswith("[") and v.endswith("]") else v
        if ":" in bare or bare.replace(".", "").isdigit():
            try:
                ipaddress.ip_address(bare)
            except ValueError:
                hint = " (the port goes in port)" if ":" in bare and "." in bare else ""
                raise ValueError(f"{v!r} is not an IP address{hint}") from None
            return v
        if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9_-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9_-]{0,62}))*\.?", bare):
            raise ValueError(f"{v!r} is not a host name or IP address")
        return v

    @field_validator("ca_file")
    @classmethod
    def _ca_file_loads(cls, v: str | None) -> str | None:
        """The CA bundle must be a readable file of PEM certificates (checked here, so
        ``check-config`` names it and the agent does not fail later inside paho)."""
        problem = None if v is None else ca_file_problem(v)
        if problem:
            raise ValueError(problem)
        return v


class BusSettings(_Strict):
    """One physical or TCP bus: one request at a time on it.

    Exactly one of ``tcp`` (Modbus TCP device or gateway, ``HOST:PORT``), ``rtu_tcp`` (RTU
    or DL/T 645 frames through a transparent RS-485 gateway, ``HOST:PORT``) or ``serial``
    (a serial port path) says where.  ``protocol`` is what the devices on it speak.
    ``pause_s`` is the silence kept between two requests (field-vectors C-08: some meters
    need 100 ms or more).  Serial defaults: 9600 8N1 for Modbus (the bundled meters'
    setting, domain-facts §5), 2400 8E1 for DL/T 645 (§6), 9600 8N1 for the Dianchuan board.
    """

    name: Name
    protocol: Literal["modbus", "dlt645", "dianchuan"] = "modbus"
    tcp: Annotated[str, Field(pattern=_HOST_PORT)] | None = None
    rtu_tcp: Annotated[str, Field(pattern=_HOST_PORT)] | None = None
    serial: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    baudrate: Literal[1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200] | None = None
    parity: Literal["N", "E", "O"] | None = None
    echo: bool = False
    pause_s: Annotated[float, Field(ge=0, le=10)] = 0.0

    @field_validator("tcp", "rtu_tcp")
    @classmethod
    def _port(cls, v: str | None) -> str | None:
        return _port_in_range(v)

    @model_validator(mode="after")
    def _one_target(self) -> BusSettings:
        given = [k for k in ("tcp", "rtu_tcp", "serial") if getattr(self, k) is not None]
        if self.baudrate is not None and self.tcp is not None:
            raise ValueError(f"bus {self.name!r}: baudrate is for serial lines (rtu_tcp or serial), not tcp")
        if self.parity is not None and self.tcp is not None:
            raise ValueError(f"bus {self.name!r}: parity is for serial lines (rtu_tcp or serial), not tcp")
        if len(given) != 1:
            raise ValueError(f"bus {self.name!r}: give exactly one of tcp, rtu_tcp, serial (got {given or 'none'})")
        if self.protocol != "modbus" and self.tcp is not None:
            raise ValueError(f"bus {self.name!r}: {self.protocol} is a serial protocol; use rtu_tcp or serial")
        return self

    @property
    def kind(self) -> str:
        """``tcp``, ``rtu-tcp`` or ``serial``."""
        return "tcp" if self.tcp else "rtu-tcp" if self.rtu_tcp else "serial"

    @property
    def target(self) -> str:
        return self.tcp or self.rtu_tcp or self.serial or ""

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.target.rpartition(":")
        return host.strip("[]"), int(port)


class DeviceSettings(_Strict):
    """One device on a bus.

    ``interval_s`` is the poll period in clock seconds; ``timeout_s`` the real-time
    limit of one request.  ``household`` links a meter to the household whose load it
    measures (its power feeds that household's charging detector).
    """

    name: Name
    bus: Name
    #: Modbus profile name (drivers/profiles/*.toml), or ``dlt645`` / ``dianchuan``.
    profile: Name
    device_id: Annotated[int, Field(ge=1, le=247)] = 1
    #: DL/T 645 meter address (12 digits, or AAAAAAAAAAAA for the only meter on a line).
    address: Annotated[str, Field(pattern=r"^([0-9]{12}|[Aa]{12})$")] | None = None
    household: Name | None = None
    interval_s: Annotated[float, Field(ge=0.1, le=86_400)] = 60.0
    timeout_s: Annotated[float, Field(ge=0.01, le=30)] = 0.5
    retries: Annotated[int, Field(ge=0, le=5)] = 0
    #: Household meters: the breaker's rated current (A) for the overload alarm.
    breaker_rating_a: Annotated[float, Field(gt=0, le=1000)] | None = None
    #: Electrical-fire detectors: alarm settings overriding the device's own registers
    #: (GB 14287 practice, domain-facts §4: 20-1000 mA, 55-140 °C).
    residual_setting_ma: Annotated[float, Field(ge=20, le=1000)] | None = None
    temperature_setting_c: Annotated[float, Field(ge=55, le=140)] | None = None

    @property
    def role(self) -> str:
        """``fire_detector``, ``pile`` or ``meter``, from the profile."""
        if self.profile == "fire_detector":
            return "fire_detector"
        if self.profile in ("ebike_pile", "dianchuan"):
            return "pile"
        return "meter"


class PileLinkSettings(_Strict):
    """A household that charges at a pile: its port on the pile, or its card/user id.
    Home charging that overlaps its pile session is suppressed or downgraded."""

    household: Name
    pile: Name
    port: Annotated[int, Field(ge=1, le=64)] | None = None
    user: Annotated[str, Field(min_length=1, max_length=64)] | None = None


class OutboxSettings(_Strict):
    """The durable queue between the agent and the broker (agent/outbox.py)."""

    path: Annotated[str, Field(min_length=1)] = "flylead-outbox.sqlite"
    max_messages: Annotated[int, Field(ge=100, le=10_000_000)] = 200_000
    commit_interval_s: Annotated[float, Field(ge=0.01, le=60)] = 1.0

    @field_validator("path")
    @classmethod
    def _durable_place(cls, v: str) -> str:
        """A file in a folder that exists (relative: to the agent's working folder) and that
        this user may write (not on a read-only file system; the file too, if it exists);
        the agent creates no folder, so a typo does not leave the queue somewhere unexpected."""
        path = Path(v)
        if path.is_dir():
            raise ValueError(f"{v} is a folder; give the outbox file's name, e.g. {path / 'outbox.sqlite'}")
        if path.exists() and not path.is_file():
            raise ValueError(f"{v} is not a regular file (a device or a pipe cannot hold the queue)")
        if not path.parent.is_dir():
            raise ValueError(f"folder {path.parent} does not exist (create it, e.g. the service's state folder)")
        # SQLite writes the file and, in WAL mode, its -wal and -shm files next to it
        if not os.access(path.parent, os.W_OK | os.X_OK):
            raise ValueError(f"folder {path.parent} is not writable{_read_only_fs(path.parent)} (the outbox "
                             f"writes {path.name} and its -wal and -shm files there)")
        if path.exists() and not os.access(path, os.W_OK):
            raise ValueError(f"{v} is not writable{_read_only_fs(path.parent)}")
        return v


def _read_only_fs(folder: Path) -> str:
    """``": a read-only file system"`` when ``folder`` is on one, else ``""``."""
    try:
        return ": a read-only file system" if os.statvfs(folder).f_flag & os.ST_RDONLY else ""
    except OSError:
        return ""


class AgentConfig(_Strict):
    """The whole agent configuration."""

    gateway: Name
    tz: str = "Asia/Shanghai"
    mqtt: MqttSettings = MqttSettings()
    outbox: OutboxSettings = OutboxSettings()
    #: Period of the health messages (clock s): uptime, outbox, per-device bus health.
    health_interval_s: Annotated[float, Field(ge=1, le=86_400)] = 60.0
    buses: list[BusSettings]
    devices: list[DeviceSettings]
    pile_links: list[PileLinkSettings] = []
    #: Longest wait before retrying a device that stopped answering (clock s).
    max_backoff_s: Annotated[float, Field(gt=0, le=86_400)] = 900.0
    #: Publish telemetry every Nth successful poll of a device (the detector sees all).
    telemetry_every: Annotated[int, Field(ge=1, le=1000)] = 1
    #: Spread the devices' first polls evenly over their poll interval (device k of n
    #: starts k/n of an interval late) instead of polling every device at start: no burst
    #: of requests at each interval boundary on a gateway with many buses.
    spread_polls: bool = False

    @field_validator("tz")
    @classmethod
    def _known_zone(cls, tz: str) -> str:
        try:
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {tz!r} (an IANA name such as 'Asia/Shanghai')") from None
        return tz

    @model_validator(mode="after")
    def _references(self) -> AgentConfig:
        bus_names = [b.name for b in self.buses]
        if len(set(bus_names)) != len(bus_names):
            raise ValueError("bus names must be unique")
        dev_names = [d.name for d in self.devices]
        if len(set(dev_names)) != len(dev_names):
            raise ValueError("device names must be unique")
        lines: dict[tuple[str, str], tuple[str, str, str]] = {}  # where -> (bus, key, value)
        for bus in self.buses:
            # one line, one bus: two buses on one serial port, or on one transparent RS-485
            # gateway (rtu_tcp), send their requests over each other and read each other's
            # answers.  Two Modbus TCP buses may share a gateway: a Modbus TCP gateway routes
            # each connection's requests by unit id (e.g. one unit id range per serial port)
            # and answers each on its own connection.
            key = "serial" if bus.serial is not None else "rtu_tcp" if bus.rtu_tcp else "tcp"
            if bus.serial is not None:
                where = ("serial", os.path.realpath(bus.serial))  # /dev/serial/by-id/... too
            else:
                host, port = bus.host_port
                where = ("socket", f"{host.lower()}:{port}")
            other = lines.get(where)
            if other is not None and not (key == "tcp" and other[1] == "tcp"):
                raise ValueError(
                    f"bus {bus.name!r}: {key} = {bus.target!r} is the line of bus {other[0]!r} "
                    f"({other[1]} = {other[2]!r}); two buses on one line send requests over each "
                    "other: one line takes one bus, and one protocol")
            lines.setdefault(where, (bus.name, key, bus.target))
        protocols = {b.name: b.protocol for b in self.buses}
        for i, dev in enumerate(self.devices):
            if dev.bus not in bus_names:
                raise ValueError(f"devices[{i}] ({dev.name}): unknown bus {dev.bus!r}")
            proto = protocols[dev.bus]
            if proto != "modbus" and dev.profile != proto:
                raise ValueError(f"devices[{i}] ({dev.name}): bus {dev.bus!r} speaks {proto}; profile must be {proto!r}")
            if proto == "modbus" and dev.profile in ("dlt645", "dianchuan"):
                raise ValueError(f"devices[{i}] ({dev.name}): profile {dev.profile!r} needs a bus with protocol = {dev.profile!r}")
            if dev.address is not None and proto != "dlt645":
                raise ValueError(f"devices[{i}] ({dev.name}): address is for DL/T 645 devices")
            if dev.role != "fire_detector" and (dev.residual_setting_ma is not None
                                                or dev.temperature_setting_c is not None):
                raise ValueError(f"devices[{i}] ({dev.name}): residual_setting_ma and temperature_setting_c are "
                                 "for fire detectors")
            if dev.role != "meter" and dev.breaker_rating_a is not None:
                raise ValueError(f"devices[{i}] ({dev.name}): breaker_rating_a is for household meters")
            if proto == "modbus":
                try:
                    load_profile(dev.profile)
                except ProfileError as exc:
                    raise ValueError(f"devices[{i}] ({dev.name}): {exc}") from None
        seen: dict[tuple[str, int | str], str] = {}
        for i, dev in enumerate(self.devices):
            if protocols[dev.bus] == "dianchuan":
                continue
            key = (dev.bus, dev.address.upper() if dev.address else dev.device_id)
            if key in seen:
                raise ValueError(f"devices[{i}] ({dev.name}): same bus and device id/address as {seen[key]!r}")
            seen[key] = dev.name
        metered: dict[str, str] = {}  # household -> device whose power feeds its detector
        for i, dev in enumerate(self.devices):
            if dev.household is None or dev.role == "fire_detector":  # a detector reads no power
                continue
            if dev.household in metered:
                raise ValueError(
                    f"devices[{i}] ({dev.name}): household {dev.household!r} is already measured by "
                    f"{metered[dev.household]!r}; one household has one meter (both would feed one "
                    "charging detector, which drops readings older than its last)")
            metered[dev.household] = dev.name
        piles = {d.name for d in self.devices if d.role == "pile"}
        for i, link in enumerate(self.pile_links):
            if link.pile not in piles:
                raise ValueError(f"pile_links[{i}]: {link.pile!r} is not a pile device")
            if link.port is None and link.user is None:
                raise ValueError(f"pile_links[{i}]: give port or user")
        if not self.devices:
            raise ValueError("no [[devices]] configured: the agent would have nothing to poll")
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
            key = ".".join(str(p) for p in err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            problems.append(f"{source}: {key}: {msg}" if key else f"{source}: {msg}")
        raise ConfigError("\n".join(problems)) from None


def load_config(path: str | Path) -> AgentConfig:
    """Read and validate a TOML configuration file.

    Raises:
        ConfigError: the file is missing, is not TOML, or does not validate.
    """
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8-sig"))  # a BOM (Windows editors) is not TOML
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:  # a directory, no permission, an I/O error
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return parse_config(data, str(path))
