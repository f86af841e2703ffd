#!/usr/bin/env bash
# test_docs.sh - checks that the man pages in docs/man/ match the code.
#
#   tests/test_docs.sh [BUILD_DIR]      (default: build; needs BUILD_DIR/lockerd and
#                                        BUILD_DIR/lockerctl, so run make first)
#
# Checks:
#   a. config keys: every key `lockerd -n` prints for a minimal config is documented
#      in lockerd.conf.5 under its section, every key documented there is one lockerd
#      accepts, and every default written as "Default: `VALUE'." or "Default: empty."
#      is the one lockerd really uses; docs/lockerd.conf.sample passes `lockerd -n`.
#   b. lockerctl: every command of `lockerctl --help` is in lockerctl.8 and the other
#      way round, each command's entry renders exactly as its help line (with
#      mandoc), and every exit status of the help is documented; every option in
#      `lockerd -h` is documented in lockerd.8.
#   c. `mandoc -Tlint -W warning` is clean for all three pages (skipped with a
#      message when mandoc is not installed; provisioning/quickstart installs it).
#   d. event types, refusal reason codes and compartment states in the code
#      (station.c, store.c, control.c's audit() calls, policy.c refusal_code(),
#      station.c comp_state_name()) are the ones listed in lockerd.8.
#
# Exit status: 0 when everything matches, 1 on any mismatch (each one is named),
# 2 when the binaries are missing.
set -euo pipefail

build=${1:-build}
[ -d "$build" ] || { echo "test_docs: no build directory '$build' (run make)" >&2; exit 2; }
build=$(cd "$build" && pwd)
cd "$(dirname "${BASH_SOURCE[0]}")/.."

lockerd=$build/lockerd
lockerctl=$build/lockerctl
man=docs/man
for bin in "$lockerd" "$lockerctl"; do
    [ -x "$bin" ] || { echo "test_docs: $bin not built (run make)" >&2; exit 2; }
done
for page in lockerd.8 lockerctl.8 lockerd.conf.5; do
    [ -f "$man/$page" ] || { echo "test_docs: $man/$page is missing" >&2; exit 1; }
done

failures=0
fail() {
    printf 'test_docs: FAIL: %s\n' "$*" >&2
    failures=$((failures + 1))
}
say() { printf 'test_docs: %s\n' "$*"; }

tmp=$(mktemp -d)
trap 'rm -rf -- "$tmp"' EXIT

have_mandoc=no
if command -v mandoc >/dev/null 2>&1; then
    have_mandoc=yes
fi

# Lines of one section (.Sh NAME) of a man page source.
man_section() { # page section
    awk -v want="$2" '/^\.Sh /{ on = (substr($0, 5) == want); next } on' "$1"
}

# Milliseconds of a duration as lockerd.conf writes them, or empty if not one.
duration_ms() {
    local v=$1 n unit
    [[ $v =~ ^([0-9]+)(ms|s|m|min|h|d)?$ ]] || return 0
    n=${BASH_REMATCH[1]}
    unit=${BASH_REMATCH[2]}
    case $unit in
        ms) echo "$((10#$n))" ;;
        "" | s) echo "$((10#$n * 1000))" ;;
        m | min) echo "$((10#$n * 60000))" ;;
        h) echo "$((10#$n * 3600000))" ;;
        d) echo "$((10#$n * 86400000))" ;;
    esac
}

# ---------------------------------------------------------------- a. config keys
say "a. configuration keys (lockerd -n against lockerd.conf.5)"

cat >"$tmp/min.conf" <<'EOF'
[station]
id = docs-test

[compartment.1]
lock = GPIO17
door = GPIO27
key = GPIO22
EOF
# RUNTIME_DIRECTORY changes the runtime_dir default: test the documented fallback.
if ! env -u RUNTIME_DIRECTORY "$lockerd" -n -c "$tmp/min.conf" >"$tmp/norm" 2>"$tmp/norm.err"; then
    fail "lockerd -n rejects the minimal config: $(cat "$tmp/norm.err")"
