"""The alert desk and the report against hostile or broken input: control characters and
formulas in grid-worker names, HTML in names, wrong alert messages from a gateway, village
users of no real village, and sessions that must end (password change, logout)."""

from __future__ import annotations

import sqlite3
import zipfile
from datetime import date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from broker import SqliteStore
from broker.desk import UNASSIGNED, DeskDB, DeskError, load_registry, sync_from_store
from broker.desk.registry import parse_registry
from broker.report import build_report, render_markdown, write_report
from tests.conftest import T0, MsgFactory
from tests.test_desk import Scenario, _csrf, _login, build_scenario

CST = ZoneInfo("Asia/Shanghai")


@pytest.fixture
def scenario(tmp_path: Path) -> Scenario:
    return build_scenario(tmp_path)


def _app(scenario: Scenario, **kwargs):  # noqa: ANN003, ANN202
    from broker.desk import create_app

    app = create_app(scenario.desk, load_registry(scenario.registry_path), store_path=scenario.store_path, **kwargs)
    app.config["TESTING"] = True
    return app


def _report_rows(path: Path, sheet: str) -> list[tuple]:
    from openpyxl import load_workbook

    return [tuple(c.value for c in r) for r in load_workbook(path)[sheet].iter_rows()]


# -- 1. control characters in worker and note ---------------------------------------------------


def test_desk_form_refuses_control_characters_naming_the_field(scenario: Scenario) -> None:
    client = _app(scenario).test_client()
    _login(client, "east")
    cid = scenario.cases["e101"]
    token = _csrf(client.get(f"/case/{cid}").get_data(as_text=True))
    url = f"/case/{cid}/action"
    bad = client.post(url, data={"action": "dispatch", "worker": "bad\x1bname\x07", "csrf_token": token})
    assert bad.status_code == 400
    assert "Grid worker: the name must not contain control characters" in bad.get_data(as_text=True)
    note = client.post(url, data={"action": "dispatch", "worker": "Wang", "note": "left\x00over",
                                  "csrf_token": token})
    assert note.status_code == 400
    assert "Note: the note (line breaks and tabs are fine) must not contain control characters" in note.get_data(as_text=True)
    case = scenario.desk.case(cid)
    assert (case.state, case.worker) == ("new", None)
    # line breaks and tabs in a note are fine
    ok = client.post(url, data={"action": "dispatch", "worker": "Wang", "note": "line 1\r\nline\t2",
                                "csrf_token": token})
    assert ok.status_code == 303
    assert scenario.desk.case(cid).state == "dispatched"
    assert scenario.desk.events(cid)[-1].note == "line 1\r\nline\t2"


def test_transition_refuses_control_characters(scenario: Scenario) -> None:
    cid = scenario.cases["e101"]
    with pytest.raises(DeskError, match=f"case {cid}: the grid worker name must not contain control characters"):
        scenario.desk.transition(cid, "dispatch", "east", worker="bad\x1bname\x07")
    with pytest.raises(DeskError, match=f"case {cid}: the note must not contain control characters"):
        scenario.desk.transition(cid, "dispatch", "east", worker="Wang", note="a\x0bb")
    with pytest.raises(DeskError, match="control characters"):
        scenario.desk.transition(cid, "dispatch", "east", worker="Wa\x85ng")  # C1 (NEL)
    assert scenario.desk.case(cid).state == "new"


def _dispatch_raw(scenario: Scenario, household: str, worker: str) -> int:
    """Dispatch a case and then set its worker straight in the database (data written by an
    earlier version, which took any text)."""
    cid = scenario.cases[household]
    scenario.desk.transition(cid, "dispatch", "office", worker="placeholder", at=T0 + 3000)
    with sqlite3.connect(scenario.desk.path) as db:
        db.execute("UPDATE cases SET worker = ? WHERE id = ?", (worker, cid))
    return cid


def test_xlsx_report_cleans_control_characters_already_stored(scenario: Scenario) -> None:
    from typer.testing import CliRunner

    from flylead.cli import app

    _dispatch_raw(scenario, "e101", "bad\x1bname\x07")
    out = scenario.dir / "r.xlsx"
    day = datetime.fromtimestamp(T0, CST).date()
    r = CliRunner().invoke(app, ["report", "--db", scenario.desk.path, "--registry", str(scenario.registry_path),
                                 "--from", day.isoformat(), "--to", day.isoformat(), "--out", str(out)])
    assert r.exit_code == 0, r.output
    rows = _report_rows(out, "Outstanding")
    e101 = next(row for row in rows if row[3] == "e101")
    assert e101[7] == "bad\ufffdname\ufffd"
    md = render_markdown(build_report(scenario.desk, day, day, load_registry(scenario.registry_path)))
    assert "| bad name  |" in md and "\x1b" not in md and "\x07" not in md


