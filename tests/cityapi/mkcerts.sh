#!/usr/bin/env bash
# mkcerts.sh - test certificates for the city API reference server (tests/cityapi/server.py)
#
#   tests/cityapi/mkcerts.sh DIR STATION_ID
#
# Writes into DIR (created if missing), with the openssl CLI only. Every key is EC P-256,
# mode 0600; certificates are PEM, mode 0644.
#
#   server-ca.pem  server-ca.key     CA the station trusts for the server ([sync] ca_file)
#   server.pem     server.key        server cert, CN=localhost, SAN DNS:localhost, IP:127.0.0.1,
#                                    signed by server-ca
#   client-ca.pem  client-ca.key     CA the server trusts for client certificates (it also
#                                    signs the CSRs of POST /provisioning/enroll)
#   client.pem     client.key        client cert CN=STATION_ID, signed by client-ca
#   client-expired.pem  client-expired.key
#                                    client cert CN=STATION_ID, signed by client-ca, valid
#                                    2020-01-01 .. 2020-01-02 only (expired)
#   wrong-ca.pem   wrong-ca.key      a CA nobody trusts
#   mitm.pem       mitm.key          server cert for localhost/127.0.0.1 signed by wrong-ca
#                                    (a man in the middle; the station must refuse it)
#   client-unknown.pem  client-unknown.key
#                                    client cert CN=STATION_ID signed by wrong-ca (a CA the
#                                    server does not trust)
#   station-id                       the STATION_ID the client certs were made for
#
# Idempotent: files that exist are kept; the client certificates are made again when
# STATION_ID differs from DIR/station-id. Takes well under a second.
set -euo pipefail

if [ $# -ne 2 ]; then
    echo "usage: $0 DIR STATION_ID" >&2
    exit 2
fi
dir=$1
station=$2
if ! [[ $station =~ ^[A-Za-z0-9._:-]{1,63}$ ]]; then
    echo "mkcerts: station id '$station' is not 1..63 chars of [A-Za-z0-9._:-]" >&2
    exit 2
fi
mkdir -p -- "$dir"
cd -- "$dir"
umask 077

tmp=$(mktemp -d)
trap 'rm -rf -- "$tmp"' EXIT

cat >"$tmp/ext.cnf" <<'EOF'
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
EOF

newkey() { # file
    [ -s "$1" ] && return 0
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1.tmp" 2>/dev/null
    chmod 0600 "$1.tmp"
    mv -f -- "$1.tmp" "$1"
}

serial() { # a random positive serial
    echo "0x$(openssl rand -hex 15)"
}

new_cas=" "
mkca() { # name CN; remembers in $new_cas the CAs made now, whose certs must be made again
    [ -s "$1.pem" ] && [ -s "$1.key" ] && return 0
    new_cas="$new_cas$1 "
    rm -f -- "$1.pem"
    newkey "$1.key"
    openssl req -new -x509 -key "$1.key" -subj "/O=lockerd tests/CN=$2" -days 3650 \
        -sha256 -set_serial "$(serial)" -config "$tmp/ext.cnf" -extensions ca \
        -out "$1.pem.tmp" 2>/dev/null
    chmod 0644 "$1.pem.tmp"
    mv -f -- "$1.pem.tmp" "$1.pem"
}

mkcert() { # name CN ca-name ext [force]
    local name=$1 cn=$2 ca=$3 ext=$4 force=${5:-no}
    [[ $new_cas == *" $ca "* ]] && force=yes
    if [ "$force" = no ] && [ -s "$name.pem" ] && [ -s "$name.key" ]; then
        return 0
    fi
    rm -f -- "$name.pem"
    newkey "$name.key"
    openssl req -new -key "$name.key" -subj "/O=lockerd tests/CN=$cn" -out "$tmp/$name.csr" 2>/dev/null
    openssl x509 -req -in "$tmp/$name.csr" -CA "$ca.pem" -CAkey "$ca.key" -set_serial "$(serial)" \
        -days 825 -sha256 -extfile "$tmp/ext.cnf" -extensions "$ext" -out "$name.pem.tmp" 2>/dev/null
    chmod 0644 "$name.pem.tmp"
    mv -f -- "$name.pem.tmp" "$name.pem"
}

# A certificate with validity in the past. OpenSSL 3.0's `x509 -req` has no
# -not_before/-not_after (3.4 has), so this goes through `openssl ca` with
# -startdate/-enddate and a throwaway CA database.
mkexpired() { # name CN ca-name force
    local name=$1 cn=$2 ca=$3 force=$4
    [[ $new_cas == *" $ca "* ]] && force=yes
    if [ "$force" = no ] && [ -s "$name.pem" ] && [ -s "$name.key" ]; then
        return 0
    fi
    rm -f -- "$name.pem"
    newkey "$name.key"
    mkdir -p "$tmp/cadb/new"
    : >"$tmp/cadb/index.txt"
    openssl rand -hex 15 >"$tmp/cadb/serial"
    cat >"$tmp/ca.cnf" <<EOF
[ca]
default_ca = test
[test]
dir = $tmp/cadb
database = \$dir/index.txt
serial = \$dir/serial
new_certs_dir = \$dir/new
certificate = $PWD/$ca.pem
private_key = $PWD/$ca.key
default_md = sha256
policy = any
unique_subject = no
copy_extensions = none
email_in_dn = no
[any]
organizationName = optional
commonName = supplied
[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
EOF
    openssl req -new -key "$name.key" -subj "/O=lockerd tests/CN=$cn" -out "$tmp/$name.csr" 2>/dev/null
    openssl ca -batch -notext -config "$tmp/ca.cnf" -extensions client \
        -startdate 20200101000000Z -enddate 20200102000000Z \
        -in "$tmp/$name.csr" -out "$name.pem.tmp" 2>/dev/null
    chmod 0644 "$name.pem.tmp"
    mv -f -- "$name.pem.tmp" "$name.pem"
}

force=no
if [ "$(cat station-id 2>/dev/null || true)" != "$station" ]; then
    force=yes
fi

mkca server-ca "lockerd test server CA"
mkca client-ca "lockerd test client CA"
mkca wrong-ca "lockerd test wrong CA"
mkcert server localhost server-ca server
mkcert mitm localhost wrong-ca server
mkcert client "$station" client-ca client "$force"
mkexpired client-expired "$station" client-ca "$force"
mkcert client-unknown "$station" wrong-ca client "$force"
printf '%s\n' "$station" >station-id.tmp
chmod 0644 station-id.tmp
mv -f station-id.tmp station-id
