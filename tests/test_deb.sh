#!/usr/bin/env bash
# test_deb.sh - `make check-deb`: the Debian package, built, linted, installed into a
# Debian bookworm chroot and purged again.
#
#   tests/test_deb.sh
#
#   1. copies the work tree (tracked and new files, not build output) to a temporary
#      directory and runs `dpkg-buildpackage -us -uc -b` there, so the work tree
#      stays clean; DEB_BUILD_OPTIONS from the environment applies (nocheck skips
#      the unit tests of the package build);
#   2. lintian on the result: no errors (warnings and infos are printed);
#   3. a bookworm chroot from debootstrap (minbase plus systemd), with the mirror
#      of this machine's bookworm entry in /etc/apt/sources.list{,.d}; the chroot
#      is cached as a tarball under CACHE, one per day, mirror and architecture;
#   4. installs the package with apt-get (dependencies from the mirror) and checks
#      users, groups, directories, modes, the conffile, the unit and its enablement,
#      `systemd-analyze verify` and `lockerd -n` as user lockerd inside the chroot;
#      a locally changed conffile survives a reinstall;
#   5. remove keeps the config, purge removes users, groups, directories and files;
#   6. boots the package in a qemu VM with systemd (see there);
#   7. cross-builds the arm64 package in a chroot of its own, lintian on it.
#
# No systemd runs in the chroot: the package's postinst creates users and
# directories with systemd-sysusers and systemd-tmpfiles, which work offline.
#
# CACHE is $LOCKERD_DEB_CACHE, default ${XDG_CACHE_HOME:-~/.cache}/lockerd-deb.
# LOCKERD_DEB_MIRROR overrides the mirror. Runs as root (debootstrap, chroot).
# Debian packages needed: see NEEDED below; the script names any that are missing.
# Exit status: 0 when every check passed, 1 on a failed check, 2 on a setup problem.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
src=$PWD
suite=bookworm
cache=${LOCKERD_DEB_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/lockerd-deb}
# What goes into the cached chroot besides minbase; part of the cache key.
include=systemd

NEEDED=(
    dpkg-dev debhelper fakeroot build-essential # dpkg-buildpackage and dh
    lintian debootstrap debian-archive-keyring
    e2fsprogs file # the VM's disk image (mke2fs -d), the cross-built binary's check
    libcmocka-dev # the unit tests of the package build (unless nocheck)
)

say() { printf 'check-deb: %s\n' "$*"; }
die() {
    printf 'check-deb: error: %s\n' "$*" >&2
    exit 2
}
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
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

[ "$(id -u)" -eq 0 ] || die "run as root (debootstrap and chroot need it)"
missing=()
for p in "${NEEDED[@]}"; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -qx 'install ok installed' ||
        missing+=("$p")
done
[ "${#missing[@]}" -eq 0 ] || die "missing Debian packages: ${missing[*]} (apt-get install ${missing[*]})"
# The build needs the project's own build dependencies as well.
dpkg-checkbuilddeps debian/control 2>/dev/null ||
    die "build dependencies missing: $(dpkg-checkbuilddeps debian/control 2>&1 | sed 's/.*: //')"

# Make variables of an outer `make check-deb` must not leak into the package build.
unset MAKEFLAGS MFLAGS MAKELEVEL MAKEOVERRIDES

work=$(mktemp -d "${TMPDIR:-/tmp}/lockerd-deb.XXXXXX")
root=$work/chroot
cleanup() {
    # The chroot's /proc must be unmounted before the tree can go.
    local m
    for m in "$root/proc" "$work/vm/proc" "$work/cross/proc"; do
        if mountpoint -q "$m" 2>/dev/null; then
            umount "$m" || umount -l "$m" || true
        fi
    done
    rm -rf --one-file-system -- "$work"
}
trap cleanup EXIT

