"""Notifications of new cases: WeCom and DingTalk group robots, and e-mail (SMTP).

Each channel sends a :class:`Message` (a title and a Markdown text) and retries transient
failures with tenacity (exponential backoff); what still fails raises
:class:`NotifyError` naming the channel and the cause.  :class:`Notifier` sends one
message per new case to every channel whose village filter matches, and reports failures
per channel instead of raising, so one dead webhook does not silence the others.

Wire formats (the vendors' group-robot documentation):

* WeCom (企业微信) group robot: ``POST {url}`` with
  ``{"msgtype": "markdown", "markdown": {"content": TEXT}}``; answer
  ``{"errcode": 0, "errmsg": "ok"}``.
* DingTalk (钉钉) custom robot: ``POST {url}`` with
  ``{"msgtype": "markdown", "markdown": {"title": TITLE, "text": TEXT}}``; with a signing
  secret the URL gets ``&timestamp=T&sign=S`` where T is the time in milliseconds and
  S = urlencode(base64(HMAC-SHA256(key=secret, msg=f"{T}\\n{secret}"))).  DingTalk
  refuses a timestamp more than an hour off.  Answer ``{"errcode": 0, ...}``.

Channels are configured in a TOML file (:func:`load_channels`, docs/desk.md)::

    [[wecom]]
    url = "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=..."
    villages = ["east"]            # optional: only these villages' cases (default: all)

    [[dingtalk]]
    url = "https://oapi.dingtalk.com/robot/send?access_token=..."
    secret_env = "DINGTALK_SECRET" # the signing secret, read from this variable

    [[email]]
    host = "smtp.example.org"
    port = 587
    starttls = true
    sender = "flylead@example.org"
    to = ["office@example.org"]
    username = "flylead"
    password_env = "SMTP_PASSWORD"
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import smtplib
import ssl
import time
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Annotated, Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

__all__ = [
    "Channel",
    "DingTalkRobot",
    "Message",
    "NotifyError",
    "Notifier",
    "SmtpMailer",
    "WeComRobot",
    "case_message",
    "dingtalk_sign",
    "load_channels",
]

log = logging.getLogger("flylead.notify")

#: Attempts per message (the first and two retries): rides out a dropped connection,
#: a restarting relay or a robot's per-minute rate limit without delaying the next case
#: for long.
ATTEMPTS = 3
#: Backoff before retry n (s): RETRY_WAIT_S * 2**(n-1), at most RETRY_MAX_S.
RETRY_WAIT_S = 1.0
RETRY_MAX_S = 10.0
#: Seconds one HTTP request or SMTP conversation may take.
TIMEOUT_S = 10.0
#: Robot error codes that mean "too many messages, try later": WeCom 45009 (API
#: frequency out of limit), DingTalk 130101 (more than 20 messages a minute).
RATE_LIMIT_ERRCODES = frozenset({45009, 130101})
#: Default of :attr:`Notifier.max_age_s`: a day, so alerts of last night are still sent
#: after a morning restart, older ones are backlog.
DEFAULT_MAX_AGE_S = 86_400.0
#: Robot Markdown content limits (bytes): WeCom allows 4096; DingTalk's is larger.
MAX_CONTENT_BYTES = 4000


class NotifyError(Exception):
    """A message could not be delivered; the message names the channel and the cause."""


class _Transient(NotifyError):
    """A failure worth retrying (network, HTTP 5xx/429, rate limit, SMTP 4xx)."""


@dataclass(frozen=True, slots=True)
class Message:
    """A notification: a short title and a Markdown body."""

    title: str
    text: str


class Channel(Protocol):
    name: str
    villages: frozenset[str] | None

    def send(self, message: Message) -> None: ...


def _retrying(attempts: int, wait_s: float) -> Retrying:
    return Retrying(stop=stop_after_attempt(attempts),
                    wait=wait_exponential(multiplier=wait_s, max=RETRY_MAX_S),
                    retry=retry_if_exception_type(_Transient), reraise=True)


def _redact_url(url: str) -> str:
    """``url`` without its query (robot URLs carry their key or token there)."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(query="…" if parts.query else ""))


def _truncate(text: str, limit: int = MAX_CONTENT_BYTES) -> str:
    data = text.encode()
    if len(data) <= limit:
        return text
    return data[: limit - 3].decode(errors="ignore") + "..."


