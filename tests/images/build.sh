#!/usr/bin/env bash
# Build tiny bootable test guest disk images for otherix from Debian packages.
#
# Usage: tests/images/build.sh [OUT_DIR]
#   OUT_DIR defaults to <repo>/target/test-images.
#
# Outputs (in OUT_DIR):
#   busybox-amd64.img                  raw disk: FAT superfloppy + syslinux,
#                                      Debian kernel, busybox initramfs
#   busybox-amd64.qcow2                the same disk as qcow2
#   busybox-amd64-nopowerdown.qcow2    same, with otherix.ignore_powerdown=1 on
#                                      the kernel command line
#   SHA256SUMS                         sha256sum of the three images
#   cache/                             downloaded kernel .deb (kept for re-runs)
#
# The guest's /init (tests/images/init.sh) prints marker lines on ttyS0; see
# tests/images/README.md. Needs no root except to apt-get install missing
# tools, no loop devices and no mounts.
#
# Cached: if all outputs exist and OUT_DIR/.stamp matches the hash of this
# script and init.sh, exit 0 at once. Images are built in a temp dir inside
# OUT_DIR and renamed into place, and the stamp is written last, so an
# interrupted build never leaves a half image behind a valid stamp.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/../.." && pwd)
INIT_SRC="$SCRIPT_DIR/init.sh"
OUT_DIR=${1:-"$REPO_ROOT/target/test-images"}
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)

# mkfs.vfat, depmod etc. live in sbin.
export PATH="$PATH:/usr/sbin:/sbin"
export DEBIAN_FRONTEND=noninteractive
# mtools refuses images whose size is not a multiple of a track otherwise.
export MTOOLS_SKIP_CHECK=1
export LC_ALL=C
# Fixed timestamps (2000-01-01; FAT cannot store dates before 1980) so that
# rebuilding from the same kernel .deb gives byte-identical images. mtools
# (and so syslinux --install) honours SOURCE_DATE_EPOCH.
export SOURCE_DATE_EPOCH=946684800

NAME=busybox-amd64
IMG_SIZE_MIB=64
CMDLINE="console=ttyS0 panic=-1 quiet"
OUTPUTS=("$NAME.img" "$NAME.qcow2" "$NAME-nopowerdown.qcow2" "SHA256SUMS")
STAMP="$OUT_DIR/.stamp"
CACHE_DIR="$OUT_DIR/cache"

