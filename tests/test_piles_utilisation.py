"""Pile utilisation for operators from stored pile telemetry: broker/piles.py, the
``flylead piles utilisation`` command and the desk's /piles page.

Two piles, polled every minute, written as the agent's telemetry messages to the real
stores (SQLite file, VictoriaMetrics on 127.0.0.1:8428).  Period: the local day
2026-11-20 (Asia/Shanghai), 24 h.  Expected values by hand:

pile-1 (gw-P, compound sunrise, village east), 4 ports, 96 port-hours:
  port 1  T0-30 min .. T0+2 h (began before the period)   150 charging polls  0.300 kWh  2 h in the period
  port 2  T0+1 h .. T0+2 h, T0+10 h .. T0+14 h             60 + 240 polls      0.600 kWh  5 h
  port 3  idle
  port 4  T0+23 h .. still charging at the last poll (T0+23:59)   not ended: 0 kWh, 59 min
  total   4 sessions, 0.9 kWh, 7.98333 h, 8.316 %
pile-9 (gw-Q, compound lotus, village west), 2 ports: port 2 T0 .. T0+12 h, 720 polls,
  1.44 kWh, 12 h of 48 = 25 %.
"""

from __future__ import annotations

import csv
import io
import json
import re
import urllib.request
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agent.schema import TelemetryMsg
from broker.desk.db import DeskDB
from broker.desk.registry import parse_registry
from broker.piles import LOOKBACK_S, pile_polls_sqlite, pile_polls_victoria, pile_utilisation, read_pile_polls
from broker.store import InfluxStore, SqliteStore, StoreError
from flylead.cli import app

T0 = 1_795_104_000.0  # 2026-11-20T00:00:00+08:00
H = 3600.0
KWH_PER_POLL = 0.002  # 120 W for a minute


def charging_spans(uid: str) -> dict[tuple[str, str, int], list[tuple[float, float]]]:
    """(gateway, pile, port) -> [(first charging poll, first idle poll)]; None: still charging."""
    return {
        (f"gw-P{uid}", "pile-1", 1): [(T0 - 1800, T0 + 2 * H)],
        (f"gw-P{uid}", "pile-1", 2): [(T0 + H, T0 + 2 * H), (T0 + 10 * H, T0 + 14 * H)],
        (f"gw-P{uid}", "pile-1", 4): [(T0 + 23 * H, T0 + 48 * H)],
        (f"gw-Q{uid}", "pile-9", 2): [(T0, T0 + 12 * H)],
    }


def pile_messages(uid: str) -> list[TelemetryMsg]:
    """One telemetry message a minute per pile from T0 - 1 h to T0 + 24 h (excluded)."""
    spans = charging_spans(uid)
    ports = {(f"gw-P{uid}", "pile-1"): 4, (f"gw-Q{uid}", "pile-9"): 2}
    out = []
    for (gw, pile), n in ports.items():
        counters = {p: 10.0 * p for p in range(1, n + 1)}
        t, seq = T0 - H, 0
        while t < T0 + 24 * H:
            values: dict[str, float] = {}
            for port in range(1, n + 1):
                on = any(a <= t < b for a, b in spans.get((gw, pile, port), []))
                if on:
                    counters[port] = round(counters[port] + KWH_PER_POLL, 6)
                values[f"port_state.{port}"] = 2.0 if on else 1.0
                values[f"active_power.{port}"] = 120.0 if on else 0.0
                values[f"energy_import.{port}"] = counters[port]
            out.append(TelemetryMsg(msg_id=f"{gw}:{seq}", gateway=gw, device=pile, ts=t, values=values))
            t += 60.0
            seq += 1
    return out


def registry(uid: str):  # noqa: ANN201
    return parse_registry({
        "villages": {"east": {"name": "East Village"}, "west": {"name": "West Village"}},
        "compounds": {"sunrise": {"name": "Sunrise Garden", "village": "east", "gateways": [f"gw-P{uid}"]},
                      "lotus": {"name": "Lotus Court", "village": "west", "gateways": [f"gw-Q{uid}"]}},
    })


@pytest.fixture
def store_file(tmp_path: Path, uid: str) -> Path:
    path = tmp_path / "flylead.sqlite"
    store = SqliteStore(path)
    store.write(pile_messages(uid))
    store.write([TelemetryMsg(msg_id="m:1", gateway=f"gw-P{uid}", device="meter-1", ts=T0 + 60,
                              values={"active_power": 100.0})])  # not a pile
    store.close()
    return path


