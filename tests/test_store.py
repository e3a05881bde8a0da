"""SqliteStore, InfluxStore (against the real VictoriaMetrics) and open_store."""

from __future__ import annotations

import json
import socket
import sqlite3
import threading
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from broker import InfluxStore, SqliteStore, Store, StoreError, open_store
from tests.conftest import T0, MsgFactory

# -- SqliteStore ------------------------------------------------------------------------


@pytest.fixture
def sqlite_store(tmp_path: Path):
    s = SqliteStore(tmp_path / "flylead.sqlite")
    yield s
    s.close()


def test_sqlite_is_a_store_in_wal_mode(sqlite_store: SqliteStore, tmp_path: Path) -> None:
    assert isinstance(sqlite_store, Store)
    with sqlite3.connect(tmp_path / "flylead.sqlite") as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_sqlite_same_message_twice_is_one_row(sqlite_store: SqliteStore, msgs: MsgFactory) -> None:
    t = msgs.telemetry("meter-1")
    a = msgs.alert("a1")
    sqlite_store.write([t, t, a, a])  # twice in one batch
    sqlite_store.write([t, a])  # and again in another
    assert sqlite_store.telemetry_count() == 1
    assert sqlite_store.alerts() == [a]


def test_sqlite_telemetry_count_by_device(sqlite_store: SqliteStore, msgs: MsgFactory) -> None:
    sqlite_store.write([msgs.telemetry("meter-1"), msgs.telemetry("meter-1"), msgs.telemetry("meter-2")])
    assert sqlite_store.telemetry_count() == 3
    assert sqlite_store.telemetry_count("meter-1") == 2
    assert sqlite_store.telemetry_count("meter-9") == 0


def test_sqlite_keeps_open_and_closed_alert_ordered_by_start(sqlite_store: SqliteStore,
                                                             msgs: MsgFactory) -> None:
    late_open = msgs.alert("late", start=T0 + 7200, kind="overload", peak_w=4000.0)
    early_open = msgs.alert("early", start=T0, energy_kwh=None)
    early_closed = msgs.alert("early", "closed", start=T0, energy_kwh=0.75, peak_w=180.5,
                              profile="lithium", detail="session ended")
    sqlite_store.write([late_open, early_closed])
    sqlite_store.write([early_open])

    assert sqlite_store.alerts() == [early_open, early_closed, late_open]
    assert sqlite_store.alerts(kind="overload") == [late_open]
    assert sqlite_store.alerts(state="closed") == [early_closed]
    assert sqlite_store.alerts(kind="ebike_charging", state="open") == [early_open]
    assert sqlite_store.alerts(kind="device_offline") == []
    assert sqlite_store.latest_alerts() == [early_closed, late_open]
    # Round trip keeps every field, including those only SQLite stores.
    closed = sqlite_store.alerts(state="closed")[0]
    assert (closed.profile, closed.detail, closed.end) == ("lithium", "session ended", T0 + 3600)


def test_sqlite_latest_alert_per_gateway(sqlite_store: SqliteStore, uid: str) -> None:
    one, two = MsgFactory(f"gw1-{uid}"), MsgFactory(f"gw2-{uid}")
    a1 = one.alert("same-id", "closed")
    a2 = two.alert("same-id", "open", start=T0 + 1)
    sqlite_store.write([a1, a2, one.alert("same-id", "open")])
    assert sqlite_store.latest_alerts() == [a1, a2]