class _Robot:
    """A group robot webhook: POST JSON, expect ``{"errcode": 0}``."""

    kind = "robot"

    def __init__(self, url: str, *, villages: Iterable[str] | None = None, attempts: int = ATTEMPTS,
                 retry_wait_s: float = RETRY_WAIT_S, timeout_s: float = TIMEOUT_S) -> None:
        if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            raise ValueError(f"{self.kind} webhook URL must be http(s), got {_redact_url(url)!r}")
        self.url = url
        self.villages = frozenset(villages) if villages is not None else None
        self.attempts, self.retry_wait_s, self.timeout_s = attempts, retry_wait_s, timeout_s
        self.name = f"{self.kind} {_redact_url(url)}"

    def payload(self, message: Message) -> dict[str, Any]:
        raise NotImplementedError

    def request_url(self) -> str:
        return self.url

    def send(self, message: Message) -> None:
        """POST ``message``; retries transient failures.

        Raises:
            NotifyError: still failing after :data:`ATTEMPTS`, or refused for good
                (HTTP 4xx other than 429, a non-zero errcode other than a rate limit).
        """
        body = json.dumps(self.payload(message), ensure_ascii=False).encode()
        for attempt in _retrying(self.attempts, self.retry_wait_s):
            with attempt:
                self._post(body)

    def _post(self, body: bytes) -> None:
        req = urllib.request.Request(self.request_url(), data=body, method="POST",
                                     headers={"Content-Type": "application/json; charset=utf-8"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                answer = resp.read(65_536)
        except urllib.error.HTTPError as exc:
            cls = _Transient if exc.code >= 500 or exc.code == 429 else NotifyError
            raise cls(f"{self.name}: HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise _Transient(f"{self.name}: {reason}") from None
        try:
            result = json.loads(answer)
            errcode = int(result.get("errcode", -1))
        except (ValueError, AttributeError, TypeError):
            raise NotifyError(f"{self.name}: answer is not robot JSON: {answer[:200]!r}") from None
        if errcode != 0:
            cls = _Transient if errcode in RATE_LIMIT_ERRCODES else NotifyError
            raise cls(f"{self.name}: errcode {errcode}: {str(result.get('errmsg', ''))[:200]}")


class WeComRobot(_Robot):
    """A WeCom (企业微信) group robot; ``url`` is its webhook with the ``key``."""

    kind = "wecom"

    def payload(self, message: Message) -> dict[str, Any]:
        return {"msgtype": "markdown",
                "markdown": {"content": _truncate(f"**{message.title}**\n\n{message.text}")}}


def dingtalk_sign(secret: str, timestamp_ms: int) -> str:
    """DingTalk's robot signature for ``timestamp_ms`` (URL-encoded, ready for the query)."""
    digest = hmac.new(secret.encode(), f"{timestamp_ms}\n{secret}".encode(), hashlib.sha256).digest()
    return urllib.parse.quote_plus(base64.b64encode(digest).decode())


class DingTalkRobot(_Robot):
    """A DingTalk (钉钉) custom robot; ``url`` is its webhook with the ``access_token``.

    Args:
        secret: the robot's signing secret ("加签", starts with ``SEC``); None when the
            robot is secured by keyword or IP instead.
        clock: UTC epoch seconds (tests pass a fixed clock).
    """

    kind = "dingtalk"

    def __init__(self, url: str, secret: str | None = None, *,
                 clock: Callable[[], float] = time.time, **kw: Any) -> None:
        super().__init__(url, **kw)
        self.secret, self.clock = secret, clock

    def request_url(self) -> str:
        if not self.secret:
            return self.url
        ts = int(self.clock() * 1000)
        sep = "&" if urllib.parse.urlsplit(self.url).query else "?"
        return f"{self.url}{sep}timestamp={ts}&sign={dingtalk_sign(self.secret, ts)}"

    def payload(self, message: Message) -> dict[str, Any]:
        return {"msgtype": "markdown",
                "markdown": {"title": message.title[:100],
                             "text": _truncate(f"### {message.title}\n\n{message.text}")}}


class SmtpMailer:
    """E-mail through an SMTP relay (plain text: the Markdown reads fine as text).

    Args:
        host, port: the relay.
        sender: From address; recipients: To addresses.
        starttls: upgrade with STARTTLS (port 587); use_ssl: TLS from the start (465).
        username, password: SMTP AUTH (None: no login).
    """

    def __init__(self, host: str, port: int, sender: str, recipients: Sequence[str], *,
                 starttls: bool = False, use_ssl: bool = False, username: str | None = None,
                 password: str | None = None, villages: Iterable[str] | None = None,
                 attempts: int = ATTEMPTS, retry_wait_s: float = RETRY_WAIT_S,
                 timeout_s: float = TIMEOUT_S, ssl_context: ssl.SSLContext | None = None) -> None:
        if not recipients:
            raise ValueError(f"e-mail channel via {host}:{port} has no recipients")
        self.host, self.port, self.sender, self.recipients = host, port, sender, list(recipients)
        self.starttls, self.use_ssl = starttls, use_ssl
        self.username, self.password = username, password
        self.villages = frozenset(villages) if villages is not None else None
        self.attempts, self.retry_wait_s, self.timeout_s = attempts, retry_wait_s, timeout_s
        self.ssl_context = ssl_context
        self.name = f"email via {host}:{port}"

    def send(self, message: Message) -> None:
        """Send ``message`` to all recipients; retries connection errors and 4xx replies.

        Raises:
            NotifyError: still failing after :data:`ATTEMPTS`, or refused for good (5xx).
        """
        mail = EmailMessage()
        mail["Subject"] = message.title
        mail["From"] = self.sender
        mail["To"] = ", ".join(self.recipients)
        mail.set_content(message.text)
        for attempt in _retrying(self.attempts, self.retry_wait_s):
            with attempt:
                self._send(mail)

    def _send(self, mail: EmailMessage) -> None:
        ctx = self.ssl_context or ssl.create_default_context()
        try:
            if self.use_ssl:
                smtp: smtplib.SMTP = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout_s, context=ctx)
            else:
                smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout_s)
            with smtp:
                if self.starttls:
                    smtp.starttls(context=ctx)
                if self.username is not None:
                    smtp.login(self.username, self.password or "")
                refused = smtp.send_message(mail)
        except smtplib.SMTPResponseException as exc:
            cls = _Transient if 400 <= exc.smtp_code < 500 else NotifyError
            raise cls(f"{self.name}: SMTP {exc.smtp_code} {exc.smtp_error!r}") from None
        except smtplib.SMTPRecipientsRefused as exc:
            raise NotifyError(f"{self.name}: all recipients refused: {sorted(exc.recipients)}") from None
        except (smtplib.SMTPException, OSError) as exc:
            raise _Transient(f"{self.name}: {type(exc).__name__}: {exc}") from None
        if refused:
            raise NotifyError(f"{self.name}: recipients refused: {sorted(refused)}")


def case_message(case: Any, registry: Any, base_url: str | None = None) -> Message:
    """The notification of a new case (a :class:`broker.desk.Case`), times in the
    registry's time zone."""
    from broker.desk.db import KIND_LABELS

    tz = registry.zone
    start = datetime.fromtimestamp(case.alert_start, tz).strftime("%Y-%m-%d %H:%M %Z")
    kind = KIND_LABELS.get(case.kind, case.kind)
    title = f"{'Rebound: ' if case.rebound else ''}{kind}, {registry.village_name(case.village)}"
    lines = [
        f"- village: {registry.village_name(case.village)}",
        f"- compound: {registry.compound_name(case.compound)}",
        f"- household: {case.household} (meter {case.device})",
        f"- since: {start}",
        f"- confidence: {case.confidence * 100:.0f} %",
    ]
    if case.energy_kwh is not None:
        lines.append(f"- energy: {case.energy_kwh:.2f} kWh")
    if case.rebound:
        lines.append(f"- rebound of case #{case.rebound_of}")
    if base_url:
        lines.append(f"\n[Case #{case.id}]({base_url.rstrip('/')}/case/{case.id})")
    else:
        lines.append(f"\nCase #{case.id}")
    return Message(title, "\n".join(lines))


@dataclass
class Notifier:
    """Sends each new case to every channel whose ``villages`` include the case's village.

    Args:
        channels: where to send.
        base_url: the desk's public URL, for links to the case.
        max_age_s: cases whose alert started longer ago than this (s) are not sent
            (None: all).  When a desk first syncs a store that holds months of alerts,
            they are backlog to work in the desk, not news for a group chat (and robots
            take at most 20 messages a minute).

    Attributes:
        sent: (channel name, case id) of each delivered message.
        failures: (channel name, case id, error text) of each undelivered one.
        skipped: ids of cases not sent because of ``max_age_s``.
    """

    channels: list[Any]
    base_url: str | None = None
    max_age_s: float | None = DEFAULT_MAX_AGE_S
    sent: list[tuple[str, int]] = field(default_factory=list)
    failures: list[tuple[str, int, str]] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)

    def notify(self, cases: Iterable[Any], registry: Any, *, now: float | None = None) -> int:
        """Send ``cases``; returns the number of messages that failed (logged, kept in
        :attr:`failures`).  Never raises for a channel's failure.  ``now``: UTC epoch s
        (default the wall clock), for ``max_age_s``."""
        failed = 0
        now = time.time() if now is None else now
        for case in cases:
            if self.max_age_s is not None and case.alert_start < now - self.max_age_s:
                self.skipped.append(case.id)
                continue
            message = case_message(case, registry, self.base_url)
            for ch in self.channels:
                if ch.villages is not None and case.village not in ch.villages:
                    continue
                try:
                    ch.send(message)
                except NotifyError as exc:
                    failed += 1
                    self.failures.append((ch.name, case.id, str(exc)))
                    log.error("case %d not notified: %s", case.id, exc)
                else:
                    self.sent.append((ch.name, case.id))
        return failed


