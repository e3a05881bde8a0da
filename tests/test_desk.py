"""The alert desk: registry, case database and lifecycle, sync from a real SqliteStore,
and the Flask app through its test client with CSRF protection on (the browser test is
tests/test_desk_browser.py)."""

from __future__ import annotations

import re
import sqlite3
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from broker import SqliteStore
from broker.desk import UNASSIGNED, DeskDB, DeskError, RegistryError, TransitionError, load_registry, sync_from_store
from broker.desk.registry import parse_registry
from tests.conftest import T0, MsgFactory

REGISTRY_TOML = """\
tz = "Asia/Shanghai"

[villages.east]
name = "East Village"

[villages.west]
name = "West Village"

[compounds.sunrise]
name = "Sunrise Garden"
village = "east"
gateways = ["gw-east"]
households = ["e101", "e102"]

[compounds.willow]
name = "Willow Court"
village = "west"
gateways = ["gw-west"]
households = ["w201"]
"""
PASSWORDS = {"office": "office-pass-1", "east": "east-pass-1", "west": "west-pass-1"}


@dataclass
class Scenario:
    """A store with four alerts (e101, e102 in East, w201 in West, x999 unregistered),
    telemetry of e101's meter, a synced desk and three users."""

    dir: Path
    store_path: Path
    registry_path: Path
    desk: DeskDB
    cases: dict[str, int]  # household -> case id


def build_scenario(directory: Path) -> Scenario:
    registry_path = directory / "registry.toml"
    registry_path.write_text(REGISTRY_TOML)
    registry = load_registry(registry_path)
    store_path = directory / "store.sqlite"
    store = SqliteStore(store_path)
    east, west = MsgFactory("gw-east"), MsgFactory("gw-west")
    msgs = [
        east.alert("gw-east:e101:1", household="e101", device="meter-e101", start=T0, energy_kwh=0.9),
        east.alert("gw-east:e102:1", household="e102", device="meter-e102", start=T0 + 600, kind="overload"),
        west.alert("gw-west:w201:1", household="w201", device="meter-w201", start=T0 + 1200),
        east.alert("gw-east:x999:1", household="x999", device="meter-x999", start=T0 + 1800),
    ]
    # e101: 60 W base load, 130 W more while the charger runs (T0 .. T0+3600), every 5 min
    msgs += [east.telemetry("meter-e101", household="e101", ts=T0 + s,
                            active_power=60.0 + (130.0 if 0 <= s < 3600 else 0.0))
             for s in range(-3600, 7200, 300)]
    store.write(msgs)
    store.close()
    desk = DeskDB(directory / "desk.sqlite")
    store = SqliteStore(store_path)
    created = sync_from_store(desk, store, registry, now=T0 + 2000)
    store.close()
    desk.add_user("office", PASSWORDS["office"], "office")
    desk.add_user("east", PASSWORDS["east"], "village", "east")
    desk.add_user("west", PASSWORDS["west"], "village", "west")
    return Scenario(directory, store_path, registry_path, desk, {c.household: c.id for c in created})


@pytest.fixture
def scenario(tmp_path: Path) -> Scenario:
    return build_scenario(tmp_path)


# -- registry -------------------------------------------------------------------------------


def test_registry_locates_households_per_gateway(scenario: Scenario) -> None:
    reg = load_registry(scenario.registry_path)
    assert reg.locate("gw-east", "e102") == ("east", "sunrise")
    assert reg.locate("gw-west", "w201") == ("west", "willow")
    assert reg.locate("gw-west", "e101") == (UNASSIGNED, None)  # right household, wrong gateway
    assert reg.village_name("east") == "East Village" and reg.compound_name("willow") == "Willow Court"


@pytest.mark.parametrize(("data", "message"), [
    ({"compounds": {"c": {"village": "nowhere", "gateways": ["g"], "households": []}}},
     "compounds.c: village 'nowhere' is not defined"),
    ({"villages": {"v": {}}, "compounds": {
        "a": {"village": "v", "gateways": ["g"], "households": ["h1"]},
        "b": {"village": "v", "gateways": ["g"], "households": ["h1"]}}},
     "compounds.b: household 'h1' of gateway 'g' is already in compound 'a'"),
    ({"villages": {"v": {}}, "compounds": {"a": {"village": "v", "gateways": ["g/1"]}}},
     "compounds.a: 'gateways' must be a list of names"),
    ({"tz": "Mars/Olympus"}, "tz 'Mars/Olympus' is not a known time zone"),
    ({"village": {}}, "unknown keys ['village']"),
])
def test_registry_errors_name_the_entry(data: dict, message: str) -> None:
    with pytest.raises(RegistryError, match=re.escape(message)):
        parse_registry(data, "reg.toml")