# ---------------------------------------------------------------- 1. build
t0=$(now)
version=$(dpkg-parsechangelog -S Version)
upstream=${version%-*}
arch=$(dpkg --print-architecture)
tree=$work/src/lockerd-$upstream
mkdir -p "$tree"
# The files git knows of plus new ones not ignored: the work tree as it is, without
# build/, build-san/ and other output. Outside git: everything but that output.
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    git ls-files -z --cached --others --exclude-standard |
        while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done |
        tar --null -T - -cf - | tar -C "$tree" -xf -
else
    tar -C "$src" --exclude=./build --exclude=./build-san --exclude=./build-fuzz \
        --exclude=./demo --exclude=./.git -cf - . | tar -C "$tree" -xf -
fi
say "building lockerd $version for $arch in $tree"
if (cd "$tree" && dpkg-buildpackage -us -uc -b) >"$work/build.log" 2>&1; then
    ok "dpkg-buildpackage -us -uc -b: lockerd_${version}_$arch.deb in $(since "$t0") s"
else
    tail -n 40 "$work/build.log"
    fail "dpkg-buildpackage failed (last lines above)"
    echo "$passed passed, $failed failed"
    exit 1
fi
deb=$work/src/lockerd_${version}_$arch.deb
changes=$work/src/lockerd_${version}_$arch.changes
[ -f "$deb" ] || die "$deb was not built"

# ---------------------------------------------------------------- 2. lintian
t0=$(now)
lintian_rc=0
lintian --fail-on error --display-info "$changes" >"$work/lintian.log" 2>&1 || lintian_rc=$?
grep -v '^running with root privileges' "$work/lintian.log" | sed 's/^/    lintian: /' || true
if [ "$lintian_rc" -eq 0 ] && ! grep -q '^E: ' "$work/lintian.log"; then
    ok "lintian: no errors ($(grep -c '^W: ' "$work/lintian.log" || true) warnings, $(since "$t0") s)"
else
    fail "lintian reported errors (exit $lintian_rc)"
fi

# ---------------------------------------------------------------- 3. chroot
# The mirror: the first enabled "deb" entry for the suite, one-line or deb822 format.
mirror_from_sources() {
    local f
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -r "$f" ] || continue
        awk -v suite="$suite" '$1 == "deb" {
            i = 2
            if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
            if ($(i + 1) == suite) print $i }' "$f"
    done
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -r "$f" ] || continue
        awk -v suite="$suite" 'BEGIN { RS = ""; FS = "\n" } {
            types = uris = suites = ""; enabled = "yes"
            for (i = 1; i <= NF; i++) {
                if ($i ~ /^#/) continue
                split($i, kv, ":[ \t]*")
                key = tolower(kv[1]); val = substr($i, length(kv[1]) + 2)
                sub(/^[ \t]+/, "", val)
                if (key == "types") types = val
                else if (key == "uris") uris = val
                else if (key == "suites") suites = val
                else if (key == "enabled") enabled = val
            }
            if (enabled == "no" || (" " types " ") !~ / deb /) next
            if ((" " suites " ") !~ (" " suite " ")) next
            split(uris, u, /[ \t]+/); print u[1] }' "$f"
    done
}
mirror=${LOCKERD_DEB_MIRROR:-$(mirror_from_sources | grep -m1 -E '^https?://' || true)}
[ -n "$mirror" ] || die "no $suite entry in /etc/apt/sources.list{,.d} (set LOCKERD_DEB_MIRROR)"

key=$(printf '%s\n' "$suite" "$arch" "$mirror" "$include" | sha256sum | cut -c1-12)
base=$cache/$suite-$arch-$(date -u +%Y%m%d)-$key.tar.gz
mkdir -p "$cache"
if [ -f "$base" ]; then
    say "chroot: cached $base"
