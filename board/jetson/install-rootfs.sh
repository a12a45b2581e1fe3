#!/usr/bin/env bash
# Stages the kiosk into an L4T root filesystem (Linux_for_Tegra/rootfs) so that flashing bakes it
# in: files under /opt/transfusion and /etc, the service enabled through its
# multi-user.target.wants symlink, and the `transfusion` user created on first boot by
# transfusion-setup.service (run before the kiosk; idempotent).
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: sudo board/jetson/install-rootfs.sh [options] L4T_ROOTFS

Stages the Transfusion kiosk into L4T_ROOTFS (e.g. ~/nvidia/Linux_for_Tegra/rootfs, after
apply_binaries.sh), then flash as usual (flash.sh or l4t_initrd_flash.sh): the kiosk starts on
first boot. Files: /opt/transfusion/{bin/kiosk,model/,kiosk.toml,prompts.txt,setup-user.sh},
/etc/systemd/system/transfusion-{kiosk,setup}.service, /etc/udev/rules.d/99-transfusion.rules,
/etc/systemd/system/multi-user.target.wants/transfusion-kiosk.service (symlink).

The user is created on the device at first boot (transfusion-setup.service runs
setup-user.sh before the kiosk), not in the rootfs's passwd: L4T's first-boot
configuration still owns those files, and groups such as gpio may appear later.

Options:
  --binary PATH     kiosk binary (default target/aarch64-unknown-linux-gnu/release/kiosk;
                    built with build.sh when missing)
  --model DIR       bundle (default models/shapes64/bundle, else the untrained fallback)
  --config FILE     config (default board/jetson/kiosk.toml)
  --prompts FILE    prompts (default board/jetson/prompts.txt)
  --headless-boot   also make multi-user.target the default (no desktop holding the DRM master:
                    needed for drm: on HDMI)
  --cuda            the CUDA variant (binary from build.sh --cuda): also stages the unit's
                    CUDA drop-in (transfusion-kiosk.service.d/cuda.conf) and cuda-setup.sh,
                    and checks the rootfs's dpkg database for the JetPack packages
                    tract-cuda loads (failing with the list and how to add them). The
                    GPU kernels are compiled at first boot, by the unit's warm-up.
  --no-package-check  with --cuda: stage even when packages are missing (install them on
                    the board later: sudo /opt/transfusion/cuda-setup.sh)
  --uninstall       remove what this script staged (a --headless-boot default.target stays)
  -h, --help        this help
USAGE
}

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
binary="$root/target/aarch64-unknown-linux-gnu/release/kiosk"
model=""
config="$here/kiosk.toml"
prompts="$here/prompts.txt"
headless=no
cuda=no
package_check=yes
uninstall=no
rootfs=""
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) [ $# -ge 2 ] || { usage >&2; exit 2; }; binary=$2; shift 2 ;;
    --model) [ $# -ge 2 ] || { usage >&2; exit 2; }; model=$2; shift 2 ;;
    --config) [ $# -ge 2 ] || { usage >&2; exit 2; }; config=$2; shift 2 ;;
    --prompts) [ $# -ge 2 ] || { usage >&2; exit 2; }; prompts=$2; shift 2 ;;
    --headless-boot) headless=yes; shift ;;
    --cuda) cuda=yes; shift ;;
    --no-package-check) package_check=no; shift ;;
    --uninstall) uninstall=yes; shift ;;
    -h|--help) usage; exit 0 ;;
    -*) printf 'install-rootfs.sh: unknown option %q\n\n' "$1" >&2; usage >&2; exit 2 ;;
    *) [ -z "$rootfs" ] || { echo "install-rootfs.sh: one L4T_ROOTFS only" >&2; exit 2; }; rootfs=$1; shift ;;
  esac
done
if [ -z "$rootfs" ]; then
  usage >&2
  exit 2
fi
if [ ! -f "$rootfs/etc/passwd" ] || [ ! -d "$rootfs/etc/systemd/system" ]; then
  echo "install-rootfs.sh: $rootfs does not look like a root filesystem (no etc/passwd or etc/systemd/system)" >&2
  exit 1
fi
rootfs=$(cd "$rootfs" && pwd)
if [ ! -e "$rootfs/../flash.sh" ]; then
  echo "note: $rootfs/../flash.sh not found: is this Linux_for_Tegra/rootfs?" >&2
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "note: not root: files will be owned by $(id -un) in the image (run with sudo for a real flash)" >&2
fi

wants="$rootfs/etc/systemd/system/multi-user.target.wants"
if [ "$uninstall" = yes ]; then
  rm -rf "$rootfs/opt/transfusion"
  rm -f "$rootfs/etc/systemd/system/transfusion-kiosk.service" \
    "$rootfs/etc/systemd/system/transfusion-setup.service" \
    "$rootfs/etc/udev/rules.d/99-transfusion.rules" \
    "$wants/transfusion-kiosk.service"
  rm -rf "$rootfs/etc/systemd/system/transfusion-kiosk.service.d"
  echo "removed the kiosk from $rootfs"
  exit 0
fi

# shellcheck source=SCRIPTDIR/stage.sh
. "$here/stage.sh"
if [ -z "$model" ]; then model=$(tf_default_model "$root"); fi
if [ ! -x "$binary" ]; then
  build_args=()
  if [ "$cuda" = yes ]; then build_args=(--cuda); fi
  echo "install-rootfs.sh: $binary missing: building it with board/jetson/build.sh ${build_args[*]}" >&2
  binary=$("$here/build.sh" "${build_args[@]}")
fi
if [ "$cuda" = yes ] && [ "$package_check" = yes ]; then
  echo "checking $rootfs for the CUDA packages:"
  if ! bash "$here/cuda-setup.sh" --root "$rootfs"; then
    echo "install-rootfs.sh: CUDA packages missing in $rootfs (see above); or pass --no-package-check" >&2
    exit 1
  fi
fi

staging=$(mktemp -d)
trap 'rm -rf "$staging"' EXIT
tf_stage "$staging" "$binary" "$model" "$config" "$prompts" "$cuda"
rm -rf "$rootfs/opt/transfusion" "$rootfs/etc/systemd/system/transfusion-kiosk.service.d/cuda.conf"
cp -r "$staging/." "$rootfs/"
mkdir -p "$wants"
ln -sfn /etc/systemd/system/transfusion-kiosk.service "$wants/transfusion-kiosk.service"
if [ "$headless" = yes ]; then
  ln -sfn /lib/systemd/system/multi-user.target "$rootfs/etc/systemd/system/default.target"
  echo "default target: multi-user.target (no desktop)"
fi
echo "staged into $rootfs:"
(cd "$rootfs" && find opt/transfusion etc/systemd/system/transfusion-*.service \
  etc/systemd/system/transfusion-kiosk.service.d \
  etc/systemd/system/multi-user.target.wants/transfusion-kiosk.service \
  etc/udev/rules.d/99-transfusion.rules -maxdepth 2 2>/dev/null | sort)
echo "next: flash as usual (e.g. sudo ./flash.sh <board> internal, or l4t_initrd_flash.sh); the kiosk starts on first boot"
