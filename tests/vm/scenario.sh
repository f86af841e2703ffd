#!/bin/sh
# shellcheck disable=SC3043,SC2317  # busybox sh has local; some functions run via wait_for
# scenario.sh - inside the check-vm VM (run by init): the gpiod backend on a gpio-sim
# chip, first on its own (gpiod_test), then under lockerd with a real pickup and
# return driven through the simulator's sysfs pulls. Exit status 0 = pass.
#
# Every wait polls something observable (the control socket, the station state, a
# line value) in a bounded loop; nothing sleeps for a guessed time.
set -u

SOCK=/run/lockerd/control.sock
CONF=/tmp/lockerd.conf
LOG=/tmp/lockerd.log
CARD_A=04A1B2C3D4E5F6
CARD_B=04B2C3D4E5F607
POLL_TRIES=200 # x 50 ms = 10 s for anything to happen

say() { echo "vm: $*"; }
fail() {
    say "FAIL: $*"
    if [ -f "$LOG" ]; then
        say "last lines of the lockerd log:"
        tail -n 40 "$LOG" | sed 's/^/vm:   /'
    fi
    exit 1
}
ctl() { lockerctl -s "$SOCK" "$@"; }

# ---------------------------------------------------------------- the chip
# One bank, eight named lines: compartment 1 on 0-2, compartment 2 on 3-5, two
# lines for gpiod_test. The label lets the config address lines as label:offset.
cfs=/sys/kernel/config/gpio-sim/lockersim
mkdir "$cfs" "$cfs/bank0" || fail "cannot create the gpio-sim device (kernel without gpio-sim?)"
echo 8 >"$cfs/bank0/num_lines"
echo lockersim >"$cfs/bank0/label"
n=0
for name in GPIO17 GPIO27 GPIO22 GPIO5 GPIO6 GPIO13 TESTOUT TESTIN; do
    mkdir "$cfs/bank0/line$n"
    echo "$name" >"$cfs/bank0/line$n/name"
    n=$((n + 1))
done
echo 1 >"$cfs/live" || fail "gpio-sim device did not go live"
dev=$(cat "$cfs/dev_name")
chip=$(cat "$cfs/bank0/chip_name")
sim=/sys/devices/platform/$dev/$chip
[ -e "/dev/$chip" ] || fail "no /dev/$chip"
[ -d "$sim/sim_gpio0" ] || fail "no $sim/sim_gpio0"
say "gpio-sim: $dev, $chip (/dev/$chip), label lockersim"

pull() { echo "pull-$2" >"$sim/sim_gpio$1/pull"; } # pull OFFSET up|down
val() { cat "$sim/sim_gpio$1/value"; }

# wait_for WHAT COMMAND...: polls until COMMAND succeeds, at most 10 s.
wait_for() {
    local for="$1" i=0
    shift
    while [ "$i" -lt "$POLL_TRIES" ]; do
        "$@" && return 0
        kill -0 "$pid" 2>/dev/null || fail "lockerd exited while waiting for $for"
        sleep 0.05
        i=$((i + 1))
    done
    fail "timed out waiting for $for"
}
line_is() { [ "$(val "$1")" = "$2" ]; }
state_of() { ctl status | awk -v n="$1" '$1 == n { print $2 }'; }
state_is() { [ "$(state_of "$1")" = "$2" ]; }
key_is() { [ "$(ctl status | awk -v n="$1" '$1 == n { print $4 }')" = "$2" ]; }
answers() { ctl status >/dev/null 2>&1; }

# ---------------------------------------------------------------- backend alone
gpiod_test "$sim" >/tmp/gpiod_test.out 2>&1
rc=$?
sed 's/^/vm: /' /tmp/gpiod_test.out
[ "$rc" -eq 0 ] || fail "gpiod_test exited with status $rc"

# ---------------------------------------------------------------- lockerd
# Compartment 1 by line names, door active-low with the pull-up requested by lockerd
# (closed = high), key active-low (present = low). Compartment 2 by the other
# spellings: label:offset, a bare offset on [gpio] chip (a path), chip name:offset;
# active-high sensors (door closed = low, key present = high).
cat >"$CONF" <<EOF
[station]
id = vm-station
state_dir = /tmp/state
runtime_dir = /run/lockerd
log_level = debug

[reader]
backend = sim

[gpio]
backend = gpiod
chip = /dev/$chip
debounce = 10ms

[compartment.1]
lock = GPIO17
door = GPIO27, active-low, pull-up
key = GPIO22, active-low
key_label = Halle 1

[compartment.2]
lock = lockersim:3
door = 4
key = $chip:5
key_label = Halle 2
EOF

# The cabinet before power-on: doors closed, keys in. The lock lines are pulled up
# so that reading 0 proves lockerd drives them inactive from the start.
pull 0 up
pull 1 up
pull 2 down
pull 3 up
pull 4 down
pull 5 up

