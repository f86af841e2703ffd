#!/usr/bin/env bash
# test_systemd.sh - lockerd's systemd integration, checked offline.
#
#   tests/test_systemd.sh [BUILD_DIR]        (default: build; part of `make check`)
#
# CI runs in containers where systemd is not PID 1, so nothing here talks to a
# running systemd:
#   1. `make install` into a temporary DESTDIR puts the unit, sysusers.d and
#      tmpfiles.d files where systemd's pkg-config file says;
#   2. `systemd-analyze verify` of the installed unit prints nothing (its ExecStart=
#      pointed at the DESTDIR binary, MANPATH at the DESTDIR man pages, so that the
#      executables and the Documentation= pages are really checked);
#   3. `systemd-analyze security --offline=yes` rates the exposure at most 2.0;
#   4. systemd-sysusers and systemd-tmpfiles applied to a temporary root shaped like
#      a fresh Debian and like Raspberry Pi OS (which has group gpio already): every
#      user and group the unit names exists, the directories and the config get the
#      intended owners and modes, and neither tool complains;
#   5. lockerd's sd_notify protocol as systemd sees it, with a notify socket of our
#      own: READY=1, WATCHDOG=1 at half of WATCHDOG_USEC (and none without it),
#      RELOADING=1 then READY=1 on SIGHUP, STOPPING=1 on SIGTERM.
# Needs: systemd (systemd-analyze, systemd-sysusers, systemd-tmpfiles), procps
# (/bin/kill, named by ExecReload=), python3, man-db (the Documentation= check; skipped
# with a note without it).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
build=${1:-build}
max_exposure=2.0

passed=0
failed=0
ok() {
    passed=$((passed + 1))
    printf 'ok   %s\n' "$*"
}
fail() {
    failed=$((failed + 1))
    printf 'FAIL %s\n' "$*"
}
die() {
    printf 'test_systemd: error: %s\n' "$*" >&2
    exit 2
}

for tool in systemd-analyze systemd-sysusers systemd-tmpfiles python3; do
    command -v "$tool" >/dev/null || die "$tool not found (Debian packages: systemd python3)"
done
# Without man-db verify cannot look the Documentation= pages up; say so, check the rest.
man_check=--man=yes
if ! command -v man >/dev/null; then
    man_check=--man=no
    echo "note: man not found (Debian package man-db): Documentation= pages not checked"
fi
[ -x /bin/kill ] || die "/bin/kill not found (Debian package procps)"
[ -x "$build/lockerd" ] || die "$build/lockerd not built (make BUILD=$build all)"

tmp=$(mktemp -d)
trap 'rm -rf -- "$tmp"' EXIT

# ------------------------------------------------------------ 1. make install
# The outer `make check` must not hand its flags to this make.
unset MAKEFLAGS MFLAGS MAKELEVEL MAKEOVERRIDES
dest=$tmp/dest
make -s install BUILD="$build" DESTDIR="$dest" PREFIX=/usr >"$tmp/install.log" 2>&1 || {
    cat "$tmp/install.log"
    die "make install failed"
}
unit=$(find "$dest" -path '*/systemd/system/lockerd.service')
sysusers=$(find "$dest" -path '*/sysusers.d/lockerd.conf')
tmpfiles=$(find "$dest" -path '*/tmpfiles.d/lockerd.conf')
if [ -n "$unit" ] && [ -n "$sysusers" ] && [ -n "$tmpfiles" ]; then
    ok "make install: ${unit#"$dest"}, ${sysusers#"$dest"}, ${tmpfiles#"$dest"}"
else
    fail "make install did not install the unit, sysusers.d and tmpfiles.d files"
    find "$dest" -type f | sed "s|^$dest|    |"
    exit 1
fi
# DESTDIR is the only difference between this tree and a real installation.
if grep -q '^ExecStart=/usr/sbin/lockerd -c /etc/lockerd/lockerd.conf$' "$unit"; then
    ok "installed unit runs /usr/sbin/lockerd -c /etc/lockerd/lockerd.conf"
