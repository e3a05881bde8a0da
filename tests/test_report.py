"""The half-monthly report: cut-off periods, and exact counts for a fixed scenario in the
campaign's time zone (Asia/Shanghai, UTC+8), as XLSX and Markdown and through the CLI."""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from agent.schema import AlertMsg
from broker.desk import DeskDB
from broker.desk.registry import parse_registry
from broker.report import COLUMNS, build_report, campaign_period, render_markdown, write_report

CST = ZoneInfo("Asia/Shanghai")
REGISTRY = {
    "villages": {"east": {"name": "East Village"}, "west": {"name": "West Village"},
                 "north": {"name": "North Village"}},
    "compounds": {
        "sunrise": {"name": "Sunrise Garden", "village": "east", "gateways": ["gw-e"], "households": ["e101", "e102"]},
        "willow": {"name": "Willow Court", "village": "west", "gateways": ["gw-w"], "households": ["w201", "w202", "w203"]},
    },
}


@pytest.mark.parametrize(("today", "period"), [
    (date(2026, 3, 5), (date(2026, 2, 15), date(2026, 2, 28))),   # February has no 29th
    (date(2026, 3, 13), (date(2026, 2, 15), date(2026, 2, 28))),
    (date(2026, 3, 14), (date(2026, 3, 1), date(2026, 3, 14))),    # a cut-off day ends its own period
    (date(2026, 3, 31), (date(2026, 3, 15), date(2026, 3, 29))),
    (date(2026, 1, 14), (date(2025, 12, 30), date(2026, 1, 14))),  # across the year
    (date(2026, 1, 5), (date(2025, 12, 15), date(2025, 12, 29))),
    (date(2024, 3, 1), (date(2024, 2, 15), date(2024, 2, 29))),    # leap year
    (date(2026, 5, 30), (date(2026, 5, 15), date(2026, 5, 29))),
])
def test_campaign_period(today: date, period: tuple[date, date]) -> None:
    assert campaign_period(today) == period


def at(day: int, hour: float = 12.0, month: int = 1) -> float:
    """UTC epoch s of 2026-{month}-{day} {hour}:00 China Standard Time."""
    return datetime(2026, month, day, int(hour), int(hour % 1 * 60), tzinfo=CST).timestamp()


_n = 0


def alert(gateway: str, household: str, start: float) -> AlertMsg:
    global _n
    _n += 1
    return AlertMsg(msg_id=f"m{_n}", gateway=gateway, alert_id=f"{gateway}:{household}:{int(start)}",
                    kind="ebike_charging", state="open", household=household, device=f"meter-{household}",
                    start=start, ts=start + 60, confidence=0.9)


def steps(desk: DeskDB, case_id: int, *times: float) -> None:
    """Apply the lifecycle actions in order, one at each of ``times``."""
    for action, t in zip(("dispatch", "verify", "rectify", "recheck", "close"), times, strict=False):
        desk.transition(case_id, action, "tester", worker="Wang", at=t)


@pytest.fixture
def scenario(tmp_path: Path) -> tuple[DeskDB, object]:
    """Cases around the period 2026-01-15 .. 2026-01-29 (CST); comments say how each counts."""
    reg = parse_registry(REGISTRY)
    desk = DeskDB(tmp_path / "desk.sqlite")
    first = desk.sync_alerts([
        alert("gw-w", "w203", at(1)),          # W0: closed on Jan 5, nothing in the period
        alert("gw-e", "e101", at(10)),         # E1: before; verified+rectified in; outstanding
        alert("gw-w", "w201", at(14, 23.98)),  # W1: 23:59 on the 14th, before; dispatched in
        alert("gw-e", "e102", at(15, 0.5)),    # E2: 00:30 on the 15th (the 14th in UTC): in
        alert("gw-w", "w202", at(20)),         # W2: in; closed after the period: outstanding
        alert("gw-e", "x999", at(20)),         # not in the registry
    ], reg)
    c = {f"{x.household}": x.id for x in first}
    steps(desk, c["w203"], at(2), at(3), at(4), at(5), at(5, 13))
    steps(desk, c["e101"], at(11), at(16), at(20), at(30))
    steps(desk, c["w201"], at(15))
    steps(desk, c["e102"], at(15, 9), at(16), at(17), at(25), at(26))
    steps(desk, c["w202"], at(20, 13), at(21), at(22), at(29, 22), at(30, 1))
    later = desk.sync_alerts([
        alert("gw-e", "e102", at(28)),         # E3: rebound of E2 (closed on the 26th)
        alert("gw-e", "e101", at(29, 23.5)),   # E4: 23:30 on the 29th: in; E1 open: no rebound
        alert("gw-e", "e102", at(30, 0.5)),    # E5: after the period, counted nowhere
    ], reg)
    assert [x.rebound for x in later] == [True, False, False]
    return desk, reg


