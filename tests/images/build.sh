#!/usr/bin/env bash
# Build tiny bootable test guest disk images for otherix from Debian packages.
#
# Usage: tests/images/build.sh [OUT_DIR]
#   OUT_DIR defaults to <repo>/target/test-images.
#
# Outputs (in OUT_DIR):
#   busybox-amd64.img                  raw disk: FAT superfloppy with syslinux
#                                      (BIOS) and GRUB x86_64-efi (UEFI),
#                                      Debian kernel, busybox initramfs
#   busybox-amd64.qcow2                the same disk as qcow2
#   busybox-amd64-nopowerdown.qcow2    same, with otherix.ignore_powerdown=1 on
#                                      the kernel command line (both loaders)
#   busybox-qga-amd64.qcow2            like busybox-amd64.qcow2, plus Debian's
#                                      qemu-guest-agent (qemu-ga and the
#                                      libraries it links) on the virtio-serial
#                                      port org.qemu.guest_agent.0, and eth0 at
#                                      10.0.2.15/24 (QEMU user networking)
#   busybox-arm64.img                  raw disk: FAT superfloppy with GRUB
#                                      arm64-efi (UEFI only), Debian arm64
#                                      kernel, busybox initramfs
#   busybox-arm64.qcow2                the same disk as qcow2
#   busybox-arm64-nopowerdown.qcow2    same, with otherix.ignore_powerdown=1
#   SHA256SUMS                         sha256sum of the seven images
#   cache/                             downloaded .debs (kept for re-runs) and
#                                      a private apt state for arm64 look-ups
#
# The guest's /init (tests/images/init.sh, the same on both architectures)
# prints marker lines on the serial console; see tests/images/README.md.
# The QGA guest's /init is tests/images/qga-init.sh, which starts qemu-ga in
# the background and execs init.sh; its /sbin/shutdown is qga-shutdown.sh.
# Needs no root except to apt-get install missing tools, no loop devices and
# no mounts. Kernels, GRUB and the arm64 busybox are fetched with
# `apt-get download` and unpacked with `dpkg -x`: nothing is installed on the
# host for them and no dpkg architecture is added (arm64 packages are looked
# up with a private apt state under cache/apt-arm64).
#
# Cached: if all outputs exist and OUT_DIR/.stamp matches the hash of this
# script and the guest files next to it, exit 0 at once. Images are built in a temp dir inside
# OUT_DIR and renamed into place, and the stamp is written last, so an
# interrupted build never leaves a half image behind a valid stamp.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/../.." && pwd)
INIT_SRC="$SCRIPT_DIR/init.sh"
QGA_INIT_SRC="$SCRIPT_DIR/qga-init.sh"
QGA_SHUTDOWN_SRC="$SCRIPT_DIR/qga-shutdown.sh"
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
# rebuilding from the same .debs gives byte-identical images. mtools (and so
# syslinux --install) honours SOURCE_DATE_EPOCH.
export SOURCE_DATE_EPOCH=946684800

IMG_SIZE_MIB=64
# Kernel command line minus the console, which depends on the architecture.
CMDLINE_COMMON="panic=-1 quiet"
NOPOWERDOWN_ARG="otherix.ignore_powerdown=1"
OUTPUTS=(
	busybox-amd64.img busybox-amd64.qcow2 busybox-amd64-nopowerdown.qcow2
	busybox-arm64.img busybox-arm64.qcow2 busybox-arm64-nopowerdown.qcow2
	busybox-qga-amd64.qcow2
	SHA256SUMS
)
STAMP="$OUT_DIR/.stamp"
CACHE_DIR="$OUT_DIR/cache"

