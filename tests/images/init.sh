#!/bin/sh
# /init of the otherix busybox test guest (runs as PID 1 from the initramfs).
#
# Built into the initramfs by tests/images/build.sh; see tests/images/README.md
# for the marker lines it prints on the serial console. PID 1 must never exit
# (the kernel panics if it does), so every path ends in an endless sleep loop.
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
# Make sure our stdio is the console (ttyS0 via console=ttyS0).
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
	*/arch/x86/crypto/*) ;; # CPU-specific accelerator, e.g. no PCLMUL under TCG
	*) echo "otherix-init: warning: insmod $mod failed" ;;
	esac
done </etc/otherix/modules

# --- 3. boot marker ---------------------------------------------------------
echo "OTHERIX-TEST-GUEST-BOOTED"

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

if [ "$seed_found" = 1 ]; then
	for f in meta-data user-data network-config; do
		[ -f "/mnt/seed/$f" ] || continue
		echo "OTHERIX-SEED-BEGIN $f"
		cat "/mnt/seed/$f"
		# Keep the END marker on its own line even without a final newline.
		[ -n "$(tail -c 1 "/mnt/seed/$f")" ] && echo
		echo "OTHERIX-SEED-END $f"
	done
	umount /mnt/seed
else
	echo "OTHERIX-SEED-NONE"
fi

# --- 6 (set up before 5). ACPI power button --------------------------------
# The button module registers an input device named "Power Button"; evdev
# exposes it as /dev/input/eventN. One background watcher per such device
# opens it *before* READY is printed (so a powerdown sent right after READY is
# not lost), then reads struct input_event records (24 bytes on x86_64:
# timeval 16, type u16, code u16, value s32) and reacts to key presses.
IGNORE_POWERDOWN=0
case " $(cat /proc/cmdline) " in
*" otherix.ignore_powerdown=1 "*) IGNORE_POWERDOWN=1 ;;
esac

power_button_devices() {
	for ev in /sys/class/input/event*; do
		[ -r "$ev/device/name" ] || continue
		[ "$(cat "$ev/device/name")" = "Power Button" ] || continue
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
	echo "otherix-init: warning: no ACPI Power Button input device found"
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

# --- 5. ready marker ----------------------------------------------------------
echo "OTHERIX-TEST-GUEST-READY"

# Idle forever; only the power button watcher ends this guest.
sleep_forever
