#!/usr/bin/env bash
# test_ansible.sh - the fleet role (provisioning/ansible) against a local target.
#
#   tests/test_ansible.sh [BUILD_DIR]     (default: build; needs BUILD_DIR/lockerd and
#                                          BUILD_DIR/lockerctl, so run make first)
#
# Installs nothing. Without ansible-playbook (Debian package ansible-core) it prints
# SKIP and exits 0. Otherwise:
#
#   1. `ansible-playbook --syntax-check` of site.yml with inventory.example.yml.
#   2. The role run for real on this machine (connection: local) with every path under
#      a temporary root (lockerd_root): no package install (lockerd_install: false),
#      lockerd and lockerctl from BUILD_DIR, simulated reader and GPIO, no systemd
#      (lockerd_manage_service: false), [api] pointing at the city API reference
#      server (tests/cityapi/server.py) with an enrollment token made through its
#      admin API:
#      a. check mode on the empty root creates nothing;
#      b. the first run writes ROOT/etc/lockerd/lockerd.conf, which `lockerd -n`
#         accepts, and provisions the station;
#      c. lockerd is started on that config (by this script, as systemd would) and a
#         second run, now with the selftest, reports changed=0 and the selftest passed;
#         `lockerctl sync now` works against the city server with the certificate
#         the provisioning left in ROOT/var/lib/lockerd/tls;
#      d. check mode (with --diff) reports changed=0 and leaves every file as it was;
#         check mode with another station name reports the change and writes nothing;
#      e. a config lockerd refuses (a compartment's lock on the tamper line) fails at
#         the template's `lockerd -n` validation and leaves the old file in place.
#   The real `lockerctl provision` enrolls the station with the reference server;
#   `lockerctl selftest --no-locks` checks the simulated station and its city link.
#
# Exit status: 0 passed (or SKIP), 1 a check failed, 2 the binaries are missing.
set -euo pipefail

build=${1:-build}
say() { printf 'test_ansible: %s\n' "$*"; }

if ! command -v ansible-playbook >/dev/null 2>&1; then
    say "SKIP: ansible-playbook is not installed (Debian package ansible-core;" \
        "provisioning/quickstart installs it)"
    exit 0
fi
[ -d "$build" ] || { echo "test_ansible: no build directory '$build' (run make)" >&2; exit 2; }
build=$(cd "$build" && pwd)
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$(pwd)
lockerd=$build/lockerd
lockerctl=$build/lockerctl
for bin in "$lockerd" "$lockerctl"; do
    [ -x "$bin" ] || { echo "test_ansible: $bin not built (run make)" >&2; exit 2; }
done
playbooks=$repo/provisioning/ansible

failures=0
fail() {
    printf 'test_ansible: FAIL: %s\n' "$*" >&2
    failures=$((failures + 1))
}

