"""The half-monthly progress report: per village, what came in and what was done.

The campaign's villages report every half month, on the 14th and the 29th (domain facts
§1).  **Cut-offs** are the 14th and the 29th of each month, or the month's last day when
it has no 29th (February in common years).  A **period** runs from the day after one
cut-off to the next cut-off, both days included, in the campaign's local time (the
registry's ``tz``, default Asia/Shanghai)::

    Jan 30 – Feb 14,  Feb 15 – Feb 28 (29 in leap years),  Mar 1 – Mar 14,  Mar 15 – Mar 29, ...

:func:`campaign_period` gives the period ending on the latest cut-off on or before a day
(the default of ``flylead report``); ``--from``/``--to`` choose any span of days.

Counts per village for the days [first, last] (local midnight to local midnight, as UTC
epoch s [t0, t1)):

    alerts       cases whose alert started in the period
    rebounds     of those, rebounds (a new alert after the household's case was closed)
    dispatched   cases dispatched to a grid worker in the period
    verified     cases verified on site in the period
    rectified    cases rectified in the period
    rechecked    cases re-checked ("look back") in the period
    closed       cases closed in the period
    outstanding  cases whose alert started before the end of the period and that were
                 not closed by then (the backlog at the cut-off, whenever they came in)

A step counts in the period in which it was recorded, whenever its case came in.
"""

from __future__ import annotations

import calendar
import html
import re
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

from broker.desk.db import DeskDB
from broker.desk.registry import DEFAULT_TZ, UNASSIGNED, Registry

__all__ = [
    "COLUMNS",
    "Report",
    "VillageRow",
    "build_report",
    "campaign_period",
    "cutoff_days",
    "render_markdown",
    "write_report",
    "write_xlsx",
]

#: Counted columns, in report order, with their headings.
COLUMNS = {
    "alerts": "Alerts",
    "rebounds": "Rebounds",
    "dispatched": "Dispatched",
    "verified": "Verified",
    "rectified": "Rectified",
    "rechecked": "Re-checked",
    "closed": "Closed",
    "outstanding": "Outstanding",
}
#: Days of the month on which the villages report (domain facts §1: the 14th and 29th).
CUTOFF_DAYS = (14, 29)
#: Event action -> column it counts in.
_STEP_COLUMNS = {"dispatch": "dispatched", "verify": "verified", "rectify": "rectified",
                 "recheck": "rechecked", "close": "closed"}


def cutoff_days(year: int, month: int) -> tuple[int, ...]:
    """The cut-off days of a month: 14 and 29, or the last day if the month is shorter."""
    last = calendar.monthrange(year, month)[1]
    return tuple(min(d, last) for d in CUTOFF_DAYS)


def _cutoffs_before(day: date) -> tuple[date, date]:
    """(previous cut-off, latest cut-off on or before ``day``)."""
    candidates = []
    y, m = day.year, day.month
    for _ in range(3):  # this month and the two before hold at least two cut-offs
        candidates += [date(y, m, d) for d in cutoff_days(y, m)]
        y, m = (y, m - 1) if m > 1 else (y - 1, 12)
    past = sorted(c for c in candidates if c <= day)
    return past[-2], past[-1]


def campaign_period(day: date) -> tuple[date, date]:
    """(first, last) day of the period that ends on the latest cut-off on or before ``day``.

    >>> campaign_period(date(2026, 3, 5))
    (datetime.date(2026, 2, 15), datetime.date(2026, 2, 28))
    >>> campaign_period(date(2026, 3, 14))
    (datetime.date(2026, 3, 1), datetime.date(2026, 3, 14))
    """
    prev, last = _cutoffs_before(day)
    return prev + timedelta(days=1), last


def period_bounds(first: date, last: date, tz: ZoneInfo) -> tuple[float, float]:
    """[t0, t1) UTC epoch s of the local days ``first`` to ``last``, both included.

    Raises:
        ValueError: ``last`` is before ``first``.
    """
    if last < first:
        raise ValueError(f"report period ends ({last}) before it starts ({first})")
    t0 = datetime.combine(first, time(0), tz).timestamp()
    t1 = datetime.combine(last + timedelta(days=1), time(0), tz).timestamp()
    return t0, t1


@dataclass
class VillageRow:
    village: str
    name: str
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COLUMNS, 0))


@dataclass
class Report:
    """The report of one period; ``rows`` by village name, ``total`` summed."""

    first: date
    last: date
    tz: str
    generated: datetime
    rows: list[VillageRow]
    total: dict[str, int]
    outstanding_cases: list[dict[str, object]]