EXPECTED = {
    "East Village": {"alerts": 3, "rebounds": 1, "dispatched": 1, "verified": 2, "rectified": 2,
                     "rechecked": 1, "closed": 1, "outstanding": 3},
    "North Village": dict.fromkeys(COLUMNS, 0),
    "West Village": {"alerts": 1, "rebounds": 0, "dispatched": 2, "verified": 1, "rectified": 1,
                     "rechecked": 1, "closed": 0, "outstanding": 2},
    "(not in registry)": {"alerts": 1, "rebounds": 0, "dispatched": 0, "verified": 0, "rectified": 0,
                          "rechecked": 0, "closed": 0, "outstanding": 1},
}
TOTAL = {"alerts": 5, "rebounds": 1, "dispatched": 3, "verified": 3, "rectified": 3, "rechecked": 2,
         "closed": 1, "outstanding": 6}


def test_counts_for_a_fixed_scenario(scenario) -> None:  # noqa: ANN001
    desk, reg = scenario
    rep = build_report(desk, date(2026, 1, 15), date(2026, 1, 29), reg)
    assert {r.name: r.counts for r in rep.rows} == EXPECTED
    assert [r.name for r in rep.rows] == list(EXPECTED)  # by name, unassigned last
    assert rep.total == TOTAL
    assert [(c["village"], c["household"], c["state"]) for c in rep.outstanding_cases] == [
        ("East Village", "e101", "rectified"), ("East Village", "e102", "new"),
        ("East Village", "e101", "new"), ("West Village", "w201", "dispatched"),
        ("West Village", "w202", "rechecked"), ("(not in registry)", "x999", "new")]
    # the next period: E5 comes in, W2 and E1's steps of the 30th count there
    nxt = build_report(desk, date(2026, 1, 30), date(2026, 2, 14), reg)
    assert {r.name: (r.counts["alerts"], r.counts["closed"], r.counts["rechecked"], r.counts["outstanding"])
            for r in nxt.rows} == {"East Village": (1, 0, 1, 4), "North Village": (0, 0, 0, 0),
                                   "West Village": (0, 1, 0, 1), "(not in registry)": (0, 0, 0, 1)}
    with pytest.raises(ValueError, match="ends .2026-01-14. before it starts .2026-01-15."):
        build_report(desk, date(2026, 1, 15), date(2026, 1, 14), reg)