# -- cases ----------------------------------------------------------------------------------


def test_sync_creates_one_case_per_alert_idempotently(scenario: Scenario) -> None:
    desk, reg = scenario.desk, load_registry(scenario.registry_path)
    cases = desk.cases()
    assert sorted((c.village, c.compound, c.household, c.state) for c in cases) == [
        (UNASSIGNED, None, "x999", "new"),
        ("east", "sunrise", "e101", "new"),
        ("east", "sunrise", "e102", "new"),
        ("west", "willow", "w201", "new"),
    ]
    store = SqliteStore(scenario.store_path)
    try:
        assert sync_from_store(desk, store, reg) == []  # nothing new
        # the alert closes: the same case is updated, no new one
        closed = MsgFactory("gw-east-2")  # a distinct msg_id prefix, same gateway id below
        msg = closed.alert("gw-east:e101:1", "closed", household="e101", device="meter-e101",
                           start=T0, energy_kwh=1.07).model_copy(update={"gateway": "gw-east"})
        store.write([msg, msg])
        assert sync_from_store(desk, store, reg) == []
    finally:
        store.close()
    case = desk.case(scenario.cases["e101"])
    assert case is not None and case.alert_state == "closed" and case.alert_end == T0 + 3600
    assert case.energy_kwh == 1.07 and len(desk.cases()) == 4


def test_lifecycle_steps_in_order_and_rebound(scenario: Scenario) -> None:
    desk, reg = scenario.desk, load_registry(scenario.registry_path)
    cid = scenario.cases["e101"]
    with pytest.raises(TransitionError, match=f"case {cid} is 'new': 'rectify' applies to 'verified' cases only"):
        desk.transition(cid, "rectify", "east")
    with pytest.raises(DeskError, match="dispatch needs a grid worker"):
        desk.transition(cid, "dispatch", "east", worker="  ")
    steps = [("dispatch", "dispatched"), ("verify", "verified"), ("rectify", "rectified"),
             ("recheck", "rechecked"), ("close", "closed")]
    for i, (action, state) in enumerate(steps):
        case = desk.transition(cid, action, "east", worker="Wang Wei", note=f"step {i}", at=T0 + 86400 * (i + 1))
        assert case.state == state
    assert case.closed == T0 + 86400 * 5 and case.worker == "Wang Wei" and case.next_action is None
    assert [(e.action, e.to_state, e.username) for e in desk.events(cid)] == [
        ("open", "new", "system"), ("dispatch", "dispatched", "east"), ("verify", "verified", "east"),
        ("rectify", "rectified", "east"), ("recheck", "rechecked", "east"), ("close", "closed", "east")]
    east = MsgFactory("gw-east-later")  # own msg_id prefix; gateway id set below

    def alert(alert_id: str, household: str, day: float):  # noqa: ANN202
        m = east.alert(alert_id, household=household, device=f"meter-{household}", start=T0 + 86400 * day)
        return m.model_copy(update={"gateway": "gw-east"})

    store = SqliteStore(scenario.store_path)
    try:
        store.write([
            alert("gw-east:e101:2", "e101", 9),   # after the close: a rebound
            alert("gw-east:e102:2", "e102", 9),   # e102's case is still open: no rebound
            alert("gw-east:e101:3", "e101", 10),  # e101:2 is in progress: no rebound
        ])
        new = sync_from_store(desk, store, reg)
    finally:
        store.close()
    assert [(c.alert_id, c.rebound_of) for c in new] == [
        ("gw-east:e101:2", cid), ("gw-east:e102:2", None), ("gw-east:e101:3", None)]
    assert [c.village for c in new] == ["east"] * 3
    # an alert that started before the case was closed is the same problem, not a rebound
    other = DeskDB(scenario.dir / "other.sqlite")
    (first,) = other.sync_alerts([alert("gw-east:e101:1", "e101", 0)], reg)
    for action in ("dispatch", "verify", "rectify", "recheck", "close"):
        other.transition(first.id, action, "office", worker="Li", at=T0 + 86400 * 2)
    late = other.sync_alerts([alert("gw-east:e101:x", "e101", 1.5), alert("gw-east:e101:y", "e101", 3)], reg)
    assert [(c.alert_id, c.rebound_of) for c in late] == [("gw-east:e101:x", None), ("gw-east:e101:y", None)]
    (again,) = DeskDB(scenario.dir / "third.sqlite").sync_alerts([alert("gw-east:e101:1", "e101", 0)], reg)
    assert again.rebound_of is None


