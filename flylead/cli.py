"""The ``flylead`` command line (typer)."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import signal
import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="flylead: find flying-lead e-bike charging and unsafe wiring, and alert the people who act on it.",
)
# wide enough for ISO 8601 timestamps even when piped (rich defaults to 80 columns)
console = Console(width=max(Console().width, 120))


def _plural(n: int, word: str, plural: str | None = None) -> str:
    """``1 session``, ``2 sessions``."""
    return f"{n} {word if n == 1 else (plural or word + 's')}"


def _fail(message: str, code: int = 2) -> NoReturn:
    """One line on stderr and exit ``code`` (2: bad input or options)."""
    typer.echo(message, err=True)
    raise typer.Exit(code)



def _number(lo: float | None = None, hi: float | None = None):
    """A parser for a float option: finite, and within [lo, hi] where given (a NaN would
    otherwise fail a range check with a message about the bound)."""
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise typer.BadParameter(f"{text!r} is not a number") from None
        if not math.isfinite(v):
            raise typer.BadParameter(f"{text!r} is not a finite number")
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            bounds = f"{lo:g} to {hi:g}" if lo is not None and hi is not None else (
                f"at least {lo:g}" if lo is not None else f"at most {hi:g}")
            raise typer.BadParameter(f"{v:g} is out of range: {bounds}")
        return v
    return parse

def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


def _output_problem(path: Path, inputs: tuple[Path, ...] = (), outputs: tuple[Path, ...] = ()) -> str | None:
    """Why ``path`` cannot be written (checked before any work), or None: ``inputs`` are
    read, ``outputs`` written by the same command."""
    if path.is_dir():
        return "is a directory"
    for src in inputs:
        if _same_file(src, path):
            return f"is the input file {src}; refusing to overwrite it"
    for other in outputs:
        if _same_file(other, path):
            return f"is also the --out file {other}; give another name"
    folder = path.parent
    if not folder.is_dir():
        return f"folder {folder} does not exist"
    if path.exists() and not os.access(path, os.W_OK):
        return "permission denied"
    return _folder_problem(folder)


def _folder_problem(folder: Path) -> str | None:
    """Why no file can be created in ``folder``, or None (tries one)."""
    import tempfile

    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".flylead-probe-")
    except OSError as exc:
        return f"folder {folder} is not writable ({exc.strerror or exc})"
    os.close(fd)
    os.unlink(probe)
    return None


def _check_output(path: Path | None, option: str, prefix: str = "error: ", inputs: tuple[Path, ...] = (),
                  outputs: tuple[Path, ...] = ()) -> None:
    problem = None if path is None else _output_problem(path, inputs, outputs)
    if problem:
        _fail(f"{prefix}{option} {path}: {problem}")


def _check_protocol(protocol: str) -> None:
    if protocol not in ("3.1.1", "5"):
        raise typer.BadParameter(f"--mqtt-protocol must be 3.1.1 or 5, got {protocol!r}")


def _host_port(text: str, what: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise typer.BadParameter(f"{what} must be HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


class _JsonFormatter(logging.Formatter):
    """One JSON object per line (journald, Loki): ts (UTC ISO 8601), level, logger, msg."""

    def format(self, record: logging.LogRecord) -> str:
        from flylead.clock import iso

        entry = {"ts": iso(record.created), "level": record.levelname, "logger": record.name,
                 "msg": record.getMessage()}
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def _logging(verbose: bool, as_json: bool = False) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(_JsonFormatter() if as_json else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, handlers=[handler])
    logging.getLogger("pymodbus").setLevel(logging.INFO if verbose else logging.CRITICAL)


@app.command()
def demo(
    broker: Annotated[str | None, typer.Option(help="Use this MQTT broker (HOST:PORT) instead of the embedded one.")] = None,
    store: Annotated[str | None, typer.Option(help="Store URL: sqlite:///FILE or influxdb://HOST:PORT/BUCKET?org=..&token=.. (default: temporary SQLite).")] = None,
    hours: Annotated[float, typer.Option(parser=_number(1), help="Simulated hours to run.")] = 48.0,
    speed: Annotated[float, typer.Option(parser=_number(1, 2880), help="Simulated seconds per real second (1440 = a day a minute; above 2880 the agent misses polls on a small machine).")] = 1440.0,
    seed: Annotated[int, typer.Option(min=0, help="Scenario seed.")] = 1,
    report: Annotated[Path | None, typer.Option(help="Write alerts, truth and metrics as JSON here.")] = None,
    mqtt_protocol: Annotated[str, typer.Option("--mqtt-protocol", help="3.1.1 or 5 (the embedded broker speaks 3.1.1).")] = "3.1.1",
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run 8 simulated households (e-bikes charging in four of them on two nights, one
    replaying a real household) through meters, agent, MQTT, ingest and store; print the
    alerts and precision/recall."""
    from flylead.demo import DemoOptions, DemoError, run_demo, write_report

    _logging(verbose)
    _check_protocol(mqtt_protocol)
    if report is not None and not report.parent.is_dir():
        raise typer.BadParameter(f"--report: folder {report.parent} does not exist")
    if report is not None and report.is_dir():
        raise typer.BadParameter(f"--report: {report} is a folder; give a file name, e.g. {report / 'demo.json'}")
    opts = DemoOptions(
        seed=seed, hours=hours, speed=speed, store_url=store, mqtt_protocol=mqtt_protocol,
        broker=_host_port(broker, "--broker") if broker else None,
    )
    console.print(
        f"flylead demo: {hours:g} simulated hour{'' if hours == 1 else 's'} at {speed:g}x "
        f"(about {hours * 3600 / speed:.0f} s), seed {seed}, "
        f"broker {'embedded' if broker is None else broker}, store {store or 'embedded SQLite'}"
    )
    try:
        result = asyncio.run(run_demo(opts))
    except DemoError as exc:
        typer.echo(f"flylead demo: {exc}", err=True)
        raise typer.Exit(1) from None
    table = Table(title="Alerts (read back from the store)")
    for col in ("kind", "household", "start", "end", "kWh", "confidence", "note"):
        table.add_column(col)
    for a in result.alerts:
        table.add_row(a["kind"], a["household"], a["start"], a["end"] or "(open)",
                      f"{a['energy_kwh']:.2f}" if a["kind"] == "ebike_charging" else "",
                      f"{a['confidence']:.2f}", a.get("note", ""))
    console.print(table)
    truth = Table(title="Ground truth (simulated charging sessions)")
    for col in ("household", "start", "end", "kWh"):
        truth.add_column(col)
    for s in result.truth:
        truth.add_row(s["household"], s["start"], s["end"], f"{s['energy_kwh']:.2f}")
    console.print(truth)
    m = result.metrics
    def score(value: float | None, n: int) -> str:  # nothing to score: say so rather than 1.000
        return f"{value:.3f}" if n and value is not None else "n/a"

    console.print(f"e-bike charging vs ground truth: precision {score(m['precision'], m['tp'] + m['fp'])}  "
                  f"recall {score(m['recall'], m['tp'] + m['fn'])}  f1 {score(m['f1'], m['tp'] + m['fp'] + m['fn'])}  "
                  f"(tp {m['tp']}, fp {m['fp']}, fn {m['fn']})")
    if report is not None:
        write_report(result, report)
        console.print(f"report written to {report}")


