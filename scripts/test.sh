#!/usr/bin/env bash
# Run the test suite on a fresh clone: installs and starts on loopback what the tests need
# (Mosquitto, VictoriaMetrics as the InfluxDB-compatible store), then runs pytest.
# Extra arguments go to pytest.
source "$(dirname "$0")/env.sh"
flylead_venv "[test]"
bash "$ROOT/.ci/services.sh"
cd "$ROOT"
exec "$ROOT/.venv/bin/pytest" "$@"
