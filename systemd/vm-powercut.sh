#!/usr/bin/env bash
# herald across power cuts: boot a Debian VM (the root file system of
# systemd/vm-test.sh) whose herald delivers to a webhook receiver on this
# host, cut the VM's power at a random moment (kill -9 of QEMU and of its
# disk: the guest's RAM, page cache and unwritten journal are gone, and so
# is every write the disk had not been told to flush, as at a power cut; see
# the disk below), boot it again, and check the store as the cut left it:
#
#   - every request the receiver saw has its `attempt` record (the
#     `in_flight` mark) in herald's store;
#   - every record of the last complete `herald log --format json` export
#     taken while herald ran (what the CLI showed before the cut) is in the
#     store, byte for byte;
#   - `herald audit verify` passes.
#
#   systemd/vm-powercut.sh        build the release binaries, then run
#
# Environment:
#   HERALD_BIN, SANDBOX_BIN  use these binaries instead of building them
#   HERALD_POWERCUT_CUTS     how many cuts (default 5)
#   HERALD_POWERCUT_SEED     seed of the cut moments (default: random, printed)
#   HERALD_POWERCUT_DISK     nbd (default): the disk is systemd/vm/volatile_nbd.py,
#                            which loses every write not flushed; qcow2: a qcow2
#                            layer with cache=none, which loses less
#   HERALD_VM_CACHE          the root file system cache (see systemd/vm-test.sh)
#   HERALD_VM_TIMEOUT        bound of each boot in seconds (default 300)
#   HERALD_VM_KEEP           keep the work folder (serial logs, exports, image)
#
# The receiver listens on 127.0.0.1 only. The guest reaches it through QEMU's
# user-mode network, which turns the guest's connections to 10.0.2.2 into
# connections from this host's 127.0.0.1 to 127.0.0.1; the guest has no
# default route, so it reaches nothing else. Needs root (debootstrap).
# Exits non-zero when a record is missing, the chain does not verify, or a
# boot does not reach its checks.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
suite=bookworm
cuts=${HERALD_POWERCUT_CUTS:-5}
seed=${HERALD_POWERCUT_SEED:-$((RANDOM * 32768 + RANDOM))}
boot_timeout=${HERALD_VM_TIMEOUT:-300}
disk_model=${HERALD_POWERCUT_DISK:-nbd}
case $disk_model in nbd | qcow2) ;; *) echo "vm-powercut: HERALD_POWERCUT_DISK must be nbd or qcow2, not $disk_model" >&2; exit 2 ;; esac
accounts=8 # webhook accounts: each post is one delivery to each
posts=900  # one post a second from the first boot on: more than the test lasts