def test_passwords_are_stored_hashed(scenario: Scenario) -> None:
    with sqlite3.connect(scenario.dir / "desk.sqlite") as db:
        rows = dict(db.execute("SELECT username, pw_hash FROM users").fetchall())
    for user, password in PASSWORDS.items():
        assert rows[user].startswith("$argon2id$") and password not in rows[user]
    assert scenario.desk.check_password("east", PASSWORDS["east"]).village == "east"
    assert scenario.desk.check_password("east", PASSWORDS["west"]) is None
    assert scenario.desk.check_password("nobody", PASSWORDS["east"]) is None
    with pytest.raises(DeskError, match="already exists"):
        scenario.desk.add_user("east", "another-pass", "village", "east")
    with pytest.raises(DeskError, match="at least 8"):
        scenario.desk.add_user("short", "1234567", "office")
    with pytest.raises(DeskError, match="needs a village"):
        scenario.desk.add_user("nov", "long-enough", "village")
    with pytest.raises(DeskError, match="not only spaces"):
        scenario.desk.add_user("blank", " " * 8, "office")
    with pytest.raises(DeskError, match="an office user sees every village; give no village"):
        scenario.desk.add_user("wang2", "long-enough", "office", "east")


# -- web app --------------------------------------------------------------------------------


def _app(scenario: Scenario):  # noqa: ANN202
    from broker.desk import create_app

    app = create_app(scenario.desk, load_registry(scenario.registry_path), store_path=scenario.store_path)
    app.config["TESTING"] = True
    return app


def _csrf(html: str) -> str:
    m = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', html)
    assert m, "no CSRF token in the page"
    return m.group(1)


def _login(client, user: str, password: str | None = None):  # noqa: ANN001, ANN202
    token = _csrf(client.get("/login").get_data(as_text=True))
    return client.post("/login", data={"username": user, "password": password or PASSWORDS[user],
                                       "csrf_token": token})


def test_login_requires_csrf_and_the_right_password(scenario: Scenario) -> None:
    client = _app(scenario).test_client()
    assert client.get("/").status_code == 302  # to the login page
    assert client.post("/login", data={"username": "east", "password": PASSWORDS["east"]}).status_code == 400
    wrong = _login(client, "east", "not-it")
    assert wrong.status_code == 401 and "Wrong user name or password" in wrong.get_data(as_text=True)
    assert client.get("/").status_code == 302
    ok = _login(client, "east")
    assert ok.status_code == 302 and ok.headers["Location"] == "/"
    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["Content-Security-Policy"].startswith("default-src 'self'")
    cookie = next(c for c in page.request.headers.get("Cookie", "").split(";") if "session" in c) or ""
    assert cookie  # logged-in session
    token = _csrf(page.get_data(as_text=True))
    assert client.post("/logout", data={"csrf_token": token}).status_code == 302
    assert client.get("/").status_code == 302


def test_village_user_sees_and_works_only_its_village(scenario: Scenario) -> None:
    client = _app(scenario).test_client()
    _login(client, "east")
    page = client.get("/").get_data(as_text=True)
    shown = {int(i) for i in re.findall(r'data-case="(\d+)"', page)}
    assert shown == {scenario.cases["e101"], scenario.cases["e102"]}
    assert "East Village" in page and "Sunrise Garden" in page and "West Village" not in page
    west, unassigned = scenario.cases["w201"], scenario.cases["x999"]
    for cid in (west, unassigned):
        assert client.get(f"/case/{cid}").status_code == 404
        assert client.get(f"/case/{cid}/plot.png").status_code == 404
    token = _csrf(client.get(f"/case/{scenario.cases['e101']}").get_data(as_text=True))
    forged = client.post(f"/case/{west}/action", data={"action": "dispatch", "worker": "x", "csrf_token": token})
    assert forged.status_code == 404
    assert scenario.desk.case(west).state == "new"
    assert client.get("/case/999999").status_code == 404