# -- 2. formulas ----------------------------------------------------------------------------------


@pytest.mark.parametrize("worker", [
    '=HYPERLINK("http://evil.example/x","Click")', "+1+1", "-2+3", "@SUM(A1:A2)", "\t=1+1", " =1+1"])
def test_xlsx_writes_formula_like_text_as_text(scenario: Scenario, worker: str) -> None:
    cid = _dispatch_raw(scenario, "e101", worker)
    assert scenario.desk.case(cid).worker == worker
    day = datetime.fromtimestamp(T0, CST).date()
    out = scenario.dir / "f.xlsx"
    write_report(build_report(scenario.desk, day, day, load_registry(scenario.registry_path)), out)
    from openpyxl import load_workbook

    ws = load_workbook(out)["Outstanding"]
    (cell,) = [r[7] for r in ws.iter_rows(min_row=2) if r[3].value == "e101"]
    assert cell.value == worker.replace("\t", "\ufffd")
    assert cell.data_type == "s" and cell.quotePrefix
    with zipfile.ZipFile(out) as z:
        sheets = [n for n in z.namelist() if n.startswith("xl/worksheets/")]
        assert sheets and not any("<f>" in z.read(n).decode() or "<f " in z.read(n).decode() for n in sheets)


def test_xlsx_writes_formula_like_village_names_as_text(tmp_path: Path) -> None:
    reg = parse_registry({"villages": {"v": {"name": "=1+2"}}})
    out = tmp_path / "v.xlsx"
    write_report(build_report(DeskDB(tmp_path / "d.sqlite"), date(2026, 1, 15), date(2026, 1, 29), reg), out)
    from openpyxl import load_workbook

    cell = load_workbook(out)["Report"]["A6"]
    assert (cell.value, cell.data_type) == ("=1+2", "s")


# -- 3. later messages cannot freeze or move a case -----------------------------------------------


def _store_write(scenario: Scenario, *msgs) -> None:  # noqa: ANN002
    store = SqliteStore(scenario.store_path)
    try:
        store.write(list(msgs))
    finally:
        store.close()


def _sync(scenario: Scenario) -> list:
    store = SqliteStore(scenario.store_path, read_only=True)
    try:
        return sync_from_store(scenario.desk, store, load_registry(scenario.registry_path))
    finally:
        store.close()


def test_far_future_open_does_not_hide_the_close(scenario: Scenario) -> None:
    """The open with a ts in 2096 arrives with (or after) the real closed message."""
    gw = MsgFactory("gw-east-x")

    def msg(state: str, ts: float):  # noqa: ANN202
        m = gw.alert("gw-east:e101:1", state, household="e101", device="meter-e101", start=T0, ts=ts)
        return m.model_copy(update={"gateway": "gw-east"})

    _store_write(scenario, msg("closed", T0 + 3600), msg("open", 4_000_000_000.0))
    assert _sync(scenario) == []
    case = scenario.desk.case(scenario.cases["e101"])
    assert (case.alert_state, case.alert_end) == ("closed", T0 + 3600)
    # another bogus open later still does not reopen it
    _store_write(scenario, msg("open", 4_000_000_100.0))
    _sync(scenario)
    case = scenario.desk.case(scenario.cases["e101"])
    assert (case.alert_state, case.alert_end) == ("closed", T0 + 3600)


def test_closed_is_final_even_when_synced_first(tmp_path: Path) -> None:
    reg = parse_registry({"villages": {"east": {}}, "compounds": {"c": {"village": "east", "gateways": ["gw"],
                                                                         "households": ["h1"]}}})
    desk = DeskDB(tmp_path / "d.sqlite")
    f = MsgFactory("gw")
    closed = f.alert("gw:h1:1", "closed", household="h1", start=T0)
    (case,) = desk.sync_alerts([closed], reg)
    desk.sync_alerts([closed, f.alert("gw:h1:1", household="h1", start=T0, ts=T0 + 7200)], reg)
    assert desk.case(case.id).alert_state == "closed" and desk.case(case.id).alert_end == T0 + 3600