else
    fail "installed unit's ExecStart= is $(grep '^ExecStart=' "$unit")"
fi

# ------------------------------------------------------------ 2. verify
# verify checks that the executables exist; --root= would need a whole system
# (sysinit.target and friends) inside the root, so the binary path is rewritten
# instead and the unit keeps its name (verify derives the unit name from it).
mkdir -p "$tmp/verify"
sed "s|/usr/sbin/lockerd|$dest/usr/sbin/lockerd|g" "$unit" >"$tmp/verify/lockerd.service"
if (cd "$tmp" && MANPATH=$dest/usr/share/man systemd-analyze verify "$man_check" \
    "$tmp/verify/lockerd.service") >"$tmp/verify.log" 2>&1 && [ ! -s "$tmp/verify.log" ]; then
    ok "systemd-analyze verify lockerd.service: clean"
else
    fail "systemd-analyze verify lockerd.service:"
    sed 's/^/    /' "$tmp/verify.log"
fi

# ------------------------------------------------------------ 3. security
(cd "$tmp" && systemd-analyze security --offline=yes --no-pager "$unit") \
    >"$tmp/security.log" 2>&1 || true
score=$(sed -n 's/.*Overall exposure level for lockerd\.service: \([0-9.]*\).*/\1/p' \
    "$tmp/security.log")
if [ -z "$score" ]; then
    fail "systemd-analyze security printed no exposure level:"
    sed 's/^/    /' "$tmp/security.log"
elif awk -v s="$score" -v m="$max_exposure" 'BEGIN { exit !(s <= m) }'; then
    ok "systemd-analyze security --offline=yes: exposure $score (at most $max_exposure)"
else
    fail "systemd-analyze security: exposure $score is over $max_exposure; the items:"
    grep '✗' "$tmp/security.log" | sed 's/^/    /'
fi

# ------------------------------------------------------------ 4. sysusers, tmpfiles
# A fresh Debian's static users and groups come from base-passwd's masters.
base_passwd=/usr/share/base-passwd/passwd.master
base_group=/usr/share/base-passwd/group.master
[ -r "$base_group" ] || {
    base_passwd=/etc/passwd
    base_group=/etc/group
}

# The unit's user and groups, as systemd will look them up.
unit_user=$(sed -n 's/^User=//p' "$unit")
unit_groups=$(sed -n 's/^Group=//p; s/^SupplementaryGroups=//p' "$unit" | tr ' ' '\n' | sort -u)

check_root() { # name root
    local name=$1 root=$2 err uid gid mode
    mkdir -p "$root/etc/lockerd"
    cp "$dest/etc/lockerd/lockerd.conf" "$root/etc/lockerd/"
    if ! systemd-sysusers --root="$root" "$sysusers" 2>"$tmp/sysusers.err"; then
        fail "$name: systemd-sysusers failed:"
        sed 's/^/    /' "$tmp/sysusers.err"
        return
    fi
    # It reports what it creates; anything else is a complaint.
    if grep -v "^Creating \(user\|group\) " "$tmp/sysusers.err" >"$tmp/sysusers.other"; then
        fail "$name: systemd-sysusers warned:"
        sed 's/^/    /' "$tmp/sysusers.other"
    else
        ok "$name: systemd-sysusers: $(grep -c '^Creating' "$tmp/sysusers.err") entries created"
    fi
    # Running it again must change nothing.
    if systemd-sysusers --root="$root" "$sysusers" 2>&1 | grep -q .; then
        fail "$name: a second systemd-sysusers run changed something"
    fi

    err=""
    uid=$(awk -F: -v u="$unit_user" '$1 == u { print $3 }' "$root/etc/passwd")
    [ -n "$uid" ] || err+=" user $unit_user missing;"
    for g in $unit_groups; do
        [ "$(awk -F: -v g="$g" '$1 == g' "$root/etc/group" | wc -l)" -eq 1 ] ||
            err+=" group $g missing or twice;"
    done
    if awk -F: -v u="$unit_user" '$1 == u && $7 !~ /nologin$/ { exit 1 }' "$root/etc/passwd"; then :; else
        err+=" $unit_user has a login shell;"
    fi
    if [ -z "$err" ]; then
        ok "$name: user $unit_user and groups $(echo "$unit_groups" | paste -sd' ') exist once each"
    else
        fail "$name:$err"
    fi

    if ! systemd-tmpfiles --root="$root" --create "$tmpfiles" >"$tmp/tmpfiles.err" 2>&1 ||
        [ -s "$tmp/tmpfiles.err" ]; then
        fail "$name: systemd-tmpfiles --create:"
        sed 's/^/    /' "$tmp/tmpfiles.err"
        return
    fi
    gid=$(awk -F: -v g=lockerd '$1 == g { print $3 }' "$root/etc/group")
    mode=$(stat -c '%a %u %g' "$root/var/lib/lockerd" 2>/dev/null || echo missing)
    if [ "$mode" = "750 $uid $gid" ]; then
        ok "$name: /var/lib/lockerd is 0750 lockerd:lockerd"
    else
        fail "$name: /var/lib/lockerd is '$mode', expected '750 $uid $gid'"
    fi
    mode=$(stat -c '%a %u %g' "$root/etc/lockerd/lockerd.conf")
    if [ "$mode" = "640 0 $gid" ]; then
        ok "$name: /etc/lockerd/lockerd.conf is 0640 root:lockerd"
    else
        fail "$name: /etc/lockerd/lockerd.conf is '$mode', expected '640 0 $gid'"
    fi
}

