#!/usr/bin/env bash
# run-vm-test.sh - `make check-vm`: the gpiod GPIO backend against the kernel's
# gpio-sim, in a qemu VM, once built with libgpiod 1.x and once with 2.x.
#
#   tests/vm/run-vm-test.sh [v1|v2 ...]        (default: both)
#
# Steps, each cached where it can be:
#   1. a small kernel with gpio-sim, from Debian's linux-source-6.1: `make tinyconfig`
#      plus tests/vm/kernel.config; cached under CACHE/kernel-HASH, HASH over the
#      fragment and the linux-source version (about 4 minutes to build on 2 cores);
#   2. libgpiod 2.x from bookworm-backports (v2 only): `apt-get download` with an
#      apt configuration of its own under CACHE/apt, so the machine's sources and
#      package choices stay as they are; unpacked with dpkg-deb, linked statically;
#   3. lockerd, lockerctl and tests/vm/gpiod_test for each variant, with the normal
#      Makefile into CACHE/work/build-VARIANT;
#   4. an initramfs (the kernel's gen_init_cpio): busybox-static, the binaries with
#      the shared libraries ldd names, tests/vm/init and tests/vm/scenario.sh;
#   5. qemu-system-x86_64 (KVM when /dev/kvm opens and the CPU has vmx or svm, else
#      TCG), serial console to CACHE/work/console-VARIANT.log; the VM prints
#      "CHECK-VM: PASS|FAIL ..." and powers off.
#
# CACHE is $LOCKERD_VM_CACHE, default ${XDG_CACHE_HOME:-~/.cache}/lockerd-vm.
# LOCKERD_VM_TIMEOUT (default 180) bounds each VM run in seconds.
# Debian packages needed: see NEEDED below; the script names any that are missing.
# Exit status: 0 when every variant passed, 1 on a failure, 2 on a setup problem.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
root=$PWD
cache=${LOCKERD_VM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/lockerd-vm}
timeout_s=${LOCKERD_VM_TIMEOUT:-180}
variants=("$@")
[ "${#variants[@]}" -gt 0 ] || variants=(v1 v2)

NEEDED=(
    make gcc pkg-config libc6-dev # lockerd itself (and its -dev packages, see quickstart)
    linux-source-6.1              # the kernel source
    xz-utils                      # unpacks it
    bc flex bison libelf-dev      # kernel build (libelf: objtool)
    libssl-dev                    # kernel build (certificate tools), lockerd
    busybox-static                # the VM's userland
    qemu-system-x86               # the VM
    libgpiod-dev                  # variant v1
)

say() { printf 'check-vm: %s\n' "$*"; }
die() {
    printf 'check-vm: error: %s\n' "$*" >&2
    exit 2
}

# Make variables of an outer `make check-vm` must not leak into the builds below.
unset MAKEFLAGS MFLAGS MAKELEVEL MAKEOVERRIDES
jobs=$(nproc)

# ---------------------------------------------------------------- packages
missing=()
for p in "${NEEDED[@]}"; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -qx 'install ok installed' ||
        missing+=("$p")
done
[ "${#missing[@]}" -eq 0 ] || die "missing Debian packages: ${missing[*]} (apt-get install ${missing[*]})"
for v in "${variants[@]}"; do
    case $v in
    v1 | v2) ;;
    *) die "unknown variant '$v' (v1 or v2)" ;;
    esac
done

mkdir -p "$cache"
work=$cache/work
rm -rf -- "$work"
mkdir -p "$work"

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# ---------------------------------------------------------------- 1. kernel
ksrc_tar=/usr/src/linux-source-6.1.tar.xz
[ -f "$ksrc_tar" ] || die "$ksrc_tar not found (package linux-source-6.1)"
khash=$( {
    cat tests/vm/kernel.config
    dpkg-query -W -f='${Version}\n' linux-source-6.1
} | sha256sum | cut -c1-16)
kdir=$cache/kernel-$khash