def test_withdrawn_charging_alert_that_qualifies_again(tmp_path: Path) -> None:
    """agent/runner.py: a charging alert withdrawn while open, whose session qualifies again
    with the same start, reuses its alert id (open, closed, open, closed): the case's alert
    stays closed from the withdrawal on, and the final closed message gives its fields."""
    reg = parse_registry({"villages": {"east": {}}, "compounds": {"c": {"village": "east", "gateways": ["gw"],
                                                                         "households": ["h1"]}}})
    desk = DeskDB(tmp_path / "d.sqlite")
    f = MsgFactory("gw")
    msgs = [f.alert("gw:h1:ebike_charging:1", household="h1", start=T0, ts=T0 + 600),
            f.alert("gw:h1:ebike_charging:1", "closed", household="h1", start=T0, ts=T0 + 900, end=T0 + 900,
                    confidence=0.0, energy_kwh=0.0, detail="withdrawn: the session no longer qualifies")]
    (case,) = desk.sync_alerts(msgs, reg)
    assert (case.alert_state, case.confidence, case.detail[:9]) == ("closed", 0.0, "withdrawn")
    msgs.append(f.alert("gw:h1:ebike_charging:1", household="h1", start=T0, ts=T0 + 1200))
    desk.sync_alerts(msgs, reg)
    assert desk.case(case.id).alert_state == "closed" and desk.case(case.id).detail[:9] == "withdrawn"
    msgs.append(f.alert("gw:h1:ebike_charging:1", "closed", household="h1", start=T0, ts=T0 + 5000,
                        end=T0 + 4800, energy_kwh=1.25, detail="taper"))
    desk.sync_alerts(msgs, reg)
    got = desk.case(case.id)
    assert (got.alert_state, got.alert_end, got.energy_kwh, got.detail) == ("closed", T0 + 4800, 1.25, "taper")


def test_closed_charging_message_gives_the_refined_start(tmp_path: Path) -> None:
    """The agent opens a charging alert with the detector's first guess of the start and
    closes it, under the same alert id, with the start the finished session has (2.4 h
    later in a demo run): the case shows the closed message's start."""
    reg = parse_registry({"villages": {"east": {}}, "compounds": {"c": {"village": "east", "gateways": ["gw"],
                                                                         "households": ["h1"]}}})
    desk = DeskDB(tmp_path / "d.sqlite")
    f = MsgFactory("gw")
    opened = f.alert("gw:h1:ebike_charging:1", household="h1", start=T0, ts=T0 + 600)
    (case,) = desk.sync_alerts([opened], reg)
    assert case.alert_start == T0
    closed = f.alert("gw:h1:ebike_charging:1", "closed", household="h1", start=T0 + 8640, ts=T0 + 30000,
                     end=T0 + 29000)
    assert desk.sync_alerts([opened, closed], reg) == []
    got = desk.case(case.id)
    assert (got.alert_start, got.alert_end, got.alert_state) == (T0 + 8640, T0 + 29000, "closed")
    other = DeskDB(tmp_path / "e.sqlite")  # both at once: the case is made with the final start
    (made,) = other.sync_alerts([opened, closed], reg)
    assert made.alert_start == T0 + 8640


def test_message_naming_another_household_does_not_move_the_case(scenario: Scenario, caplog) -> None:  # noqa: ANN001
    """The store (an older one: today's refuses it) holds a message of e101's alert id naming
    the unregistered household x999."""
    cid = scenario.cases["e101"]
    gw = MsgFactory("gw-east-y")
    forged = gw.alert("gw-east:e101:1", household="x999", device="meter-x999", start=T0, ts=T0 + 500,
                      kind="overload", detail="moved").model_copy(update={"gateway": "gw-east"})
    with sqlite3.connect(scenario.store_path) as db:  # as an older store kept it
        db.execute("INSERT INTO alerts VALUES (?,?,?,?,?,?,?,?,?,?)",
                   (forged.msg_id, forged.alert_id, forged.gateway, forged.household, forged.device,
                    forged.kind, forged.state, forged.ts, forged.start, forged.model_dump_json()))
    with caplog.at_level("WARNING", logger="flylead.desk"):
        assert _sync(scenario) == []
    case = scenario.desk.case(cid)
    assert (case.household, case.device, case.kind, case.village, case.compound, case.detail) == (
        "e101", "meter-e101", "ebike_charging", "east", "sunrise", "")
    assert f"case {cid} (alert 'gw-east:e101:1' of gw-east): message" in caplog.text
    assert "names household 'x999'" in caplog.text
    client = _app(scenario).test_client()
    _login(client, "east")
    assert client.get(f"/case/{cid}").status_code == 200  # the village user keeps it


