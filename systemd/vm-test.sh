#!/usr/bin/env bash
# herald under a real systemd: boot a small Debian bookworm VM and run
# systemd/vm/guest-test.sh inside it (install the unit, start, deliver to the
# sandbox receiver, reload good and bad configs, kill -9, stop, journal
# fields, `systemd-analyze security`, what the service user can reach).
#
#   systemd/vm-test.sh            build the release binaries, then run the VM
#
# Environment:
#   HERALD_BIN, SANDBOX_BIN  use these binaries instead of building them
#   HERALD_VM_CACHE          where the debootstrap result is kept between
#                            local runs (default /var/cache/herald-vm); with
#                            CI=true it is built fresh in a temporary folder
#   HERALD_VM_TIMEOUT        bound of the whole VM run in seconds (default 600)
#   HERALD_VM_KEEP           keep the work folder (serial log, image) for debugging
#
# The VM has no network card: everything inside it talks over loopback. The
# only host reached is the Debian mirror this machine's apt already uses,
# for debootstrap. Needs root (debootstrap). Prints one line per in-guest
# check and exits non-zero on any FAIL, on a missing result, or on timeout.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
suite=bookworm
vm_timeout=${HERALD_VM_TIMEOUT:-600}

log() { printf 'vm-test: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 2; }

[ "$(id -u)" = 0 ] || die "run as root (debootstrap needs it)"

# --- tools and the Debian mirror (systemd/vm/rootfs.sh) ------------------------
. "$here/vm/rootfs.sh"
vm_host_tools

# --- the README's install section, as written ------------------------------------
# The ```sh blocks between <!-- install:begin --> and <!-- install:secrets-in-place -->
# (part 1), and from there to <!-- install:end --> (part 2). Its `cargo` lines
# run here, on the host; everything else runs in the guest, in a copy of the
# repository's layout (target/release/herald, systemd/...).
readme_block() {
    awk -v from="$1" -v to="$2" '
        index($0, from) == 1 { on = 1; next }
        index($0, to) == 1 { on = 0 }
        on && /^```sh$/ { code = 1; next }
        on && /^```$/ { code = 0; next }
        on && code { print }' "$repo/README.md"
}
install_1=$(readme_block '<!-- install:begin -->' '<!-- install:secrets-in-place -->')
install_2=$(readme_block '<!-- install:secrets-in-place -->' '<!-- install:end -->')
[ -n "$install_1" ] && [ -n "$install_2" ] ||
    die "README.md has no install section between <!-- install:begin/secrets-in-place/end --> markers"
build_commands=$(printf '%s\n' "$install_1" | grep '^cargo ' || true)
[ -n "$build_commands" ] || die "the README's install section builds nothing (no cargo line)"

# --- the binaries --------------------------------------------------------------
if [ -z "${HERALD_BIN:-}" ] || [ -z "${SANDBOX_BIN:-}" ]; then
    log "building the release binaries (herald as README.md's install section does: $build_commands)"
    (cd "$repo" && eval "$build_commands" && cargo build --release --locked -q -p herald-sandbox)
    target=$(cd "$repo" && cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
    HERALD_BIN=${HERALD_BIN:-$target/release/herald}
    SANDBOX_BIN=${SANDBOX_BIN:-$target/release/herald-sandbox}
fi
[ -x "$HERALD_BIN" ] || die "no herald binary at $HERALD_BIN"
[ -x "$SANDBOX_BIN" ] || die "no herald-sandbox binary at $SANDBOX_BIN"

# --- the documented security score (README.md, "Operations") --------------------
expected_score=$(sed -n 's/.*Overall exposure level for herald\.service: \([0-9][0-9.]*\).*/\1/p' "$repo/README.md" | head -n 1)
[ -n "$expected_score" ] || die "README.md does not document 'Overall exposure level for herald.service: N.N'"

# --- work folder -----------------------------------------------------------------
work=$(mktemp -d "${TMPDIR:-/var/tmp}/herald-vm.XXXXXX")
qemu_pid=
cleanup() {
    if [ -n "$qemu_pid" ]; then kill "$qemu_pid" 2>/dev/null || true; fi
    if [ -n "${HERALD_VM_KEEP:-}" ]; then log "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

# --- the root file system (debootstrap), cached between local runs --------------
vm_rootfs "$work"
[ -f "$kernel" ] && [ -f "$initrd" ] || die "no kernel or initrd in $rootfs/boot"

# The unit that runs the test at boot: mounts the 9p share, runs the script,
# and powers the VM off whatever happens.
install -d "$rootfs/etc/systemd/system/multi-user.target.wants"
install -m 0644 "$here/vm/herald-vm-test.service" "$rootfs/etc/systemd/system/herald-vm-test.service"
ln -sfn ../herald-vm-test.service "$rootfs/etc/systemd/system/multi-user.target.wants/herald-vm-test.service"
install -d "$rootfs/mnt/payload"

# --- what the guest gets through 9p ------------------------------------------------
payload=$work/payload
install -d "$payload"
install -m 0755 "$HERALD_BIN" "$payload/herald"
install -m 0755 "$SANDBOX_BIN" "$payload/herald-sandbox"
install -m 0644 "$here/herald.service" "$here/herald.sysusers" "$payload/"
install -m 0755 "$here/vm/guest-test.sh" "$here/vm/probe.sh" "$payload/"
echo "$expected_score" >"$payload/expected-security-score"
# The README's install commands run in $payload/repo, laid out like the repository.
install -d "$payload/repo/target/release" "$payload/repo/systemd"
install -m 0755 "$HERALD_BIN" "$payload/repo/target/release/herald"
install -m 0644 "$here/herald.service" "$here/herald.sysusers" "$here/herald.toml.example" "$payload/repo/systemd/"
printf '%s\n' "$install_1" | grep -v '^cargo ' >"$payload/repo/install-1.sh"
printf '%s\n' "$install_2" >"$payload/repo/install-2.sh"

# --- the disk image, without mounting anything -----------------------------------------
log "making the disk image (mkfs.ext4 -d)"
image=$work/root.img
truncate -s 3G "$image"
mkfs.ext4 -q -F -L herald-vm -d "$rootfs" "$image"

# --- boot ------------------------------------------------------------------------------
serial=$work/serial.log
log "booting the VM (qemu, TCG; at most ${vm_timeout}s)"
boot_started=$SECONDS
timeout --signal=KILL "$vm_timeout" qemu-system-x86_64 \
    -accel tcg -cpu max -smp 2 -m 1536 \
    -nographic -no-reboot -nic none \
    -kernel "$kernel" -initrd "$initrd" \
    -append "console=ttyS0 root=/dev/vda rw panic=1 quiet systemd.show_status=error" \
    -drive "file=$image,format=raw,if=virtio,cache=unsafe" \
    -virtfs "local,path=$payload,mount_tag=payload,security_model=none,readonly=on" \
    -device virtio-rng-pci \
    </dev/null >"$serial" 2>&1 &
qemu_pid=$!

# Follow the serial log: print the test's lines as they come.
shown=0
first_line_at=
while kill -0 "$qemu_pid" 2>/dev/null; do
    sleep 2
    lines=$(tr -d '\r' <"$serial" | grep -a '^HERALD-VM: ' || true)
    count=$(printf '%s' "$lines" | grep -c . || true)
    if [ "$count" -gt "$shown" ]; then
        [ -n "$first_line_at" ] || first_line_at=$((SECONDS - boot_started))
        printf '%s\n' "$lines" | sed -n "$((shown + 1)),\$p" | sed 's/^HERALD-VM: /  /'
        shown=$count
    fi
done
set +e
wait "$qemu_pid"
qemu_rc=$?
set -e
qemu_pid=
vm_seconds=$((SECONDS - boot_started))
lines=$(tr -d '\r' <"$serial" | grep -a '^HERALD-VM: ' || true)
count=$(printf '%s' "$lines" | grep -c . || true)
[ "$count" -gt "$shown" ] && printf '%s\n' "$lines" | sed -n "$((shown + 1)),\$p" | sed 's/^HERALD-VM: /  /'

passed=$(printf '%s\n' "$lines" | grep -c '^HERALD-VM: PASS ' || true)
failed=$(printf '%s\n' "$lines" | grep -c '^HERALD-VM: FAIL ' || true)
done_line=$(printf '%s\n' "$lines" | grep -c '^HERALD-VM: DONE' || true)

echo
log "VM ran ${vm_seconds}s (first result line after ${first_line_at:-?}s); whole test ${SECONDS}s"
status=0
if [ "$qemu_rc" -eq 137 ] || [ "$qemu_rc" -eq 124 ]; then
    log "FAIL: the VM did not finish within ${vm_timeout}s"
    status=1
fi
if [ "$done_line" -eq 0 ]; then
    log "FAIL: the guest test did not report DONE; last lines of the serial console:"
    tr -d '\r' <"$serial" | tail -n 40 >&2
    status=1
fi
if [ "$failed" -gt 0 ]; then
    log "failed checks:"
    printf '%s\n' "$lines" | grep '^HERALD-VM: FAIL ' | sed 's/^HERALD-VM: /  /' >&2
    status=1
fi
[ "$passed" -gt 0 ] || status=1
echo "vm-test: $passed passed, $failed failed"
exit "$status"
