#!/usr/bin/env bash
# Development certificates: a local CA and one server certificate signed by it, for TLS on every service.
#
#   build/certs.sh [NAME...]
#
# Writes, under CERTS_DIR (default build/certs/, git-ignored):
#   ca.pem           the CA certificate: give it to every client as DISTRIBUTARY_TLS_CA_FILE
#   ca-key.pem       the CA's private key (only this script uses it)
#   server.pem       a server certificate for 127.0.0.1, ::1, localhost and every NAME given (DNS names or IP
#                    addresses, e.g. the service names of a compose file): *_TLS_CERT_FILE
#   server-key.pem   its private key: *_TLS_KEY_FILE
#
# Idempotent: an existing CA is kept; the server certificate is kept while it covers the same names and is
# valid for another 30 days, and re-issued otherwise (services pick a re-issued one up without a restart).
# Keys are ECDSA P-256. For development and tests only: use your own PKI in production.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
DIR=${CERTS_DIR:-build/certs}
DAYS_CA=3650
DAYS_SERVER=825
RENEW_BEFORE=$((30 * 86400))

log() { printf '[certs] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

command -v openssl >/dev/null 2>&1 || die "openssl is required (apt-get install -y openssl)"

names=(localhost 127.0.0.1 ::1 "$@")
san=""
declare -A seen=()
for n in "${names[@]}"; do
    [[ -n $n && -z ${seen[$n]:-} ]] || continue
    seen[$n]=1
    if [[ $n =~ ^[0-9.]+$ || $n == *:* ]]; then
        san+="${san:+,}IP:$n"
    elif [[ $n =~ ^[A-Za-z0-9*]([A-Za-z0-9.-]*[A-Za-z0-9])?$ ]]; then
        san+="${san:+,}DNS:$n"
    else
        die "'$n' is neither a DNS name nor an IP address"
    fi
done

mkdir -p "$DIR"
chmod 700 "$DIR"
umask 077

if [[ -s $DIR/ca.pem && -s $DIR/ca-key.pem ]]; then
    log "keeping the CA in $DIR/ca.pem"
else
    log "creating a development CA in $DIR/ca.pem"
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$DIR/ca-key.pem.tmp" 2>/dev/null
    openssl req -x509 -new -key "$DIR/ca-key.pem.tmp" -sha256 -days "$DAYS_CA" \
        -subj "/O=Distributary development/CN=Distributary development CA" \
        -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -addext "subjectKeyIdentifier=hash" \
        -out "$DIR/ca.pem.tmp"
    mv "$DIR/ca-key.pem.tmp" "$DIR/ca-key.pem"
    chmod 644 "$DIR/ca.pem.tmp"
    mv "$DIR/ca.pem.tmp" "$DIR/ca.pem"
    rm -f "$DIR/server.pem" "$DIR/server-key.pem" "$DIR/server.san"
fi

current_ok() {
    [[ -s $DIR/server.pem && -s $DIR/server-key.pem && -f $DIR/server.san ]] || return 1
    [[ $(cat "$DIR/server.san") == "$san" ]] || return 1
    openssl x509 -in "$DIR/server.pem" -noout -checkend "$RENEW_BEFORE" >/dev/null 2>&1 || return 1
    openssl verify -CAfile "$DIR/ca.pem" "$DIR/server.pem" >/dev/null 2>&1 || return 1
}

if current_ok; then
    log "keeping $DIR/server.pem ($san)"
else
    log "issuing $DIR/server.pem for $san"
    ext=$(mktemp)
    trap 'rm -f "$ext"' EXIT
    printf '%s\n' \
        "basicConstraints=critical,CA:FALSE" \
        "keyUsage=critical,digitalSignature" \
        "extendedKeyUsage=serverAuth,clientAuth" \
        "subjectAltName=$san" \
        "authorityKeyIdentifier=keyid" \
        "subjectKeyIdentifier=hash" >"$ext"
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$DIR/server-key.pem.tmp" 2>/dev/null
    openssl req -new -key "$DIR/server-key.pem.tmp" -subj "/O=Distributary development/CN=${names[0]}" \
        -out "$DIR/server.csr"
    openssl x509 -req -in "$DIR/server.csr" -CA "$DIR/ca.pem" -CAkey "$DIR/ca-key.pem" -CAcreateserial \
        -sha256 -days "$DAYS_SERVER" -extfile "$ext" -out "$DIR/server.pem.tmp" 2>/dev/null
    rm -f "$DIR/server.csr" "$DIR/ca.srl"
    # Key first, then certificate, each by rename: a service reloading in between sees a mismatched pair,
    # refuses it and keeps serving the old one until the certificate lands.
    mv "$DIR/server-key.pem.tmp" "$DIR/server-key.pem"
    chmod 644 "$DIR/server.pem.tmp"
    mv "$DIR/server.pem.tmp" "$DIR/server.pem"
    echo "$san" >"$DIR/server.san"
fi

cat >&2 <<EOF
[certs] done. Serve HTTPS with, for each service (BROADCASTER_, READER_, STORAGE_NODE_):
          <PREFIX>TLS_CERT_FILE=$PWD/$DIR/server.pem <PREFIX>TLS_KEY_FILE=$PWD/$DIR/server-key.pem
        and let clients verify it with DISTRIBUTARY_TLS_CA_FILE=$PWD/$DIR/ca.pem
        (name peers https://127.0.0.1:PORT; try: curl --cacert $DIR/ca.pem https://127.0.0.1:PORT/healthz)
EOF