def test_first_message_fixes_a_new_case(tmp_path: Path) -> None:
    """Both messages in one sync: the earliest names the household; the other is ignored."""
    reg = parse_registry({"villages": {"east": {}, "west": {}}, "compounds": {
        "a": {"village": "east", "gateways": ["gw"], "households": ["h1"]},
        "b": {"village": "west", "gateways": ["gw"], "households": ["h2"]}}})
    f = MsgFactory("gw")
    desk = DeskDB(tmp_path / "d.sqlite")
    (case,) = desk.sync_alerts([f.alert("gw:h1:1", "closed", household="h2", start=T0, ts=T0 + 900),
                                f.alert("gw:h1:1", household="h1", start=T0, ts=T0 + 60)], reg)
    assert (case.household, case.village, case.alert_state) == ("h1", "east", "open")


def test_forged_message_does_not_settle_a_pending_acknowledgement(tmp_path: Path) -> None:
    gw = "gw-ack"
    f = MsgFactory(gw)
    reg = parse_registry({"villages": {"east": {}}, "compounds": {"c": {"village": "east", "gateways": [gw],
                                                                         "households": ["h1", "h2"]}}})
    desk = DeskDB(tmp_path / "d.sqlite")
    alert_id = f"{gw}:fd-1:residual_current:{int(T0)}"
    (case,) = desk.sync_alerts([f.alert(alert_id, household="h1", device="fd-1", kind="residual_current")], reg)
    for step in ("dispatch", "verify", "rectify"):
        desk.transition(case.id, step, "wang", worker="Zhang", at=T0 + 60)
    assert [a.state for a in desk.acks(case.id)] == ["pending"]
    forged = [
        f.alert(alert_id, "closed", household="h2", device="fd-1", kind="residual_current", ts=T0 + 100),
        f.alert(alert_id, household="h1", device="fd-9", kind="residual_current", ts=T0 + 110,
                detail="x; ack=mallory@2026-01-01T00:00:00Z"),
        f.alert(alert_id, household="h1", device="fd-1", kind="overload", ts=T0 + 120, detail="; ack=m@t"),
    ]
    desk.sync_alerts(forged, reg, now=T0 + 200)
    assert [a.state for a in desk.acks(case.id)] == ["pending"]
    assert desk.case(case.id).alert_state == "open"
    # the gateway's own message (same household, device, kind) settles it
    took = f.alert(alert_id, household="h1", device="fd-1", kind="residual_current", ts=T0 + 300,
                   detail="residual current; ack=wang@2026-01-01T00:01:00Z")
    desk.sync_alerts([*forged, took], reg, now=T0 + 400)
    assert [(a.state, a.settled) for a in desk.acks(case.id)] == [("done", T0 + 400)]


# -- 4. village users of real villages only ---------------------------------------------------------


@pytest.mark.parametrize(("village", "message"), [
    (UNASSIGNED, "village '_unassigned' is reserved"),
    ("x y<", "village 'x y<' must be a village id matching"),
    ("", "a village user needs a village"),
])
def test_add_user_refuses_bad_villages(tmp_path: Path, village: str, message: str) -> None:
    desk = DeskDB(tmp_path / "d.sqlite")
    with pytest.raises(DeskError, match=message):
        desk.add_user("bad", "long-enough-1", "village", village)
    assert desk.users() == []


def test_add_user_checks_the_registry(tmp_path: Path) -> None:
    desk = DeskDB(tmp_path / "d.sqlite")
    reg = parse_registry({"villages": {"east": {}, "west": {}}})
    with pytest.raises(DeskError, match=r"village 'north' is not in the registry \(villages: east, west\)"):
        desk.add_user("li", "long-enough-1", "village", "north", registry=reg)
    assert desk.add_user("li", "long-enough-1", "village", "east", registry=reg).village == "east"


@pytest.mark.parametrize("village", [UNASSIGNED, "x y<"])
def test_cli_add_user_refuses_bad_villages(tmp_path: Path, village: str) -> None:
    from typer.testing import CliRunner

    from flylead.cli import app

    db = tmp_path / "d.sqlite"
    r = CliRunner().invoke(app, ["desk", "add-user", "bad", "--role", "village", "--village", village,
                                 "--db", str(db), "--password-stdin"], input="long-enough-1\n")
    assert r.exit_code == 2 and f"village {village!r}" in r.output and "Traceback" not in r.output
    assert DeskDB(db).users() == []


# -- 5. sessions end ----------------------------------------------------------------------------------


def _session_cookie(client) -> str:  # noqa: ANN001
    cookie = client.get_cookie("session")
    assert cookie is not None
    return cookie.value