else
    t0=$(now)
    say "chroot: debootstrap $suite ($arch, minbase + $include) from $mirror"
    boot=$work/debootstrap
    if ! debootstrap --variant=minbase --include="$include" --arch="$arch" \
        "$suite" "$boot" "$mirror" >"$work/debootstrap.log" 2>&1; then
        tail -n 30 "$work/debootstrap.log" >&2
        die "debootstrap failed"
    fi
    # Package lists inside, so that installing resolves dependencies at once.
    cp /etc/resolv.conf "$boot/etc/resolv.conf"
    chroot "$boot" apt-get -q update >"$work/apt-update.log" 2>&1 || {
        cat "$work/apt-update.log" >&2
        die "apt-get update in the chroot failed"
    }
    chroot "$boot" apt-get clean
    # Yesterday's chroots (and other mirrors') are of no more use.
    rm -f -- "$cache/$suite-$arch-"*.tar.gz
    tar -C "$boot" --numeric-owner -czf "$base.tmp" .
    mv "$base.tmp" "$base"
    rm -rf --one-file-system -- "$boot"
    say "chroot: built and cached in $(since "$t0") s ($(du -h "$base" | cut -f1))"
fi
mkdir -p "$root"
tar -C "$root" --numeric-owner -xzf "$base"
cp /etc/resolv.conf "$root/etc/resolv.conf"
mount -t proc proc "$root/proc"
in_root() { chroot "$root" "$@"; }

# ---------------------------------------------------------------- 4. install
t0=$(now)
cp "$deb" "$root/tmp/"
if in_root env DEBIAN_FRONTEND=noninteractive apt-get -q -y install "/tmp/${deb##*/}" \
    >"$work/install.log" 2>&1; then
    ok "apt-get install ${deb##*/} into the $suite chroot ($(since "$t0") s)"
else
    tail -n 30 "$work/install.log"
    fail "apt-get install failed"
    echo "$passed passed, $failed failed"
    exit 1
fi
# Without /dev/pts in the chroot apt cannot keep its terminal log; that is all.
if grep -iE '^(E:|W:)|warning|error' "$work/install.log" |
    grep -v -e '^W: Download is performed unsandboxed' -e 'Is /dev/pts mounted'; then
    fail "installation printed warnings or errors (above)"
else
    ok "installation printed no warnings"
fi

# "mode user group" of a path in the chroot, names resolved in the chroot.
perm() { in_root stat -c '%a %U %G' "$1" 2>/dev/null || echo missing; }
expect_perm() { # path expected
    local got
    got=$(perm "$1")
    if [ "$got" = "$2" ]; then ok "$1: $2"; else fail "$1: '$got', expected '$2'"; fi
}

if in_root getent passwd lockerd | grep -q ':/var/lib/lockerd:/usr/sbin/nologin$'; then
    ok "user lockerd (home /var/lib/lockerd, no login)"
else
    fail "user lockerd: '$(in_root getent passwd lockerd || true)'"
fi
for g in lockerd lockerd-admin gpio dialout; do
    if in_root getent group "$g" >/dev/null; then ok "group $g"; else fail "group $g missing"; fi
done
expect_perm /var/lib/lockerd "750 lockerd lockerd"
expect_perm /etc/lockerd/lockerd.conf "640 root lockerd"
for f in /lib/systemd/system/lockerd.service /usr/lib/sysusers.d/lockerd.conf \
    /usr/lib/tmpfiles.d/lockerd.conf /lib/udev/rules.d/60-lockerd.rules \
    /usr/sbin/lockerd /usr/bin/lockerctl /usr/share/man/man8/lockerd.8.gz; do
    if [ -f "$root$f" ]; then ok "$f installed"; else fail "$f missing"; fi
done
# shellcheck disable=SC2016 # dpkg-query's ${...}, not the shell's
if in_root dpkg-query -W -f='${Conffiles}\n' lockerd | grep -q '^ /etc/lockerd/lockerd.conf '; then
    ok "/etc/lockerd/lockerd.conf is a conffile"
else
    fail "/etc/lockerd/lockerd.conf is not a conffile"
fi
state=$(in_root systemctl is-enabled lockerd.service 2>&1 || true)
if [ "$state" = disabled ]; then
    ok "lockerd.service installed, not enabled (provisioning enables it)"
else
    fail "systemctl is-enabled lockerd.service: '$state', expected 'disabled'"