def build_report(desk: DeskDB, first: date, last: date, registry: Registry | None = None,
                 *, now: datetime | None = None) -> Report:
    """Count the desk's cases and steps for the days ``first``..``last`` (see module doc).

    Every village of ``registry`` gets a row, with zeros if nothing happened; villages
    known only from cases (and the unassigned pseudo-village) are added when they have
    cases.

    Raises:
        ValueError: ``last`` before ``first``.
        DeskError: the desk database cannot be read.
    """
    tzname = registry.tz if registry is not None else DEFAULT_TZ
    tz = ZoneInfo(tzname)
    t0, t1 = period_bounds(first, last, tz)
    cases = desk.cases()
    events = desk.events()
    closed_at: dict[int, float] = {}
    for e in events:
        if e.action == "close":
            closed_at[e.case_id] = min(closed_at.get(e.case_id, e.ts), e.ts)
    by_case = {c.id: c for c in cases}

    rows: dict[str, VillageRow] = {}

    def row(village: str) -> VillageRow:
        if village not in rows:
            name = registry.village_name(village) if registry is not None else (
                "(not in registry)" if village == UNASSIGNED else village)
            rows[village] = VillageRow(village, name)
        return rows[village]

    if registry is not None:
        for vid in registry.villages:
            row(vid)
    outstanding = []
    for c in cases:
        r = row(c.village)
        if t0 <= c.alert_start < t1:
            r.counts["alerts"] += 1
            if c.rebound:
                r.counts["rebounds"] += 1
        if c.alert_start < t1 and not (c.id in closed_at and closed_at[c.id] < t1):
            r.counts["outstanding"] += 1
            outstanding.append(c)
    for e in events:
        column = _STEP_COLUMNS.get(e.action)
        if column and t0 <= e.ts < t1 and e.case_id in by_case:
            row(by_case[e.case_id].village).counts[column] += 1

    ordered = sorted(rows.values(), key=lambda r: (r.village == UNASSIGNED, r.name, r.village))
    total = {k: sum(r.counts[k] for r in ordered) for k in COLUMNS}
    # the state each outstanding case was in at the end of the period
    state_at: dict[int, str] = {}
    for e in events:
        if e.ts < t1:
            state_at[e.case_id] = e.to_state
    listed = [
        {"case": c.id, "village": rows[c.village].name,
         "compound": registry.compound_name(c.compound) if registry else (c.compound or ""),
         "household": c.household, "kind": c.kind,
         "alert_start": datetime.fromtimestamp(c.alert_start, tz).strftime("%Y-%m-%d %H:%M"),
         "state": state_at.get(c.id, "new"), "worker": c.worker or "",
         "rebound": "yes" if c.rebound else ""}
        for c in sorted(outstanding, key=lambda c: (c.village == UNASSIGNED, rows[c.village].name,
                                                    c.alert_start, c.id))
    ]
    generated = now or datetime.now(timezone.utc)
    return Report(first, last, tzname, generated.astimezone(tz), ordered, total, listed)


_MARKDOWN = """\
# Flying-lead campaign: half-monthly report

Period: **{{ r.first }} to {{ r.last }}** (both days included, {{ r.tz }} time).
Generated {{ r.generated.strftime('%Y-%m-%d %H:%M %Z') }}.

| Village |{% for h in columns.values() %} {{ h }} |{% endfor %}
|---|{% for h in columns %}---:|{% endfor %}
{% for row in r.rows -%}
| {{ row.name | cell }} |{% for k in columns %} {{ row.counts[k] }} |{% endfor %}
{% endfor -%}
| **Total** |{% for k in columns %} **{{ r.total[k] }}** |{% endfor %}

Alerts and rebounds count cases whose alert started in the period; dispatched, verified,
rectified, re-checked and closed count the steps recorded in the period; outstanding is
the number of cases not closed at the end of the period.
{% if r.outstanding_cases %}
## Outstanding cases at {{ r.last }}

| Case | Village | Compound | Household | Alert | Since | State | Grid worker | Rebound |
|---:|---|---|---|---|---|---|---|---|
{% for c in r.outstanding_cases -%}
| {{ c.case }} | {{ c.village | cell }} | {{ c.compound | cell }} | {{ c.household | cell }} | {{ c.kind | cell }} | {{ c.alert_start }} | {{ c.state | cell }} | {{ c.worker | cell }} | {{ c.rebound }} |
{% endfor -%}
{% endif %}"""