def test_password_change_ends_the_sessions(scenario: Scenario) -> None:
    app = _app(scenario)
    client = app.test_client()
    _login(client, "east")
    assert client.get("/").status_code == 200
    scenario.desk.add_user("east", "a-new-password", "village", "east", replace=True)
    assert client.get("/").status_code == 302  # back to the login page
    assert _login(client, "east").status_code == 401  # the old password no longer works
    assert _login(client, "east", "a-new-password").status_code == 302
    assert client.get("/").status_code == 200


def test_logout_ends_a_saved_copy_of_the_cookie(scenario: Scenario) -> None:
    app = _app(scenario)
    client = app.test_client()
    _login(client, "east")
    saved = _session_cookie(client)
    page = client.get("/")
    assert page.status_code == 200
    assert client.post("/logout", data={"csrf_token": _csrf(page.get_data(as_text=True))}).status_code == 302
    replay = app.test_client()
    replay.set_cookie("session", saved)
    assert replay.get("/").status_code == 302
    assert replay.get(f"/case/{scenario.cases['e101']}").status_code == 302


def test_session_of_an_earlier_version_is_refused(scenario: Scenario) -> None:
    """A session whose user id is the bare name (before session tokens) logs in no one."""
    app = _app(scenario)
    client = app.test_client()
    _login(client, "east")
    assert client.get("/").status_code == 200
    with client.session_transaction() as sess:
        assert sess["_user_id"].startswith("east:")
        sess["_user_id"] = "east"
    assert client.get("/").status_code == 302


def test_secure_cookies(scenario: Scenario, monkeypatch) -> None:  # noqa: ANN001
    def set_cookie(**kwargs) -> str:  # noqa: ANN003
        client = _app(scenario, **kwargs).test_client()
        resp = _login(client, "east")
        assert resp.status_code == 302
        return resp.headers["Set-Cookie"]

    monkeypatch.delenv("FLYLEAD_DESK_SECURE_COOKIES", raising=False)
    assert "Secure" not in set_cookie() and "HttpOnly" in set_cookie()
    assert "; Secure" in set_cookie(secure_cookies=True)
    monkeypatch.setenv("FLYLEAD_DESK_SECURE_COOKIES", "1")
    assert "; Secure" in set_cookie()
    assert "Secure" not in set_cookie(secure_cookies=False)


def test_database_of_an_earlier_version_gets_session_tokens(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE users (username TEXT PRIMARY KEY, pw_hash TEXT NOT NULL, role TEXT NOT NULL"
                   " CHECK (role IN ('office', 'village')), village TEXT, created REAL NOT NULL)")
        from broker.desk.db import _hasher

        db.execute("INSERT INTO users VALUES ('wang', ?, 'office', NULL, 0)", (_hasher.hash("office-pass-1"),))
    desk = DeskDB(path)
    user, token = desk.login("wang", "office-pass-1")
    assert user.username == "wang" and len(token) == 32
    assert desk.session_user("wang", token) == user and desk.session_user("wang", "") is None
    desk.end_sessions("wang")
    assert desk.session_user("wang", token) is None
    assert DeskDB(path).login("wang", "office-pass-1") is not None  # opening again is fine


# -- 6. HTML in the Markdown report ---------------------------------------------------------------------


def test_markdown_escapes_html(tmp_path: Path) -> None:
    reg = parse_registry({"villages": {"v": {"name": "<script>alert(1)</script>"}},
                          "compounds": {"c": {"name": "A & B [x](javascript:alert(1))", "village": "v",
                                              "gateways": ["gw"], "households": ["h1"]}}})
    desk = DeskDB(tmp_path / "d.sqlite")
    start = datetime(2026, 1, 20, 12, tzinfo=CST).timestamp()
    (case,) = desk.sync_alerts([MsgFactory("gw").alert("gw:h1:1", household="h1", start=start)], reg)
    desk.transition(case.id, "dispatch", "office", worker="<img src=x onerror=alert(1)>", at=start + 60)
    md = render_markdown(build_report(desk, date(2026, 1, 15), date(2026, 1, 29), reg))
    assert "<script>" not in md and "<img" not in md
    assert "| &lt;script&gt;alert(1)&lt;/script&gt; | 1 |" in md
    assert (f"| {case.id} | &lt;script&gt;alert(1)&lt;/script&gt; | A &amp; B \\[x\\](javascript:alert(1)) | h1 |"
            in md)
    assert "| &lt;img src=x onerror=alert(1)&gt; |" in md