deb=$tmp/root-debian
mkdir -p "$deb/etc"
cp "$base_passwd" "$deb/etc/passwd"
cp "$base_group" "$deb/etc/group"
check_root "Debian" "$deb"

# Raspberry Pi OS: gpio exists (with a gid from its image build); ours must reuse it.
rpi=$tmp/root-rpios
mkdir -p "$rpi/etc"
cp "$base_passwd" "$rpi/etc/passwd"
{
    cat "$base_group"
    echo "gpio:x:997:pi"
} >"$rpi/etc/group"
check_root "Raspberry Pi OS" "$rpi"
if grep -qx 'gpio:x:997:pi' "$rpi/etc/group"; then
    ok "Raspberry Pi OS: its group gpio is left as it was"
else
    fail "Raspberry Pi OS: group gpio changed: $(grep '^gpio:' "$rpi/etc/group")"
fi

# A broken line must fail the tools, or the checks above prove nothing.
printf 'u lockerd - "x" /var/lib/lockerd\nq nonsense\n' >"$tmp/bad-sysusers.conf"
if systemd-sysusers --root="$deb" "$tmp/bad-sysusers.conf" >/dev/null 2>&1; then
    fail "systemd-sysusers accepted a broken file"
fi
printf 'd /var/lib/lockerd 0750 nosuchuser lockerd -\n' >"$tmp/bad-tmpfiles.conf"
if systemd-tmpfiles --root="$deb" --create "$tmp/bad-tmpfiles.conf" >/dev/null 2>&1; then
    fail "systemd-tmpfiles accepted an unknown user"
fi

# ------------------------------------------------------------ 5. sd_notify
mkdir -p "$tmp/station"
cat >"$tmp/station/lockerd.conf" <<EOF
# written by tests/test_systemd.sh
[station]
id = st-systemd
state_dir = $tmp/station/state
runtime_dir = $tmp/station/run

[reader]
backend = sim

[gpio]
backend = sim

[compartment.1]
lock = GPIO17
door = GPIO27, active-low, pull-up
key = GPIO22, active-low, pull-up
key_label = Halle 1
hall = halle-1
EOF

