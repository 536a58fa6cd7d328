#!/bin/sh
# /init of the otherix busybox test guest (runs as PID 1 from the initramfs).
#
# Built into the initramfs by tests/images/build.sh; see tests/images/README.md
# for the marker lines it prints on the serial console. PID 1 must never exit
# (the kernel panics if it does), so every path ends in an endless sleep loop.
# The same script runs on amd64 (console=ttyS0) and arm64 (console=ttyAMA0):
# it only ever talks to /dev/console, which is whatever console= names.
#
# Files provided by build.sh inside the initramfs:
#   /etc/otherix/kver     kernel release the modules belong to
#   /etc/otherix/modules  module paths (relative to /lib/modules/KVER), one per
#                         line, already in dependency order

export PATH=/bin:/sbin
umask 022

sleep_forever() {
	while :; do sleep 3600; done
}

# --- 1. pseudo filesystems and console ------------------------------------
mkdir -p /proc /sys /dev /tmp /mnt/seed
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# Make sure our stdio is the console (ttyS0 or ttyAMA0, from console=).
exec </dev/console >/dev/console 2>&1
# Start on a fresh line: firmware/bootloader output (terminal escape
# sequences) may still be pending on the current one.
echo

# --- 2. kernel modules -----------------------------------------------------
KVER=$(cat /etc/otherix/kver)
while read -r mod; do
	[ -n "$mod" ] || continue
	# Report failures but carry on: a missing module only disables a feature.
	insmod "/lib/modules/$KVER/$mod" 2>/dev/null && continue
	case "$mod" in
	*/arch/*/crypto/*) ;; # CPU-specific accelerator, e.g. no PCLMUL under TCG
	*) echo "otherix-init: warning: insmod $mod failed" ;;
	esac
done </etc/otherix/modules

# --- 3. boot marker ---------------------------------------------------------
echo "OTHERIX-TEST-GUEST-BOOTED"

# Options on the kernel command line.
IGNORE_POWERDOWN=0
PING_TARGET=""
for arg in $(cat /proc/cmdline); do
	case "$arg" in
	otherix.ignore_powerdown=1) IGNORE_POWERDOWN=1 ;;
	otherix.ping=*) PING_TARGET=${arg#otherix.ping=} ;;
	esac
done

# --- 3b. network interfaces --------------------------------------------------
# virtio_net probes its devices while insmod runs, so they are all here now.
# Without udev the kernel names them eth0, eth1, ... in PCI order.
for dev in /sys/class/net/*; do
	ifname=${dev##*/}
	[ "$ifname" = lo ] && continue
	[ -r "$dev/address" ] || continue
	echo "OTHERIX-NIC $ifname $(cat "$dev/address")"
done

# --- 4. cloud-init NoCloud seed ----------------------------------------------
# A seed is a block device whose filesystem label is cidata/CIDATA (vfat or
# iso9660). Busybox has no blkid here, but findfs LABEL=... uses the same
# volume_id probing.
find_seed_by_label() {
	for label in cidata CIDATA; do
		dev=$(findfs "LABEL=$label" 2>/dev/null) || continue
		[ -b "$dev" ] || continue
		if mount -r -t vfat "$dev" /mnt/seed 2>/dev/null ||
			mount -r -t iso9660 "$dev" /mnt/seed 2>/dev/null; then
			return 0
		fi
	done
	return 1
}

# Fallback: try-mount every non-boot candidate read-only and look for a
# meta-data file (covers label probing quirks).
find_seed_by_mount() {
	for dev in /dev/vd[b-z] /dev/vd[b-z][0-9] /dev/sd[a-z] /dev/sd[a-z][0-9] /dev/sr[0-9]; do
		[ -b "$dev" ] || continue
		for fstype in vfat iso9660; do
			mount -r -t "$fstype" "$dev" /mnt/seed 2>/dev/null || continue
			[ -f /mnt/seed/meta-data ] && return 0
			umount /mnt/seed
		done
	done
	return 1
}

# Block devices behind freshly loaded drivers may take a moment to show up;
# look a few times before declaring there is no seed.
seed_found=0
for attempt in 1 2 3; do
	if find_seed_by_label || find_seed_by_mount; then
		seed_found=1
		break
	fi
	[ "$attempt" = 3 ] || sleep 0.3
done

