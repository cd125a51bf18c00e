#!/bin/sh
# Runs inside the VM as the ExecStart of herald-probe.service, a copy of
# herald.service with the same user, directories and hardening (made by
# guest-test.sh), so it sees exactly what herald sees. Prints one line per
# check: "PROBE ok <what>" or "PROBE bad <what>".
ok() { echo "PROBE ok $*"; }
bad() { echo "PROBE bad $*"; }

# expect_denied WHAT CMD...: CMD must fail.
expect_denied() {
    what=$1
    shift
    if "$@" >/dev/null 2>&1; then bad "$what: allowed"; else ok "$what: denied"; fi
}
expect_allowed() {
    what=$1
    shift
    if "$@" >/dev/null 2>&1; then ok "$what: allowed"; else bad "$what: denied"; fi
}
can_write() { touch "$1/.herald-probe" && rm -f "$1/.herald-probe"; }

[ "$(id -un)" = herald ] && ok "runs as user herald" || bad "runs as $(id -un), not herald"
grep -q '^NoNewPrivs:[[:space:]]*1' /proc/self/status && ok "NoNewPrivs set" || bad "NoNewPrivs not set"
grep -q '^CapEff:[[:space:]]*0*$' /proc/self/status && ok "no effective capabilities" || bad "has capabilities"
grep -q '^CapBnd:[[:space:]]*0*$' /proc/self/status && ok "empty capability bounding set" || bad "capability bounding set not empty"
grep -q '^Seccomp:[[:space:]]*2' /proc/self/status && ok "seccomp filter active" || bad "no seccomp filter"

# Reading what it should not.
expect_denied "read /etc/shadow" cat /etc/shadow
expect_denied "list /root" ls /root
expect_denied "read /root/root-notes.txt" cat /root/root-notes.txt
expect_denied "list /home/alice" ls /home/alice
expect_denied "read /home/alice/notes.txt (world-readable, hidden by ProtectHome)" cat /home/alice/notes.txt
expect_denied "read /etc/herald/secrets/hook-secret (only through LoadCredential)" cat /etc/herald/secrets/hook-secret
expect_denied "see PID 1 in /proc (ProtectProc=invisible)" test -e /proc/1/status
expect_denied "read /proc/cmdline (ProcSubset=pid)" cat /proc/cmdline
# What it needs.
expect_allowed "read /etc/herald/herald.toml" cat /etc/herald/herald.toml
expect_allowed "read its credential" cat "$CREDENTIALS_DIRECTORY/hook-secret"

# Writing: only its state (and runtime) directory, and its private /tmp.
expect_allowed "write /var/lib/herald" can_write /var/lib/herald
expect_allowed "write /run/herald" can_write /run/herald
for dir in / /etc /etc/herald /usr /usr/local/bin /var /var/lib /var/log /var/cache /var/spool /opt /srv \
    /home /home/alice /root /run /dev /dev/shm /dev/mqueue /sys/fs/cgroup; do
    expect_denied "write $dir" can_write "$dir"
done
# /tmp and /var/tmp are its own (PrivateTmp): the host's marker is not there.
expect_denied "see the host's /tmp" test -e /tmp/host-marker
expect_allowed "write its private /tmp" can_write /tmp
# No raw devices.
expect_denied "read /dev/vda" head -c 1 /dev/vda
expect_denied "read /dev/mem" head -c 1 /dev/mem
echo "PROBE end"