@app.command("check-config")
def check_config(path: Annotated[Path, typer.Argument(help="Agent configuration (TOML).")]) -> None:
    """Validate an agent configuration: exit 0 when valid, 2 with the problems otherwise."""
    from agent.config import ConfigError, load_config

    try:
        cfg = load_config(path)
    except ConfigError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    typer.echo(f"{path}: ok (gateway {cfg.gateway}, {_plural(len(cfg.buses), 'bus', 'buses')}, "
               f"{_plural(len(cfg.devices), 'device')})")


@app.command("agent")
def agent_cmd(
    config: Annotated[Path, typer.Option("--config", "-c", help="Agent configuration (TOML).")],
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
    log_json: Annotated[bool, typer.Option("--log-json", help="Structured logs: one JSON object a line.")] = False,
) -> None:
    """Run the gateway agent on the wall clock until SIGTERM or Ctrl-C.

    It starts even when the broker is down: readings and alerts wait in the outbox.  On
    SIGTERM it stops polling, flushes the outbox (up to 10 s) and publishes offline."""
    import sqlite3

    from agent.config import ConfigError, load_config
    from agent.outbox import Outbox
    from agent.publisher import Publisher
    from agent.runner import Agent
    from flylead.clock import WallClock

    _logging(verbose, log_json)
    try:
        cfg = load_config(config)
    except ConfigError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    try:
        outbox = Outbox(cfg.outbox.path, max_messages=cfg.outbox.max_messages)
    except (sqlite3.Error, OSError) as exc:
        typer.echo(f"{config}: outbox.path {cfg.outbox.path}: {exc}", err=True)
        raise typer.Exit(2) from None
    publisher = Publisher(cfg.gateway, cfg.mqtt, outbox, commit_interval_s=cfg.outbox.commit_interval_s)
    publisher.connect(wait=False)

    async def main() -> None:
        task = asyncio.create_task(Agent(cfg, WallClock(), publisher).run())
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        try:
            await task
        except asyncio.CancelledError:
            pass

    try:
        asyncio.run(main())
    finally:
        publisher.close()