def test_sqlite_alert_identity_is_fixed_by_the_first_stored_message(
        sqlite_store: SqliteStore, msgs: MsgFactory, uid: str, caplog: pytest.LogCaptureFixture) -> None:
    opened = msgs.alert("a1", household="hh-1", device="meter-1")
    moved = msgs.alert("a1", "closed", household="hh-2")  # same batch as the first: refused too
    assert sqlite_store.write([opened, moved]) == [moved]
    changes = [msgs.alert("a1", "closed", device="meter-2"), msgs.alert("a1", "closed", kind="overload")]
    closed = msgs.alert("a1", "closed", start=T0 + 900.0)  # a refined start is the same alert
    assert sqlite_store.write([*changes, closed, opened]) == changes  # opened again: idempotent
    assert sqlite_store.alerts() == [opened, closed]
    assert sqlite_store.alert_identity(msgs.gateway, "a1") == ("hh-1", "meter-1", "ebike_charging")
    assert sqlite_store.alert_identity(msgs.gateway, "a2") is None
    # alert_id is per gateway: another gateway's a1 is another alert
    other = MsgFactory(f"gw9-{uid}").alert("a1", household="hh-9")
    assert sqlite_store.write([other]) == []
    refusals = [r.getMessage() for r in caplog.records if r.name == "flylead.store"]
    assert len(refusals) == 3
    assert f"refused alert message {moved.msg_id!r} of gateway {msgs.gateway!r}: alert_id 'a1'" in refusals[0]


def test_sqlite_concurrent_writes_and_reads(sqlite_store: SqliteStore, msgs: MsgFactory) -> None:
    batches = [[msgs.telemetry(f"meter-{i}") for _ in range(50)] for i in range(8)]
    errors: list[BaseException] = []

    def work(batch: list) -> None:
        try:
            for m in batch:
                sqlite_store.write([m])
                sqlite_store.telemetry_count()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(b,)) for b in batches]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sqlite_store.telemetry_count() == 400


def test_sqlite_rejects_other_types_without_writing(sqlite_store: SqliteStore, msgs: MsgFactory) -> None:
    with pytest.raises(TypeError, match="dict"):
        sqlite_store.write([msgs.telemetry(), {"msg_id": "x"}])  # type: ignore[list-item]
    assert sqlite_store.telemetry_count() == 0


def test_sqlite_bad_path_names_it(tmp_path: Path) -> None:
    bad = tmp_path / "no-such-dir" / "x.sqlite"
    with pytest.raises(StoreError, match="no-such-dir"):
        SqliteStore(bad)


def test_sqlite_closed_store_raises_store_error(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "x.sqlite")
    s.close()
    with pytest.raises(StoreError, match=r"x\.sqlite"):
        s.telemetry_count()


# -- open_store ---------------------------------------------------------------------------


def test_open_store_sqlite_relative_and_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    rel = open_store("sqlite:///data.sqlite")
    absolute = open_store(f"sqlite:///{tmp_path}/abs.sqlite")  # 4 slashes: absolute
    try:
        assert isinstance(rel, SqliteStore) and rel.path == "data.sqlite"
        assert (tmp_path / "data.sqlite").exists() and (tmp_path / "abs.sqlite").exists()
        assert absolute.path == f"{tmp_path}/abs.sqlite"
    finally:
        rel.close()
        absolute.close()


def test_open_store_influxdb_url() -> None:
    s = open_store("influxdb://127.0.0.1:8428/flylead?org=acme&token=s3cret")
    try:
        assert isinstance(s, InfluxStore)
        assert (s.url, s.bucket, s.org) == ("http://127.0.0.1:8428", "flylead", "acme")
    finally:
        s.close()


@pytest.mark.parametrize("url", [
    "mysql://db/flylead?token=s3cret",
    "sqlite://relative.sqlite",
    "sqlite:///",
    "influxdb://127.0.0.1:8086/?token=s3cret",
    "influxdb://127.0.0.1:8086/a/b",
    "influxdb://127.0.0.1:notaport/b",
    "/tmp/flylead.sqlite",
])
def test_open_store_bad_url_names_it_without_token(url: str) -> None:
    with pytest.raises(ValueError) as info:
        open_store(url)
    message = str(info.value)
    assert url.split("?")[0] in message
    assert "s3cret" not in message


# -- InfluxStore against VictoriaMetrics -------------------------------------------------


def _export(base: str, selector: str) -> dict[str, dict]:
    """VictoriaMetrics' raw samples for ``selector``: metric name -> export line."""
    urllib.request.urlopen(f"{base}/internal/force_flush", timeout=5).read()  # make writes searchable
    query = urllib.parse.urlencode({"match[]": selector, "start": "0"})
    with urllib.request.urlopen(f"{base}/api/v1/export?{query}", timeout=5) as r:
        lines = [json.loads(line) for line in r.read().decode().splitlines() if line]
    return {line["metric"]["__name__"]: line for line in lines}