fi
# minbase has no man-db to look the Documentation= pages up (tests/test_systemd.sh
# checks them); everything else verify checks against the installed system.
if in_root systemd-analyze verify --man=no lockerd.service >"$work/verify.log" 2>&1 &&
    [ ! -s "$work/verify.log" ]; then
    ok "systemd-analyze verify lockerd.service in the chroot"
else
    fail "systemd-analyze verify in the chroot:"
    sed 's/^/    /' "$work/verify.log"
fi
# The daemon's user can read its config, and the binary finds its libraries.
if in_root setpriv --reuid=lockerd --regid=lockerd --init-groups \
    /usr/sbin/lockerd -n -c /etc/lockerd/lockerd.conf >"$work/check.log" 2>&1; then
    ok "lockerd -n -c /etc/lockerd/lockerd.conf as user lockerd"
else
    fail "lockerd -n as user lockerd:"
    sed 's/^/    /' "$work/check.log"
fi

# A locally changed conffile survives a reinstall of the package.
echo "# changed by test_deb.sh" >>"$root/etc/lockerd/lockerd.conf"
in_root env DEBIAN_FRONTEND=noninteractive apt-get -q -y --reinstall install \
    "/tmp/${deb##*/}" >"$work/reinstall.log" 2>&1 || fail "reinstall failed"
if grep -q 'changed by test_deb.sh' "$root/etc/lockerd/lockerd.conf"; then
    ok "a changed lockerd.conf is kept on reinstall"
else
    fail "reinstall overwrote the changed lockerd.conf"
fi