log() { printf 'vm-powercut: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 2; }

[ "$(id -u)" = 0 ] || die "run as root (debootstrap needs it)"
. "$here/vm/rootfs.sh"
vm_host_tools
command -v jq >/dev/null || apt_install jq
command -v curl >/dev/null || apt_install curl
command -v qemu-img >/dev/null || apt_install qemu-utils
command -v python3 >/dev/null || apt_install python3

if [ -z "${HERALD_BIN:-}" ] || [ -z "${SANDBOX_BIN:-}" ]; then
    log "building the release binaries"
    (cd "$repo" && cargo build --release --locked -q -p herald --no-default-features &&
        cargo build --release --locked -q -p herald-sandbox)
    target=$(cd "$repo" && cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
    HERALD_BIN=${HERALD_BIN:-$target/release/herald}
    SANDBOX_BIN=${SANDBOX_BIN:-$target/release/herald-sandbox}
fi
[ -x "$HERALD_BIN" ] || die "no herald binary at $HERALD_BIN"
[ -x "$SANDBOX_BIN" ] || die "no herald-sandbox binary at $SANDBOX_BIN"

work=$(mktemp -d "${TMPDIR:-/var/tmp}/herald-powercut.XXXXXX")
qemu_pid=
nbd_pid=
sandbox_pid=
cleanup() {
    trap - EXIT
    if [ -n "$qemu_pid" ]; then kill -9 "$qemu_pid" 2>/dev/null || true; fi
    if [ -n "$nbd_pid" ]; then kill -9 "$nbd_pid" 2>/dev/null || true; fi
    if [ -n "$sandbox_pid" ]; then kill "$sandbox_pid" 2>/dev/null || true; fi
    if [ -n "${HERALD_VM_KEEP:-}" ]; then log "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

vm_rootfs "$work"
[ -f "$kernel" ] && [ -f "$initrd" ] || die "no kernel or initrd in $rootfs/boot"
# Started only by this script's kernel command line (systemd.wants=).
install -m 0644 "$here/vm/herald-vm-powercut.service" "$rootfs/etc/systemd/system/herald-vm-powercut.service"
install -d "$rootfs/mnt/payload"

# --- the receiver, on this host's loopback -----------------------------------------
secret=powercut-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')
received() { curl -sf "http://127.0.0.1:$port/_sandbox/received"; }
for _ in 1 2 3 4 5; do
    port=$((20000 + RANDOM % 40000))
    HOOK_SECRET=$secret "$SANDBOX_BIN" --listen "127.0.0.1:$port" --secret-env HOOK_SECRET \
        >"$work/receiver.log" 2>&1 &
    sandbox_pid=$!
    for _ in $(seq 50); do
        received >/dev/null 2>&1 && break
        kill -0 "$sandbox_pid" 2>/dev/null || break
        sleep 0.1
    done
    received >/dev/null 2>&1 && break
    kill "$sandbox_pid" 2>/dev/null || true
    sandbox_pid=
done
[ -n "$sandbox_pid" ] || die "the receiver did not start (see $work/receiver.log)"
log "receiver on 127.0.0.1:$port"

# --- what the guest gets through 9p ------------------------------------------------
payload=$work/payload
install -d "$payload"
install -m 0755 "$HERALD_BIN" "$payload/herald"
install -m 0755 "$here/vm/powercut-guest.sh" "$payload/"
echo "$port" >"$payload/receiver-port"
echo "$secret" >"$payload/receiver-secret"
echo "$accounts" >"$payload/accounts"
echo "$posts" >"$payload/posts"

log "making the disk image (mkfs.ext4 -d)"
image=$work/root.img
truncate -s 3G "$image"
mkfs.ext4 -q -F -L herald-vm -d "$rootfs" "$image"
# The guest's disk (RELIABILITY.md, "Power cuts in a VM"), either:
# - nbd: systemd/vm/volatile_nbd.py serves the image to QEMU over a Unix
#   socket and keeps every write in its memory until the guest flushes (or
#   writes with FUA); the cut kills it with QEMU, so every write not flushed
#   is lost: a disk whose whole write cache is volatile;
# - qcow2: a qcow2 layer over the image, small clusters. QEMU keeps the
#   layer's cluster map in its memory and writes it at the guest's flushes,
#   so a kill loses what the guest wrote to new clusters since its last
#   flush (but not rewrites of clusters already in the layer).
if [ "$disk_model" = qcow2 ]; then
    disk=$work/disk.qcow2
    qemu-img create -q -f qcow2 -o cluster_size=4096 -F raw -b "$image" "$disk"
    drive="file=$disk,format=qcow2"
else
    disk=$work/disk.sock
    drive="file=nbd+unix:///?socket=$disk,format=raw"
fi
# start_disk: the NBD server for the next boot (a new one after each cut).
start_disk() {
    [ "$disk_model" = nbd ] || return 0
    rm -f "$disk"
    # Its log: a line per flush (time, blocks made durable). $n: boot_vm's.
    python3 "$here/vm/volatile_nbd.py" "$image" "$disk" 2>"$work/nbd.$n.log" &
    nbd_pid=$!
    for _ in $(seq 100); do
        [ -S "$disk" ] && return 0
        kill -0 "$nbd_pid" 2>/dev/null || break
        sleep 0.1
    done
    die "the NBD disk did not start (see $work/nbd.$n.log)"
}

# --- helpers -------------------------------------------------------------------------
# block FILE NAME: the body of the framed block NAME in FILE (see powercut-guest.sh).
block() { awk -v b="=== $2 BEGIN" -v e="=== $2 END" 'index($0, e) == 1 { on = 0 } on { print } $0 == b { on = 1 }' "$1"; }
# block_rc FILE NAME: the exit code the guest framed NAME with (empty: incomplete).
block_rc() { sed -n "s/^=== $2 END rc=\([0-9]*\)\$/\1/p" "$1" | tail -n 1; }
serial_has() { [ -e "$serial" ] && tr -d '\r' <"$serial" | grep -aq "^HERALD-VM: $1"; }
vm_alive() { kill -0 "$qemu_pid" 2>/dev/null; }

boot_vm() { # boot_vm N [final]
    local n=$1 extra=
    [ "${2:-}" = final ] && extra=" herald.final=1"
    serial=$work/serial.$n.log
    export_log=$work/export.$n.log
    : >"$export_log"
    start_disk
    # cache=none: the guest sees a disk with a volatile write cache and sends
    # it flushes, as to a real disk (RELIABILITY.md, "Power cuts in a VM").
    qemu-system-x86_64 \
        -accel tcg -cpu max -smp 2 -m 1536 \
        -display none -monitor none -serial "file:$serial" -no-reboot \
        -nic user,model=virtio-net-pci,ipv6=off \
        -kernel "$kernel" -initrd "$initrd" \
        -append "console=ttyS0 root=/dev/vda rw panic=1 quiet systemd.show_status=error systemd.mask=herald-vm-test.service systemd.wants=herald-vm-powercut.service herald.boot=$n$extra" \
        -drive "$drive,if=virtio,cache=none" \
        -virtfs "local,path=$payload,mount_tag=payload,security_model=none,readonly=on" \
        -device virtio-rng-pci \
        -device virtio-serial-pci -chardev "file,id=export,path=$export_log" \
        -device virtserialport,chardev=export,name=herald.export \
        </dev/null >"$work/qemu.$n.log" 2>&1 &
    qemu_pid=$!
    boot_started=$SECONDS
}

# wait_until SECONDS CMD...: until CMD succeeds; false when QEMU exits or time is up.
wait_until() {
    local limit=$1
    shift
    until "$@"; do
        vm_alive || { "$@"; return; }
        [ $((SECONDS - boot_started)) -lt "$limit" ] || return 1
        sleep 0.5
    done
}

failures=0
fail() { log "FAIL: $*"; failures=$((failures + 1)); }
total_shown=0
missing_marks=0
missing_shown=0

# check_after N: the store as cut N left it (read by the guest at boot N+1).
check_after() {
    local n=$1 cut=$(($1 - 1)) after=$work/after.$1.jsonl
    wait_until "$boot_timeout" eval '[ -n "$(block_rc "$export_log" "after-$n")" ]' ||
        { fail "boot $n: the guest did not read the store (see $serial)"; return; }
    if [ "$(block_rc "$export_log" "verify-$n")" != 0 ]; then
        fail "boot $n: herald audit verify: $(block "$export_log" "verify-$n" | tail -n 2 | tr '\n' ' ')"
    fi
    [ "$(block_rc "$export_log" "after-$n")" = 0 ] ||
        { fail "boot $n: herald log: $(block "$export_log" "after-$n" | tail -n 2 | tr '\n' ' ')"; return; }
    block "$export_log" "after-$n" >"$after"
    jq -r 'select(.event == "attempt") | "\(.delivery) \(.attempt)"' "$after" | sort -u >"$after.marks"
    # Every request the receiver saw (up to this cut) has its mark.
    local lost_marks lost_shown
    lost_marks=$(comm -23 "$work/seen.$cut" "$after.marks" | wc -l)
    # Every record the CLI showed before this cut is there, byte for byte.
    lost_shown=$(sort "$work/shown.$cut" | comm -23 - <(sort "$after") | wc -l)
    missing_marks=$((missing_marks + lost_marks))
    missing_shown=$((missing_shown + lost_shown))
    log "after cut $cut: $(wc -l <"$work/seen.$cut") requests seen (delivery, attempt), $lost_marks without their attempt record;" \
        "$(wc -l <"$work/shown.$cut") records shown before the cut, $lost_shown missing; the store holds $(wc -l <"$after") records;" \
        "audit verify rc=$(block_rc "$export_log" "verify-$n")"
    if [ "$lost_marks" -gt 0 ]; then
        fail "cut $cut: requests the receiver saw with no attempt record after the cut:"
        comm -23 "$work/seen.$cut" "$after.marks" | head -n 5 >&2
    fi
    [ "$lost_shown" -eq 0 ] || fail "cut $cut: $lost_shown records shown by herald log before the cut are gone"
}

log "seed $seed; $cuts cuts; disk: $disk_model; $accounts webhook accounts, a post a second"
RANDOM=$seed
for ((n = 1; n <= cuts; n++)); do
    before=$(received | jq length)
    boot_vm "$n"
    [ "$n" -eq 1 ] || check_after "$n"
    wait_until "$boot_timeout" serial_has "RUNNING boot $n" ||
        { tr -d '\r' <"$serial" | tail -n 30 >&2; die "boot $n: herald did not start"; }
    # Deliveries are flowing (at least 16 new requests since this boot
    # began) and the CLI has shown the log at least once.
    wait_until "$boot_timeout" eval '[ "$(received | jq length)" -ge $((before + 16)) ]' ||
        die "boot $n: no deliveries reach the receiver (see $serial)"
    wait_until "$boot_timeout" grep -q "^=== export-$n-[0-9]* END rc=0\$" "$export_log" ||
        { tr -d '\r' <"$serial" | tail -n 30 >&2; die "boot $n: no herald log export"; }
    # The cut: a random moment 0.5-6.5 s on, then as soon as a new request
    # reaches the receiver, plus 0-250 ms, so the cut often falls within
    # the half second between sled's own periodic fsyncs that follows a
    # request: the window a missing fdatasync would lose. A cut also kills
    # the disk (nbd), so what it was not told to flush is lost.
    delay=$((500 + RANDOM % 6000))
    sleep "$((delay / 1000)).$(printf '%03d' $((delay % 1000)))"
    # The receiver logs each request as it handles it: follow its log, so
    # the cut is timed from the request itself (asking the receiver for its
    # whole list took hundreds of ms, and the window closed meanwhile).
    exec {follow}< <(exec tail -n 0 -s 0.01 -f "$work/receiver.log")
    follow_pid=$!
    while IFS= read -r -t 60 line <&"$follow"; do # at most a minute
        case $line in *"webhook request handled"*) break ;; esac
    done
    kill "$follow_pid" 2>/dev/null || true
    exec {follow}<&-
    after_request=$((RANDOM % 250))
    sleep "0.$(printf '%03d' "$after_request")"
    # The power goes: the machine and its disk (with its unflushed writes).
    cut_time=$(date +%s.%N)
    kill -9 "$qemu_pid" $nbd_pid
    wait "$qemu_pid" $nbd_pid 2>/dev/null || true
    qemu_pid= nbd_pid=
    # What the receiver saw and what the CLI showed, as the power went.
    received | jq -r '.[] | select(.body != null) | "\(.body.delivery_id) \(.body.attempt)"' | sort -u >"$work/seen.$n"
    last=$(sed -n "s/^=== \(export-$n-[0-9]*\) END rc=0\$/\1/p" "$export_log" | tail -n 1)
    [ -n "$last" ] || die "boot $n: no complete herald log export before the cut"
    block "$export_log" "$last" >"$work/shown.$n"
    total_shown=$((total_shown + $(wc -l <"$work/shown.$n")))
    log "cut $n at $((SECONDS - boot_started))s of boot ($delay ms after deliveries flowed, then $after_request ms after a request): the receiver has $(received | jq length) requests; $last showed $(wc -l <"$work/shown.$n") records"
    if [ "$disk_model" = nbd ] && [ -s "$work/nbd.$n.log" ]; then
        log "cut $n: the disk's last flush was $(tail -n 1 "$work/nbd.$n.log" | awk -v c="$cut_time" '{ printf "%d", (c - $1) * 1000 }') ms before the cut"
    fi
done
boot_vm $((cuts + 1)) final
check_after $((cuts + 1))
wait_until "$boot_timeout" serial_has DONE || fail "the last boot did not finish"
wait "$qemu_pid" 2>/dev/null || true
qemu_pid=
if [ -n "$nbd_pid" ]; then kill "$nbd_pid" 2>/dev/null || true; wait "$nbd_pid" 2>/dev/null || true; nbd_pid=; fi

requests=$(received | jq length)
echo
echo "vm-powercut: $cuts cuts, $requests requests seen by the receiver, $total_shown records shown before the cuts;" \
    "requests without their attempt record: $missing_marks, shown records missing: $missing_shown; $failures failures (seed $seed, disk $disk_model)"
[ "$failures" -eq 0 ]
