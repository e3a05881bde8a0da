#!/usr/bin/env bash
# Run the end-to-end demo on a fresh clone: embedded broker, embedded store, no services needed.
# Extra arguments go to `flylead demo` (try --help).
source "$(dirname "$0")/env.sh"
flylead_venv ""
exec "$ROOT/.venv/bin/flylead" demo "$@"
