#!/usr/bin/env bash
# The VM's host tools and root file system, shared by systemd/vm-test.sh and
# systemd/vm-powercut.sh (sourced; the caller defines log, die and suite).
#
#   vm_host_tools     install qemu, debootstrap, mkfs.ext4 and the Debian keyring
#                     where missing; set $mirror (the Debian mirror apt uses)
#   vm_rootfs WORK    debootstrap the root file system (cached between local runs,
#                     fresh in WORK with CI=true unless HERALD_VM_CACHE names a
#                     cache: .ci/run gives both VM steps one fresh cache);
#                     set $rootfs, $kernel, $initrd

vm_host_tools() {
    # --- tools -------------------------------------------------------------------
    apt_updated=
    apt_install() {
        if [ -z "$apt_updated" ]; then
            DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
            apt_updated=1
        fi
        log "installing $*"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >/dev/null
    }
    need=()
    command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
    command -v debootstrap >/dev/null || need+=(debootstrap)
    command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
    [ -e /usr/share/keyrings/debian-archive-keyring.gpg ] || need+=(debian-archive-keyring)
    if [ ${#need[@]} -gt 0 ]; then apt_install "${need[@]}"; fi

    # --- the Debian mirror this machine's apt uses --------------------------------
    mirror_url() {
        # apt-cache policy lists every configured source, whatever file format
        # (sources.list or deb822 .sources) it came from.
        apt-cache policy 2>/dev/null |
            awk -v s="$suite/main" '$3 == s && $4 == "amd64" && $5 == "Packages" { print $2; exit }'
    }
    mirror=$(mirror_url)
    if [ -z "$mirror" ]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
        apt_updated=1
        mirror=$(mirror_url)
    fi
    [ -n "$mirror" ] || die "no apt source for $suite/main amd64 is configured on this machine"
}

vm_rootfs() {
    local work=$1
    # --- the root file system (debootstrap), cached between local runs --------------
    packages=systemd,systemd-sysv,udev,dbus,linux-image-amd64,iproute2,curl,jq,procps,kmod
    recipe_version=1 # bump when prepare_rootfs changes what goes into the cache
    key=$(printf '%s\n' "$suite" "$mirror" "$packages" "$recipe_version" | sha256sum | cut -c1-12)
    if [ "${CI:-}" = true ] && [ -z "${HERALD_VM_CACHE:-}" ]; then
        rootfs=$work/rootfs
    else
        cache=${HERALD_VM_CACHE:-/var/cache/herald-vm}
        rootfs=$cache/$suite-$key
    fi

    prepare_rootfs() {
        local r=$1
        echo herald-vm >"$r/etc/hostname"
        printf '127.0.0.1 localhost\n127.0.1.1 herald-vm\n::1 localhost\n' >"$r/etc/hosts"
        printf '/dev/vda / ext4 rw,errors=remount-ro 0 1\n' >"$r/etc/fstab"
        # A fixed machine id: no "first boot", so systemd-firstboot never prompts.
        od -An -N16 -tx1 /dev/urandom | tr -d ' \n' >"$r/etc/machine-id"
        echo >>"$r/etc/machine-id"
        # Quiet, quick boot: the serial line carries the test's results, no getty.
        local unit
        for unit in serial-getty@ttyS0.service getty@tty1.service systemd-firstboot.service \
            apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service fstrim.timer \
            systemd-timesyncd.service; do
            ln -sfn /dev/null "$r/etc/systemd/system/$unit"
        done
        rm -rf "$r/var/cache/apt/archives/"*.deb
    }

    if [ -e "$rootfs/.herald-vm-complete" ]; then
        log "using the cached root file system $rootfs"
    else
        log "debootstrap $suite from $mirror into $rootfs (a few minutes)"
        rm -rf "$rootfs"
        mkdir -p "$rootfs"
        if ! debootstrap --variant=minbase --include="$packages" --components=main \
            "$suite" "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1; then
            tail -n 30 "$work/debootstrap.log" >&2
            [ -f "$rootfs/debootstrap/debootstrap.log" ] && tail -n 30 "$rootfs/debootstrap/debootstrap.log" >&2
            die "debootstrap failed"
        fi
        prepare_rootfs "$rootfs"
        touch "$rootfs/.herald-vm-complete"
    fi
    kernel=$(ls -1 "$rootfs"/boot/vmlinuz-* | sort -V | tail -n 1)
    initrd=$(ls -1 "$rootfs"/boot/initrd.img-* | sort -V | tail -n 1)
}