build_kernel() {
    local tmp=$cache/kernel-build.$$ src t0
    t0=$(now)
    rm -rf -- "$tmp"
    mkdir -p "$tmp"
    # Whatever fails below, the 1 GB source tree does not stay behind.
    trap 'rm -rf -- "$tmp"' EXIT
    say "building the VM kernel (linux-source-6.1, tinyconfig + tests/vm/kernel.config) into $kdir"
    tar -xJf "$ksrc_tar" -C "$tmp"
    src=$tmp/linux-source-6.1
    {
        make -C "$src" ARCH=x86_64 tinyconfig &&
            "$src/scripts/kconfig/merge_config.sh" -m -O "$src" "$src/.config" \
                "$root/tests/vm/kernel.config" &&
            make -C "$src" ARCH=x86_64 olddefconfig
    } >"$tmp/config.log" 2>&1 || {
        tail -n 30 "$tmp/config.log" >&2
        die "kernel configuration failed"
    }
    # merge_config only warns when Kconfig drops an option (unmet dependency).
    local lost=()
    while read -r opt; do
        grep -qx "$opt" "$src/.config" || lost+=("$opt")
    done < <(grep -E '^CONFIG_[A-Z0-9_]+=' tests/vm/kernel.config)
    [ "${#lost[@]}" -eq 0 ] || die "kernel config lost: ${lost[*]}"
    if ! make -C "$src" ARCH=x86_64 -j"$jobs" bzImage >"$tmp/build.log" 2>&1; then
        tail -n 40 "$tmp/build.log" >&2
        die "kernel build failed"
    fi
    mkdir -p "$tmp/out"
    cp "$src/arch/x86/boot/bzImage" "$src/usr/gen_init_cpio" "$src/.config" "$tmp/out/"
    rm -rf -- "$kdir"
    mv "$tmp/out" "$kdir"
    rm -rf -- "$tmp"
    trap - EXIT
    say "kernel built in $(since "$t0") s ($(stat -c %s "$kdir/bzImage") bytes)"
}

if [ -f "$kdir/bzImage" ] && [ -x "$kdir/gen_init_cpio" ]; then
    say "kernel: cached $kdir"
else
    build_kernel
fi

# ---------------------------------------------------------------- 2. libgpiod 2.x
# Its own apt configuration: the same mirror as the machine's bookworm entry, only
# the backports suite, lists and downloads under CACHE/apt. Nothing in /etc/apt or
# /var/lib/apt changes, so `apt-get install` on this machine chooses as before.
v2root=$cache/libgpiod-v2
fetch_libgpiod_v2() {
    local apt=$cache/apt mirror
    mirror=$(apt-cache policy | awk '$3 ~ /^bookworm\/main$/ && $2 ~ /^https?:/ { print $2; exit }')
    [ -n "$mirror" ] || die "no bookworm mirror in this machine's apt sources"
    rm -rf -- "$apt" "$v2root"
    mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$apt/parts" "$apt/debs"
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror bookworm-backports main" \
        >"$apt/sources.list"
    local opts=(-o "Dir::Etc::SourceList=$apt/sources.list" -o "Dir::Etc::SourceParts=$apt/parts"
        -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache"
        -o "APT::Sandbox::User=root" -q)
    say "fetching libgpiod 2.x from bookworm-backports ($mirror)"
    apt-get "${opts[@]}" update >"$apt/update.log" 2>&1 || {
        cat "$apt/update.log" >&2
        die "bookworm-backports is not reachable"
    }
    (cd "$apt/debs" && apt-get "${opts[@]}" download libgpiod-dev/bookworm-backports \
        libgpiod3/bookworm-backports) >"$apt/download.log" 2>&1 || {
        cat "$apt/download.log" >&2
        die "cannot download libgpiod 2.x from bookworm-backports"
    }
    mkdir -p "$v2root/tree" "$v2root/pkgconfig"
    for deb in "$apt"/debs/*.deb; do
        dpkg-deb -x "$deb" "$v2root/tree"
    done
    local pc version libdir
    pc=$(find "$v2root/tree" -name libgpiod.pc | head -n 1)
    [ -n "$pc" ] || die "libgpiod.pc not in the downloaded packages"
    version=$(sed -n 's/^Version: *//p' "$pc")
    libdir=$(dirname "$(dirname "$pc")")
    # The packaged .pc says prefix=/usr, which is the 1.x library on this machine.
    # Ours points into the tree and names the static library, so the binaries run
    # in the VM without libgpiod.so.3.
    cat >"$v2root/pkgconfig/libgpiod.pc" <<EOF
Name: libgpiod
Description: libgpiod $version from bookworm-backports, unpacked for make check-vm
Version: $version
Libs: $libdir/libgpiod.a
Cflags: -I$v2root/tree/usr/include
EOF
    for deb in "$apt"/debs/*.deb; do
        say "  ${deb##*/}"
    done
}

