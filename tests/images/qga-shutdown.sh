#!/bin/sh
# /sbin/shutdown of the otherix QGA test guest. qemu-ga's guest-shutdown runs
# "/sbin/shutdown -P|-H|-r +0 MESSAGE" (powerdown, halt, reboot); busybox has
# no shutdown applet, so map the flag to busybox poweroff/halt/reboot -f.
export PATH=/bin:/sbin
mode=poweroff
for arg in "$@"; do
	case "$arg" in
	-P | -h) mode=poweroff ;;
	-H) mode=halt ;;
	-r) mode=reboot ;;
	esac
done
echo "OTHERIX-QGA-SHUTDOWN $mode" >/dev/console
sync
exec "$mode" -f
