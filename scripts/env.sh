# Sourced by scripts/demo.sh and scripts/test.sh: make .venv and install flylead into it.
# Usage: flylead_venv EXTRAS   (EXTRAS: "" for the demo, "[test]" for the tests)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_install() {  # apt_install PKG...: install the Debian packages that are missing
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "installing Debian packages: ${missing[*]}"
  as_root apt-get install -y -q "${missing[@]}" >/dev/null 2>&1 || {
    as_root apt-get update -q >/dev/null && as_root apt-get install -y -q "${missing[@]}" >/dev/null; }
}

flylead_venv() {
  local extras="$1"
  if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "flylead needs Python >= 3.11 ($PYTHON is $("$PYTHON" -V 2>&1))" >&2; exit 1
  fi
  if [ ! -x "$ROOT/.venv/bin/python" ]; then
    "$PYTHON" -m venv "$ROOT/.venv" 2>/dev/null || { apt_install python3-venv; "$PYTHON" -m venv "$ROOT/.venv"; }
  fi
  local stamp="$ROOT/.venv/.flylead-installed$extras"
  if [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ]; then
    "$ROOT/.venv/bin/python" -m pip install -q --disable-pip-version-check -U pip
    "$ROOT/.venv/bin/python" -m pip install -q --disable-pip-version-check -e "$ROOT$extras"
    touch "$stamp"
  fi
}
