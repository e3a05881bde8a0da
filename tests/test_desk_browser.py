"""The alert desk in a real browser: Debian's headless Chromium driven by Playwright.

A village user logs in, sees only the village's alerts, works one case through dispatch,
on-site verification, rectification and the look-back re-check; then the emergency office
logs in and sees the change.  The desk runs on a loopback port in this process (werkzeug's
threaded server); Chromium is /usr/bin/chromium (installed by .ci/services.sh), never a
browser downloaded by Playwright.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.desk import create_app, load_registry
from broker.desk.service import make_server
from tests.test_desk import PASSWORDS, Scenario, build_scenario

CHROMIUM = "/usr/bin/chromium"
#: Flags for a root, display-less machine with no network but loopback (no sandbox as
#: root; no GPU; no background connections to Google's services, which would be refused).
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 10_000


@pytest.fixture
def desk_url(tmp_path: Path) -> Iterator[tuple[str, Scenario]]:
    sc = build_scenario(tmp_path)
    app = create_app(sc.desk, load_registry(sc.registry_path), store_path=sc.store_path)
    server = make_server(app, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", sc
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} missing: run .ci/services.sh (installs Debian's chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


def _login(page, base: str, user: str) -> None:  # noqa: ANN001
    page.goto(f"{base}/")
    assert page.url.startswith(f"{base}/login")
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", PASSWORDS[user])
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/")


def _visible_cases(page) -> dict[int, str]:  # noqa: ANN001
    """case id -> state shown in the case list."""
    rows = page.locator("tr[data-case]")
    return {int(rows.nth(i).get_attribute("data-case")): rows.nth(i).locator("[data-testid=state]").inner_text()
            for i in range(rows.count())}


def test_village_user_works_a_case_and_the_office_sees_it(browser, desk_url) -> None:  # noqa: ANN001
    base, sc = desk_url
    ctx = browser.new_context()
    ctx.set_default_timeout(TIMEOUT_MS)
    page = ctx.new_page()
    _login(page, base, "east")
    assert page.locator("[data-testid=who]").inner_text().strip() == "east · East Village"
    assert _visible_cases(page) == {sc.cases["e101"]: "new", sc.cases["e102"]: "new"}
    assert page.locator("section.village h2").all_inner_texts() == ["East Village"]
    assert "Willow Court" not in page.content()

    # another village's case, asked for directly
    resp = page.goto(f"{base}/case/{sc.cases['w201']}")
    assert resp is not None and resp.status == 404

    cid = sc.cases["e101"]
    page.goto(f"{base}/")
    page.click(f"tr[data-case='{cid}'] a")
    page.wait_for_url(f"{base}/case/{cid}")
    # the load plot loaded as an image (naturalWidth > 0 only for a decoded image)
    img = page.locator("figure img")
    assert img.evaluate("i => i.complete && i.naturalWidth") == 800

    page.fill("input[name=worker]", "Wang Wei")
    page.fill("textarea[name=note]", "night patrol, building 3")
    page.click("[data-testid=action]")
    expect_state(page, "dispatched")
    assert page.locator("[data-testid=worker]").inner_text() == "Wang Wei"
    for label, state in [("Verified on site", "verified"), ("Rectified", "rectified"),
                         ("Re-checked (look back)", "rechecked")]:
        assert page.locator("[data-testid=action]").inner_text() == label
        page.click("[data-testid=action]")
        expect_state(page, state)
    history = page.locator("table.history tbody tr").all_inner_texts()
    assert [re.split(r"\t", h)[1:3] for h in history] == [
        ["system", "new"], ["east", "dispatched"], ["east", "verified"], ["east", "rectified"],
        ["east", "rechecked"]]
    ctx.close()

    office = browser.new_context()
    office.set_default_timeout(TIMEOUT_MS)
    page = office.new_page()
    _login(page, base, "office")
    assert _visible_cases(page) == {cid: "rechecked", sc.cases["e102"]: "new",
                                    sc.cases["w201"]: "new", sc.cases["x999"]: "new"}
    page.goto(f"{base}/case/{cid}")
    assert page.locator("[data-testid=worker]").inner_text() == "Wang Wei"
    assert page.locator("[data-testid=action]").inner_text() == "Close case"
    office.close()
    assert sc.desk.case(cid).state == "rechecked"


def expect_state(page, state: str) -> None:  # noqa: ANN001
    page.wait_for_selector(f"[data-testid=case-state]:text-is('{state}')")
