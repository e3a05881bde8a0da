#!/usr/bin/env bash
# Install (if missing) and start the services the tests need, on loopback only:
#
#   victoria-metrics  http://127.0.0.1:8428  (InfluxDB line protocol on /api/v2/write)
#   mosquitto         127.0.0.1:1883         (anonymous, loopback)
#
# and installs (if missing) what tests start themselves: Debian's chromium for the alert
# desk's browser test (Playwright cannot download its own browser here), and the
# mosquitto binaries for the private brokers of the ACL/TLS tests.
#
# Idempotent: a service that already answers is left alone, so running this twice is safe.
# Exits non-zero with a message naming the service when one cannot be installed or started.
# Needs root (apt-get) only when a package is missing.
#
# Environment overrides:
#   VM_DATA_DIR   VictoriaMetrics storage directory (default /tmp/flylead-vm-data)
#   VM_LOG        VictoriaMetrics log file          (default /tmp/flylead-vm.log)
#   WAIT_S        seconds to wait for each service  (default 30)
#
# Retention is 100 years so that demo/test data stamped with historical times (the bundled
# UCI household data is from 2006-2010) is kept: VictoriaMetrics drops samples older than
# its retention period.  -dedup.minScrapeInterval=1ms keeps one sample per series and
# millisecond, so a message written twice reads back once, as InfluxDB's overwrite would.
set -euo pipefail

VM_HOST=127.0.0.1
VM_PORT=8428
VM_ADDR=$VM_HOST:$VM_PORT
VM_DATA_DIR=${VM_DATA_DIR:-/tmp/flylead-vm-data}
VM_LOG=${VM_LOG:-/tmp/flylead-vm.log}
MQTT_HOST=127.0.0.1
MQTT_PORT=1883
WAIT_S=${WAIT_S:-30}

die() {
    echo "services.sh: $*" >&2
    exit 1
}

# HTTP GET succeeds (2xx) within 2 s; curl when present, else python3.
http_ok() {
    if command -v curl >/dev/null 2>&1; then
        curl -fsS -m 2 -o /dev/null "$1" 2>/dev/null
    else
        python3 - "$1" <<'EOF' 2>/dev/null
import sys, urllib.request
urllib.request.urlopen(sys.argv[1], timeout=2).read()
EOF
    fi
}

# Something accepts TCP connections on host:port within 1 s.
tcp_open() {
    timeout 1 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null
}

# Install a Debian package; `apt-get update` only when the first attempt fails.
apt_install() {
    local pkg=$1
    command -v apt-get >/dev/null 2>&1 || die "$pkg is missing and apt-get is not available"
    echo "services.sh: installing $pkg"
    local sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    if ! DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y "$pkg" >/tmp/flylead-apt-$pkg.log 2>&1; then
        $sudo apt-get update >>/tmp/flylead-apt-$pkg.log 2>&1 || true
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y "$pkg" >>/tmp/flylead-apt-$pkg.log 2>&1 \
            || die "apt-get install $pkg failed (log: /tmp/flylead-apt-$pkg.log)"
    fi
}

# Poll `$@` every 0.2 s for up to WAIT_S seconds.
wait_for() {
    local deadline=$((SECONDS + WAIT_S))
    until "$@"; do
        ((SECONDS < deadline)) || return 1
        sleep 0.2
    done
}

start_victoria() {
    if http_ok "http://$VM_ADDR/health"; then
        echo "services.sh: victoria-metrics already up on $VM_ADDR"
        return
    fi
    tcp_open "$VM_HOST" "$VM_PORT" \
        && die "$VM_ADDR is taken by something that does not answer /health like victoria-metrics"
    [[ -x /usr/bin/victoria-metrics ]] || apt_install victoria-metrics
    [[ -x /usr/bin/victoria-metrics ]] || die "victoria-metrics installed but /usr/bin/victoria-metrics is missing"
    mkdir -p "$VM_DATA_DIR"
    # setsid + nohup: the server outlives this script and the shell that ran it.
    setsid nohup /usr/bin/victoria-metrics \
        -httpListenAddr="$VM_ADDR" \
        -storageDataPath="$VM_DATA_DIR" \
        -retentionPeriod=100y \
        -dedup.minScrapeInterval=1ms \
        >"$VM_LOG" 2>&1 </dev/null &
    echo "services.sh: started victoria-metrics (pid $!, data $VM_DATA_DIR, log $VM_LOG)"
    wait_for http_ok "http://$VM_ADDR/health" \
        || die "victoria-metrics did not answer http://$VM_ADDR/health within ${WAIT_S}s (log: $VM_LOG)"
    echo "services.sh: victoria-metrics up on $VM_ADDR"
}

start_mosquitto() {
    if tcp_open "$MQTT_HOST" "$MQTT_PORT"; then
        echo "services.sh: mosquitto (or another MQTT broker) already listening on $MQTT_HOST:$MQTT_PORT"
        return
    fi
    command -v mosquitto >/dev/null 2>&1 || [[ -x /usr/sbin/mosquitto ]] || apt_install mosquitto
    local bin
    bin=$(command -v mosquitto || echo /usr/sbin/mosquitto)
    [[ -x $bin ]] || die "mosquitto installed but no mosquitto binary found"
    local conf=/etc/mosquitto/mosquitto.conf
    # The packaged config may listen elsewhere or need credentials; use a minimal loopback
    # config unless the packaged one listens on 127.0.0.1:1883 with anonymous access.
    if ! { [[ -r $conf ]] && grep -Eq "^listener[[:space:]]+$MQTT_PORT([[:space:]]+$MQTT_HOST)?[[:space:]]*$" "$conf" \
            && grep -Eq '^allow_anonymous[[:space:]]+true' "$conf"; }; then
        conf=/tmp/flylead-mosquitto.conf
        cat >"$conf" <<EOF
listener $MQTT_PORT $MQTT_HOST
allow_anonymous true
persistence false
log_dest file /tmp/flylead-mosquitto.log
EOF
    fi
    # mosquitto drops to user "mosquitto" when started as root; it needs its pid/log dirs.
    mkdir -p /run/mosquitto /var/log/mosquitto 2>/dev/null || true
    chown mosquitto: /run/mosquitto /var/log/mosquitto 2>/dev/null || true
    "$bin" -d -c "$conf" || die "mosquitto -d -c $conf failed to start"
    echo "services.sh: started mosquitto with $conf"
    wait_for tcp_open "$MQTT_HOST" "$MQTT_PORT" \
        || die "mosquitto did not listen on $MQTT_HOST:$MQTT_PORT within ${WAIT_S}s (config $conf)"
    echo "services.sh: mosquitto up on $MQTT_HOST:$MQTT_PORT"
}

install_test_tools() {
    [[ -x /usr/bin/chromium ]] || apt_install chromium
    [[ -x /usr/bin/chromium ]] || die "chromium installed but /usr/bin/chromium is missing"
    [[ -x /usr/sbin/mosquitto && -x /usr/bin/mosquitto_passwd ]] || apt_install mosquitto
    echo "services.sh: chromium and mosquitto binaries present"
}

install_test_tools
start_victoria
start_mosquitto