log() { echo "build.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

print_outputs() {
	local f
	for f in "${OUTPUTS[@]}"; do echo "$OUT_DIR/$f"; done
}

# Hash of the build recipe: this script plus the guest init it embeds.
recipe_hash() {
	cat "${BASH_SOURCE[0]}" "$INIT_SRC" | sha256sum | cut -d' ' -f1
}

cache_is_valid() {
	local f
	[ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$HASH" ] || return 1
	for f in "${OUTPUTS[@]}"; do [ -s "$OUT_DIR/$f" ] || return 1; done
}

[ -f "$INIT_SRC" ] || die "missing $INIT_SRC"
HASH=$(recipe_hash)
if cache_is_valid; then
	print_outputs
	exit 0
fi

# Serialise concurrent builders (e.g. parallel test binaries) on OUT_DIR,
# then re-check: another builder may have finished while we waited.
exec 9>"$OUT_DIR/.lock"
flock 9
if cache_is_valid; then
	print_outputs
	exit 0
fi

# ---------------------------------------------------------------------------
# Host tools: install only what is missing.
# ---------------------------------------------------------------------------
as_root() {
	if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

APT_UPDATED=0
apt_update_once() {
	if [ "$APT_UPDATED" = 0 ]; then
		log "apt-get update"
		as_root apt-get update -qq >&2
		APT_UPDATED=1
	fi
}

ensure_tools() {
	local missing=()
	# busybox must be the static build: it runs inside the initramfs.
	dpkg -s busybox-static >/dev/null 2>&1 && [ -x /bin/busybox ] || missing+=(busybox-static)
	command -v syslinux >/dev/null || missing+=(syslinux)
	dpkg -s syslinux-common >/dev/null 2>&1 || missing+=(syslinux-common)
	command -v mcopy >/dev/null || missing+=(mtools)
	command -v mkfs.vfat >/dev/null || missing+=(dosfstools)
	command -v cpio >/dev/null || missing+=(cpio)
	command -v depmod >/dev/null && command -v modprobe >/dev/null || missing+=(kmod)
	# Any qemu-img will do (the host may carry a backported qemu-utils).
	command -v qemu-img >/dev/null || missing+=(qemu-utils)
	if [ "${#missing[@]}" -gt 0 ]; then
		log "installing: ${missing[*]}"
		apt_update_once
		as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
	fi
}

# ---------------------------------------------------------------------------
# Kernel: download (not install) Debian's current amd64 kernel package.
# ---------------------------------------------------------------------------
APT_DL_OPTS=()
[ "$(id -u)" = 0 ] && APT_DL_OPTS=(-o APT::Sandbox::User=root)

# Name of the versioned package linux-image-amd64 points at, e.g.
# linux-image-6.1.0-56-amd64.
kernel_package_name() {
	apt-cache depends linux-image-amd64 2>/dev/null |
		awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9].*-amd64$/ { print $2; exit }'
}

# Prints the path of the kernel .deb, downloading it into CACHE_DIR if no
# kernel .deb is cached yet. A cached .deb is used as is (offline re-runs);
# delete OUT_DIR/cache to pick up a newer kernel.
kernel_deb() {
	local deb pkg dl
	mkdir -p "$CACHE_DIR"
	deb=$(find "$CACHE_DIR" -maxdepth 1 -name 'linux-image-*-amd64_*_amd64.deb' | sort -V | tail -n 1)
	if [ -n "$deb" ]; then
		log "using cached $(basename "$deb")"
		echo "$deb"
		return
	fi
	pkg=$(kernel_package_name)
	if [ -z "$pkg" ]; then
		apt_update_once
		pkg=$(kernel_package_name)
	fi
	[ -n "$pkg" ] || die "cannot resolve linux-image-amd64 to a kernel package"
	log "downloading $pkg"
	# Download into a private dir first so a failed download never leaves a
	# partial .deb in the cache.
	dl=$(mktemp -d "$CACHE_DIR/.dl.XXXXXX")
	if ! (cd "$dl" && apt-get "${APT_DL_OPTS[@]}" download -qq "$pkg" >&2); then
		# The mirror may have moved on since the lists were fetched.
		apt_update_once
		pkg=$(kernel_package_name)
		(cd "$dl" && apt-get "${APT_DL_OPTS[@]}" download -qq "$pkg" >&2)
	fi
	deb=$(find "$dl" -maxdepth 1 -name '*.deb' | head -n 1)
	[ -n "$deb" ] || die "apt-get download $pkg produced no .deb"
	mv "$deb" "$CACHE_DIR/"
	rmdir "$dl"
	echo "$CACHE_DIR/$(basename "$deb")"
}

# ---------------------------------------------------------------------------
# Build.
# ---------------------------------------------------------------------------
ensure_tools

# Leftovers of a build that was killed outright (we hold the lock, so no
# other build is running), then our own temp dir, removed on any exit.
rm -rf "$OUT_DIR"/.build.* "$CACHE_DIR"/.dl.*
WORK=$(mktemp -d "$OUT_DIR/.build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
trap 'exit 130' INT TERM HUP

DEB=$(kernel_deb)
log "extracting $(basename "$DEB")"
dpkg -x "$DEB" "$WORK/kernel"
KVER=$(basename "$(find "$WORK/kernel/lib/modules" -mindepth 1 -maxdepth 1 -type d | head -n 1)")
[ -n "$KVER" ] && [ -f "$WORK/kernel/boot/vmlinuz-$KVER" ] || die "no kernel found in $DEB"
log "kernel $KVER"
depmod -b "$WORK/kernel" "$KVER"

# Modules the guest needs. Each is resolved with its dependencies; built-in
# ones are reported by modprobe as "builtin NAME" and skipped.
#   virtio_pci virtio_blk      system disk and a virtio seed disk
#   button evdev               ACPI "Power Button" as /dev/input/eventN
#   vfat isofs nls_*           mounting a cloud-init NoCloud seed (FAT or ISO)
#   ahci ata_piix sr_mod sd_mod virtio_scsi   seed on SATA/IDE CD-ROM or SCSI
MODULES=(virtio_pci virtio_blk button evdev
	vfat nls_cp437 nls_ascii nls_iso8859_1 nls_utf8 isofs
	ahci ata_piix sr_mod sd_mod virtio_scsi)

MODDIR="$WORK/kernel/lib/modules/$KVER"
ROOT="$WORK/initramfs"
mkdir -p "$ROOT"/{bin,dev,proc,sys,tmp,mnt/seed,etc/otherix,lib/modules/"$KVER"}
: >"$ROOT/etc/otherix/modules"
declare -A SEEN=()
for m in "${MODULES[@]}"; do
	# One module per call: extra arguments would be taken as module options.
	while read -r kind path _; do
		case "$kind" in
		insmod)
			rel=${path#"$MODDIR"/}
			[ -n "${SEEN[$rel]:-}" ] && continue
			SEEN[$rel]=1
			mkdir -p "$ROOT/lib/modules/$KVER/$(dirname "$rel")"
			cp "$path" "$ROOT/lib/modules/$KVER/$rel"
			echo "$rel" >>"$ROOT/etc/otherix/modules"
			;;
		builtin) log "module $m: built-in" ;;
		esac
	done < <(modprobe -d "$WORK/kernel" -S "$KVER" --show-depends "$m")
done
log "modules: $(tr '\n' ' ' <"$ROOT/etc/otherix/modules")"
echo "$KVER" >"$ROOT/etc/otherix/kver"

# Static busybox with a symlink per applet.
cp /bin/busybox "$ROOT/bin/busybox"
for applet in $(/bin/busybox --list); do
	[ "$applet" = busybox ] || ln -sf busybox "$ROOT/bin/$applet"
done
ln -s bin "$ROOT/sbin"
install -m 0755 "$INIT_SRC" "$ROOT/init"

# cpio newc + gzip, root-owned, sorted, fixed timestamps.
find "$ROOT" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
(cd "$ROOT" && find . -print0 | sort -z |
	cpio --null --create --format=newc --owner=0:0 --reproducible --quiet) |
	gzip -9 -n >"$WORK/initrd.gz"

# syslinux configuration; $1 = extra kernel arguments.
write_syslinux_cfg() {
	cat <<EOF
SERIAL 0 115200
DEFAULT otherix
PROMPT 0
TIMEOUT 0
LABEL otherix
  KERNEL /vmlinuz
  INITRD /initrd.gz
  APPEND $CMDLINE${1:+ $1}
EOF
}
write_syslinux_cfg "" >"$WORK/syslinux.cfg"
write_syslinux_cfg "otherix.ignore_powerdown=1" >"$WORK/syslinux-nopowerdown.cfg"
cp "$WORK/kernel/boot/vmlinuz-$KVER" "$WORK/vmlinuz"
touch -d "@$SOURCE_DATE_EPOCH" "$WORK/vmlinuz" "$WORK/initrd.gz" "$WORK/syslinux.cfg" "$WORK/syslinux-nopowerdown.cfg"

# Raw disk: a FAT "superfloppy" (filesystem from sector 0, no partition
# table); syslinux writes its boot code into the FAT boot sector, which
# SeaBIOS boots like an MBR.
RAW="$WORK/$NAME.img"
truncate -s "${IMG_SIZE_MIB}M" "$RAW"
mkfs.vfat --invariant -n OTHERIXBOOT "$RAW" >/dev/null
mcopy -m -i "$RAW" "$WORK/vmlinuz" "$WORK/initrd.gz" ::/
mcopy -m -i "$RAW" "$WORK/syslinux.cfg" ::/syslinux.cfg
syslinux --install "$RAW"

# Variant that ignores the ACPI power button (for stop-timeout tests).
RAW_NPD="$WORK/$NAME-nopowerdown.img"
cp --sparse=always "$RAW" "$RAW_NPD"
mcopy -o -m -i "$RAW_NPD" "$WORK/syslinux-nopowerdown.cfg" ::/syslinux.cfg

qemu-img convert -f raw -O qcow2 "$RAW" "$WORK/$NAME.qcow2"
qemu-img convert -f raw -O qcow2 "$RAW_NPD" "$WORK/$NAME-nopowerdown.qcow2"
rm -f "$RAW_NPD"
(cd "$WORK" && sha256sum "$NAME.img" "$NAME.qcow2" "$NAME-nopowerdown.qcow2" >SHA256SUMS)

# Publish: drop the stamp first, rename each output into place (atomic per
# file, same filesystem), write the stamp last.
rm -f "$STAMP"
for f in "${OUTPUTS[@]}"; do mv -f "$WORK/$f" "$OUT_DIR/$f"; done
echo "$HASH" >"$STAMP"
# Keep only the kernel .deb we used.
find "$CACHE_DIR" -maxdepth 1 -name 'linux-image-*.deb' ! -name "$(basename "$DEB")" -delete

log "built with kernel $KVER, cmdline: $CMDLINE"
print_outputs
