"""Mosquitto credentials and ACLs for flylead: one user per gateway, confined to its topics.

A gateway's MQTT user name is its gateway id.  Its ACL lets it **write** its own status,
telemetry, alert and health topics (``flylead/v1/{gateway}/status``, ``.../telemetry/+``,
``.../alert/+``, ``.../health/+``) and **read** only its own commands
(``flylead/v1/{gateway}/cmd/#``): it cannot publish as another gateway, cannot publish
commands (not even to itself) and cannot read anything else (not even alerts).
Server-side users get roles:

    ingest   read flylead/v1/+/telemetry/+, flylead/v1/+/alert/+, flylead/v1/+/status
    monitor  read flylead/v1/# and $SYS/#  (operators, dashboards)
    desk     write flylead/v1/+/cmd/#      (the alert desk's acknowledgements; reads nothing)

Files written (both created if missing, rewritten atomically, mode 0600):

* the password file (``password_file`` in mosquitto.conf): ``user:$7$ITER$SALT$HASH``,
  Mosquitto 2's PBKDF2-HMAC-SHA512 format (as ``mosquitto_passwd`` writes it), made
  here so no broker tools are needed on the machine that adds gateways;
* the ACL file (``acl_file``): one ``user`` block per user, kept in the file's order.

:func:`render_config` fills the broker configuration template
``broker/mosquitto/flylead.conf.template`` (listeners, TLS, files; docs/broker.md).
Mosquitto reads both files at start and on SIGHUP (``systemctl reload mosquitto``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
import string
import tempfile
from pathlib import Path

from agent.schema import CMD_WRITE_FILTER, NAME_PATTERN, TOPIC_ROOT

__all__ = [
    "CONFIG_TEMPLATE",
    "ROLES",
    "CredentialsError",
    "acl_lines",
    "add_gateway",
    "add_user",
    "hash_password",
    "read_acl",
    "render_config",
    "verify_password",
]

#: PBKDF2 iterations of the hashes written: mosquitto_passwd 2.0's default (101).  Low by
#: modern standards, but the broker hashes on every CONNECT, and the passwords made here
#: are random 192-bit tokens that no dictionary or brute force can reach.
ITERATIONS = 101
#: Salt length (bytes): mosquitto_passwd's (12).
SALT_BYTES = 12
#: Bytes of randomness in a generated password (base64url: 32 characters).
PASSWORD_BYTES = 24
#: The broker configuration template shipped with flylead.
CONFIG_TEMPLATE = Path(__file__).with_name("mosquitto") / "flylead.conf.template"

ROLES: dict[str, tuple[str, ...]] = {
    "ingest": (f"topic read {TOPIC_ROOT}/+/telemetry/+",
               f"topic read {TOPIC_ROOT}/+/alert/+",
               f"topic read {TOPIC_ROOT}/+/status"),
    "monitor": (f"topic read {TOPIC_ROOT}/#", "topic read $SYS/#"),
    "desk": (f"topic write {CMD_WRITE_FILTER}",),
}

_NAME = re.compile(NAME_PATTERN)


class CredentialsError(Exception):
    """A credentials or ACL file cannot be read or changed; the message names the file."""


def hash_password(password: str, *, salt: bytes | None = None, iterations: int = ITERATIONS) -> str:
    """Mosquitto 2's password hash ``$7$ITER$SALT_B64$HASH_B64`` (PBKDF2-HMAC-SHA512)."""
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_password(password: str, encoded: str) -> bool:
    """Whether ``password`` matches a Mosquitto hash (``$7$`` PBKDF2 or ``$6$`` SHA-512)."""
    parts = encoded.split("$")
    try:
        if len(parts) == 5 and parts[1] == "7":
            salt, want = base64.b64decode(parts[3]), base64.b64decode(parts[4])
            got = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, int(parts[2]))
        elif len(parts) == 4 and parts[1] == "6":
            salt, want = base64.b64decode(parts[2]), base64.b64decode(parts[3])
            got = hashlib.sha512(password.encode() + salt).digest()
        else:
            return False
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, want)


