#!/bin/bash
# herald's power-cut test, the guest's side: run at every boot of the VM by
# herald-vm-powercut.service (see systemd/vm-powercut.sh, which cuts the power).
#
# First boot: write a config (webhook accounts delivering to the host's
# receiver, a post every second) and start herald. Every later boot: first,
# with herald stopped, read the store as the cut left it (`herald audit
# verify`, `herald log --format json`) and send that to the host; then start
# herald again. While herald runs, export `herald log --format json` again
# and again: the host keeps each complete export, so it knows what the CLI
# showed before the cut. The kernel command line says the boot number
# (herald.boot=N) and, on the last boot, herald.final=1 (check, then power off).
#
# Serial console (ttyS0): HERALD-VM: lines for the host. Port herald.export
# (virtio-serial, a file on the host): the exports, each framed by
#   === <name> BEGIN            and            === <name> END rc=<exit code>
set -u
export LC_ALL=C.UTF-8
P=/mnt/payload
CONFIG=/etc/herald/herald.toml
EXPORT=/dev/virtio-ports/herald.export
say() { echo "HERALD-VM: $*"; }
arg() { sed -n "s/.*\bherald\.$1=\([^ ]*\).*/\1/p" /proc/cmdline; }
boot=$(arg boot)
final=$(arg final)
port=$(cat "$P/receiver-port")

# frame NAME CMD...: run CMD, send its output to the host framed by NAME.
frame() {
    local name=$1 out rc
    shift
    out=$("$@" 2>/run/frame.err)
    rc=$?
    [ "$rc" = 0 ] || out+=$'\n'$(cat /run/frame.err)
    printf '=== %s BEGIN\n%s\n=== %s END rc=%s\n' "$name" "$out" "$name" "$rc" >"$EXPORT"
    return "$rc"
}

say "BEGIN boot $boot, $(uname -r)"
install -m 0755 "$P/herald" /usr/local/bin/herald
sync # the test cuts herald's power, not its binary's

# The host's receiver: QEMU's user-mode network forwards the guest's
# connections to 10.0.2.2 to the host's 127.0.0.1. No default route: the
# guest reaches nothing else.
nic=$(ls /sys/class/net | grep -v '^lo$' | head -n 1)
ip link set "$nic" up
ip addr add 10.0.2.15/24 dev "$nic"

if [ ! -e "$CONFIG" ]; then
    install -d -m 0700 /etc/herald /var/lib/herald
    install -m 0600 "$P/receiver-secret" /etc/herald/hook-secret
    {
        cat <<EOF
# herald's config for the power-cut test (written by powercut-guest.sh).
[daemon]
state_dir = "/var/lib/herald"
control_socket = "/run/herald/herald.sock"
time_zone = "UTC"

[retry]
initial_backoff = "1s"
max_backoff = "5s"

EOF
        accounts=()
        for i in $(seq -w 1 "$(cat "$P/accounts")"); do
            accounts+=("\"city-$i\"")
            printf '[accounts.city-%s]\nplatform = "webhook"\nurl = "http://10.0.2.2:%s/hook"\nsecret = { file = "/etc/herald/hook-secret" }\n\n' "$i" "$port"
        done
        printf '[groups]\ncities = [%s]\n' "$(IFS=,; echo "${accounts[*]}")"
        start=$(($(date +%s) + 10))
        posts=$(cat "$P/posts")
        for ((n = 0; n < posts; n++)); do
            TZ=UTC printf '\n[[posts]]\nid = "p%04d"\nbody = "Power-cut test post %d."\ntargets = ["cities"]\nat = "%(%Y-%m-%dT%H:%M:%SZ)T"\n' \
                "$n" "$n" "$((start + n))"
        done
    } >"$CONFIG.new"
    mv "$CONFIG.new" "$CONFIG"
    sync # (a cut soon after lost an unsynced config in a first try)
    if out=$(herald check --config "$CONFIG" 2>&1); then
        say "NOTE config: herald check passed"
    else
        say "FAIL config ($(echo "$out" | tail -n 3 | tr '\n' ' '))"
    fi
else
    # The store as the cut left it, before herald touches it again.
    frame "verify-$boot" herald audit verify --config "$CONFIG"
    say "NOTE boot $boot: herald audit verify rc=$?"
    frame "after-$boot" herald log --config "$CONFIG" --format json
    say "NOTE boot $boot: herald log rc=$?"
fi

if [ "$final" = 1 ]; then
    say "DONE"
    systemctl poweroff --no-block
    exit 0
fi

systemd-run --quiet --unit=herald /usr/local/bin/herald run --config "$CONFIG"
# Running: the unit is active and its control socket answers (an offline
# `herald status` would answer without it).
running() { systemctl is-active -q herald && [ -S /run/herald/herald.sock ] && herald status --config "$CONFIG" >/dev/null 2>&1; }
for ((i = 0; i < 60; i++)); do
    running && break
    sleep 1
done
if ! running; then
    say "FAIL herald did not start: $(systemctl show -p ActiveState --value herald)"
    journalctl -u herald -n 20 -o cat | sed 's/^/HERALD-VM: NOTE journal: /'
    systemctl poweroff --no-block
    exit 1
fi
say "RUNNING boot $boot"
# What the CLI shows, again and again, until the power goes.
for ((n = 1; ; n++)); do
    frame "export-$boot-$n" herald log --config "$CONFIG" --format json
    [ "$n" -gt 1 ] || say "NOTE first export: rc=$?"
done