def test_actions_need_csrf_and_follow_the_lifecycle(scenario: Scenario) -> None:
    client = _app(scenario).test_client()
    _login(client, "office")
    page = client.get("/").get_data(as_text=True)
    assert {int(i) for i in re.findall(r'data-case="(\d+)"', page)} == set(scenario.cases.values())
    assert "(not in registry)" in page
    cid = scenario.cases["w201"]
    url = f"/case/{cid}/action"
    assert client.post(url, data={"action": "dispatch", "worker": "Zhao"}).status_code == 400
    token = _csrf(client.get(f"/case/{cid}").get_data(as_text=True))
    skip = client.post(url, data={"action": "rectify", "csrf_token": token}, follow_redirects=True)
    assert "applies to &#39;verified&#39; cases only" in skip.get_data(as_text=True)
    assert scenario.desk.case(cid).state == "new"
    done = client.post(url, data={"action": "dispatch", "worker": "Zhao <b>", "note": "<script>x</script>",
                                  "csrf_token": token}, follow_redirects=True)
    html = done.get_data(as_text=True)
    assert done.status_code == 200 and scenario.desk.case(cid).state == "dispatched"
    assert "Zhao &lt;b&gt;" in html and "<script>x</script>" not in html  # escaped
    assert client.post(url, data={"action": "launch", "csrf_token": token}).status_code == 400


def test_load_plot_is_a_png(scenario: Scenario) -> None:
    client = _app(scenario).test_client()
    _login(client, "east")
    resp = client.get(f"/case/{scenario.cases['e101']}/plot.png")
    assert resp.status_code == 200 and resp.mimetype == "image/png"
    assert resp.data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", resp.data[16:24])
    assert (width, height) == (800, 300)
    from broker.desk.plot import active_power, plot_window

    points = active_power(scenario.store_path, "gw-east", "meter-e101", *plot_window(T0, None))
    assert len(points) == 36 and points[0] == (T0 - 3600, 60.0) and points[12] == (T0, 190.0)


# -- command line ---------------------------------------------------------------------------