def test_influx_store_writes_points_victoria_reads_back(victoria: str, msgs: MsgFactory) -> None:
    gw = msgs.gateway
    t = msgs.telemetry("meter-1", ts=T0 + 0.123, household="hh-1",
                       active_power=512.5, voltage=231.25, energy_import=1234.567)
    t2 = msgs.telemetry("meter-2", ts=T0 + 1, household=None, current=2.5)
    opened = msgs.alert("a1", start=T0, peak_w=180.5)
    closed = msgs.alert("a1", "closed", start=T0, energy_kwh=0.75, peak_w=180.5, profile="lithium")
    store = InfluxStore(victoria, token="unused", org="flylead", bucket="flylead", batch_size=2)
    try:
        store.write([t, t2, opened, closed])
        store.write([t, closed])  # the same messages again: same series and timestamps
    finally:
        store.close()

    tel = _export(victoria, f'{{__name__=~"telemetry_.*", gateway="{gw}"}}')
    assert set(tel) == {"telemetry_active_power", "telemetry_voltage", "telemetry_energy_import",
                        "telemetry_current"}
    ms = round((T0 + 0.123) * 1000)
    for name, value in [("active_power", 512.5), ("voltage", 231.25), ("energy_import", 1234.567)]:
        line = tel[f"telemetry_{name}"]
        assert line["metric"] == {"__name__": f"telemetry_{name}", "gateway": gw,
                                  "device": "meter-1", "household": "hh-1"}
        assert set(line["timestamps"]) == {ms} and set(line["values"]) == {value}
    assert tel["telemetry_current"]["metric"] == {"__name__": "telemetry_current", "gateway": gw,
                                                  "device": "meter-2"}
    assert tel["telemetry_current"]["values"][0] == 2.5

    alert = _export(victoria, f'{{__name__=~"alert_.*", gateway="{gw}", state="closed"}}')
    assert set(alert) == {"alert_start", "alert_end", "alert_energy_kwh", "alert_peak_w",
                          "alert_confidence"}
    tags = {"gateway": gw, "household": "hh-1", "device": "meter-1", "kind": "ebike_charging",
            "state": "closed", "alert_id": "a1"}
    expected = {"start": T0, "end": T0 + 3600, "energy_kwh": 0.75, "peak_w": 180.5,
                "confidence": 0.875}
    for field, value in expected.items():
        line = alert[f"alert_{field}"]
        assert line["metric"] == {"__name__": f"alert_{field}", **tags}
        assert set(line["timestamps"]) == {round(closed.ts * 1000)}
        assert set(line["values"]) == {value}

    open_lines = _export(victoria, f'{{__name__=~"alert_.*", gateway="{gw}", state="open"}}')
    assert set(open_lines) == {"alert_start", "alert_peak_w", "alert_confidence"}  # no end yet
    assert open_lines["alert_start"]["timestamps"] == [round(T0 * 1000)]


def test_influx_point_escapes_and_rejects_other_types(msgs: MsgFactory) -> None:
    line = InfluxStore.point(msgs.alert("id:with.colon-1")).to_line_protocol()
    assert line.startswith(f"alert,alert_id=id:with.colon-1,device=meter-1,gateway={msgs.gateway},")
    with pytest.raises(TypeError, match="str"):
        InfluxStore.point("telemetry,x=1 y=2")  # type: ignore[arg-type]


def test_influx_store_unreachable_raises_store_error_naming_server(msgs: MsgFactory) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        s = sock.getsockname()[1]
    store = InfluxStore(f"http://127.0.0.1:{s}", token="t", org="o", bucket="b")
    try:
        with pytest.raises(StoreError, match=f"127.0.0.1:{s}.*bucket 'b'"):
            store.write([msgs.telemetry()])
    finally:
        store.close()