# ---------------------------------------------------------------- 3. binaries
build_variant() { # variant builddir
    local v=$1 b=$2 pcpath=${PKG_CONFIG_PATH:-}
    if [ "$v" = v2 ]; then
        pcpath=$v2root/pkgconfig${pcpath:+:$pcpath}
    fi
    local ver
    ver=$(PKG_CONFIG_PATH=$pcpath pkg-config --modversion libgpiod)
    case "$v:$ver" in
    v1:1.* | v2:2.*) ;;
    *) die "variant $v found libgpiod $ver" ;;
    esac
    say "$v: building lockerd against libgpiod $ver into $b"
    PKG_CONFIG_PATH=$pcpath make -s -j"$jobs" BUILD="$b" WERROR=1 all >"$b.log" 2>&1 || {
        cat "$b.log" >&2
        die "$v: build failed"
    }
    # gpiod_test drives the backend directly: the backend, the log, libgpiod.
    # shellcheck disable=SC2046  # pkg-config output is a word list
    cc -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -O2 -g -I. -o "$b/gpiod_test" \
        tests/vm/gpiod_test.c "$b/hal/gpio_gpiod.o" "$b/daemon/log.o" \
        $(PKG_CONFIG_PATH=$pcpath pkg-config --libs libgpiod)
    # The 2.x API only exists in 2.x: this symbol proves which one was compiled in.
    local want=gpiod_line_event_read_fd_multiple
    [ "$v" = v2 ] && want=gpiod_chip_request_lines
    nm "$b/lockerd" | grep -w "$want" >/dev/null || die "$v: lockerd does not use $want"
}

# ---------------------------------------------------------------- 4. initramfs
make_initramfs() { # builddir out.cpio
    local b=$1 out=$2 list=$2.list etc=$2.etc
    mkdir -p "$etc"
    echo 'root:x:0:0:root:/root:/bin/sh' >"$etc/passwd"
    echo 'root:x:0:' >"$etc/group"
    {
        echo "nod /dev/console 0600 0 0 c 5 1"
        echo "file /init $root/tests/vm/init 0755 0 0"
        echo "file /test/scenario.sh $root/tests/vm/scenario.sh 0755 0 0"
        echo "file /bin/busybox /bin/busybox 0755 0 0"
        echo "slink /bin/sh busybox 0777 0 0"
        echo "file /etc/passwd $etc/passwd 0644 0 0"
        echo "file /etc/group $etc/group 0644 0 0"
        echo "file /usr/share/zoneinfo/Europe/Berlin $(readlink -f /usr/share/zoneinfo/Europe/Berlin) 0644 0 0"
        for bin in lockerd lockerctl gpiod_test; do
            echo "file /usr/bin/$bin $b/$bin 0755 0 0"
        done
        # Shared libraries at the paths ldd prints (the loader's default search
        # path covers them; there is no ld.so.cache in the VM).
        for bin in lockerd lockerctl gpiod_test; do
            ldd "$b/$bin" | awk '/=> \// { print $3 } /^\t\/[^ ]+ \(/ { print $1 }'
        done | sort -u | while read -r lib; do
            echo "file $lib $(readlink -f "$lib") 0755 0 0"
        done
    } >"$list.files"
    # gen_init_cpio wants every parent directory before its entries.
    awk '{ print $2 }' "$list.files" | while read -r p; do
        d=$(dirname "$p")
        while [ "$d" != / ]; do
            echo "$d"
            d=$(dirname "$d")
        done
    done | sort -u | awk '{ print "dir " $1 " 0755 0 0" }' >"$list"
    cat "$list.files" >>"$list"
    "$kdir/gen_init_cpio" "$list" >"$out"
}