tmp=$(mktemp -d /tmp/lockerd-ansible.XXXXXX)
server_pid=
lockerd_pid=
cleanup() {
    [ -n "$lockerd_pid" ] && kill "$lockerd_pid" 2>/dev/null && wait "$lockerd_pid" 2>/dev/null
    [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
    if [ -n "${LOCKERD_KEEP_TMP:-}" ]; then
        say "kept $tmp"
    else
        rm -rf -- "$tmp"
    fi
}
trap cleanup EXIT

# Ansible's own files stay in the temporary directory; no ansible.cfg from the
# working directory or the home directory applies.
: >"$tmp/ansible.cfg"
export ANSIBLE_CONFIG=$tmp/ansible.cfg
export ANSIBLE_LOCAL_TEMP=$tmp/ansible-local ANSIBLE_REMOTE_TEMP=$tmp/ansible-remote
export ANSIBLE_NOCOLOR=1 ANSIBLE_RETRY_FILES_ENABLED=0 ANSIBLE_PIPELINING=1
export ANSIBLE_DEPRECATION_WARNINGS=0 ANSIBLE_LOCALHOST_WARNING=0
export ANSIBLE_INVENTORY_UNPARSED_WARNING=0

# ---- 1. syntax ---------------------------------------------------------------
say "1. syntax check of site.yml with inventory.example.yml"
if ! ansible-playbook -i "$playbooks/inventory.example.yml" "$playbooks/site.yml" \
        --syntax-check >"$tmp/syntax.log" 2>&1; then
    cat "$tmp/syntax.log" >&2
    fail "ansible-playbook --syntax-check"
fi

# ---- the city API reference server --------------------------------------------
station=st-ansible
root=$tmp/root
conf=$root/etc/lockerd/lockerd.conf
state=$root/var/lib/lockerd
run=$root/run/lockerd
sock=$run/control.sock
certs=$tmp/certs
"$repo/tests/cityapi/mkcerts.sh" "$certs" "$station" >/dev/null
mkfifo "$tmp/ready"
python3 "$repo/tests/cityapi/server.py" --db "$tmp/city.db" --certs "$certs" --port 0 \
    --admin-port 0 --station "$station" >"$tmp/ready" 2>"$tmp/server.log" </dev/null &
server_pid=$!
if ! read -r -t 20 ready <"$tmp/ready"; then
    cat "$tmp/server.log" >&2
    echo "test_ansible: the city API reference server did not start" >&2
    exit 1
fi
json_field() { python3 -c 'import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$@"; }
base_url=$(json_field "$ready" baseUrl)
admin_url=$(json_field "$ready" adminUrl)
admin() { # METHOD PATH [BODY]
    python3 - "$admin_url" "$@" <<'EOF'
import json, sys, urllib.request
url, method, path = sys.argv[1:4]
body = sys.argv[4].encode() if len(sys.argv) > 4 else None
req = urllib.request.Request(url + path, data=body, method=method,
                             headers={"Content-Type": "application/json"})
print(urllib.request.urlopen(req, timeout=10).read().decode())
EOF
}
token=$(json_field "$(admin POST /admin/enroll-tokens "{\"stationId\": \"$station\"}")" token)

# ---- lockerctl provision and selftest ----------------------------------------------
for cmd in provision selftest; do
    if ! "$lockerctl" --help 2>&1 | grep -qE "^  $cmd( |\$)"; then
        echo "test_ansible: $lockerctl has no '$cmd' command (rebuild)" >&2
        exit 2
    fi
done

# ---- the local target ----------------------------------------------------------
py=$(command -v python3)
cat >"$tmp/inventory.yml" <<EOF
all:
  vars:
    lockerd_report_file: $tmp/report.json
  children:
    lockerd_stations:
      hosts:
        test-station:
          ansible_connection: local
          ansible_python_interpreter: $py
          lockerd_become: false
          lockerd_root: $root
          lockerd_runtime_dir: $run
          lockerd_install: false
          lockerd_manage_service: false
          lockerd_bin: $lockerd
          lockerctl_bin: $lockerctl
          lockerd_conf_owner: $(id -un)
          lockerd_conf_group: $(id -gn)
          lockerd_state_owner: $(id -un)
          lockerd_state_group: $(id -gn)
          lockerd_station_id: $station
          lockerd_station_name: Sporthalle Ansible
          lockerd_reader: {backend: sim, auth: desfire}
          lockerd_gpio: {backend: sim, max_energize: 5s}
          lockerd_tamper: GPIO4
          lockerd_policy: {pickup_window: 20m}
          lockerd_control: {managers: "root"}
          lockerd_ui: {language: en}
          lockerd_api_url: $base_url
          lockerd_api_settings: {poll_interval: 30s}
          lockerd_enroll_token: $token
          lockerd_enroll_ca_src: $certs/server-ca.pem
          lockerd_compartments:
            1: {lock: GPIO17, door: GPIO27, key: GPIO22, key_label: Halle 1, hall: halle-1}
            2: {lock: GPIO5, door: "GPIO6, active-low, pull-up", key: GPIO13, key_label: Halle 2, hall: halle-2}
            3: {lock: GPIO19, door: GPIO26, key: GPIO21, key_label: Gymnastikraum, hall: gymnastikraum}
EOF

# play NAME [ansible-playbook args...]: runs site.yml, log in $tmp/NAME.log; sets
# $rc and $changed (the station's changed count in the recap).
play() {
    local name=$1
    shift
    rc=0
    ansible-playbook -i "$tmp/inventory.yml" "$playbooks/site.yml" "$@" \
        >"$tmp/$name.log" 2>&1 || rc=$?
    changed=$(sed -n 's/^test-station *: .*changed=\([0-9]*\).*/\1/p' "$tmp/$name.log")
    changed=${changed:-?}
}
show() { tail -n 40 "$tmp/$1.log" | sed 's/^/    /' >&2; }
report() { # FIELD: the station's value in the JSON report of the last run
    python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["test-station"][sys.argv[2]])' \
        "$tmp/report.json" "$1"
}
snapshot() { # every file under the root with its mode and checksum but the database
    # (the running lockerd writes it) and, with "nobackup", the role's backups of
    # lockerd.conf (the template module copies the old file before it validates the
    # new one, so a refused config leaves a copy of the unchanged file behind)
    local skip=()
    [ "${1:-}" = nobackup ] && skip=(! -name 'lockerd.conf.*~')
    (cd "$root" 2>/dev/null && find . -type f ! -name 'lockerd.db*' "${skip[@]}" \
        -printf '%p %m ' -exec sha256sum {} \; | sort) || true
}

# ---- 2a. check mode on an empty root --------------------------------------------
say "2a. check mode on an empty root"
play check-fresh --check
if [ "$rc" -ne 0 ]; then show check-fresh; fail "check mode on an empty root failed (exit $rc)"; fi
if [ -e "$root" ]; then
    fail "check mode created files: $(find "$root" | head -5 | tr '\n' ' ')"
fi

# ---- 2b. first run ----------------------------------------------------------------
say "2b. first run (config, provisioning; lockerd not running yet, so no selftest)"
play run1 -e lockerd_selftest=false
if [ "$rc" -ne 0 ]; then show run1; fail "first run failed (exit $rc)"; fi
say "   changed=$changed, provision $(report provision 2>/dev/null || echo '?')"
if [ "$changed" = "?" ] || [ "$changed" -eq 0 ]; then fail "first run reported changed=$changed"; fi
if [ -f "$conf" ]; then
    "$lockerd" -n -c "$conf" >"$tmp/normalised.conf" 2>"$tmp/n.err" ||
        fail "lockerd -n rejects the templated config: $(cat "$tmp/n.err")"
    grep -qx "id = $station" "$tmp/normalised.conf" || fail "normalised config lacks id = $station"
    grep -qx "door = GPIO27, active-low, pull-up" "$tmp/normalised.conf" ||
        fail "door line did not get the input options"
    grep -qx "url = $base_url" "$tmp/normalised.conf" || fail "[api] url not in the config"
    grep -qx "state_dir = $state" "$tmp/normalised.conf" || fail "state_dir is not under the root"
    grep -qx "language = en" "$tmp/normalised.conf" || fail "[ui] language not in the config"
    [ "$(stat -c %a "$conf")" = 640 ] || fail "lockerd.conf has mode $(stat -c %a "$conf"), not 640"
else
    fail "no $conf"
fi
[ "$(report provision 2>/dev/null)" = changed ] || fail "provision was not reported 'changed' on the first run"
for f in ca.pem client.pem client.key; do
    [ -s "$state/tls/$f" ] || fail "provisioning left no $state/tls/$f"
done

# ---- 2c. lockerd running, second run ---------------------------------------------
say "2c. lockerd started on the templated config; second run with the selftest"
mkdir -p "$(dirname "$run")"   # systemd's /run; lockerd makes /run/lockerd itself
"$lockerd" -c "$conf" >"$tmp/lockerd.log" 2>&1 </dev/null &
lockerd_pid=$!
for _ in $(seq 100); do
    [ -S "$sock" ] && "$lockerctl" -s "$sock" status >/dev/null 2>&1 && break
    kill -0 "$lockerd_pid" 2>/dev/null || break
    sleep 0.1
done
if ! "$lockerctl" -s "$sock" status >/dev/null 2>&1; then
    cat "$tmp/lockerd.log" >&2
    fail "lockerd did not start on the templated config"
fi
play run2
if [ "$rc" -ne 0 ]; then show run2; fail "second run failed (exit $rc)"; fi
say "   changed=$changed, provision $(report provision 2>/dev/null || echo '?'), selftest $(report selftest 2>/dev/null || echo '?')"
[ "$changed" = 0 ] || { show run2; fail "second run is not idempotent: changed=$changed"; }
[ "$(report selftest 2>/dev/null)" = pass ] || fail "the report does not say the selftest passed"
[ "$(report provision 2>/dev/null)" = ok ] || fail "provision was not 'ok' on the second run"
grep -q "test-station ($station, lockerd " "$tmp/run2.log" || fail "no summary line for the station"
if "$lockerctl" -s "$sock" sync now --timeout 20 >"$tmp/sync.out" 2>&1; then
    say "   lockerctl sync now: ok against the city server"
else
    cat "$tmp/sync.out" >&2
    fail "lockerctl sync now failed with the provisioned certificates"
fi

# ---- 2d. check mode ---------------------------------------------------------------
say "2d. check mode changes nothing"
before=$(snapshot)
play check --check --diff
if [ "$rc" -ne 0 ]; then show check; fail "check mode failed (exit $rc)"; fi
[ "$changed" = 0 ] || { show check; fail "check mode reported changed=$changed"; }
play check-rename --check --diff --tags lockerd_config \
    -e "lockerd_station_name='Sporthalle Umbenannt'"
if [ "$rc" -ne 0 ]; then show check-rename; fail "check mode with a new name failed (exit $rc)"; fi
if [ "$changed" = "?" ] || [ "$changed" -eq 0 ]; then
    fail "check mode did not report the new name (changed=$changed)"
fi
grep -q '^+name = Sporthalle Umbenannt' "$tmp/check-rename.log" || fail "--diff does not show the new name"
[ "$(snapshot)" = "$before" ] || fail "check mode changed files under $root"

# ---- 2e. a config lockerd refuses -------------------------------------------------
say "2e. a config lockerd -n refuses is not installed"
before=$(snapshot nobackup)
play bad --tags lockerd_config -e '{"lockerd_compartments": {"1": {"lock": "GPIO4", "door": "GPIO27", "key": "GPIO22"}}}'
[ "$rc" -ne 0 ] || fail "a compartment lock on the tamper line was accepted"
grep -q 'failed to validate' "$tmp/bad.log" || { show bad; fail "the failure is not the validation"; }
grep -q "test-station ($station, .*FAILED at lockerd.conf" "$tmp/bad.log" ||
    fail "the summary does not name the failed step"
report failed 2>/dev/null | grep -q '^lockerd.conf' || fail "the JSON report does not name the failed step"
[ "$(snapshot nobackup)" = "$before" ] || fail "the refused config changed files under $root"
kill -0 "$lockerd_pid" 2>/dev/null || fail "lockerd died during the test"

if [ "$failures" -ne 0 ]; then
    say "$failures check(s) failed (logs: LOCKERD_KEEP_TMP=1 keeps $tmp)"
    exit 1
fi
say "all checks passed"