def _secret(entry: dict[str, Any], key: str, where: str) -> str | None:
    """``entry[key]``, or the environment variable named by ``entry[key + '_env']``."""
    env = entry.get(f"{key}_env")
    if env is not None:
        value = os.environ.get(str(env))
        if value is None:
            raise ValueError(f"{where}: environment variable {env!r} ({key}_env) is not set")
        return value
    value = entry.get(key)
    return None if value is None else str(value)


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    villages: list[Annotated[str, Field(min_length=1)]] | None = None


class _Robot(_Entry):
    url: Annotated[str, Field(pattern=r"^https?://\S+$")]


class _DingTalk(_Robot):
    secret: str | None = None
    secret_env: str | None = None


class _Email(_Entry):
    host: Annotated[str, Field(min_length=1)]
    port: Annotated[int, Field(ge=1, le=65535)] = 25
    sender: Annotated[str, Field(min_length=3)]
    to: Annotated[list[Annotated[str, Field(min_length=3)]], Field(min_length=1)]
    starttls: bool = False
    ssl: bool = False
    username: str | None = None
    password: str | None = None
    password_env: str | None = None


class _NotifyFile(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    wecom: list[_Robot] = []
    dingtalk: list[_DingTalk] = []
    email: list[_Email] = []


def load_channels(path: str | Path, **kw: Any) -> list[Any]:
    """Channels from a TOML file (format in the module docstring); ``kw`` go to each
    channel (e.g. ``retry_wait_s``).  Types are checked strictly: ``to`` and ``villages``
    are lists of names (a string is not read as its letters), ``port`` an integer 1-65535,
    ``starttls`` and ``ssl`` booleans.

    Raises:
        ValueError: unreadable file, unknown section or key, missing field or a value of
            the wrong type (the message names the file, the entry and the key).
    """
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8-sig"))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"notification config {path}: {exc}") from exc
    try:
        cfg = _NotifyFile.model_validate(data)
    except ValidationError as exc:
        problems = []
        sections = sorted(str(e["loc"][0]) for e in exc.errors()
                          if e["type"] == "extra_forbidden" and len(e["loc"]) == 1)
        if sections:
            problems.append(f"notification config {path}: unknown sections {sections} (wecom, dingtalk, email)")
        for err in exc.errors():
            loc = list(err["loc"])
            if len(loc) == 1 and err["type"] == "extra_forbidden":
                continue
            where = f"[[{loc[0]}]] #{loc[1] + 1}" if len(loc) >= 2 and isinstance(loc[1], int) else f"[{loc[0]}]"
            key = ".".join(str(x) for x in loc[2:])
            if err["type"] == "missing":
                problems.append(f"notification config {path}: {where}: missing {key!r}")
            elif err["type"] == "extra_forbidden":
                problems.append(f"notification config {path}: {where}: unknown key {key!r}")
            else:
                problems.append(f"notification config {path}: {where}: {key}: {err['msg']}")
        raise ValueError("\n".join(problems)) from None
    channels: list[Any] = []
    for r in cfg.wecom:
        channels.append(WeComRobot(r.url, villages=r.villages, **kw))
    for i, d in enumerate(cfg.dingtalk):
        where = f"notification config {path}: [[dingtalk]] #{i + 1}"
        channels.append(DingTalkRobot(d.url, _secret(d.model_dump(), "secret", where), villages=d.villages, **kw))
    for i, e in enumerate(cfg.email):
        where = f"notification config {path}: [[email]] #{i + 1}"
        channels.append(SmtpMailer(
            e.host, e.port, e.sender, e.to, starttls=e.starttls, use_ssl=e.ssl, username=e.username,
            password=_secret(e.model_dump(), "password", where), villages=e.villages, **kw))
    return channels