# ---------------------------------------------------------------- 5. boot
accel=(-accel tcg)
accel_name=TCG
# /dev/kvm can open on machines whose CPU lacks vmx/svm; KVM then fails or crawls.
if grep -qwE 'vmx|svm' /proc/cpuinfo && { exec 3<>/dev/kvm; } 2>/dev/null; then
    exec 3>&-
    accel=(-accel kvm -cpu host)
    accel_name=KVM
fi

get_verdict() { # console log
    [ -f "$1" ] || return 0
    tr -d '\r' <"$1" | grep -m1 '^CHECK-VM: ' || true
}

run_vm() { # variant cpio log -> 0 pass, 1 fail
    local v=$1 cpio=$2 log=$3 qpid t0 deadline verdict=""
    t0=$(now)
    deadline=$(($(date +%s) + timeout_s))
    qemu-system-x86_64 -machine q35 "${accel[@]}" -m 512M -display none -monitor none \
        -serial "file:$log" -no-reboot -kernel "$kdir/bzImage" -initrd "$cpio" \
        -append "console=ttyS0 panic=-1 quiet LOCKERD_EPOCH=$(date +%s) LOCKERD_VARIANT=$v" \
        </dev/null >"$log.qemu" 2>&1 &
    qpid=$!
    # The verdict line, or qemu's end, or the deadline: whichever comes first.
    while [ "$(date +%s)" -lt "$deadline" ]; do
        verdict=$(get_verdict "$log")
        [ -n "$verdict" ] && break
        kill -0 "$qpid" 2>/dev/null || break
        sleep 0.2
    done
    [ -n "$verdict" ] || verdict=$(get_verdict "$log")
    # After the verdict the VM reboots, which ends qemu (-no-reboot); give it 10 s.
    for _ in $(seq 50); do
        kill -0 "$qpid" 2>/dev/null || break
        sleep 0.2
    done
    kill "$qpid" 2>/dev/null || true
    wait "$qpid" 2>/dev/null || true

    tr -d '\r' <"$log" | grep -E '^vm: ' | sed "s/^/check-vm: $v: /" || true
    case $verdict in
    "CHECK-VM: PASS"*)
        say "$v: PASS ($accel_name, boot and test $(since "$t0") s)"
        return 0
        ;;
    "")
        say "$v: FAIL: no verdict within ${timeout_s} s; end of the console log ($log):"
        tr -d '\r' <"$log" | tail -n 40 | sed 's/^/    /'
        sed 's/^/    qemu: /' "$log.qemu"
        return 1
        ;;
    *)
        say "$v: ${verdict#CHECK-VM: }"
        return 1
        ;;
    esac
}

failed=()
for v in "${variants[@]}"; do
    if [ "$v" = v2 ] && [ ! -f "$v2root/pkgconfig/libgpiod.pc" ]; then
        fetch_libgpiod_v2
    fi
    b=$work/build-$v
    build_variant "$v" "$b"
    make_initramfs "$b" "$work/initramfs-$v.cpio"
    say "$v: booting ($accel_name)"
    run_vm "$v" "$work/initramfs-$v.cpio" "$work/console-$v.log" || failed+=("$v")
done

if [ "${#failed[@]}" -gt 0 ]; then
    say "FAIL: ${failed[*]} (console logs in $work)"
    exit 1
fi
say "PASS: ${variants[*]}"
