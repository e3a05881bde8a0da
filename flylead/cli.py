"""The ``flylead`` command line (typer)."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="flylead: find flying-lead e-bike charging and unsafe wiring, and alert the people who act on it.",
)
console = Console()


def _host_port(text: str, what: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise typer.BadParameter(f"{what} must be HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def _logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


@app.command()
def demo(
    broker: Annotated[str | None, typer.Option(help="Use this MQTT broker (HOST:PORT) instead of the embedded one.")] = None,
    store: Annotated[str | None, typer.Option(help="Store URL: sqlite:///FILE or influxdb://HOST:PORT/BUCKET?org=..&token=.. (default: temporary SQLite).")] = None,
    hours: Annotated[float, typer.Option(min=1, help="Simulated hours to run.")] = 48.0,
    speed: Annotated[float, typer.Option(min=1, help="Simulated seconds per real second (1440 = a day a minute).")] = 1440.0,
    seed: Annotated[int, typer.Option(help="Scenario seed.")] = 1,
    report: Annotated[Path | None, typer.Option(help="Write alerts, truth and metrics as JSON here.")] = None,
    mqtt_protocol: Annotated[str, typer.Option("--mqtt-protocol", help="3.1.1 or 5 (the embedded broker speaks 3.1.1).")] = "3.1.1",
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run 8 simulated households (two charging e-bikes, one replaying a real household)
    through meters, agent, MQTT, ingest and store; print the alerts and precision/recall."""
    from flylead.demo import DemoOptions, run_demo, write_report

    _logging(verbose)
    opts = DemoOptions(
        seed=seed, hours=hours, speed=speed, store_url=store, mqtt_protocol=mqtt_protocol,
        broker=_host_port(broker, "--broker") if broker else None,
    )
    console.print(
        f"flylead demo: {hours:g} simulated hours at {speed:g}x "
        f"(about {hours * 3600 / speed:.0f} s), seed {seed}, "
        f"broker {'embedded' if broker is None else broker}, store {store or 'embedded SQLite'}"
    )
    result = asyncio.run(run_demo(opts))
    table = Table(title="Charging alerts (from the store)")
    for col in ("kind", "household", "start", "end", "kWh", "confidence"):
        table.add_column(col)
    for a in result.alerts:
        table.add_row(a["kind"], a["household"], a["start"], a["end"] or "",
                      f"{a['energy_kwh']:.2f}", f"{a['confidence']:.2f}")
    console.print(table)
    truth = Table(title="Ground truth (simulated charging sessions)")
    for col in ("household", "start", "end", "kWh"):
        truth.add_column(col)
    for s in result.truth:
        truth.add_row(s["household"], s["start"], s["end"], f"{s['energy_kwh']:.2f}")
    console.print(truth)
    m = result.metrics
    console.print(f"precision {m['precision']:.3f}  recall {m['recall']:.3f}  f1 {m['f1']:.3f}")
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
    typer.echo(f"{path}: ok (gateway {cfg.gateway}, {len(cfg.buses)} buses, {len(cfg.devices)} devices)")


@app.command("agent")
def agent_cmd(
    config: Annotated[Path, typer.Option("--config", "-c", help="Agent configuration (TOML).")],
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run the gateway agent on the wall clock until SIGTERM or Ctrl-C."""
    from agent.config import ConfigError, load_config
    from agent.publisher import Publisher, PublishError
    from agent.runner import Agent
    from flylead.clock import WallClock

    _logging(verbose)
    try:
        cfg = load_config(config)
    except ConfigError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    publisher = Publisher(cfg.gateway, cfg.mqtt)
    try:
        publisher.connect()
    except PublishError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None

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
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Subscribe to telemetry and alerts and write them to the store until SIGTERM."""
    import threading

    from broker import Ingest, open_store

    _logging(verbose)
    host, port = _host_port(broker, "--broker")
    st = open_store(store)
    ing = Ingest(st, host, port, protocol=mqtt_protocol)
    ing.start()
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


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