# Runs lockerd with NOTIFY_SOCKET (and the given watchdog settings) for a while,
# sends SIGHUP and SIGTERM, and prints what lockerd told "systemd": one line per
# message, "SECONDS MESSAGE" relative to lockerd's start.
notify_run() { # WATCHDOG_USEC|- WATCHDOG_PID-mode(self|other|-)
    python3 - "$build/lockerd" "$tmp/station/lockerd.conf" "$tmp/notify.sock" "$1" "$2" <<'EOF'
import os, signal, socket, subprocess, sys, time

lockerd, conf, path, usec, pidmode = sys.argv[1:]
if os.path.exists(path):
    os.unlink(path)
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
sock.bind(path)
sock.settimeout(0.05)
env = dict(os.environ, NOTIFY_SOCKET=path)
if usec != "-":
    env["WATCHDOG_USEC"] = usec
# WATCHDOG_PID must name lockerd itself: sh exports its own pid, then execs lockerd.
script = {"self": 'export WATCHDOG_PID=$$; exec "$0" -c "$1"',
          "other": 'export WATCHDOG_PID=1; exec "$0" -c "$1"',
          "-": 'exec "$0" -c "$1"'}[pidmode]
t0 = time.monotonic()
proc = subprocess.Popen(["sh", "-c", script, lockerd, conf], env=env,
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
plan = [(1.5, signal.SIGHUP), (2.5, signal.SIGTERM)]
while True:
    now = time.monotonic() - t0
    if plan and now >= plan[0][0]:
        proc.send_signal(plan.pop(0)[1])
    try:
        msg = sock.recv(4096).decode()
        for line in msg.splitlines():
            print("%.3f %s" % (time.monotonic() - t0, line))
    except socket.timeout:
        pass
    if proc.poll() is not None and not plan:
        break
    if now > 15:
        proc.kill()
        print("%.3f TIMEOUT" % now)
        break
print("%.3f EXIT %d" % (time.monotonic() - t0, proc.wait()))
EOF
}

# 400 ms: pings every 200 ms, so about 12 of them in the 2.5 s run.
notify_run 400000 self >"$tmp/notify-wd.log" 2>&1 || true
msgs=$(awk '{ print $2 }' "$tmp/notify-wd.log" | grep -v '^WATCHDOG=1$' | paste -sd' ')
expected="READY=1 RELOADING=1 READY=1 STOPPING=1 EXIT"
if [ "$msgs" = "$expected" ]; then
    ok "sd_notify: $expected"
else
    fail "sd_notify: got '$msgs', expected '$expected'"
    sed 's/^/    /' "$tmp/notify-wd.log"
fi
pings=$(grep -c ' WATCHDOG=1$' "$tmp/notify-wd.log" || true)
# Largest gap between consecutive pings after READY (or READY and the first ping).
gap=$(awk '$2 == "READY=1" && !r { r = 1; last = $1 } $2 == "WATCHDOG=1" && r {
        if ($1 - last > g) g = $1 - last; last = $1 } END { printf "%.3f", g }' \
    "$tmp/notify-wd.log")
if [ "$pings" -ge 9 ] && awk -v g="$gap" 'BEGIN { exit !(g > 0 && g < 0.3) }'; then
    ok "watchdog: $pings WATCHDOG=1 in 2.5 s with WATCHDOG_USEC=400000, largest gap $gap s"
else
    fail "watchdog: $pings pings, largest gap $gap s (expected >= 9, gaps about 0.2 s)"
    sed 's/^/    /' "$tmp/notify-wd.log"
fi

notify_run - - >"$tmp/notify-none.log" 2>&1 || true
if grep -q 'WATCHDOG=1' "$tmp/notify-none.log"; then
    fail "watchdog: pings sent without WATCHDOG_USEC"
elif grep -q ' READY=1$' "$tmp/notify-none.log"; then
    ok "watchdog: no pings without WATCHDOG_USEC"
else
    fail "watchdog: lockerd did not get ready without WATCHDOG_USEC"
    sed 's/^/    /' "$tmp/notify-none.log"
fi

# systemd sets WATCHDOG_PID; a lockerd started by the service's main process
# (WATCHDOG_PID names another process) must leave the watchdog to that one.
notify_run 400000 other >"$tmp/notify-other.log" 2>&1 || true
if grep -q 'WATCHDOG=1' "$tmp/notify-other.log"; then
    fail "watchdog: pings sent although WATCHDOG_PID names another process"
else
    ok "watchdog: no pings when WATCHDOG_PID names another process"
fi

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