def check(compounds, uid: str) -> None:
    lotus, sunrise = compounds  # sorted by compound id
    assert (sunrise.compound, sunrise.village, sunrise.ports, sunrise.sessions) == ("sunrise", "east", 4, 4)
    assert sunrise.energy_kwh == pytest.approx(0.9)
    assert sunrise.busy_hours == pytest.approx(2 + 5 + 59 / 60, abs=1e-6)
    assert sunrise.port_hours == 96.0
    assert sunrise.share == pytest.approx((7 + 59 / 60) / 96, abs=1e-6)
    (pile,) = sunrise.piles
    assert (pile.gateway, pile.pile, pile.ports) == (f"gw-P{uid}", "pile-1", 4)
    got = [(q.port, q.sessions, q.energy_kwh, q.busy_hours) for q in pile.per_port]
    assert got == [(1, 1, pytest.approx(0.3), 2.0), (2, 2, pytest.approx(0.6), 5.0), (3, 0, 0.0, 0.0),
                   (4, 1, 0.0, pytest.approx(59 / 60, abs=1e-6))]
    assert [round(q.share * 100, 1) for q in pile.per_port] == [8.3, 20.8, 0.0, 4.1]
    assert (lotus.compound, lotus.village, lotus.ports, lotus.sessions, lotus.busy_hours, lotus.share) == (
        "lotus", "west", 2, 1, 12.0, 0.25)
    assert lotus.energy_kwh == pytest.approx(1.44)


def test_utilisation_from_the_sqlite_store(store_file: Path, uid: str) -> None:
    polls = pile_polls_sqlite(store_file, T0 - LOOKBACK_S, T0 + 24 * H)
    assert sorted(polls) == [(f"gw-P{uid}", "pile-1"), (f"gw-Q{uid}", "pile-9")]  # the meter is not a pile
    assert len(polls[(f"gw-P{uid}", "pile-1")]) == 25 * 60
    check(pile_utilisation(polls, T0, T0 + 24 * H, registry(uid)), uid)
    # without a registry: one compound per gateway, no village
    plain = pile_utilisation(polls, T0, T0 + 24 * H)
    assert [(c.compound, c.village, c.sessions) for c in plain] == [
        (f"(gateway gw-P{uid})", None, 4), (f"(gateway gw-Q{uid})", None, 1)]


def test_utilisation_from_victoriametrics(victoria: str, uid: str) -> None:
    store = InfluxStore(victoria, token="unused", org="flylead", bucket="flylead")
    try:
        store.write(pile_messages(uid))
    finally:
        store.close()
    urllib.request.urlopen(f"{victoria}/internal/force_flush", timeout=5).read()
    polls = pile_polls_victoria(victoria, T0 - LOOKBACK_S, T0 + 24 * H)
    mine = {k: v for k, v in polls.items() if k[0].endswith(uid)}  # the server keeps other runs' data
    assert len(mine[(f"gw-P{uid}", "pile-1")]) == 25 * 60
    check(pile_utilisation(mine, T0, T0 + 24 * H, registry(uid)), uid)


def test_influxdb2_without_export_api_is_a_clear_error() -> None:
    with pytest.raises(StoreError, match="cannot read pile telemetry from http://127.0.0.1:1"):
        pile_polls_victoria("http://127.0.0.1:1", T0, T0 + H)
    with pytest.raises(ValueError, match="use sqlite:///PATH or influxdb://"):
        read_pile_polls("postgres://x/y", T0, T0 + H)
    with pytest.raises(StoreError, match="does not exist"):
        read_pile_polls("sqlite:///no/such/file.sqlite", T0, T0 + H)


def _cli(*args: str):  # noqa: ANN202
    return CliRunner().invoke(app, ["piles", "utilisation", *args])


