#!/usr/bin/env bash
# Installs the Debian packages otherix needs to run VMs and to build its test guests:
# QEMU (x86 + arm) and qemu-img, UEFI firmware, and the image tools tests/images/build.sh
# uses (with --test, also what only the test suite needs). Safe to re-run: does nothing
# when everything is present.
#
# On Debian 12 (bookworm) machines whose qemu-utils comes from bookworm-backports, the
# matching qemu-system packages must come from there too, so backports is enabled and the
# QEMU packages are installed from it.
set -euo pipefail

if [ "$(id -u)" != 0 ]; then SUDO=sudo; else SUDO=; fi

# The unprivileged user otherix-agent (as root) runs QEMU as (--qemu-user, default
# otherix-qemu).
if ! getent passwd otherix-qemu >/dev/null; then
  echo "install-deps: creating system user otherix-qemu"
  $SUDO useradd --system --no-create-home --shell /usr/sbin/nologin otherix-qemu
fi

# util-linux: prlimit, which bounds `qemu-img info` on downloaded images.
packages=(qemu-system-x86 qemu-system-arm qemu-utils ovmf qemu-efi-aarch64
          busybox-static syslinux syslinux-common mtools dosfstools cpio kmod iproute2
          util-linux
          libglib2.0-0 libnuma1 liburing2 libudev1)  # qemu-ga's libraries, copied into a test guest
# --test: also the shells the suite checks `otherix completion zsh|fish` with, and pip for
# the OpenAPI validator (below).
if [ "${1:-}" = --test ]; then
  packages+=(zsh fish python3-pip)
fi

# --test: openapi-spec-validator (Python, from PyPI: Debian does not package it), which
# the suite runs on schemas/openapi.json.
install_openapi_validator() {
  python3 -c "import openapi_spec_validator" 2>/dev/null && return 0
  echo "install-deps: installing openapi-spec-validator (pip)"
  python3 -m pip install --quiet openapi-spec-validator 2>/dev/null ||
    python3 -m pip install --quiet --break-system-packages openapi-spec-validator
}

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all packages present"
  if [ "${1:-}" = --test ]; then install_openapi_validator; fi
  exit 0
fi
echo "install-deps: installing ${missing[*]}"

codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
target=()
if [ "$codename" = bookworm ]; then
  list=/etc/apt/sources.list.d/otherix-bookworm-backports.list
  if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    echo 'deb http://deb.debian.org/debian bookworm-backports main' | $SUDO tee "$list" >/dev/null
  fi
  target=(-t bookworm-backports)
fi

$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${target[@]}" "${missing[@]}"
qemu-system-x86_64 --version | head -1
if [ "${1:-}" = --test ]; then install_openapi_validator; fi