def test_cli_add_user_and_sync(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from flylead.cli import app

    sc = build_scenario(tmp_path)
    db = tmp_path / "cli-desk.sqlite"
    runner = CliRunner()
    r = runner.invoke(app, ["desk", "add-user", "zhang", "--role", "village", "--village", "west",
                            "--db", str(db), "--registry", str(sc.registry_path), "--password-stdin"],
                      input="zhang-pass-1\n")
    assert r.exit_code == 0, r.output
    assert DeskDB(db).check_password("zhang", "zhang-pass-1").village == "west"
    r = runner.invoke(app, ["desk", "add-user", "li", "--role", "village", "--village", "north",
                            "--db", str(db), "--registry", str(sc.registry_path), "--password-stdin"],
                      input="li-pass-123\n")
    assert r.exit_code == 2 and "village 'north' is not in registry" in r.output
    args = ["desk", "sync", "--db", str(db), "--registry", str(sc.registry_path),
            "--store", f"sqlite:///{sc.store_path}"]
    first, second = runner.invoke(app, args), runner.invoke(app, args)
    assert (first.exit_code, first.stdout.strip()) == (0, "4 new cases")
    assert (second.exit_code, second.stdout.strip()) == (0, "0 new cases")
    missing = runner.invoke(app, [*args[:-1], str(tmp_path / "nope.sqlite")])
    assert missing.exit_code == 1 and "nope.sqlite does not exist" in missing.output
    # the store is only read: the desk database given as --store is refused and left as it was
    before = db.read_bytes()
    swapped = runner.invoke(app, [*args[:-1], str(db)])
    assert swapped.exit_code == 1 and "is not a flylead store" in swapped.output
    assert db.read_bytes() == before
    empty = tmp_path / "empty.sqlite"
    empty.write_bytes(b"")
    assert runner.invoke(app, [*args[:-1], str(empty)]).exit_code == 1 and empty.stat().st_size == 0


def test_serve_listens_on_loopback_and_syncs(tmp_path: Path) -> None:
    """`flylead desk serve` as a process: loopback by default, takes new alerts in."""
    import urllib.request

    sc = build_scenario(tmp_path)
    db = tmp_path / "served.sqlite"
    exe = Path(sys.executable).with_name("flylead")
    proc = subprocess.Popen([str(exe), "desk", "serve", "--db", str(db), "--registry", str(sc.registry_path),
                             "--store", str(sc.store_path), "--port", "0", "--sync-every", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        m = re.match(r"alert desk on http://127\.0\.0\.1:(\d+)/", line)
        assert m, f"unexpected first line {line!r}; stderr: {proc.stderr.read() if proc.poll() is not None else ''}"
        port = int(m.group(1))
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            assert r.read() == b"ok\n"
        desk = DeskDB(db)
        deadline = time.monotonic() + 10
        while len(desk.cases()) < 4 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(desk.cases()) == 4
        store = SqliteStore(sc.store_path)
        late = MsgFactory("gw-west").alert("gw-west:w201:2", household="w201", start=T0 + 9000)
        store.write([late.model_copy(update={"msg_id": "late-w201-2"})])  # a msg_id not yet stored
        store.close()
        while len(desk.cases()) < 5 and time.monotonic() < deadline + 5:
            time.sleep(0.1)
        assert [c.alert_id for c in desk.cases(["west"])] == ["gw-west:w201:2", "gw-west:w201:1"]
        with open("/proc/net/tcp") as f:  # the listening socket's local address
            listening = [ln.split() for ln in f.readlines()[1:] if ln.split()[3] == "0A"]
        mine = [p[1] for p in listening if int(p[1].split(":")[1], 16) == port]
        assert mine == ["0100007F:%04X" % port]  # 127.0.0.1 only
    finally:
        proc.terminate()
        proc.wait(10)


def test_serve_secure_cookies_option(tmp_path: Path) -> None:
    """`flylead desk serve --secure-cookies`: the session cookie set with the login form is
    marked Secure; without the option (and without FLYLEAD_DESK_SECURE_COOKIES) it is not."""
    import os
    import urllib.request

    sc = build_scenario(tmp_path)
    exe = Path(sys.executable).with_name("flylead")
    env = {k: v for k, v in os.environ.items() if k != "FLYLEAD_DESK_SECURE_COOKIES"}
    seen = {}
    for flag in ([], ["--secure-cookies"]):
        proc = subprocess.Popen([str(exe), "desk", "serve", "--db", str(tmp_path / "s.sqlite"), "--registry",
                                 str(sc.registry_path), "--store", str(sc.store_path), "--port", "0", *flag],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        try:
            m = re.match(r"alert desk on http://127\.0\.0\.1:(\d+)/", proc.stdout.readline())
            assert m, proc.stderr.read() if proc.poll() is not None else "no first line"
            with urllib.request.urlopen(f"http://127.0.0.1:{m.group(1)}/login", timeout=5) as r:
                seen[bool(flag)] = next(c for c in r.headers.get_all("Set-Cookie") if c.startswith("session="))
        finally:
            proc.terminate()
            proc.wait(10)
    assert "HttpOnly" in seen[False] and "Secure" not in seen[False]
    assert "; Secure" in seen[True]


def test_serve_refuses_a_missing_ca_and_a_taken_port(tmp_path: Path) -> None:
    """Named before the desk starts: a CA file for the acknowledgements' TLS that is missing
    or not PEM (paho raised from deep inside), and a port already taken (the reason was ": 1")."""
    import socket

    from typer.testing import CliRunner

    from flylead.cli import app

    sc = build_scenario(tmp_path)
    base = ["desk", "serve", "--db", str(tmp_path / "d.sqlite"), "--registry", str(sc.registry_path),
            "--store", str(sc.store_path)]
    runner = CliRunner()
    missing = runner.invoke(app, [*base, "--mqtt", "127.0.0.1:1883", "--mqtt-ca", str(tmp_path / "none.crt")])
    assert missing.exit_code == 2 and f"--mqtt-ca: no such file: {tmp_path / 'none.crt'}" in missing.output
    junk = tmp_path / "junk.crt"
    junk.write_text("not a certificate\n")
    bad = runner.invoke(app, [*base, "--mqtt", "127.0.0.1:1883", "--mqtt-ca", str(junk)])
    assert bad.exit_code == 2 and "not a readable PEM certificate file" in bad.output
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = runner.invoke(app, [*base, "--port", str(port)])
    assert busy.exit_code == 1
    assert f"alert desk cannot listen on 127.0.0.1:{port}: the address is in use" in " ".join(busy.output.split())