def test_markdown_and_xlsx(scenario, tmp_path: Path) -> None:  # noqa: ANN001
    from openpyxl import load_workbook

    desk, reg = scenario
    rep = build_report(desk, date(2026, 1, 15), date(2026, 1, 29), reg,
                       now=datetime(2026, 1, 30, 9, 0, tzinfo=CST))
    md = render_markdown(rep)
    assert "Period: **2026-01-15 to 2026-01-29** (both days included, Asia/Shanghai time)." in md
    assert "Generated 2026-01-30 09:00 CST." in md
    lines = md.splitlines()
    head = lines.index("| Village | Alerts | Rebounds | Dispatched | Verified | Rectified | Re-checked | Closed | Outstanding |")
    assert lines[head:head + 7] == [
        "| Village | Alerts | Rebounds | Dispatched | Verified | Rectified | Re-checked | Closed | Outstanding |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        "| East Village | 3 | 1 | 1 | 2 | 2 | 1 | 1 | 3 |",
        "| North Village | 0 | 0 | 0 | 0 | 0 | 0 | 0 | 0 |",
        "| West Village | 1 | 0 | 2 | 1 | 1 | 1 | 0 | 2 |",
        "| (not in registry) | 1 | 0 | 0 | 0 | 0 | 0 | 0 | 1 |",
        "| **Total** | **5** | **1** | **3** | **3** | **3** | **2** | **1** | **6** |",
    ]
    outstanding = [ln for ln in lines[head + 7:] if ln.startswith("| ") and ln[2].isdigit()]
    assert len(outstanding) == 6 and outstanding[0].startswith("| 2 | East Village | Sunrise Garden | e101 |")
    out = tmp_path / "r.xlsx"
    write_report(rep, out)
    ws = load_workbook(out)["Report"]
    rows = [tuple(c.value for c in r) for r in ws.iter_rows(min_row=5)]
    assert rows == [
        ("Village", *COLUMNS.values()),
        ("East Village", 3, 1, 1, 2, 2, 1, 1, 3),
        ("North Village", 0, 0, 0, 0, 0, 0, 0, 0),
        ("West Village", 1, 0, 2, 1, 1, 1, 0, 2),
        ("(not in registry)", 1, 0, 0, 0, 0, 0, 0, 1),
        ("Total", 5, 1, 3, 3, 3, 2, 1, 6),
    ]
    assert load_workbook(out)["Outstanding"].max_row == 1 + 6
    with pytest.raises(ValueError, match="extension must be .xlsx or .md"):
        write_report(rep, tmp_path / "r.csv")


def test_report_command(scenario, tmp_path: Path) -> None:  # noqa: ANN001
    from typer.testing import CliRunner

    from flylead.cli import app

    desk, _ = scenario
    registry = tmp_path / "registry.toml"
    registry.write_text(
        "[villages.east]\nname = \"East Village\"\n[villages.west]\nname = \"West Village\"\n"
        "[villages.north]\nname = \"North Village\"\n"
        "[compounds.sunrise]\nvillage = \"east\"\ngateways = [\"gw-e\"]\nhouseholds = [\"e101\", \"e102\"]\n"
        "[compounds.willow]\nvillage = \"west\"\ngateways = [\"gw-w\"]\nhouseholds = [\"w201\", \"w202\", \"w203\"]\n")
    runner = CliRunner()
    for name in ("report.md", "report.xlsx"):
        r = runner.invoke(app, ["report", "--from", "2026-01-15", "--to", "2026-01-29", "--out",
                                str(tmp_path / name), "--desk-db", desk.path, "--registry", str(registry)])
        assert r.exit_code == 0, r.output
        assert r.stdout.strip() == f"{tmp_path / name}: 2026-01-15 to 2026-01-29, 4 villages, 5 alerts, 6 outstanding"
    assert "| East Village | 3 | 1 | 1 | 2 | 2 | 1 | 1 | 3 |" in (tmp_path / "report.md").read_text()
    bad = runner.invoke(app, ["report", "--from", "15.1.2026", "--to", "2026-01-29", "--out",
                              str(tmp_path / "x.md"), "--desk-db", desk.path])
    assert bad.exit_code == 2 and "--from must be a date YYYY-MM-DD" in bad.output
    # one end alone is refused (it used to run to the period of today, or back to the last cut-off)
    r = runner.invoke(app, ["report", "--to", "2026-01-29", "--out", str(tmp_path / "d.md"), "--desk-db", desk.path])
    assert r.exit_code == 2 and "give both --from and --to, or neither" in r.output
    for first, last in (("9999-12-15", "9999-12-31"), ("0001-01-01", "0001-01-05")):
        r = runner.invoke(app, ["report", "--from", first, "--to", last, "--out", str(tmp_path / "y.md"),
                                "--desk-db", desk.path])
        assert r.exit_code == 2 and "the year must be 2000-2099" in r.output and "Traceback" not in r.output