log() { echo "build.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

print_outputs() {
	local f
	for f in "${OUTPUTS[@]}"; do echo "$OUT_DIR/$f"; done
}

# Hash of the build recipe: this script plus the guest files it embeds.
recipe_hash() {
	cat "${BASH_SOURCE[0]}" "$INIT_SRC" "$QGA_INIT_SRC" "$QGA_SHUTDOWN_SRC" |
		sha256sum | cut -d' ' -f1
}

cache_is_valid() {
	local f
	[ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$HASH" ] || return 1
	for f in "${OUTPUTS[@]}"; do [ -s "$OUT_DIR/$f" ] || return 1; done
}

for f in "$INIT_SRC" "$QGA_INIT_SRC" "$QGA_SHUTDOWN_SRC"; do
	[ -f "$f" ] || die "missing $f"
done
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

# The amd64 guest uses the host's busybox and the host runs GRUB's
# grub-mkimage (amd64 binary from grub-common) for both targets.
HOST_ARCH=$(dpkg --print-architecture)
[ "$HOST_ARCH" = amd64 ] || die "needs an amd64 Debian host (this is $HOST_ARCH)"

# ---------------------------------------------------------------------------
# apt: the host's own state for amd64; a private state for other
# architectures (same sources, separate lists/cache/status, no dpkg
# architecture added, nothing installed).
# ---------------------------------------------------------------------------
as_root() {
	if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

# Sets APT_OPTS, the apt-get/apt-cache options for architecture $1.
apt_opts() {
	local st
	APT_OPTS=()
	[ "$(id -u)" = 0 ] && APT_OPTS+=(-o APT::Sandbox::User=root)
	[ "$1" = "$HOST_ARCH" ] && return 0
	st="$CACHE_DIR/apt-$1"
	mkdir -p "$st/lists/partial" "$st/cache/archives/partial"
	[ -f "$st/status" ] || : >"$st/status"
	APT_OPTS+=(
		-o "APT::Architecture=$1" -o "APT::Architectures=$1"
		-o "Dir::State::Lists=$st/lists" -o "Dir::Cache=$st/cache"
		-o "Dir::State::status=$st/status"
		-o Acquire::Languages=none
		-o Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false
		-o Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled=false
	)
}

# apt-get update for architecture $1, at most once per run.
declare -A APT_UPDATED=()
apt_update() {
	[ -z "${APT_UPDATED[$1]:-}" ] || return 0
	APT_UPDATED[$1]=1
	log "apt-get update ($1)"
	apt_opts "$1"
	if [ "$1" = "$HOST_ARCH" ]; then
		as_root apt-get "${APT_OPTS[@]}" update -qq >&2
	else
		# A host source without this architecture makes update complain;
		# what matters is whether the packages resolve afterwards.
		apt-get "${APT_OPTS[@]}" update -qq >&2 ||
			log "warning: apt-get update ($1) reported errors"
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
	# grub-mkimage (from the downloaded grub-common) links against these.
	dpkg -s liblzma5 >/dev/null 2>&1 || missing+=(liblzma5)
	dpkg -s libdevmapper1.02.1 >/dev/null 2>&1 || missing+=(libdevmapper1.02.1)
	# The libraries Debian's qemu-ga links against: copied from the host into
	# the QGA guest's initramfs (found with ldd).
	for p in libglib2.0-0 libnuma1 liburing2 libudev1; do
		dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
	done
	if [ "${#missing[@]}" -gt 0 ]; then
		log "installing: ${missing[*]}"
		apt_update "$HOST_ARCH"
		as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
	fi
}

# ---------------------------------------------------------------------------
# .debs: downloaded (never installed) into CACHE_DIR and reused as is on
# later runs (offline re-runs); delete OUT_DIR/cache to pick up newer ones.
# ---------------------------------------------------------------------------
USED_DEBS=()

# fetch_deb ARCH GLOB RESOLVER: sets DEB to the newest cached .deb matching
# GLOB; if there is none, downloads the package spec that `RESOLVER ARCH`
# prints (retrying once after an apt-get update: lists may be missing or the
# mirror may have moved on) into the cache first.
fetch_deb() {
	local arch=$1 glob=$2 resolver=$3 spec dl try
	DEB=$(find "$CACHE_DIR" -maxdepth 1 -name "$glob" | sort -V | tail -n 1)
	if [ -z "$DEB" ]; then
		if [ "$arch" != "$HOST_ARCH" ] &&
			! compgen -G "$CACHE_DIR/apt-$arch/lists/*_Packages*" >/dev/null; then
			apt_update "$arch"
		fi
		# Download into a private dir first so a failed download never
		# leaves a partial .deb in the cache.
		dl=$(mktemp -d "$CACHE_DIR/.dl.XXXXXX")
		for try in 1 2; do
			[ "$try" = 1 ] || apt_update "$arch"
			spec=$("$resolver" "$arch") || spec=""
			[ -n "$spec" ] || continue
			log "downloading $spec ($arch)"
			apt_opts "$arch"
			(cd "$dl" && apt-get "${APT_OPTS[@]}" download -qq "$spec" >&2) && break
		done
		DEB=$(find "$dl" -maxdepth 1 -name "$glob" | head -n 1)
		[ -n "$DEB" ] || die "could not download a .deb matching $glob ($arch)"
		mv "$DEB" "$CACHE_DIR/"
		rm -rf "$dl"
		DEB="$CACHE_DIR/${DEB##*/}"
	else
		log "using cached ${DEB##*/}"
	fi
	USED_DEBS+=("${DEB##*/}")
}

# Resolvers: print the package (spec) to download for architecture $1.
# The versioned kernel package linux-image-ARCH points at, e.g.
# linux-image-6.1.0-56-amd64.
resolve_kernel() {
	apt_opts "$1"
	apt-cache "${APT_OPTS[@]}" depends "linux-image-$1" 2>/dev/null |
		awk -v re="^linux-image-[0-9].*-$1\$" '$1 == "Depends:" && $2 ~ re { print $2; exit }'
}
resolve_busybox() { echo busybox-static; }
# The host's candidate (bookworm: 7.2); its Depends are the libraries that
# ensure_tools installs on the host.
resolve_qga() { echo qemu-guest-agent; }
# GRUB: the newest grub-common on offer (bookworm-backports' 2.12 if the host
# has backports: bookworm's 2.06 x86_64-efi fails with "out of memory" loading
# the kernel under OVMF with -m 256). The platform module packages must be
# the very same version (GRUB_VER), since grub-mkimage comes from grub-common.
resolve_grub_common() {
	local v best=""
	apt_opts "$1"
	while read -r v; do
		[ -n "$v" ] || continue
		[ -z "$best" ] || dpkg --compare-versions "$v" gt "$best" && best=$v
	done < <(apt-cache "${APT_OPTS[@]}" madison grub-common 2>/dev/null |
		awk -F'|' '$3 ~ /Packages/ { gsub(/ /, "", $2); print $2 }')
	[ -n "$best" ] && echo "grub-common=$best"
}
resolve_grub_bin() { echo "grub-efi-$1-bin=$GRUB_VER"; }

# apt-get download names files PKG_VERSION_ARCH.deb with ':' as %3a.
deb_file_version() { local v=$1; echo "${v//:/%3a}"; }

# ---------------------------------------------------------------------------
# Build.
# ---------------------------------------------------------------------------
ensure_tools

# Leftovers of a build that was killed outright (we hold the lock, so no
# other build is running), then our own temp dir, removed on any exit.
mkdir -p "$CACHE_DIR"
rm -rf "$OUT_DIR"/.build.* "$CACHE_DIR"/.dl.*
WORK=$(mktemp -d "$OUT_DIR/.build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
trap 'exit 130' INT TERM HUP

fetch_deb amd64 'linux-image-*-amd64_*_amd64.deb' resolve_kernel
KDEB_amd64=$DEB
fetch_deb arm64 'linux-image-*-arm64_*_arm64.deb' resolve_kernel
KDEB_arm64=$DEB
fetch_deb arm64 'busybox-static_*_arm64.deb' resolve_busybox
BBDEB_arm64=$DEB
fetch_deb amd64 'grub-common_*_amd64.deb' resolve_grub_common
GRUB_COMMON_DEB=$DEB
GRUB_VER=$(dpkg-deb -f "$GRUB_COMMON_DEB" Version)
if dpkg --compare-versions "$GRUB_VER" lt 2.12; then
	log "warning: GRUB $GRUB_VER (no bookworm-backports?): the amd64 disk then needs -m 384 or more under OVMF"
fi
fetch_deb amd64 "grub-efi-amd64-bin_$(deb_file_version "$GRUB_VER")_amd64.deb" resolve_grub_bin
GRUB_BIN_amd64=$DEB
fetch_deb arm64 "grub-efi-arm64-bin_$(deb_file_version "$GRUB_VER")_arm64.deb" resolve_grub_bin
GRUB_BIN_arm64=$DEB
fetch_deb amd64 'qemu-guest-agent_*_amd64.deb' resolve_qga
QGA_DEB=$DEB

log "extracting GRUB $GRUB_VER"
dpkg -x "$GRUB_COMMON_DEB" "$WORK/grub"
dpkg -x "$GRUB_BIN_amd64" "$WORK/grub"
dpkg -x "$GRUB_BIN_arm64" "$WORK/grub"
GRUB_MKIMAGE="$WORK/grub/usr/bin/grub-mkimage"
"$GRUB_MKIMAGE" --version >/dev/null || die "extracted grub-mkimage does not run"

# Busybox applet names (for the /bin symlinks) come from the host's busybox
# for both architectures: the arm64 busybox cannot run here. Both are Debian's
# busybox-static; warn if their versions differ.
BB_APPLETS=$(/bin/busybox --list | grep -vx busybox)
bb_host_ver=$(dpkg-query -W -f '${Version}' busybox-static)
bb_arm64_ver=$(dpkg-deb -f "$BBDEB_arm64" Version)
[ "$bb_host_ver" = "$bb_arm64_ver" ] ||
	log "warning: host busybox-static $bb_host_ver, arm64 $bb_arm64_ver: applet links follow the host's"
dpkg -x "$BBDEB_arm64" "$WORK/busybox-arm64"
BUSYBOX_amd64=/bin/busybox
BUSYBOX_arm64="$WORK/busybox-arm64/bin/busybox"
[ -x "$BUSYBOX_arm64" ] || die "no bin/busybox in $(basename "$BBDEB_arm64")"

# Modules the guests need. Each is resolved with its dependencies; built-in
# ones are reported by modprobe as "builtin NAME" and skipped.
#   virtio_pci virtio_blk      system disk and a virtio seed disk
#   virtio_net                 NICs (OTHERIX-NIC lines, static address)
#   button evdev               ACPI "Power Button" as /dev/input/eventN
#   vfat isofs nls_*           mounting a cloud-init NoCloud seed (FAT or ISO)
#   ahci ata_piix sr_mod sd_mod virtio_scsi   seed on SATA/IDE CD-ROM or SCSI
# arm64 only:
#   virtio_mmio                virtio-mmio transports of -M virt
#   gpio_keys                  power button when booted with a device tree
#                              (-M virt without UEFI/ACPI); with UEFI the
#                              kernel uses ACPI and button (built in) serves
MODULES_COMMON=(virtio_pci virtio_blk virtio_net button evdev
	vfat nls_cp437 nls_ascii nls_iso8859_1 nls_utf8 isofs
	ahci ata_piix sr_mod sd_mod virtio_scsi)
MODULES_amd64=("${MODULES_COMMON[@]}")
MODULES_arm64=("${MODULES_COMMON[@]}" virtio_mmio gpio_keys)
# QGA guest (amd64 only): virtio_console for the virtio-serial port.
MODULES_qga_amd64=("${MODULES_amd64[@]}" virtio_console)

CONSOLE_amd64=ttyS0
CONSOLE_arm64=ttyAMA0
GRUB_PLATFORM_amd64=x86_64-efi
GRUB_PLATFORM_arm64=arm64-efi
EFI_LOADER_amd64=BOOTX64.EFI
EFI_LOADER_arm64=BOOTAA64.EFI

# build_initrd ARCH KERNEL_DIR KVER BUSYBOX OUT [qga]: busybox initramfs with
# the modules of MODULES_ARCH (MODULES_qga_ARCH and qemu-ga added with qga), as
# cpio newc + gzip (root-owned, sorted, fixed timestamps).
build_initrd() {
	local arch=$1 kdir=$2 kver=$3 busybox=$4 out=$5 flavour=${6:-}
	local root="$WORK/$arch/initramfs${flavour:+-$flavour}" moddir="$kdir/lib/modules/$kver"
	local -n mods="MODULES_${flavour:+${flavour}_}$arch"
	local m deps kind path rel applet
	local -A seen=()
	mkdir -p "$root"/{bin,dev,proc,sys,tmp,mnt/seed,etc/otherix,lib/modules/"$kver"}
	: >"$root/etc/otherix/modules"
	for m in "${mods[@]}"; do
		# One module per call: extra arguments would be taken as options.
		if ! deps=$(modprobe -d "$kdir" -S "$kver" --show-depends "$m" 2>/dev/null); then
			log "$arch: module $m: not in this kernel, skipped"
			continue
		fi
		while read -r kind path _; do
			case "$kind" in
			insmod)
				rel=${path#"$moddir"/}
				[ -n "${seen[$rel]:-}" ] && continue
				seen[$rel]=1
				mkdir -p "$root/lib/modules/$kver/$(dirname "$rel")"
				cp "$path" "$root/lib/modules/$kver/$rel"
				echo "$rel" >>"$root/etc/otherix/modules"
				;;
			builtin) log "$arch: module $m: built-in" ;;
			esac
		done <<<"$deps"
	done
	log "$arch: modules: $(tr '\n' ' ' <"$root/etc/otherix/modules")"
	echo "$kver" >"$root/etc/otherix/kver"

	# Static busybox with a symlink per applet.
	cp "$busybox" "$root/bin/busybox"
	for applet in $BB_APPLETS; do
		ln -sf busybox "$root/bin/$applet"
	done
	ln -s bin "$root/sbin"
	install -m 0755 "$INIT_SRC" "$root/init"
	[ "$flavour" != qga ] || add_qga "$root"

	find "$root" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
	(cd "$root" && find . -print0 | sort -z |
		cpio --null --create --format=newc --owner=0:0 --reproducible --quiet) |
		gzip -9 -n >"$out"
}

# add_qga ROOT: turns the initramfs at ROOT into the QGA guest's: qga-init.sh
# as /init (init.sh moves to /etc/otherix/init.sh), qemu-ga from QGA_DEB with
# every library ldd lists and the dynamic loader (copied from the host, same
# paths), /sbin/shutdown for guest-shutdown, an /etc/os-release for
# guest-get-osinfo.
add_qga() {
	local root=$1 x="$WORK/qga-deb" libs lib
	[ -x "$x/usr/sbin/qemu-ga" ] || dpkg -x "$QGA_DEB" "$x"
	[ -x "$x/usr/sbin/qemu-ga" ] || die "no usr/sbin/qemu-ga in $(basename "$QGA_DEB")"
	mv "$root/init" "$root/etc/otherix/init.sh"
	install -m 0755 "$QGA_INIT_SRC" "$root/init"
	install -m 0755 "$QGA_SHUTDOWN_SRC" "$root/bin/shutdown"
	install -D -m 0755 "$x/usr/sbin/qemu-ga" "$root/usr/sbin/qemu-ga"
	libs=$(ldd "$x/usr/sbin/qemu-ga") || die "ldd qemu-ga failed"
	! grep -q 'not found' <<<"$libs" || die "qemu-ga: missing host libraries: $libs"
	for lib in $(awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' <<<"$libs"); do
		mkdir -p "$root$(dirname "$lib")"
		cp -L "$lib" "$root$lib"
	done
	mkdir -p "$root/run"
	# Stdin of qga-init.sh's background job before devtmpfs is mounted.
	: >"$root/dev/null"
	cat >"$root/etc/os-release" <<EOF
PRETTY_NAME="otherix busybox test guest with qemu-guest-agent"
NAME="otherix-busybox-qga"
ID=otherix-busybox-qga
ID_LIKE=debian
VERSION_ID="1"
EOF
	log "qga: qemu-ga $(dpkg-deb -f "$QGA_DEB" Version), libraries: $(awk '$2 == "=>" { printf "%s ", $1 }' <<<"$libs")"
}

# syslinux configuration; $1 = kernel command line.
write_syslinux_cfg() {
	cat <<EOF
SERIAL 0 115200
DEFAULT otherix
PROMPT 0
TIMEOUT 0
LABEL otherix
  KERNEL /vmlinuz
  INITRD /initrd.gz
  APPEND $1
EOF
}

# GRUB configuration (/EFI/BOOT/grub.cfg, read by the EFI loader's normal
# mode from its own prefix on the boot disk); $1 = kernel command line.
write_grub_cfg() {
	cat <<EOF
# otherix test guest: boot at once, no menu.
linux /vmlinuz $1
initrd /initrd.gz
boot
EOF
}

# make_disk ARCH DIR INITRD RAW: writes the raw disk RAW with DIR/vmlinuz,
# INITRD (a file named initrd.gz), the EFI loader and DIR/std's configs.
make_disk() {
	local arch=$1 dir=$2 initrd=$3 raw=$4
	local -n loader="EFI_LOADER_$arch"
	truncate -s "${IMG_SIZE_MIB}M" "$raw"
	mkfs.vfat --invariant -n OTHERIXBOOT "$raw" >/dev/null
	mcopy -m -i "$raw" "$dir/vmlinuz" "$initrd" ::/
	mmd -i "$raw" ::/EFI ::/EFI/BOOT
	mcopy -m -i "$raw" "$dir/$loader" "::/EFI/BOOT/$loader"
	mcopy -m -i "$raw" "$dir/std/grub.cfg" ::/EFI/BOOT/grub.cfg
	if [ "$arch" = amd64 ]; then
		mcopy -m -i "$raw" "$dir/std/syslinux.cfg" ::/syslinux.cfg
		syslinux --install "$raw"
	fi
}

# build_arch ARCH: builds WORK/busybox-ARCH.img, .qcow2 and
# -nopowerdown.qcow2; on amd64 also WORK/busybox-qga-amd64.qcow2.
build_arch() {
	local arch=$1
	local -n kdeb="KDEB_$arch" busybox="BUSYBOX_$arch" console="CONSOLE_$arch"
	local -n platform="GRUB_PLATFORM_$arch" loader="EFI_LOADER_$arch"
	local name="busybox-$arch" dir="$WORK/$arch" kver cmdline raw raw_npd
	mkdir -p "$dir"

	log "$arch: extracting $(basename "$kdeb")"
	dpkg -x "$kdeb" "$dir/kernel"
	kver=$(basename "$(find "$dir/kernel/lib/modules" -mindepth 1 -maxdepth 1 -type d | head -n 1)")
	[ -n "$kver" ] && [ -f "$dir/kernel/boot/vmlinuz-$kver" ] || die "no kernel found in $kdeb"
	log "$arch: kernel $kver"
	depmod -b "$dir/kernel" "$kver"
	build_initrd "$arch" "$dir/kernel" "$kver" "$busybox" "$dir/initrd.gz"
	if [ "$arch" = amd64 ]; then
		mkdir -p "$dir/qga"
		build_initrd "$arch" "$dir/kernel" "$kver" "$busybox" "$dir/qga/initrd.gz" qga
	fi
	cp "$dir/kernel/boot/vmlinuz-$kver" "$dir/vmlinuz"
	rm -rf "$dir/kernel"

	cmdline="console=$console $CMDLINE_COMMON"
	mkdir -p "$dir/std" "$dir/npd"
	write_grub_cfg "$cmdline" >"$dir/std/grub.cfg"
	write_grub_cfg "$cmdline $NOPOWERDOWN_ARG" >"$dir/npd/grub.cfg"
	if [ "$arch" = amd64 ]; then
		write_syslinux_cfg "$cmdline" >"$dir/std/syslinux.cfg"
		write_syslinux_cfg "$cmdline $NOPOWERDOWN_ARG" >"$dir/npd/syslinux.cfg"
	fi

	# GRUB as the removable-media loader EFI/BOOT/BOOT{X64,AA64}.EFI. With
	# prefix /EFI/BOOT and no device, GRUB takes the device it was loaded
	# from as $root, so it reads grub.cfg, the kernel and the initrd from
	# this very disk. Only the modules it needs, all embedded.
	"$GRUB_MKIMAGE" -d "$WORK/grub/usr/lib/grub/$platform" -O "$platform" \
		-p /EFI/BOOT -o "$dir/$loader" \
		fat part_msdos part_gpt normal linux boot gzio
	touch -d "@$SOURCE_DATE_EPOCH" "$dir/vmlinuz" "$dir/initrd.gz" "$dir/$loader" \
		"$dir"/std/* "$dir"/npd/*
	[ "$arch" != amd64 ] || touch -d "@$SOURCE_DATE_EPOCH" "$dir/qga/initrd.gz"

	# Raw disk: a FAT "superfloppy" (filesystem from sector 0, no partition
	# table). UEFI firmware (OVMF/AAVMF) mounts it as a removable-media
	# file system and runs EFI/BOOT/BOOT*.EFI. On amd64, syslinux also writes
	# its boot code into the FAT boot sector, which SeaBIOS boots like an MBR.
	raw="$dir/$name.img"
	make_disk "$arch" "$dir" "$dir/initrd.gz" "$raw"

	# Variant that ignores the ACPI power button (for stop-timeout tests).
	raw_npd="$dir/$name-nopowerdown.img"
	cp --sparse=always "$raw" "$raw_npd"
	mcopy -o -m -i "$raw_npd" "$dir/npd/grub.cfg" ::/EFI/BOOT/grub.cfg
	if [ "$arch" = amd64 ]; then
		mcopy -o -m -i "$raw_npd" "$dir/npd/syslinux.cfg" ::/syslinux.cfg
	fi

	qemu-img convert -f raw -O qcow2 "$raw" "$WORK/$name.qcow2"
	qemu-img convert -f raw -O qcow2 "$raw_npd" "$WORK/$name-nopowerdown.qcow2"
	mv "$raw" "$WORK/$name.img"
	rm -f "$raw_npd"

	# QGA guest: same kernel, loaders and command line, its own initramfs.
	if [ "$arch" = amd64 ]; then
		make_disk "$arch" "$dir" "$dir/qga/initrd.gz" "$dir/busybox-qga-$arch.img"
		qemu-img convert -f raw -O qcow2 "$dir/busybox-qga-$arch.img" "$WORK/busybox-qga-$arch.qcow2"
		rm -f "$dir/busybox-qga-$arch.img"
	fi
	log "$arch: built with kernel $kver, cmdline: $cmdline"
}

build_arch amd64
build_arch arm64

(cd "$WORK" && sha256sum busybox-amd64.img busybox-amd64.qcow2 busybox-amd64-nopowerdown.qcow2 \
	busybox-arm64.img busybox-arm64.qcow2 busybox-arm64-nopowerdown.qcow2 \
	busybox-qga-amd64.qcow2 >SHA256SUMS)

# Publish: drop the stamp first, rename each output into place (atomic per
# file, same filesystem), write the stamp last.
rm -f "$STAMP"
for f in "${OUTPUTS[@]}"; do mv -f "$WORK/$f" "$OUT_DIR/$f"; done
echo "$HASH" >"$STAMP"
# Keep only the .debs this build used.
while IFS= read -r -d '' f; do
	keep=0
	for u in "${USED_DEBS[@]}"; do [ "${f##*/}" = "$u" ] && keep=1; done
	[ "$keep" = 1 ] || rm -f "$f"
done < <(find "$CACHE_DIR" -maxdepth 1 -name '*.deb' -print0)

log "built with GRUB $GRUB_VER"
print_outputs
