#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for herald's PostgreSQL tests.
#
#   eval "$(bash .ci/postgres.sh start)"   # prints the two export lines below
#   cargo test -p herald ...                # tests read HERALD_TEST_POSTGRES
#   bash .ci/postgres.sh stop               # stops it and removes its directory
#
# start: installs the distribution's `postgresql` package if no `initdb` is
# found (as root, Debian/Ubuntu), creates a cluster in a new temporary
# directory, with one superuser role `herald_test` whose random password is
# checked with scram-sha-256, listening on 127.0.0.1 only, on a free port,
# its unix socket inside the directory. fsync stays on (the default): some
# tests are about what a commit makes durable. The cluster also serves TLS
# (ssl = on) with a throwaway CA and a server certificate for `localhost`
# and `127.0.0.1` made with the `openssl` CLI (installed like postgresql if
# missing); plain connections are still accepted. The role `herald_cert`,
# if a test creates it, logs in over TLS with the client certificate
# client.pem / client.key beside the CA (pg_hba `hostssl ... cert`).
# Prints, on stdout only:
#   export HERALD_TEST_POSTGRES=postgres://herald_test:PASSWORD@127.0.0.1:PORT/postgres
#   export HERALD_TEST_POSTGRES_DIR=DIR
#   export HERALD_TEST_POSTGRES_CA=DIR/tls/ca.pem     (the CA that signed the server's certificate)
# stop: stops the cluster in $HERALD_TEST_POSTGRES_DIR (or the directory
# given after `stop`) and removes the directory.
#
# PostgreSQL refuses to run as root: as root, the cluster belongs to the
# `postgres` user that the package creates, and its programs run as it.
set -euo pipefail

log() { printf 'postgres.sh: %s\n' "$*" >&2; }

bindir() {
    local d
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        [ -x "$d/initdb" ] && { echo "$d"; return 0; }
    done
    if command -v initdb >/dev/null 2>&1; then
        dirname "$(command -v initdb)"
        return 0
    fi
    return 1
}

as_owner() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

# A throwaway CA and a server certificate signed by it, in $1 (ca.pem,
# server.pem, server.key), valid for 2 days: for localhost and 127.0.0.1.
make_certs() {
    local tls=$1
    mkdir -p "$tls"
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=herald test CA" \
        -keyout "$tls/ca.key" -out "$tls/ca.pem" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" >/dev/null 2>&1
    openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
        -keyout "$tls/server.key" -out "$tls/server.csr" >/dev/null 2>&1
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' \
        >"$tls/server.ext"
    openssl x509 -req -in "$tls/server.csr" -CA "$tls/ca.pem" -CAkey "$tls/ca.key" -CAcreateserial \
        -days 2 -extfile "$tls/server.ext" -out "$tls/server.pem" >/dev/null 2>&1
    # A client certificate for the role herald_cert (pg_hba: `hostssl ... cert`).
    openssl req -newkey rsa:2048 -nodes -subj "/CN=herald_cert" \
        -keyout "$tls/client.key" -out "$tls/client.csr" >/dev/null 2>&1
    printf 'basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n' >"$tls/client.ext"
    openssl x509 -req -in "$tls/client.csr" -CA "$tls/ca.pem" -CAkey "$tls/ca.key" -CAcreateserial \
        -days 2 -extfile "$tls/client.ext" -out "$tls/client.pem" >/dev/null 2>&1
    rm -f "$tls/ca.key" "$tls/server.csr" "$tls/server.ext" "$tls/client.csr" "$tls/client.ext" "$tls/ca.srl"
    chmod 600 "$tls/server.key" "$tls/client.key"
    chmod 644 "$tls/ca.pem" "$tls/server.pem" "$tls/client.pem"
}

start() {
    local bin
    if ! command -v openssl >/dev/null 2>&1; then
        [ "$(id -u)" = 0 ] || { log "openssl not found: install it (apt-get install openssl)"; exit 1; }
        log "installing openssl (Debian packages)"
        DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends openssl >&2
    fi
    if ! bin=$(bindir); then
        [ "$(id -u)" = 0 ] || { log "initdb not found: install PostgreSQL (apt-get install postgresql)"; exit 1; }
        log "installing postgresql (Debian packages)"
        DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql >&2
        bin=$(bindir) || { log "postgresql installed, but no initdb found"; exit 1; }
    fi
    local dir password
    dir=$(mktemp -d "${TMPDIR:-/tmp}/herald-pg.XXXXXX")
    password=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
    printf '%s\n' "$password" >"$dir/pwfile"
    chmod 600 "$dir/pwfile"
    if [ "$(id -u)" = 0 ]; then
        chown -R postgres: "$dir"
        chmod 700 "$dir"
    fi
    as_owner "$bin/initdb" -D "$dir/data" -U herald_test --pwfile="$dir/pwfile" \
        --auth=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 \
        || { cat "$dir/initdb.log" >&2; log "initdb failed"; exit 1; }
    rm -f "$dir/pwfile"
    make_certs "$dir/tls" || { log "openssl could not make the test certificates"; exit 1; }
    # First match wins: the client-certificate role before initdb's password lines.
    local hba="$dir/data/pg_hba.conf"
    { printf 'hostssl all herald_cert 127.0.0.1/32 cert\n'; cat "$hba"; } >"$hba.new"
    mv "$hba.new" "$hba"
    if [ "$(id -u)" = 0 ]; then chown postgres: "$hba"; fi
    [ "$(id -u)" = 0 ] && chown -R postgres: "$dir/tls"
    chmod 755 "$dir" "$dir/tls"
    local port attempt
    for attempt in 1 2 3 4 5 6 7 8; do
        port=$((20000 + RANDOM % 40000))
        # Taken already? (bash connects to it)
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then continue; fi
        if as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start -o \
            "-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=$dir \
             -c shared_buffers=32MB -c max_connections=300 -c fsync=on \
             -c ssl=on -c ssl_cert_file=$dir/tls/server.pem -c ssl_key_file=$dir/tls/server.key \
             -c ssl_ca_file=$dir/tls/ca.pem" >/dev/null 2>&1; then
            printf 'export HERALD_TEST_POSTGRES=postgres://herald_test:%s@127.0.0.1:%s/postgres\n' "$password" "$port"
            printf 'export HERALD_TEST_POSTGRES_DIR=%s\n' "$dir"
            printf 'export HERALD_TEST_POSTGRES_CA=%s\n' "$dir/tls/ca.pem"
            log "PostgreSQL $("$bin/postgres" --version | awk '{print $3}') listening on 127.0.0.1:$port (cluster in $dir)"
            return 0
        fi
        log "could not start on port $port (attempt $attempt), trying another"
    done
    tail -n 20 "$dir/server.log" >&2 || true
    rm -rf "$dir"
    log "PostgreSQL did not start"
    exit 1
}

stop() {
    local dir=${1:-${HERALD_TEST_POSTGRES_DIR:-}}
    [ -n "$dir" ] || { log "stop: no directory (set HERALD_TEST_POSTGRES_DIR or give it)"; exit 1; }
    [ -d "$dir/data" ] || { log "stop: $dir holds no cluster"; exit 1; }
    local bin
    bin=$(bindir)
    as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || log "pg_ctl stop failed (already stopped?)"
    rm -rf "$dir"
}

case "${1:-}" in
    start) start ;;
    stop) shift; stop "$@" ;;
    *) log "usage: $0 start | stop [DIR]"; exit 2 ;;
esac