@app.command()
def ingest(
    broker: Annotated[str, typer.Option(help="MQTT broker HOST:PORT.")] = "127.0.0.1:1883",
    store: Annotated[str, typer.Option(help="Store URL: sqlite:///FILE or influxdb://HOST:PORT/BUCKET?org=..&token=..")] = "sqlite:///flylead.sqlite",
    mqtt_protocol: Annotated[str, typer.Option("--mqtt-protocol")] = "5",
    max_future_s: Annotated[float, typer.Option("--max-future-s", parser=_number(0), help="Reject a message whose ts, start or end is more than this many seconds ahead of this host's clock (a gateway with a wrong clock); gateways stamp UTC, so a day covers any time-zone mistake but not a wrong year.")] = 86400.0,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Subscribe to telemetry and alerts and write them to the store until SIGTERM."""
    import threading

    from broker import Ingest, StoreError, open_store

    _logging(verbose)
    _check_protocol(mqtt_protocol)
    host, port = _host_port(broker, "--broker")
    try:
        st = open_store(store)
    except (ValueError, StoreError) as exc:
        raise typer.BadParameter(f"--store: {exc}") from None
    ing = Ingest(st, host, port, protocol=mqtt_protocol, max_future_s=max_future_s)
    try:
        ing.start()
    except TimeoutError as exc:
        typer.echo(f"flylead ingest: {exc}", err=True)
        st.close()
        raise typer.Exit(1) from None
    log = logging.getLogger("flylead.ingest")
    log.warning("ingest subscribed on %s:%s, writing to %s", host, port, store.split("?")[0])
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        ing.stop()
        st.close()
        typer.echo(json.dumps({"accepted": ing.accepted, "rejected": ing.rejected,
                               "duplicates": ing.duplicates}))


def _line_target(tcp: str | None, rtu_tcp: str | None, serial_port: str | None) -> tuple[str, str]:
    """(kind, target) of the one bus option given ("tcp", "rtu-tcp" or "serial")."""
    given = [(k, v) for k, v in (("tcp", tcp), ("rtu-tcp", rtu_tcp), ("serial", serial_port)) if v]
    if len(given) != 1:
        raise typer.BadParameter("give exactly one of --tcp HOST:PORT, --rtu-tcp HOST:PORT, --serial PORT")
    kind, target = given[0]
    if kind != "serial":
        host, port = _host_port(target, f"--{kind}")
        target = f"{host}:{port}"
    return kind, target


def _line_settings(baud: int | None, parity: str | None, dlt645: bool, kind: str = "serial",
                   serial_protocol: str | None = None) -> tuple[int, str]:
    """Baud rate and parity: DL/T 645 defaults to 2400 8E1 (domain-facts.md §6), Modbus to
    9600 8N1 (the bundled meters' setting, domain-facts.md §5).  Refuses line settings for a
    TCP target (a gateway's serial side is set on the gateway) and ``--tcp`` for a serial
    protocol (``serial_protocol``: its name), as the agent's configuration does."""
    if serial_protocol is not None and kind == "tcp":
        raise typer.BadParameter(f"{serial_protocol} is a serial protocol: use --rtu-tcp (a transparent RS-485 "
                                 "gateway) or --serial")
    if kind != "serial" and (baud is not None or parity is not None):
        raise typer.BadParameter("--baud and --parity set a serial port; behind --tcp or --rtu-tcp the line "
                                 "settings are the gateway's")
    parity = (parity or ("E" if dlt645 else "N")).upper()
    if parity not in ("N", "E", "O"):
        raise typer.BadParameter(f"--parity must be N, E or O, got {parity!r}")
    return baud or (2400 if dlt645 else 9600), parity


@app.command("read")
def read_device(
    profile: Annotated[str, typer.Option("--profile", help="Device profile (sdm120, ddsu666, ebike_pile, fire_detector, a .toml path), dlt645 or dianchuan.")],
    tcp: Annotated[str | None, typer.Option("--tcp", help="Modbus TCP device or gateway HOST:PORT.")] = None,
    rtu_tcp: Annotated[str | None, typer.Option("--rtu-tcp", help="Transparent RS-485 gateway HOST:PORT (RTU or DL/T 645 frames over TCP).")] = None,
    serial_port: Annotated[str | None, typer.Option("--serial", help="Serial port, e.g. /dev/ttyUSB0.")] = None,
    baud: Annotated[int | None, typer.Option("--baud", min=300, max=1_000_000, help="Baud rate (default 9600; DL/T 645 2400).")] = None,
    parity: Annotated[str | None, typer.Option("--parity", help="N, E or O (default N; DL/T 645 E).")] = None,
    device_id: Annotated[int | None, typer.Option("--device-id", min=1, max=247, help="Modbus device id (default 1).")] = None,
    address: Annotated[str | None, typer.Option("--address", help="DL/T 645 meter address, 12 digits (default AAAAAAAAAAAA, one meter on the line).")] = None,
    timeout: Annotated[float | None, typer.Option("--timeout", parser=_number(0.01, 60.0), help="Reply timeout, s (default 1; DL/T 645 2).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help='Print one JSON object {"device", "values": {name: {"value", "unit"}}}.')] = False,
) -> None:
    """Read one device once and print its values with units.

    Exit 0 on success, 1 when the device fails (timeout, exception or malformed reply,
    port or connection error), 2 for bad arguments."""
    from drivers.profile import ProfileError, load_profile
    from drivers.reading import quantity_unit
    from flylead.clock import WallClock

    kind, target = _line_target(tcp, rtu_tcp, serial_port)
    dlt645 = profile == "dlt645"
    baudrate, par = _line_settings(baud, parity, dlt645, kind,
                                   {"dlt645": "DL/T 645", "dianchuan": "the Dianchuan protocol"}.get(profile))
    clock = WallClock()
    if profile == "dianchuan":
        from drivers.dianchuan import DianchuanPile
        from drivers.pile import port_values

        if device_id is not None or address is not None:
            raise typer.BadParameter("the dianchuan board has no device id or address")
        port = target if kind == "serial" else f"socket://{target}"
        name = "dianchuan"
        pile = DianchuanPile(port, device=name, clock=clock, timeout_s=timeout or 1.0)

        async def run() -> tuple[dict[str, float], dict[str, str | int | float]]:
            async with pile:
                return port_values(await pile.read_ports()), {}
    elif dlt645:
        from drivers.dlt645 import WILDCARD_ADDRESS, Dlt645Client, address_to_wire

        if device_id is not None:
            raise typer.BadParameter("--device-id is for Modbus; DL/T 645 takes --address")
        meter = (address or WILDCARD_ADDRESS).upper()
        try:
            address_to_wire(meter)
        except ValueError as exc:
            raise typer.BadParameter(f"--address: {exc}") from None
        port = target if kind == "serial" else f"socket://{target}"
        name = f"dlt645-{meter}"
        client = Dlt645Client(port, clock=clock, baudrate=baudrate, parity=par, timeout_s=timeout or 2.0)

        async def run() -> tuple[dict[str, float], dict[str, str | int | float]]:
            async with client:
                return (await client.read(meter, device=name)).values, {}
    else:
        from drivers.modbus import DeviceSpec, open_bus

        if address is not None:
            raise typer.BadParameter("--address is for DL/T 645; Modbus takes --device-id")
        try:
            load_profile(profile)
        except ProfileError as exc:
            raise typer.BadParameter(f"--profile: {exc}") from None
        unit_id = device_id or 1
        name = f"{profile.rsplit('/', 1)[-1].removesuffix('.toml')}-{unit_id}"
        spec = DeviceSpec(name, profile, unit_id, timeout_s=timeout or 1.0)
        bus = open_bus(kind, target, clock=clock, baudrate=baudrate, parity=par)

        async def run() -> tuple[dict[str, float], dict[str, str | int | float]]:
            async with bus:
                values = (await bus.read(spec)).values
                info = {} if as_json else await _optional_info(bus, spec)
                return values, info
    values, info = _run_on_line(run(), kind, target)
    if as_json:
        out = {key: {"value": value, "unit": quantity_unit(key)} for key, value in values.items()}
        typer.echo(json.dumps({"device": name, "values": out}))
        return
    typer.echo(f"{name} ({kind} {target})")
    for key, text in info.items():
        typer.echo(f"  {key:<28} {text}")
    for key, value in values.items():
        typer.echo(f"  {key:<28} {value:.10g} {quantity_unit(key)}".rstrip())


async def _optional_info(bus, spec) -> dict[str, str | int | float]:
    """A profile's identification entries, or nothing if the device does not have them."""
    from drivers.reading import DecodeError, DeviceException, DeviceTimeout

    try:
        return await bus.read_info(spec)
    except (DeviceException, DeviceTimeout, DecodeError):
        return {}


def _run_on_line(coro, kind: str, target: str):
    """Run one device exchange; a driver error, an OS error or a port refusing its line
    settings (termios.error) becomes one line on stderr and exit code 1."""
    import termios

    from drivers.reading import DriverError

    try:
        return asyncio.run(coro)
    except (DriverError, OSError, termios.error) as exc:
        typer.echo(str(exc) if isinstance(exc, DriverError) else f"{kind} {target}: {exc}", err=True)
        raise typer.Exit(1) from None


def _parse_ids(text: str) -> list[int]:
    """``"1-247"``, ``"1,3,10-12"`` -> device ids (1..247, in order, no repeats)."""
    ids: list[int] = []
    for part in text.split(","):
        lo, sep, hi = part.strip().partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise typer.BadParameter(f"--ids must look like 1-247 or 1,3,5-7, got {text!r}")
        first, last = int(lo), int(hi) if sep else int(lo)
        if not 1 <= first <= last <= 247:
            raise typer.BadParameter(f"--ids must lie in 1..247 (low to high), got {part!r}")
        ids.extend(i for i in range(first, last + 1) if i not in ids)
    return ids


@app.command("bus-scan")
def bus_scan(
    tcp: Annotated[str | None, typer.Option("--tcp", help="Modbus TCP gateway HOST:PORT.")] = None,
    rtu_tcp: Annotated[str | None, typer.Option("--rtu-tcp", help="Transparent RS-485 gateway HOST:PORT.")] = None,
    serial_port: Annotated[str | None, typer.Option("--serial", help="Serial port, e.g. /dev/ttyUSB0.")] = None,
    baud: Annotated[int | None, typer.Option("--baud", min=300, max=1_000_000, help="Baud rate (default 9600; DL/T 645 2400).")] = None,
    parity: Annotated[str | None, typer.Option("--parity", help="N, E or O (default N; DL/T 645 E).")] = None,
    protocol: Annotated[str, typer.Option("--protocol", help="modbus or dlt645.")] = "modbus",
    ids: Annotated[str | None, typer.Option("--ids", help="Modbus device ids to probe, e.g. 1-247 or 1,3,5-7 (default 1-247).")] = None,
    timeout: Annotated[float | None, typer.Option("--timeout", parser=_number(0.01, 60.0), help="Reply timeout per request, s (default 0.3; DL/T 645 2).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Find the devices on a bus and the profile that fits each.

    Modbus: the ids that answer a probe, and the profile whose registers read plausibly
    (voltage 80-300 V, ...).  DL/T 645: the meter's address (read-address C=13H to the
    wildcard address; one meter on the line).

    Exit 0 when the scan ran (even if nothing answered), 1 when the bus failed, 2 for bad
    arguments."""
    from drivers.reading import DeviceTimeout
    from flylead.clock import WallClock

    if protocol not in ("modbus", "dlt645"):
        raise typer.BadParameter(f"--protocol must be modbus or dlt645, got {protocol!r}")
    kind, target = _line_target(tcp, rtu_tcp, serial_port)
    baudrate, par = _line_settings(baud, parity, protocol == "dlt645", kind,
                                   "DL/T 645" if protocol == "dlt645" else None)
    if protocol == "dlt645" and ids is not None:
        raise typer.BadParameter("--ids is for Modbus; DL/T 645 finds the one meter on the line by its address")
    ids = ids or "1-247"
    clock = WallClock()
    if protocol == "dlt645":
        from drivers.dlt645 import Dlt645Client

        port = target if kind == "serial" else f"socket://{target}"
        client = Dlt645Client(port, clock=clock, baudrate=baudrate, parity=par, timeout_s=timeout or 2.0)

        async def find_meter() -> list[str]:
            async with client:
                try:
                    return [await client.read_address(device="bus-scan")]
                except DeviceTimeout:
                    return []

        addresses = _run_on_line(find_meter(), kind, target)
        if as_json:
            typer.echo(json.dumps({"protocol": "dlt645", "bus": f"{kind} {target}",
                                   "devices": [{"address": a, "profile": "dlt645"} for a in addresses]}))
        elif addresses:
            typer.echo(f"DL/T 645 meter at address {addresses[0]} ({kind} {target})")
        else:
            typer.echo(f"no DL/T 645 meter answered the read-address request ({kind} {target})")
        return

    from drivers.modbus import open_bus, scan_bus

    wanted = _parse_ids(ids)
    bus = open_bus(kind, target, clock=clock, baudrate=baudrate, parity=par)

    async def scan() -> list:
        async with bus:
            return await scan_bus(bus, wanted, timeout_s=timeout or 0.3)

    hits = _run_on_line(scan(), kind, target)
    if as_json:
        devices = []
        for hit in hits:
            best = next((m for m in hit.matches if m.profile == hit.best), None)
            devices.append({
                "device_id": hit.device_id,
                "probe": hit.probe,
                "profile": hit.best,
                "values": best.values if best else {},
                "profiles": {m.profile: {"plausible": m.plausible, "checked": m.checked, "reason": m.reason}
                             for m in hit.matches},
            })
        typer.echo(json.dumps({"protocol": "modbus", "bus": f"{kind} {target}", "devices": devices}))
        return
    if not hits:
        typer.echo(f"no Modbus device answered ids {ids} ({kind} {target})")
    for hit in hits:
        if hit.best is None:
            typer.echo(f"id {hit.device_id}: answered ({hit.probe}), no profile matches")
            for m in hit.matches:
                typer.echo(f"  {m.profile}: {m.reason}")
            continue
        best = next(m for m in hit.matches if m.profile == hit.best)
        shown = ", ".join(f"{k}={v:.6g}" for k, v in list(best.values.items())[:4])
        typer.echo(f"id {hit.device_id}: {hit.best} ({best.checked} values plausible: {shown})")


#: Most scenario seeds one ``evaluate`` takes (each is 8 households x 48 h x the poll draws;
#: 1000 seeds run for hours).
MAX_SEEDS = 1000


def _seed_range(text: str) -> list[int]:
    """``"1-20"`` or ``"1,3,5-7"`` -> seeds in order, no repeats, at most :data:`MAX_SEEDS`."""
    seeds: dict[int, None] = {}
    for part in text.split(","):
        lo, sep, hi = part.strip().partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise typer.BadParameter(f"--seeds must look like 1-20 or 1,3,5-7, got {text!r}")
        a, b = int(lo), int(hi if sep else lo)
        if b < a:
            raise typer.BadParameter(f"--seeds: the range {part.strip()} runs backwards (write {hi}-{lo})")
        if b - a + 1 + len(seeds) > MAX_SEEDS:
            raise typer.BadParameter(f"--seeds: at most {MAX_SEEDS} seeds, got more in {text!r}")
        seeds.update(dict.fromkeys(range(a, b + 1)))
    return list(seeds)


@app.command("evaluate")
def evaluate_cmd(
    seeds: Annotated[str, typer.Option("--seeds", help="Demo-scenario seeds of the sim corpora, e.g. 1-20 or 21-40.")] = "1-20",
    corpus: Annotated[str, typer.Option("--corpus", help="Comma-separated corpora: sim, sim15, uci, uci15, uci-neg, uci15-neg.")] = "sim,sim15,uci,uci15,uci-neg,uci15-neg",
    method: Annotated[str, typer.Option("--method", help="Comma-separated methods: flylead, threshold, pelt.")] = "flylead,threshold,pelt",
    uci_replicas: Annotated[int, typer.Option("--uci-replicas", min=1, max=1000, help="Replicas of the real UCI household (each 4.3 days, its own injected sessions and polls).")] = 20,
    uci_seed: Annotated[int, typer.Option("--uci-seed", min=0, help="Seed of the UCI injections and polls.")] = 1,
    uci_window: Annotated[str, typer.Option("--uci-window", help="Local hours the UCI sessions start in, FROM-TO (e.g. 19-23.5; TO may pass 24).")] = "19-23.5",
    workers: Annotated[int, typer.Option("--workers", min=1, max=64, help="Processes (one job per corpus and method).")] = 1,
    draws: Annotated[int, typer.Option("--draws", min=1, max=50, help="Poll draws per seed of the sim corpus (each polls the same homes at other instants).")] = 5,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write every figure (and each detection) as JSON here.")] = None,
) -> None:
    """Score our charging detector and two baselines (power threshold, ruptures PELT) on
    labelled corpora: session precision/recall/F1, household-day metrics, false alarms per
    100 household-weeks."""
    from flylead.evaluate import evaluate, results_table, write_json

    _check_output(json_out, "--json")
    try:
        window = tuple(float(h) for h in uci_window.split("-"))
    except ValueError:
        window = ()
    if len(window) != 2 or not 0 <= window[0] < window[1] <= 36:
        raise typer.BadParameter(f"--uci-window must be FROM-TO hours, 0 <= FROM < TO <= 36, got {uci_window!r}")
    names = list(dict.fromkeys(c.strip() for c in corpus.split(",")))    # a name given twice runs once
    methods = list(dict.fromkeys(m.strip() for m in method.split(",")))
    for option, given, listed in (("--corpus", corpus, names), ("--method", method, methods)):
        if "" in listed:
            raise typer.BadParameter(f"{option}: empty name in {given!r} (comma-separated names, none empty)")
    try:
        result = evaluate(names, seeds=_seed_range(seeds), replicas=uci_replicas, uci_seed=uci_seed,
                          uci_window_h=window, methods=methods, workers=workers, draws=draws,
                          progress=lambda line: typer.echo(f"  {line}", err=True))
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    console.print(results_table(result))
    for name, c in result["corpora"].items():
        console.print(f"[bold]{name}[/]: {c['note']}; {c['households']} households, "
                      f"{c['household_days']} household-days, {c['household_weeks']:.1f} household-weeks")
        if "look_alike_starts" in c:
            la = c["look_alike_starts"]
            split = "; ".join(f"{m} recalls {r['recall_look_alike']:.2f} of those, {r['recall_other']:.2f} of the others"
                              for m, r in c["methods"].items()
                              if r.get("recall_look_alike") is not None and r.get("recall_other") is not None)
            console.print(f"  {la['sessions']} of {la['of']} scenario sessions have a lamp, TV or computer of the "
                          f"charger's size ({la['tolerance']}) switching on 30-120 min from it: not told apart in "
                          f"active power{'; ' + split if split else ''}")
        for m, r in c["methods"].items():
            if r["status"] != "ok":
                console.print(f"  {m}: {r['status']} ({escape(str(r['error']))})")
            elif r.get("confident_starts") and c["true_sessions"]:
                cs = r["confident_starts"]
                console.print(f"  {m}: {cs['detections']} of {r['detections']} detections have a start confidence "
                              f">= {cs['threshold']}: precision {cs['precision']:.2f}, recall {cs['recall']:.2f}")
    console.print(f"evaluated in {result['seconds']:.0f} s")
    if json_out is not None:
        try:
            write_json(result, json_out)
        except OSError as exc:
            _fail(f"error: --json {json_out}: {exc.strerror or exc}", 1)
        console.print(f"figures written to {json_out}")


@app.command("explain")
def explain_cmd(
    out: Annotated[Path, typer.Option("--out", "-o", help="Picture to write: .png, .pdf or .svg.")],
    scenario_seed: Annotated[int | None, typer.Option("--scenario-seed", min=0, help="Draw a household of the demo scenario with this seed.")] = None,
    household: Annotated[str | None, typer.Option("--household", help="Household of the demo scenario (h01-h08).")] = None,
    csv_file: Annotated[Path | None, typer.Option("--csv", help="Long-format CSV: meter_id,timestamp,power_w.")] = None,
    meter: Annotated[str | None, typer.Option("--meter", help="meter_id in the CSV.")] = None,
    tz: Annotated[str | None, typer.Option("--tz", help="Compound's zone: the time axis, and naive CSV timestamps (default: UTC for those, Asia/Shanghai for the axis).")] = None,
) -> None:
    """Write a PNG of one household's load with the detected charging sessions marked
    (start, end, kWh, profile, confidence) and a close-up of each.

    Exit 0 when written, 2 for an unknown household or meter or an unreadable input."""
    from detectors import detect_sessions
    from flylead.explain import FORMATS, ExplainError, _zone, from_csv, from_scenario, render_png

    if (scenario_seed is None) == (csv_file is None):
        raise typer.BadParameter("give either --scenario-seed N --household hNN or --csv FILE --meter ID")
    if scenario_seed is not None and household is None:
        raise typer.BadParameter("--scenario-seed needs --household (h01-h08)")
    if csv_file is not None and meter is None:
        raise typer.BadParameter("--csv needs --meter ID")
    if scenario_seed is not None and meter is not None:
        raise typer.BadParameter("--meter goes with --csv; a scenario household is named by --household")
    if csv_file is not None and household is not None:
        raise typer.BadParameter("--household goes with --scenario-seed; a CSV meter is named by --meter")
    if out.suffix.lower().lstrip(".") not in FORMATS:
        _fail(f"flylead explain: --out {out}: give a file ending in {', '.join('.' + f for f in FORMATS)}")
    _check_output(out, "--out", "flylead explain: ", (csv_file,) if csv_file is not None else ())
    if tz is not None:
        try:
            _zone(tz)
        except ExplainError as exc:
            _fail(f"flylead explain: --tz: {exc}")
    try:
        if scenario_seed is not None:
            load = from_scenario(scenario_seed, household)
            if tz is not None:
                load.tz = tz
        else:
            load = from_csv(csv_file, meter, tz=tz)
        sessions = detect_sessions(load.t, load.p_w, tz=load.tz)
        render_png(load, sessions, out)
    except ExplainError as exc:
        typer.echo(f"flylead explain: {exc}", err=True)
        raise typer.Exit(2) from None
    except ValueError as exc:  # the detector refusing the readings
        typer.echo(f"flylead explain: {exc}", err=True)
        raise typer.Exit(2) from None
    except OSError as exc:
        typer.echo(f"flylead explain: {out}: {exc.strerror or exc}", err=True)
        raise typer.Exit(1) from None
    except ImportError as exc:
        typer.echo(f"flylead explain: {exc.name or exc} is missing: pip install 'flylead[eval]'", err=True)
        raise typer.Exit(1) from None
    unused = "".join(f", {reason}: {n}" for reason, n in sorted(load.unusable.items()) if n)
    used = sum(1 for v in load.p_w if math.isfinite(v))
    typer.echo(f"{out}: {load.household}, {len(sessions)} session(s) detected ({used} readings used"
               f"{unused})")


@app.command("scan-file")
def scan_file_cmd(
    input_path: Annotated[Path, typer.Argument(metavar="INPUT", help="Long-format CSV (or .csv.gz) or Parquet: meter_id, timestamp and one of power_w, energy_kwh, register_kwh.")],
    out: Annotated[Path, typer.Option("--out", help="Sessions: CSV (.csv) or JSON (.json).")],
    tz: Annotated[str | None, typer.Option(help="IANA zone of timestamps without an offset (default: UTC).")] = None,
    household_tz: Annotated[str, typer.Option(help="IANA zone of the households' local time, for the night-time feature; independent of --tz, which only says how to read timestamps without an offset.")] = "Asia/Shanghai",
    report: Annotated[Path | None, typer.Option(help="Write the row accounting (rows read, used, unusable per reason) as JSON here.")] = None,
    skip_malformed: Annotated[bool, typer.Option("--skip-malformed", help="Count malformed rows instead of stopping at the first.")] = False,
    progress: Annotated[bool | None, typer.Option("--progress/--no-progress", help="Progress bar (default: when stderr is a terminal).")] = None,
    bucket_rows: Annotated[int, typer.Option(min=10_000, help="Rows per temporary bucket: bounds the memory of the detection pass (~70 B a row).")] = 2_000_000,
    tmp_dir: Annotated[Path | None, typer.Option(help="Folder for the temporary bucket files (~20 B a row).")] = None,
) -> None:
    """Find e-bike charging sessions in a utility export, one meter's rows anywhere in the
    file, in bounded memory (docs/scan-file.md).  Exit 0 when scanned (the row accounting
    is printed), 2 for malformed input, naming file, line and column."""
    from flylead.scanfile import ScanError, ScanWriteError, scan_file

    _check_output(out, "--out", inputs=(input_path,))
    if out.suffix.lower() not in (".csv", ".json"):
        _fail(f"error: --out {out}: the sessions are written as CSV or JSON; end the name in .csv or .json")
    _check_output(report, "--report", inputs=(input_path,), outputs=(out,))
    if tmp_dir is not None:
        problem = ("does not exist" if not tmp_dir.exists() else "is not a directory" if not tmp_dir.is_dir()
                   else _folder_problem(tmp_dir))
        if problem:
            _fail(f"error: --tmp-dir {tmp_dir}: {problem}")
    show = Console(stderr=True).is_terminal if progress is None else progress
    try:
        result = scan_file(input_path, out, tz=tz, household_tz=household_tz,
                           skip_malformed=skip_malformed, bucket_rows=bucket_rows, tmp_dir=tmp_dir,
                           progress=show)
    except (ScanError, FileNotFoundError, ValueError) as exc:
        _fail(f"error: {exc}")
    except ScanWriteError as exc:
        option = "--out" if exc.role == "out" else "--tmp-dir" if tmp_dir is not None else "temporary folder"
        _fail(f"error: {option} {exc.path}: {exc.reason}", 1)
    summary = result.as_dict()
    typer.echo(f"{_plural(result.sessions, 'session')} from {_plural(result.meters, 'meter')} ({result.rows_used} of "
               f"{result.rows_read} rows used, {result.quantity}) -> {out}")
    for reason, n in summary["unusable"].items():
        if n:
            typer.echo(f"  not used: {reason}: {n}")
    for note, n in summary["notes"].items():
        if n:
            typer.echo(f"  note: {note}: {n}")
    if result.coarse_skipped:
        typer.echo(f"  warning: {_plural(result.coarse_skipped, 'coarse meter')} (interval >= 5 min) not analysed: "
                   "detectors.interval is not available", err=True)
    if report is not None:
        try:
            report.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        except OSError as exc:
            _fail(f"error: --report {report}: {exc.strerror or exc}", 1)


def _register_server_commands() -> None:
    """Server-side commands (alert desk, reports, broker credentials) live in broker/cli.py;
    that module keeps its heavy imports inside the commands."""
    from broker import cli as server_cli

    server_cli.register(app)


_register_server_commands()


def main() -> None:
    """Console-script entry point."""
    # our drivers turn pymodbus's failures into one clear error each; its own log lines
    # ("Failed to connect ...") would say the same thing again, less clearly (-v shows them)
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