def _write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` (temp file in the same directory, then rename)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8") if path.exists() else ""
    except OSError as exc:
        raise CredentialsError(f"cannot read {path}: {exc}") from exc


def _check_name(name: str, what: str) -> None:
    if not _NAME.match(name):
        raise CredentialsError(f"{what} {name!r} must match {NAME_PATTERN}")


def acl_lines(user: str, role: str) -> tuple[str, ...]:
    """The ACL lines (after ``user``) of a ``gateway`` or one of :data:`ROLES`."""
    if role == "gateway":
        own = f"{TOPIC_ROOT}/{user}"
        return (f"topic write {own}/status", f"topic write {own}/telemetry/+",
                f"topic write {own}/alert/+", f"topic write {own}/health/+",
                f"topic read {own}/cmd/#")
    if role not in ROLES:
        raise CredentialsError(f"unknown role {role!r}: 'gateway' or one of {sorted(ROLES)}")
    return ROLES[role]


def read_acl(acl_file: str | Path) -> dict[str, list[str]]:
    """user -> their ACL lines, from an ACL file (lines before the first ``user`` and
    ``pattern`` lines are returned under the key ``""``)."""
    blocks: dict[str, list[str]] = {"": []}
    current = ""
    for raw in _read(Path(acl_file)).splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("user "):
            current = line[5:].strip()
            blocks.setdefault(current, [])
        else:
            blocks[current].append(line)
    return blocks


def _set_acl(acl_file: Path, user: str, lines: tuple[str, ...]) -> None:
    """Give ``user`` exactly ``lines`` in ``acl_file``, keeping every other block."""
    blocks = read_acl(acl_file)
    blocks[user] = list(lines)
    out = ["# flylead MQTT ACL: written by `flylead broker add-gateway` / `add-user`.",
           "# Anything not granted here is denied."]
    if blocks[""]:
        out += blocks[""]
    for name, body in blocks.items():
        if name:
            out += ["", f"user {name}", *body]
    _write_atomic(acl_file, "\n".join(out) + "\n")


def add_user(name: str, role: str, passwd_file: str | Path, acl_file: str | Path, *,
             password: str | None = None, replace: bool = False) -> str:
    """Add a broker user with the ACL of ``role``; returns the password.

    Args:
        name: user name (a gateway's is its gateway id).
        role: ``gateway`` or one of :data:`ROLES`.
        password: None generates a random one (recommended; it is returned once).
        replace: set a new password for an existing user (rotation) instead of failing.

    Raises:
        CredentialsError: bad name or role, the user exists and ``replace`` is False, or
            a file cannot be read or written (the message names it).
    """
    _check_name(name, "user name")
    lines = acl_lines(name, role)
    passwd, acl = Path(passwd_file), Path(acl_file)
    if passwd.resolve() == acl.resolve():
        raise CredentialsError(f"the password file and the ACL file are both {passwd}; give two files")
    for path in (passwd, acl):
        if not path.parent.is_dir():
            raise CredentialsError(f"cannot write {path}: folder {path.parent} does not exist "
                                   "(mosquitto reads the files where its configuration says)")
    entries: list[tuple[str, str]] = []
    for n, raw in enumerate(_read(passwd).splitlines(), 1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        user, sep, encoded = raw.partition(":")
        if not sep:
            raise CredentialsError(f"{passwd}:{n}: not 'user:hash'")
        entries.append((user, encoded))
    if any(user == name for user, _ in entries) and not replace:
        raise CredentialsError(f"user {name!r} already in {passwd} (use replace/--rotate to set a new password)")
    if password is None:
        password = secrets.token_urlsafe(PASSWORD_BYTES)
    if not password or ":" in password or "\n" in password:
        raise CredentialsError(f"password for {name!r} must be non-empty, without ':' or line breaks")
    encoded = hash_password(password)
    entries = [(u, encoded if u == name else e) for u, e in entries]
    if not any(u == name for u, _ in entries):
        entries.append((name, encoded))
    try:
        _write_atomic(passwd, "".join(f"{u}:{e}\n" for u, e in entries))
        _set_acl(acl, name, lines)
    except OSError as exc:
        raise CredentialsError(f"cannot write {passwd} / {acl}: {exc}") from exc
    return password


def add_gateway(name: str, passwd_file: str | Path, acl_file: str | Path, *,
                password: str | None = None, replace: bool = False) -> str:
    """Add a gateway: user ``name`` that may only publish its own status, telemetry, alert
    and health topics and read its own commands (``flylead/v1/{name}/cmd/#``).

    Returns the password (generated unless given).  Errors as :func:`add_user`.
    """
    _check_name(name, "gateway id")
    return add_user(name, "gateway", passwd_file, acl_file, password=password, replace=replace)


def render_config(template: str | Path = CONFIG_TEMPLATE, **values: object) -> str:
    """The broker configuration from ``template`` with ``$name`` placeholders filled.

    The shipped template's placeholders: ``host``, ``port`` (plain listener, keep it on
    loopback), ``tls_host``, ``tls_port``, ``cafile``, ``certfile``, ``keyfile``,
    ``passwd_file``, ``acl_file``, ``persistence`` (true/false), ``data_dir``,
    ``log_file``, ``run_user``.

    Raises:
        CredentialsError: the template cannot be read, a placeholder has no value, a value
            holds a line break or control character (it would add lines to the file), a
            ``*port`` is not 1-65535, a ``*host`` is empty, or the two listeners share a port.
    """
    for key, value in values.items():
        if any(ord(ch) < 32 for ch in str(value)):
            raise CredentialsError(f"{key}: {value!r} has a line break or control character")
        if key.endswith("port") and not (isinstance(value, int) and 1 <= value <= 65535):
            raise CredentialsError(f"{key} must be 1-65535, got {value!r}")
        if key.endswith("host") and not str(value).strip():
            raise CredentialsError(f"{key} must not be empty")
    if "port" in values and values.get("port") == values.get("tls_port"):
        raise CredentialsError(f"port and tls_port are both {values['port']}; the two listeners need two ports")
    text = _read(Path(template))
    if not text:
        raise CredentialsError(f"broker config template {template} is missing or empty")
    try:
        return string.Template(text).substitute({k: str(v) for k, v in values.items()})
    except KeyError as exc:
        raise CredentialsError(f"broker config template {template}: no value for ${exc.args[0]}") from None
