"""``flylead piles utilisation``: pile use per compound, pile and port, for the operator.

Registered by :func:`broker.cli.register`; the work is in :mod:`broker.piles`.
"""

from __future__ import annotations

import csv
import io
import json
import time
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import typer

__all__ = ["piles_app", "parse_period"]

piles_app = typer.Typer(no_args_is_help=True, help="Charging piles: utilisation per compound, pile and port.")

#: Default period: the last 7 days up to now.
DEFAULT_DAYS = 7


def _fail(message: str) -> typer.Exit:
    typer.echo(message, err=True)
    return typer.Exit(2)


def _moment(text: str, tz: ZoneInfo, what: str, *, day_end: bool) -> float:
    """UTC epoch s of a date (local midnight; the next one with ``day_end``: the day is
    included) or an ISO 8601 time (local time unless it carries an offset)."""
    from broker.desk.registry import CAMPAIGN_YEARS

    try:
        day = date.fromisoformat(text) if len(text) == 10 else None
        dt = datetime.fromisoformat(text.replace("Z", "+00:00")) if day is None else None
    except ValueError:
        raise _fail(f"{what} must be a date YYYY-MM-DD or an ISO 8601 time, got {text!r}") from None
    if not CAMPAIGN_YEARS[0] <= (day or dt).year <= CAMPAIGN_YEARS[1]:
        raise _fail(f"{what} {text}: the year must be {CAMPAIGN_YEARS[0]}-{CAMPAIGN_YEARS[1]}")
    if day is not None:
        day += timedelta(days=1 if day_end else 0)
        return datetime(day.year, day.month, day.day, tzinfo=tz).timestamp()
    return (dt if dt.tzinfo else dt.replace(tzinfo=tz)).timestamp()


def parse_period(first: str | None, last: str | None, tz: ZoneInfo, now: float) -> tuple[float, float]:
    """[start, end) UTC epoch s from ``--from``/``--to`` (dates include the whole day);
    defaults: the :data:`DEFAULT_DAYS` days up to ``now``."""
    end = _moment(last, tz, "--to", day_end=True) if last else now
    start = _moment(first, tz, "--from", day_end=False) if first else end - DEFAULT_DAYS * 86400.0
    if not end > start:
        raise _fail(f"--from must be before --to (got {first or 'default'} .. {last or 'now'})")
    return start, end


@piles_app.command("utilisation")
def utilisation_cmd(
    store: Annotated[str, typer.Option("--store", help="Store: sqlite:///PATH (or a path) or influxdb://HOST:PORT/BUCKET of a VictoriaMetrics.")] = "sqlite:///flylead.sqlite",
    first: Annotated[str | None, typer.Option("--from", help="First day (YYYY-MM-DD, local time) or ISO 8601 time. Default: 7 days before --to.")] = None,
    last: Annotated[str | None, typer.Option("--to", help="Last day, included (YYYY-MM-DD), or ISO 8601 end time. Default: now.")] = None,
    registry: Annotated[Path | None, typer.Option("--registry", help="Registry (TOML): compounds, their gateways and villages, time zone.")] = None,
    tz_name: Annotated[str | None, typer.Option("--tz", help="Time zone of dates (default: the registry's, else Asia/Shanghai).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of a table.")] = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="CSV (one row per compound, pile and port) instead of a table.")] = False,
) -> None:
    """Pile utilisation per compound, pile and port over a period: sessions, kWh, busy
    hours (port-hours with a session running) and utilisation (busy / port-hours), from
    the pile telemetry in the store."""
    from broker.desk.registry import DEFAULT_TZ, RegistryError, load_registry
    from broker.piles import LOOKBACK_S, pile_utilisation, read_pile_polls, rows
    from broker.store import StoreError

    if as_json and as_csv:
        raise _fail("give --json or --csv, not both")
    reg = None
    if registry is not None:
        try:
            reg = load_registry(registry)
        except RegistryError as exc:
            raise _fail(str(exc)) from None
    try:
        tz = ZoneInfo(tz_name or (reg.tz if reg else DEFAULT_TZ))
    except (ZoneInfoNotFoundError, ValueError):
        raise _fail(f"--tz {tz_name!r} is not a known time zone") from None
    start, end = parse_period(first, last, tz, time.time())
    try:
        polls = read_pile_polls(store, start - LOOKBACK_S, end)
        compounds = pile_utilisation(polls, start, end, reg)
    except (StoreError, ValueError) as exc:
        raise _fail(f"--store: {exc}") from None
    flat = rows(compounds)
    period = (datetime.fromtimestamp(start, tz).isoformat(), datetime.fromtimestamp(end, tz).isoformat())
    if as_json:
        doc = {"start": period[0], "end": period[1], "compounds": [
            {"compound": c.compound, "name": c.name, "village": c.village, "ports": c.ports,
             "sessions": c.sessions, "energy_kwh": c.energy_kwh, "busy_hours": c.busy_hours,
             "port_hours": c.port_hours, "utilisation_pct": round(100 * c.share, 2),
             "piles": [{"gateway": p.gateway, "pile": p.pile, "ports": p.ports, "sessions": p.sessions,
                        "energy_kwh": p.energy_kwh, "busy_hours": p.busy_hours, "port_hours": p.port_hours,
                        "utilisation_pct": round(100 * p.share, 2),
                        "per_port": [{"port": q.port, "sessions": q.sessions, "energy_kwh": q.energy_kwh,
                                      "busy_hours": q.busy_hours, "utilisation_pct": round(100 * q.share, 2)}
                                     for q in p.per_port]} for p in c.piles]} for c in compounds]}
        typer.echo(json.dumps(doc, indent=2, ensure_ascii=False))
        return
    if as_csv:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(flat[0]) if flat else ["level"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(flat)
        typer.echo(buf.getvalue(), nl=False)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Pile utilisation {period[0]} .. {period[1]}")
    for col, justify in (("compound", "left"), ("pile", "left"), ("port", "right"), ("sessions", "right"),
                         ("kWh", "right"), ("busy h", "right"), ("utilisation", "right")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for r in flat:
        style = {"compound": "bold", "pile": "", "port": "dim"}[r["level"]]
        table.add_row(r["compound"] if r["level"] == "compound" else "", r["pile"], str(r["port"]),
                      str(r["sessions"]), f"{r['energy_kwh']:.3f}", f"{r['busy_hours']:.2f}",
                      f"{r['utilisation_pct']:.1f} %", style=style)
    if not flat:
        typer.echo(f"no pile telemetry in {store} for {period[0]} .. {period[1]}")
        return
    Console(width=120).print(table)