# ---------------------------------------------------------------- 6. boot it
# The checks above never run the service. Here the same package goes into a bookworm
# system with Debian's kernel, booted in qemu with systemd as PID 1: lockerd.service
# with its whole sandbox, the control socket for lockerd-admin members only, reload,
# the watchdog.
# Skipped (with a note) without qemu-system-x86_64 or off amd64; LOCKERD_DEB_VM=0
# skips it too. The image is cached like the chroot (plus kernel, udev, sysv init).
vm_include="linux-image-amd64 systemd-sysv udev kmod"
boot_test() {
    local vmkey vmbase vm img kernel initrd done_line t0 kvm=() console=$work/console.log
    vmkey=$(printf '%s\n' "$key" "$vm_include" | sha256sum | cut -c1-12)
    vmbase=$cache/vm-$suite-$arch-$(date -u +%Y%m%d)-$vmkey.tar.gz
    vm=$work/vm
    mkdir -p "$vm"
    if [ -f "$vmbase" ]; then
        say "vm: cached $vmbase"
        tar -C "$vm" --numeric-owner -xzf "$vmbase"
    else
        t0=$(now)
        say "vm: adding $vm_include to the chroot"
        tar -C "$vm" --numeric-owner -xzf "$base"
        cp /etc/resolv.conf "$vm/etc/resolv.conf"
        mount -t proc proc "$vm/proc"
        # shellcheck disable=SC2086 # a word list
        if ! chroot "$vm" env DEBIAN_FRONTEND=noninteractive apt-get -q -y \
            --no-install-recommends install $vm_include >"$work/vm-apt.log" 2>&1; then
            umount "$vm/proc"
            tail -n 20 "$work/vm-apt.log"
            fail "vm: cannot install $vm_include"
            return
        fi
        chroot "$vm" apt-get clean
        umount "$vm/proc"
        rm -f -- "$cache/vm-$suite-$arch-"*.tar.gz
        tar -C "$vm" --numeric-owner -czf "$vmbase.tmp" .
        mv "$vmbase.tmp" "$vmbase"
        say "vm: image built and cached in $(since "$t0") s ($(du -h "$vmbase" | cut -f1))"
    fi

    cp /etc/resolv.conf "$vm/etc/resolv.conf"
    cp "$deb" "$vm/tmp/"
    mount -t proc proc "$vm/proc"
    if ! chroot "$vm" env DEBIAN_FRONTEND=noninteractive apt-get -q -y install \
        "/tmp/${deb##*/}" >"$work/vm-install.log" 2>&1; then
        umount "$vm/proc"
        tail -n 20 "$work/vm-install.log"
        fail "vm: cannot install the package"
        return
    fi
    umount "$vm/proc"

    # The station: simulated hardware. Debian's kernel has neither gpio-sim nor
    # gpio-mockup, so the gpiod backend is tested by `make check-vm`, not here.
    printf '%s\n' "# written by tests/test_deb.sh for the boot test" \
        "[station]" "id = st-vm" "[reader]" "backend = sim" "[gpio]" "backend = sim" \
        "[compartment.1]" "lock = GPIO17" "door = GPIO27, active-low, pull-up" \
        "key = GPIO22, active-low, pull-up" "key_label = Halle 1" "hall = halle-1" \
        >"$vm/etc/lockerd/lockerd.conf"
    boot_test_script >"$vm/usr/local/sbin/lockerd-boot-test"
    chmod 0755 "$vm/usr/local/sbin/lockerd-boot-test"
    printf '%s\n' "[Unit]" "Description=lockerd boot test (tests/test_deb.sh)" \
        "After=multi-user.target" "[Service]" "Type=oneshot" \
        "ExecStart=/usr/local/sbin/lockerd-boot-test" "StandardOutput=tty" \
        "StandardError=tty" "TTYPath=/dev/ttyS0" "[Install]" "WantedBy=multi-user.target" \
        >"$vm/etc/systemd/system/lockerd-boot-test.service"
    mkdir -p "$vm/etc/systemd/system/multi-user.target.wants"
    ln -sf /etc/systemd/system/lockerd-boot-test.service \
        "$vm/etc/systemd/system/multi-user.target.wants/lockerd-boot-test.service"
    # The console is the test's: no login prompt on it.
    ln -sf /dev/null "$vm/etc/systemd/system/serial-getty@ttyS0.service"
    echo lockerd-vm >"$vm/etc/hostname"

    kernel=$(find "$vm/boot" -name 'vmlinuz-*' | sort | tail -n 1)
    initrd=$(find "$vm/boot" -name 'initrd.img-*' | sort | tail -n 1)
    if [ -z "$kernel" ] || [ -z "$initrd" ]; then
        fail "vm: no kernel or initramfs in the image"
        return
    fi
    cp "$kernel" "$initrd" "$work/"
    # An ext4 image made from the tree: no loop device, no mount.
    img=$work/vm.img
    if ! mke2fs -q -t ext4 -L lockerd-vm -d "$vm" "$img" 2G; then
        fail "vm: mke2fs failed"
        return
    fi
    rm -rf --one-file-system -- "$vm"
    if [ -r /dev/kvm ] && [ -w /dev/kvm ] && grep -qE 'vmx|svm' /proc/cpuinfo; then
        kvm=(-enable-kvm -cpu host)
    fi
    t0=$(now)
    say "vm: booting (${kvm[*]:-TCG}), console in $console"
    timeout "${LOCKERD_DEB_VM_TIMEOUT:-300}" qemu-system-x86_64 "${kvm[@]}" -m 1024 -smp 2 \
        -nographic -no-reboot -nic none \
        -kernel "$work/${kernel##*/}" -initrd "$work/${initrd##*/}" \
        -append "root=/dev/vda rw console=ttyS0 quiet systemd.show_status=0" \
        -drive "file=$img,format=raw,if=virtio" </dev/null >"$console" 2>&1 || true
    tr -d '\r' <"$console" | grep -a '^BOOTTEST: ' | sed 's/^BOOTTEST: /    vm: /' || true
    done_line=$(tr -d '\r' <"$console" | grep -a '^BOOTTEST: DONE' || true)
    if [ -z "$done_line" ]; then
        tail -n 30 "$console"
        fail "vm: the boot test did not finish ($(since "$t0") s)"
    elif [[ $done_line == *" 0 failed" ]]; then
        ok "vm: lockerd.service under systemd: ${done_line#BOOTTEST: DONE } ($(since "$t0") s)"
    else
        fail "vm: ${done_line#BOOTTEST: DONE }"
    fi
    rm -f -- "$img"
}