def _cell(text: object) -> str:
    """Text safe inside a Markdown table cell: no pipe, no line break, no HTML (``<``, ``>``,
    ``&`` and quotes as entities: a renderer shows ``<script>`` as text), no link syntax
    (brackets escaped), no other control characters."""
    text = _CONTROL.sub(" ", str(text).replace("\r", " ").replace("\n", " "))
    text = html.escape(text.replace("\\", "\\\\").replace("|", "\\|"), quote=True)
    return text.replace("[", "\\[").replace("]", "\\]")


def render_markdown(report: Report) -> str:
    """The report as Markdown (jinja2)."""
    from jinja2 import Environment, StrictUndefined

    env = Environment(autoescape=False, undefined=StrictUndefined, keep_trailing_newline=True)
    env.filters["cell"] = _cell
    return env.from_string(_MARKDOWN).render(r=report, columns=COLUMNS)


#: Control characters (C0 and DEL, C1) in report text: XLSX cannot hold most C0 ones
#: (openpyxl raises IllegalCharacterError), Markdown should not.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
#: First characters that make a spreadsheet take a text as a formula (OWASP, "CSV injection").
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _xlsx_text(value: object) -> object:
    """A cell value safe to write: text without control characters (each replaced by
    U+FFFD, so that it is seen that something was there); other values as they are."""
    if isinstance(value, str):
        return _CONTROL.sub("\ufffd", value)
    return value


def _append(ws: object, values: list[object]) -> None:
    """Append a row of cleaned values; text that a spreadsheet would take as a formula
    (``=HYPERLINK(...)``, ``+1``, ``@SUM``) is written as a literal string: type ``s``
    and Excel's quote prefix (shown as typed, kept text when edited)."""
    values = [_xlsx_text(v) for v in values]
    ws.append(values)  # type: ignore[attr-defined]
    for cell, value in zip(ws[ws.max_row], values, strict=False):  # type: ignore[attr-defined,index]
        if isinstance(value, str) and value.lstrip(" \ufffd").startswith(_FORMULA_START):
            cell.data_type = "s"
            cell.quotePrefix = True


def write_xlsx(report: Report, path: str | Path) -> None:
    """The report as an XLSX workbook: sheet "Report" (counts per village and the total),
    sheet "Outstanding" (the cases open at the end of the period).  All text is written
    as text: control characters replaced, nothing taken as a formula (:func:`_append`)."""
    from openpyxl import Workbook
    from openpyxl.styles import Font

    wb = Workbook()
    ws = wb.active
    ws.title = "Report"
    bold = Font(bold=True)
    _append(ws, ["Flying-lead campaign: half-monthly report"])
    ws["A1"].font = Font(bold=True, size=14)
    _append(ws, ["Period", f"{report.first} to {report.last} ({report.tz}, both days included)"])
    _append(ws, ["Generated", report.generated.strftime("%Y-%m-%d %H:%M %Z")])
    ws.append([])
    _append(ws, ["Village", *COLUMNS.values()])
    for cell in ws[5]:
        cell.font = bold
    for row in report.rows:
        _append(ws, [row.name, *(row.counts[k] for k in COLUMNS)])
    _append(ws, ["Total", *(report.total[k] for k in COLUMNS)])
    for cell in ws[ws.max_row]:
        cell.font = bold
    ws.column_dimensions["A"].width = 28
    ws.column_dimensions["B"].width = 12
    out = wb.create_sheet("Outstanding")
    headings = ["Case", "Village", "Compound", "Household", "Alert", "Since", "State", "Grid worker", "Rebound"]
    _append(out, headings)
    for cell in out[1]:
        cell.font = bold
    for c in report.outstanding_cases:
        _append(out, [c["case"], c["village"], c["compound"], c["household"], c["kind"],
                      c["alert_start"], c["state"], c["worker"], c["rebound"]])
    wb.save(path)


def write_report(report: Report, path: str | Path) -> None:
    """Write ``report`` as XLSX or Markdown, by the extension of ``path``.

    Raises:
        ValueError: the extension is neither ``.xlsx`` nor ``.md``.
        OSError: the file cannot be written.
    """
    suffix = Path(path).suffix.lower()
    if suffix == ".xlsx":
        write_xlsx(report, path)
    elif suffix == ".md":
        Path(path).write_text(render_markdown(report), encoding="utf-8")
    else:
        raise ValueError(f"report file {path}: extension must be .xlsx or .md, got {suffix or 'none'!r}")