fi
# "section<TAB>key<TAB>value", compartment.N for every compartment section.
awk '
    /^\[/ { s = substr($0, 2, length($0) - 2); sub(/^compartment\.[0-9]+$/, "compartment.N", s); next }
    /^[a-z_]+ =/ {
        k = $1; v = $0; sub(/^[a-z_]+ =[ ]?/, "", v)
        if (!seen[s "\t" k]++) print s "\t" k "\t" v
    }' "$tmp/norm" >"$tmp/code_keys"
[ -s "$tmp/code_keys" ] || fail "lockerd -n printed no keys"

if ! env -u RUNTIME_DIRECTORY "$lockerd" -n -c docs/lockerd.conf.sample >/dev/null 2>"$tmp/sample.err"; then
    fail "docs/lockerd.conf.sample does not pass lockerd -n: $(cat "$tmp/sample.err")"
fi

# From lockerd.conf.5, section SECTIONS: ".Ss [name]" then ".It Cm key No = ...";
# a key's entry holds "Required." or a line starting "Default:", and a literal
# default is "Default:" followed by ".Ql VALUE" or "Default: empty.".
man_section "$man/lockerd.conf.5" SECTIONS | awk '
    function flush() { if (key != "" && !has) print "NODEFAULT\t" sect "\t" key; key = ""; has = 0 }
    /^\.Ss \[/ { flush(); s = $2; gsub(/[][]/, "", s); sect = s; next }
    /^\.It Cm [a-z_]+ No = / { flush(); key = $3; print "KEY\t" sect "\t" key; next }
    /^\.(It|El)/ { flush(); next }
    key == "" { next }
    /^Required\.$/ { has = 1; next }
    /^Default: empty\.$/ { has = 1; print "DEF\t" sect "\t" key "\t"; next }
    /^Default:$/ { has = 1; want = 1; next }
    /^Default:/ { has = 1; next }
    want { want = 0; if ($1 == ".Ql") print "DEF\t" sect "\t" key "\t" $2 }
    END { flush() }' >"$tmp/man_conf"

awk -F'\t' '$1 == "KEY" { print $2 "\t" $3 }' "$tmp/man_conf" | sort >"$tmp/man_keys"
cut -f1,2 "$tmp/code_keys" | sort >"$tmp/code_key_names"
[ -s "$tmp/man_keys" ] || fail "no keys found in $man/lockerd.conf.5 (expected '.It Cm KEY No = ...' under '.Ss [section]')"

while IFS=$'\t' read -r s k; do
    fail "config key [$s] $k is accepted by lockerd (lockerd -n prints it) but not documented in $man/lockerd.conf.5"
done < <(comm -23 "$tmp/code_key_names" "$tmp/man_keys")
while IFS=$'\t' read -r s k; do
    fail "config key [$s] $k is documented in $man/lockerd.conf.5 but lockerd does not know it (not in lockerd -n output)"
done < <(comm -13 "$tmp/code_key_names" "$tmp/man_keys")
while IFS=$'\t' read -r _ s k; do
    fail "config key [$s] $k in $man/lockerd.conf.5 says neither 'Required.' nor 'Default: ...'"
done < <(grep '^NODEFAULT' "$tmp/man_conf" || true)

while IFS=$'\t' read -r _ s k doc; do
    real=$(awk -F'\t' -v s="$s" -v k="$k" '$1 == s && $2 == k { print $3; exit }' "$tmp/code_keys")
    [ "$doc" = "$real" ] && continue
    dms=$(duration_ms "$doc")
    rms=$(duration_ms "$real")
    [ -n "$dms" ] && [ "$dms" = "$rms" ] && continue
    fail "default of [$s] $k: $man/lockerd.conf.5 says '${doc}', lockerd uses '${real}'"
done < <(grep '^DEF' "$tmp/man_conf" || true)

# ---------------------------------------------------------------- b. commands
say "b. lockerctl commands (lockerctl --help against lockerctl.8), lockerd options"

"$lockerctl" --help >"$tmp/help" || fail "lockerctl --help exited non-zero"
# Command heads are indented two spaces and start with a lowercase word; their
# descriptions are indented six.
sed -n 's/^  \([a-z].*\)$/\1/p' "$tmp/help" | sed 's/[[:space:]]*$//' >"$tmp/help_heads"
[ -s "$tmp/help_heads" ] || fail "no commands found in lockerctl --help"

# A command is its first word and, if the second is a plain lowercase word, that too.
cmd_names() { awk '{ n = $1; if ($2 ~ /^[a-z]+$/) n = n " " $2; print n }'; }
cmd_names <"$tmp/help_heads" | sort -u >"$tmp/help_cmds"
man_section "$man/lockerctl.8" COMMANDS | sed -n 's/^\.It Cm //p' | cmd_names | sort -u >"$tmp/man_cmds"
[ -s "$tmp/man_cmds" ] || fail "no commands found in $man/lockerctl.8 (expected '.It Cm ...' under COMMANDS)"

while read -r c; do
    fail "lockerctl command '$c' is in lockerctl --help but not in $man/lockerctl.8 COMMANDS"
done < <(comm -23 "$tmp/help_cmds" "$tmp/man_cmds")
while read -r c; do
    fail "command '$c' is documented in $man/lockerctl.8 but lockerctl --help does not list it"
done < <(comm -13 "$tmp/help_cmds" "$tmp/man_cmds")

if [ "$have_mandoc" = yes ]; then
    # Rendered COMMANDS section, overstrike removed, one item tag per line. A short
    # tag shares its line with the start of the description, after two blanks.
    mandoc -Tascii -O width=250 "$man/lockerctl.8" | sed 's/.\x08//g' |
        awk '/^[A-Z]/ { on = ($0 == "COMMANDS"); next } on' |
        sed 's/^[[:space:]]*//' >"$tmp/man_rendered"
    while IFS= read -r head; do
        if ! awk -v h="$head" '$0 == h || index($0, h "  ") == 1 { found = 1 } END { exit !found }' \
            "$tmp/man_rendered"; then
            name=$(printf '%s\n' "$head" | cmd_names)
            got=$(awk -v n="$name" '$0 == n || index($0, n " ") == 1 { print; exit }' "$tmp/man_rendered")
            fail "lockerctl.8 entry for '$name' does not match --help: help has '$head', man page renders '${got:-nothing}'"
        fi
    done <"$tmp/help_heads"
else
    say "   skipping the rendered usage comparison: mandoc is not installed"
fi

# Exit statuses: "exit status: 0 ok, 1 refused ..." against ".It N" in EXIT STATUS.
codes=$(sed -n 's/^exit status: //p' "$tmp/help" | grep -oE '(^|, )[0-9]+' | tr -dc '0-9\n')
[ -n "$codes" ] || fail "no exit statuses found in lockerctl --help"
man_codes=$(man_section "$man/lockerctl.8" "EXIT STATUS" | sed -n 's/^\.It \([0-9][0-9]*\)$/\1/p')
for c in $codes; do
    grep -qx "$c" <<<"$man_codes" || fail "lockerctl exit status $c is not documented in $man/lockerctl.8 EXIT STATUS"
done
for c in $man_codes; do
    grep -qx "$c" <<<"$codes" || fail "exit status $c is documented in $man/lockerctl.8 but not in lockerctl --help"
done
# Global options.
for opt in '-json' 's Ar'; do
    grep -q "^\.It Fl $opt" "$man/lockerctl.8" ||
        fail "lockerctl option '${opt%% *}' is not documented in $man/lockerctl.8"
done

# lockerd: every option of the usage text has an ".It Fl X" entry in lockerd.8.
"$lockerd" -h >"$tmp/lockerd_help" 2>&1 || fail "lockerd -h exited non-zero"
while read -r o; do
    grep -q "^\.It Fl $o\( \|$\)" "$man/lockerd.8" ||
        fail "lockerd option -$o (lockerd -h) is not documented in $man/lockerd.8"
done < <(sed -n 's/^  -\([A-Za-z]\).*/\1/p' "$tmp/lockerd_help")

# ---------------------------------------------------------------- c. mandoc lint
say "c. mandoc -Tlint -W warning"
if [ "$have_mandoc" = yes ]; then
    for page in lockerd.8 lockerctl.8 lockerd.conf.5; do
        if ! mandoc -Tlint -W warning "$man/$page" >"$tmp/lint" 2>&1; then
            fail "mandoc -Tlint -W warning $man/$page is not clean:"
            sed 's/^/    /' "$tmp/lint" >&2
        fi
    done
else
    say "   SKIPPED: mandoc is not installed (apt-get install mandoc; provisioning/quickstart installs it)"
fi

# ---------------------------------------------------------------- d. events, reasons, states
say "d. event types, refusal reasons and compartment states (code against lockerd.8)"

# Event types: string literals like "key.checkedOut" in station.c and store.c, and
# the types control.c records with audit().
{
    grep -ohE '"[a-z]+\.[a-z][A-Za-z]*"' daemon/station.c daemon/store.c
    grep -ohE 'audit\(cl, "[a-z]+\.[a-z][A-Za-z]*"' daemon/control.c | grep -oE '"[^"]+"'
} | tr -d '"' | sort -u >"$tmp/code_events"
man_section "$man/lockerd.8" EVENTS | sed -n 's/^\.It Cm //p' | sed 's/[ ,]/\n/g' |
    grep -E '^[a-z]+\.[a-z][A-Za-z]*$' | sort -u >"$tmp/man_events"

# The body of a C function that maps an enum to names: its `return "name";` lines.
c_names() { # file function-name
    awk -v f="$2" '$0 ~ "^const char \\*" f "\\(" { on = 1; next } on && /^}/ { exit } on' "$1" |
        sed -n 's/.*return "\([^"]*\)";.*/\1/p' | sort -u
}
c_names daemon/policy.c refusal_code | grep -vxE 'none|unknown' >"$tmp/code_reasons" || true
man_section "$man/lockerd.8" "REFUSAL REASONS" | sed -n 's/^\.It Cm \([a-z_-]*\).*/\1/p' | sort -u >"$tmp/man_reasons"
c_names daemon/station.c comp_state_name | grep -vx '?' >"$tmp/code_states" || true
man_section "$man/lockerd.8" "COMPARTMENT STATES" | sed -n 's/^\.It Cm \([a-z_]*\).*/\1/p' | sort -u >"$tmp/man_states"

compare_lists() { # what code-file man-file
    [ -s "$2" ] || fail "no $1 found in the code"
    [ -s "$3" ] || fail "no $1 found in $man/lockerd.8"
    while read -r x; do fail "$1 '$x' is in the code but not in $man/lockerd.8"; done < <(comm -23 "$2" "$3")
    while read -r x; do fail "$1 '$x' is in $man/lockerd.8 but not in the code"; done < <(comm -13 "$2" "$3")
}
compare_lists "event type" "$tmp/code_events" "$tmp/man_events"
compare_lists "refusal reason" "$tmp/code_reasons" "$tmp/man_reasons"
compare_lists "compartment state" "$tmp/code_states" "$tmp/man_states"

# ---------------------------------------------------------------- result
if [ "$failures" -gt 0 ]; then
    say "$failures mismatch(es) between the docs and the code"
    exit 1
fi
say "ok: $(wc -l <"$tmp/code_key_names") config keys, $(wc -l <"$tmp/help_cmds") lockerctl commands, $(wc -l <"$tmp/code_events") event types, $(wc -l <"$tmp/code_reasons") refusal reasons, $(wc -l <"$tmp/code_states") states match"