# The script that runs inside the VM, once, at boot (lockerd-boot-test.service).
boot_test_script() {
    cat <<'SCRIPT'
#!/bin/sh
passed=0
failed=0
ok() { passed=$((passed + 1)); echo "BOOTTEST: ok   $*"; }
fail() { failed=$((failed + 1)); echo "BOOTTEST: FAIL $*"; }
note() { echo "BOOTTEST: note $*"; }
prop() { systemctl show -P "$1" lockerd.service; }
wait_active() { # seconds
    i=0
    while [ "$i" -lt "$1" ]; do
        [ "$(systemctl is-active lockerd.service)" = active ] && return 0
        sleep 1
        i=$((i + 1))
    done
    return 1
}
journal() { journalctl -b -u lockerd.service --no-pager -o cat; }

systemctl start lockerd.service
if wait_active 20; then ok "lockerd.service active (Type=notify, sandboxed)"
else
    fail "lockerd.service did not start"
    journal | tail -n 20 | sed 's/^/BOOTTEST: log  /'
fi
score=$(systemd-analyze security lockerd.service 2>/dev/null |
    sed -n 's/.*Overall exposure level for lockerd.service: \([0-9.]*\).*/\1/p')
if awk -v s="$score" 'BEGIN { exit !(s != "" && s <= 2.0) }'; then
    ok "systemd-analyze security lockerd.service (loaded unit): $score"
else fail "systemd-analyze security: '$score'"; fi

mode=$(stat -c '%a %U %G' /run/lockerd)
if [ "$mode" = "711 lockerd lockerd" ]; then ok "/run/lockerd: $mode"; else fail "/run/lockerd: $mode"; fi
mode=$(stat -c '%a %U %G' /run/lockerd/control.sock)
if [ "$mode" = "660 lockerd lockerd-admin" ]; then ok "/run/lockerd/control.sock: $mode"
else fail "/run/lockerd/control.sock: $mode"; fi
useradd -m -G lockerd-admin alice
useradd -m bob
if runuser -u alice -- lockerctl status 2>&1 | grep -q st-vm; then
    ok "alice (in lockerd-admin): lockerctl status"
else fail "alice: $(runuser -u alice -- lockerctl status 2>&1 | head -n 3 | tr '\n' '|')"; fi
if runuser -u bob -- lockerctl status >/dev/null 2>&1; then
    fail "bob (not in lockerd-admin) reached the control socket"
else ok "bob (not in lockerd-admin): refused"; fi

pid=$(prop MainPID)
systemctl reload lockerd.service
if [ "$(systemctl is-active lockerd.service)" = active ] && [ "$(prop MainPID)" = "$pid" ] &&
    journal | grep -q 'configuration reloaded'; then
    ok "systemctl reload: same process, configuration reloaded"
else fail "systemctl reload"; fi

if [ "$(prop WatchdogUSec)" = 30s ]; then ok "WatchdogUSec=30s"; else fail "WatchdogUSec=$(prop WatchdogUSec)"; fi
# A short watchdog: the pings keep lockerd alive; a loop that stops gets it restarted.
mkdir -p /run/systemd/system/lockerd.service.d
printf '[Service]\nWatchdogSec=2s\n' >/run/systemd/system/lockerd.service.d/wd.conf
systemctl daemon-reload
systemctl restart lockerd.service
wait_active 20
pid=$(prop MainPID)
sleep 5
if [ "$(prop MainPID)" = "$pid" ] && [ "$(prop NRestarts)" = 0 ]; then
    ok "WatchdogSec=2s: the same lockerd after 5 s"
else fail "the watchdog killed a healthy lockerd"; fi
kill -STOP "$pid"
sleep 5
if wait_active 20 && [ "$(prop MainPID)" != "$pid" ] && [ "$(prop NRestarts)" -ge 1 ] &&
    journalctl -b --no-pager | grep -q -i 'lockerd.service: watchdog timeout'; then
    ok "lockerd stopped (SIGSTOP): watchdog timeout, restarted"
else fail "a stopped lockerd was not restarted by the watchdog"; fi
rm /run/systemd/system/lockerd.service.d/wd.conf

# Why the unit has no PrivateUsers=: a note of what happens with it.
printf '[Service]\nPrivateUsers=yes\n' >/run/systemd/system/lockerd.service.d/pu.conf
systemctl daemon-reload
systemctl restart lockerd.service
sleep 2
note "with PrivateUsers=yes: $(systemctl is-active lockerd.service), control.sock $(stat -c '%a %U %G' /run/lockerd/control.sock 2>&1), alice: $(runuser -u alice -- lockerctl status 2>&1 | head -n 1), log: $(journalctl -b --no-pager -n 6 -o cat -u lockerd.service | grep -i -v 'compartment' | tr '\n' '|')"
rm /run/systemd/system/lockerd.service.d/pu.conf
systemctl daemon-reload
systemctl reset-failed lockerd.service 2>/dev/null
systemctl restart lockerd.service
if wait_active 20; then ok "restarted without the drop-ins"; else fail "no restart without the drop-ins"; fi

systemctl stop lockerd.service
if [ ! -e /run/lockerd ]; then ok "stop: /run/lockerd removed"; else fail "stop: /run/lockerd left"; fi
if journal | grep -q -i 'seccomp\|operation not permitted\|permission denied'; then
    note "lockerd's log mentions denials: $(journal | grep -i 'seccomp\|not permitted\|denied' | head -n 3 | tr '\n' '|')"
fi

echo "BOOTTEST: DONE $passed passed, $failed failed"
systemctl poweroff
SCRIPT
}
if [ "${LOCKERD_DEB_VM:-1}" = 0 ]; then
    say "vm: skipped (LOCKERD_DEB_VM=0)"