def test_cli_json_csv_and_table(store_file: Path, tmp_path: Path, uid: str) -> None:
    reg = tmp_path / "registry.toml"
    reg.write_text(f"""
[villages.east]
name = "East Village"
[villages.west]
name = "West Village"
[compounds.sunrise]
name = "Sunrise Garden"
village = "east"
gateways = ["gw-P{uid}"]
[compounds.lotus]
village = "west"
gateways = ["gw-Q{uid}"]
""")
    common = ["--store", f"sqlite:///{store_file}", "--from", "2026-11-20", "--to", "2026-11-20", "--registry", str(reg)]
    out = _cli(*common, "--json")
    assert out.exit_code == 0, out.output
    doc = json.loads(out.stdout)
    assert (doc["start"], doc["end"]) == ("2026-11-20T00:00:00+08:00", "2026-11-21T00:00:00+08:00")
    sunrise = doc["compounds"][1]  # compounds sorted by id: lotus, sunrise
    assert (sunrise["compound"], sunrise["sessions"], sunrise["utilisation_pct"]) == ("sunrise", 4, 8.32)
    assert [(p["port"], p["sessions"], p["busy_hours"], p["utilisation_pct"])
            for p in sunrise["piles"][0]["per_port"]] == [(1, 1, 2.0, 8.33), (2, 2, 5.0, 20.83), (3, 0, 0.0, 0.0),
                                                          (4, 1, 0.983333, 4.1)]
    out = _cli(*common, "--csv")
    assert out.exit_code == 0, out.output
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert [(r["level"], r["compound"], r["pile"], r["port"], r["sessions"], r["energy_kwh"], r["busy_hours"],
             r["utilisation_pct"]) for r in rows] == [
        ("compound", "lotus", "", "", "1", "1.44", "12.0", "25.0"),
        ("pile", "lotus", "pile-9", "", "1", "1.44", "12.0", "25.0"),
        ("port", "lotus", "pile-9", "1", "0", "0.0", "0.0", "0.0"),
        ("port", "lotus", "pile-9", "2", "1", "1.44", "12.0", "50.0"),
        ("compound", "sunrise", "", "", "4", "0.9", "7.98", "8.3"),
        ("pile", "sunrise", "pile-1", "", "4", "0.9", "7.98", "8.3"),
        ("port", "sunrise", "pile-1", "1", "1", "0.3", "2.0", "8.3"),
        ("port", "sunrise", "pile-1", "2", "2", "0.6", "5.0", "20.8"),
        ("port", "sunrise", "pile-1", "3", "0", "0.0", "0.0", "0.0"),
        ("port", "sunrise", "pile-1", "4", "1", "0.0", "0.98", "4.1"),
    ]
    out = _cli(*common)
    assert out.exit_code == 0, out.output
    lines = [re.sub(r"\s+", " ", line.replace("│", " ")).strip() for line in out.stdout.splitlines()]
    assert "sunrise 4 0.900 7.98 8.3 %" in lines
    assert "pile-1 2 2 0.600 5.00 20.8 %" in lines
    bad = _cli("--store", f"sqlite:///{store_file}", "--from", "20.11.2026")
    assert bad.exit_code == 2 and "--from must be a date YYYY-MM-DD or an ISO 8601 time, got '20.11.2026'" in bad.output
    for first, last in (("9999-12-15", "9999-12-31"), ("0001-01-01", "0001-01-02")):
        far = _cli("--store", f"sqlite:///{store_file}", "--from", first, "--to", last)
        assert far.exit_code == 2 and "the year must be 2000-2099" in far.output
    both = _cli(*common, "--json", "--csv")
    assert both.exit_code == 2 and "not both" in both.output


def test_desk_page_is_scoped_to_the_village(store_file: Path, tmp_path: Path, uid: str) -> None:
    from broker.desk.app import create_app

    desk = DeskDB(tmp_path / "desk.sqlite")
    desk.add_user("office", "office-password", "office")
    desk.add_user("east", "east-password", "village", "east")
    flask_app = create_app(desk, registry(uid), store_path=store_file, config={"WTF_CSRF_ENABLED": False})
    client = flask_app.test_client()
    assert client.get("/piles").status_code == 302  # login first
    client.post("/login", data={"username": "office", "password": "office-password"})
    page = client.get("/piles?from=2026-11-20&to=2026-11-20").get_data(as_text=True)
    assert 'data-compound="sunrise"' in page and 'data-compound="lotus"' in page
    assert re.search(r'data-row="port" data-pile="pile-1" data-port="2"><td></td><td>2</td><td>2</td>\s*'
                     r'<td>0.60</td><td>5.0</td><td>20.8 %</td>', page)
    assert client.get("/piles?from=2026-11-21&to=2026-11-20").status_code == 400
    assert client.get("/piles?from=9999-12-31&to=9999-12-31").status_code == 400
    assert client.get("/piles?from=yesterday").status_code == 400
    east = flask_app.test_client()
    east.post("/login", data={"username": "east", "password": "east-password"})
    page = east.get("/piles?from=2026-11-20&to=2026-11-20").get_data(as_text=True)
    assert 'data-compound="sunrise"' in page and "lotus" not in page and "pile-9" not in page
    assert "7.98333" not in page and "<td>8.3 %</td>" in page