IPV4_CIDR='([0-9]{1,3}[.]){3}[0-9]{1,3}/[0-9]{1,2}'
IPV4='([0-9]{1,3}[.]){3}[0-9]{1,3}'
NET_ADDR=""
if [ "$seed_found" = 1 ]; then
	for f in meta-data user-data network-config; do
		[ -f "/mnt/seed/$f" ] || continue
		echo "OTHERIX-SEED-BEGIN $f"
		cat "/mnt/seed/$f"
		# Keep the END marker on its own line even without a final newline.
		[ -n "$(tail -c 1 "/mnt/seed/$f")" ] && echo
		echo "OTHERIX-SEED-END $f"
	done
	# Static address: the first A.B.C.D/NN at or after the first
	# "addresses:" key of network-config (v2 flow or block list; simple on
	# purpose, not a YAML parser).
	if [ -f /mnt/seed/network-config ]; then
		NET_ADDR=$(sed -n '/addresses:/,$p' /mnt/seed/network-config |
			grep -oE "$IPV4_CIDR" | head -n 1)
	fi
	# A ping target may also come from the seed's user-data (a line such
	# as "# otherix.ping=A.B.C.D"); the kernel command line wins.
	if [ -z "$PING_TARGET" ] && [ -f /mnt/seed/user-data ]; then
		PING_TARGET=$(grep -oE "otherix[.]ping=$IPV4" /mnt/seed/user-data |
			head -n 1 | sed 's/^otherix[.]ping=//')
	fi
	umount /mnt/seed
else
	echo "OTHERIX-SEED-NONE"
fi

# --- 4b. static address and ping ----------------------------------------------
# Only when asked for (seed network-config / otherix.ping=): costs nothing
# otherwise.
if [ -n "$NET_ADDR" ]; then
	if [ -e /sys/class/net/eth0 ] && ip addr add "$NET_ADDR" dev eth0 &&
		ip link set eth0 up; then
		ip link set lo up
		echo "OTHERIX-NIC-ADDR eth0 $NET_ADDR"
	else
		echo "otherix-init: warning: could not configure $NET_ADDR on eth0"
	fi
fi
if [ -n "$PING_TARGET" ]; then
	# 3 echo requests, 1 s apart; success if any reply comes back within 5 s.
	if ping -c 3 -w 5 "$PING_TARGET" >/dev/null 2>&1; then
		echo "OTHERIX-PING-OK"
	else
		echo "OTHERIX-PING-FAIL"
	fi
fi

# --- 6 (set up before 5). ACPI power button --------------------------------
# The button driver registers an input device named "Power Button" (amd64:
# ACPI; arm64 -M virt with UEFI: ACPI too, QEMU raises the press through its
# Generic Event Device); evdev exposes it as /dev/input/eventN. An arm64 guest
# booted with a device tree instead gets "gpio-keys" (KEY_POWER), watched the
# same way. One background watcher per such device opens it *before* READY is
# printed (so a powerdown sent right after READY is not lost), then reads
# struct input_event records (24 bytes on both 64-bit arches: timeval 16,
# type u16, code u16, value s32) and reacts to key presses.
power_button_devices() {
	for ev in /sys/class/input/event*; do
		[ -r "$ev/device/name" ] || continue
		case "$(cat "$ev/device/name")" in
		"Power Button" | gpio-keys) ;;
		*) continue ;;
		esac
		[ -c "/dev/input/${ev##*/}" ] && echo "/dev/input/${ev##*/}"
	done
}

watch_power_button() {
	dev=$1
	exec 4<"$dev" || exit 1
	: >"/tmp/pwrbtn-ready.${dev##*/}"
	while :; do
		# shellcheck disable=SC2046 # word splitting of od output is wanted
		set -- $(dd bs=24 count=1 <&4 2>/dev/null | od -An -tu2 -v)
		if [ $# -lt 12 ]; then sleep 1; continue; fi # short read: don't spin
		# $9 = type (EV_KEY=1), $11/$12 = value low/high (1 = press)
		[ "$9" = 1 ] && [ "${11}" = 1 ] && [ "${12}" = 0 ] || continue
		if [ "$IGNORE_POWERDOWN" = 1 ]; then
			echo "OTHERIX-TEST-GUEST-POWERBUTTON-IGNORED"
			continue
		fi
		echo "OTHERIX-TEST-GUEST-POWERDOWN"
		sync
		poweroff -f
		sleep_forever # not reached
	done
}

# The input device appears when button/evdev are loaded; give devtmpfs a
# moment to create the nodes.
buttons=""
i=0
while [ $i -lt 50 ]; do
	buttons=$(power_button_devices)
	[ -n "$buttons" ] && break
	sleep 0.1
	i=$((i + 1))
done

if [ -z "$buttons" ]; then
	echo "otherix-init: warning: no power button input device found"
else
	for dev in $buttons; do
		watch_power_button "$dev" &
	done
	# Wait (bounded) until every watcher has the device open.
	i=0
	for dev in $buttons; do
		while [ ! -e "/tmp/pwrbtn-ready.${dev##*/}" ] && [ $i -lt 50 ]; do
			sleep 0.1
			i=$((i + 1))
		done
	done
fi

# --- 5a. a shell on the serial console (`otherix vm console`) ----------------
# setsid + cttyhack give it the console as its controlling tty; respawned when it
# exits (Ctrl-D, `exit`). Input typed before it reads waits in the tty's buffer.
console_shell() {
	while :; do
		setsid cttyhack sh -i
		sleep 1
	done
}
console_shell </dev/console >/dev/console 2>&1 &

# --- 5. ready marker ----------------------------------------------------------
echo "OTHERIX-TEST-GUEST-READY"

# Idle forever; only the power button watcher ends this guest.
sleep_forever