elif [ "$arch" != amd64 ] || ! command -v qemu-system-x86_64 >/dev/null; then
    say "vm: skipped (needs amd64 and qemu-system-x86_64, Debian package qemu-system-x86)"
else
    boot_test
fi

# ---------------------------------------------------------------- 5. remove, purge
in_root env DEBIAN_FRONTEND=noninteractive apt-get -q -y remove lockerd \
    >"$work/remove.log" 2>&1 || fail "apt-get remove failed"
if [ ! -e "$root/usr/sbin/lockerd" ] && [ -f "$root/etc/lockerd/lockerd.conf" ] &&
    in_root getent passwd lockerd >/dev/null; then
    ok "remove: binary gone, config and user kept"
else
    fail "remove: unexpected state"
fi
in_root env DEBIAN_FRONTEND=noninteractive apt-get -q -y purge lockerd \
    >"$work/purge.log" 2>&1 || fail "apt-get purge failed"
leftover=()
for f in /etc/lockerd /var/lib/lockerd /lib/systemd/system/lockerd.service \
    /usr/lib/sysusers.d/lockerd.conf /usr/lib/tmpfiles.d/lockerd.conf \
    /lib/udev/rules.d/60-lockerd.rules /var/lib/systemd/deb-systemd-helper-enabled/lockerd.service.dsh-also; do
    [ -e "$root$f" ] && leftover+=("$f")
done
in_root getent passwd lockerd >/dev/null && leftover+=("user lockerd")
for g in lockerd lockerd-admin; do
    in_root getent group "$g" >/dev/null && leftover+=("group $g")
done
if [ "${#leftover[@]}" -eq 0 ]; then
    ok "purge: users, groups, directories and files removed (group gpio stays)"
else
    fail "purge left: ${leftover[*]}"
fi
# shellcheck disable=SC2016 # dpkg-query's ${...}, not the shell's
status=$(in_root dpkg-query -W -f='${Status}' lockerd 2>/dev/null || true)
case $status in
"" | *not-installed) ;;
*) fail "dpkg still has lockerd after purge: $status" ;;
esac

