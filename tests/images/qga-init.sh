#!/bin/sh
# /init of the otherix QGA test guest (busybox-qga-amd64): runs as PID 1 from
# the initramfs, starts the qemu-guest-agent helper below in the background and
# then execs the ordinary guest init (tests/images/init.sh, installed as
# /etc/otherix/init.sh), so all markers, the seed handling and the ACPI power
# button work exactly as in busybox-amd64. See tests/images/README.md.
#
# The helper:
#  1. waits (up to 60 s) until init.sh has armed the power button, i.e. has
#     done its network step and is about to print READY (its watchers create
#     /tmp/pwrbtn-ready.*);
#  2. gives eth0 QEMU user networking's (SLIRP) default guest address
#     10.0.2.15/24 and a default route via 10.0.2.2, unless eth0 already has
#     an IPv4 address (e.g. a static one from a seed's network-config);
#  3. finds the virtio-serial port named org.qemu.guest_agent.0 (the
#     virtio_console module is in this image's module list; without udev
#     there is no /dev/virtio-ports/ link, so it is made here from
#     /sys/class/virtio-ports/vport*/name) and runs Debian's qemu-ga on it
#     (restarted if it exits).
# So once qemu-ga answers, the guest is READY and has its address.
# qemu-ga's guest-shutdown runs /sbin/shutdown, a script in this image that
# calls busybox poweroff -f (or halt/reboot).

export PATH=/bin:/sbin

QGA_NAME=org.qemu.guest_agent.0
SLIRP_ADDR=10.0.2.15/24
SLIRP_GW=10.0.2.2

# Prints /dev/vportNpM of the port named $QGA_NAME, or fails.
qga_port() {
	for p in /sys/class/virtio-ports/vport*; do
		[ "$(cat "$p/name" 2>/dev/null)" = "$QGA_NAME" ] || continue
		[ -c "/dev/${p##*/}" ] || continue
		echo "/dev/${p##*/}"
		return 0
	done
	return 1
}

# Runs $1 until it succeeds, every 0.1 s, at most 60 s.
wait_for() {
	i=0
	while [ $i -lt 600 ]; do
		"$1" >/dev/null && return 0
		sleep 0.1
		i=$((i + 1))
	done
	return 1
}

init_is_ready() {
	for f in /tmp/pwrbtn-ready.*; do [ -e "$f" ] && return 0; done
	return 1
}

qga_helper() {
	# 1.
	wait_for init_is_ready ||
		echo "otherix-init: warning: no power button armed after 60 s, starting qemu-ga anyway"

	# 2.
	if [ -e /sys/class/net/eth0 ] && [ -z "$(ip -4 addr show dev eth0 | grep inet)" ]; then
		if ip addr add "$SLIRP_ADDR" dev eth0 && ip link set eth0 up; then
			ip link set lo up
			ip route add default via "$SLIRP_GW" dev eth0
			echo "OTHERIX-NIC-ADDR eth0 $SLIRP_ADDR"
		else
			echo "otherix-init: warning: could not configure $SLIRP_ADDR on eth0"
		fi
	fi

	# 3.
	if ! wait_for qga_port; then
		echo "otherix-init: warning: no virtio-serial port $QGA_NAME, qemu-ga not started"
		return 0
	fi
	port=$(qga_port)
	mkdir -p /dev/virtio-ports
	ln -sf "../${port#/dev/}" "/dev/virtio-ports/$QGA_NAME"
	echo "OTHERIX-QGA-START $port"
	while :; do
		/usr/sbin/qemu-ga -m virtio-serial -p "/dev/virtio-ports/$QGA_NAME" \
			-f /run/qemu-ga.pid -t /run
		echo "otherix-init: warning: qemu-ga exited ($?), restarting"
		sleep 1
	done
}

# Without job control ash opens /dev/null as a background job's stdin and
# fails if it cannot: the initramfs carries an empty regular /dev/null for
# this moment (init.sh then mounts devtmpfs over /dev).
qga_helper &
exec /etc/otherix/init.sh