lockerd -c "$CONF" -n >/dev/null 2>/tmp/check.err || fail "lockerd -n: $(cat /tmp/check.err)"
lockerd -c "$CONF" >"$LOG" 2>&1 &
pid=$!
wait_for "the control socket" answers
grep 'gpiod:' "$LOG" | sed 's/^/vm: lockerd: /'

line_is 0 0 || fail "lock 1 is not driven inactive at start"
line_is 3 0 || fail "lock 2 is not driven inactive at start"
state_is 1 locked_full || fail "compartment 1 is $(state_of 1), expected locked_full"
state_is 2 locked_full || fail "compartment 2 is $(state_of 2), expected locked_full"
say "start: both locks driven 0 against pull-ups, both compartments locked_full"

from=$(date -u -d "@$(($(date +%s) - 600))" +%Y-%m-%dT%H:%M+00:00)
to=$(date -u -d "@$(($(date +%s) + 7200))" +%Y-%m-%dT%H:%M+00:00)
ctl club add club-a "Club A" >/dev/null || fail "club add"
ctl club add club-b "Club B" >/dev/null || fail "club add"
ma=$(ctl member add --club club-a --name "Anna" | tail -n 1)
mb=$(ctl member add --club club-b --name "Ben" | tail -n 1)
ctl card add "$ma" --uid "$CARD_A" >/dev/null || fail "card add A"
ctl card add "$mb" --uid "$CARD_B" >/dev/null || fail "card add B"
ctl booking add --club club-a --compartment 1 --from "$from" --to "$to" >/dev/null ||
    fail "booking add 1"
ctl booking add --club club-b --compartment 2 --from "$from" --to "$to" >/dev/null ||
    fail "booking add 2"

# visit WHAT N CARD LOCK DOOR KEY OPEN CLOSED KEYPULL KEYSTATE: a tap on compartment
# N, then its door opened, the key taken or put back (KEYPULL, until status shows
# the key KEYSTATE) and the door closed, all as sim pulls (up|down) on the offsets
# LOCK, DOOR, KEY.
visit() {
    local what="$1" n="$2" card="$3" lock="$4" door="$5" key="$6" open="$7" closed="$8" \
        keyset="$9" keystate="${10}"
    out=$(ctl sim tap "$card") || fail "$what $n: tap refused: $out"
    say "$what $n: tap: $out"
    line_is "$lock" 1 || fail "$what $n: lock line reads $(val "$lock") after the tap, expected 1"
    say "$what $n: lock line high after the tap"
    pull "$door" "$open"
    wait_for "lock $n off after the door opened" line_is "$lock" 0
    say "$what $n: door opened, lock line low"
    pull "$key" "$keyset"
    wait_for "key $n $keystate" key_is "$n" "$keystate"
    pull "$door" "$closed"
}

visit pickup 1 "$CARD_A" 0 1 2 down up up out
wait_for "compartment 1 locked_empty" state_is 1 locked_empty
visit return 1 "$CARD_A" 0 1 2 down up down in
wait_for "compartment 1 locked_full" state_is 1 locked_full
visit pickup 2 "$CARD_B" 3 4 5 up down down out
wait_for "compartment 2 locked_empty" state_is 2 locked_empty

ctl events >/tmp/events || fail "lockerctl events"
grep -E 'key\.(checkedOut|returned)' /tmp/events | sed 's/^/vm: event: /'
grep -q 'key\.checkedOut .*compartment=1' /tmp/events || fail "no key.checkedOut for compartment 1"
grep -q 'key\.returned .*compartment=1' /tmp/events || fail "no key.returned for compartment 1"
grep -q 'key\.checkedOut .*compartment=2' /tmp/events || fail "no key.checkedOut for compartment 2"
ctl events --verify >/dev/null || fail "lockerctl events --verify: hash chain broken"
say "event log: key.checkedOut 1, key.returned 1, key.checkedOut 2; hash chain verified"

# ---------------------------------------------------------------- shutdown
# gpio-sim sets a released line to its pull, so after exit the lines show the
# pulls: pull-down, as the wiring notes recommend for lock drivers.
pull 0 down
pull 3 down
kill -TERM "$pid"
i=0
while kill -0 "$pid" 2>/dev/null && [ "$i" -lt "$POLL_TRIES" ]; do
    sleep 0.05
    i=$((i + 1))
done
kill -0 "$pid" 2>/dev/null && fail "lockerd did not exit within 10 s of SIGTERM"
wait "$pid"
rc=$?
[ "$rc" -eq 0 ] || fail "lockerd exited with status $rc"
if ! line_is 0 0 || ! line_is 3 0; then
    fail "a lock line reads 1 after lockerd exited"
fi
if grep -q 'SAFETY' "$LOG"; then
    fail "the backend's coil limit tripped during a normal run"
fi
say "SIGTERM: lockerd exited 0, all lock lines read 0"
exit 0