# ---------------------------------------------------------------- 7. cross-build
# The arm64 package for a Raspberry Pi, built as docs/install.md says, inside a copy
# of the chroot (dpkg --add-architecture must not touch this machine). The chroot
# with the cross toolchain and the :arm64 build dependencies is cached per day like
# the others. LOCKERD_DEB_CROSS=0 skips it.
cross_test() {
    local host=arm64 xkey xbase xroot t0 xdeb
    # The build dependencies come from debian/control: a changed one needs a new chroot.
    xkey=$(printf '%s\n' "$key" cross "$host" "$(sha256sum <debian/control)" | sha256sum |
        cut -c1-12)
    xbase=$cache/cross-$suite-$arch-$host-$(date -u +%Y%m%d)-$xkey.tar.gz
    xroot=$work/cross
    mkdir -p "$xroot"
    if [ -f "$xbase" ]; then
        say "cross: cached $xbase"
        tar -C "$xroot" --numeric-owner -xzf "$xbase"
        cp /etc/resolv.conf "$xroot/etc/resolv.conf"
        mount -t proc proc "$xroot/proc"
    else
        t0=$(now)
        say "cross: adding $host, crossbuild-essential-$host and the build dependencies"
        tar -C "$xroot" --numeric-owner -xzf "$base"
        cp /etc/resolv.conf "$xroot/etc/resolv.conf"
        mount -t proc proc "$xroot/proc"
        mkdir -p "$xroot/src/control/debian"
        cp debian/control "$xroot/src/control/debian/"
        if ! chroot "$xroot" sh -c "dpkg --add-architecture $host && apt-get -q update &&
            DEBIAN_FRONTEND=noninteractive apt-get -q -y --no-install-recommends install \
                build-essential crossbuild-essential-$host &&
            DEBIAN_FRONTEND=noninteractive apt-get -q -y --no-install-recommends \
                build-dep -a $host -P nocheck /src/control && apt-get clean" \
            >"$work/cross-apt.log" 2>&1; then
            tail -n 20 "$work/cross-apt.log"
            fail "cross: cannot install the $host build dependencies"
            return
        fi
        rm -rf -- "$xroot/src/control"
        umount "$xroot/proc"
        rm -f -- "$cache/cross-$suite-$arch-$host-"*.tar.gz
        tar -C "$xroot" --numeric-owner -czf "$xbase.tmp" .
        mv "$xbase.tmp" "$xbase"
        mount -t proc proc "$xroot/proc"
        say "cross: chroot built and cached in $(since "$t0") s ($(du -h "$xbase" | cut -f1))"
    fi
    t0=$(now)
    mkdir -p "$xroot/src"
    cp -a "$tree" "$xroot/src/"
    if chroot "$xroot" sh -c "cd /src/${tree##*/} && debian/rules clean >/dev/null &&
        DEB_BUILD_OPTIONS=nocheck dpkg-buildpackage -a $host -Pnocheck -us -uc -b" \
        >"$work/cross-build.log" 2>&1; then
        xdeb=$xroot/src/lockerd_${version}_$host.deb
        if dpkg-deb -x "$xdeb" "$work/cross-x" &&
            file "$work/cross-x/usr/sbin/lockerd" | grep -q 'ARM aarch64'; then
            ok "cross: lockerd_${version}_$host.deb with an aarch64 lockerd ($(since "$t0") s)"
        else
            fail "cross: $xdeb missing or not aarch64"
        fi
        if lintian --fail-on error "$xroot/src/lockerd_${version}_$host.changes" \
            >"$work/cross-lintian.log" 2>&1; then
            ok "cross: lintian, no errors"
        else
            grep -v '^running with root' "$work/cross-lintian.log" | sed 's/^/    /'
            fail "cross: lintian reported errors"
        fi
    else
        tail -n 30 "$work/cross-build.log"
        fail "cross: dpkg-buildpackage -a $host failed"
    fi
    umount "$xroot/proc"
}
if [ "${LOCKERD_DEB_CROSS:-1}" = 0 ]; then
    say "cross: skipped (LOCKERD_DEB_CROSS=0)"
elif [ "$arch" != amd64 ]; then
    say "cross: skipped (cross-builds for arm64 from amd64 only)"
else
    cross_test
fi

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
