#!/usr/bin/env bash
# Installs (or, with --check, only verifies) the JetPack packages the CUDA kiosk needs at run
# time, by name, for the board's L4T release. Run as root on the Jetson (deploy.sh --cuda does);
# install-rootfs.sh --cuda runs it with --check --root on an L4T rootfs.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: cuda-setup.sh [--check] [--root DIR] [--cuda-version X-Y]

tract-cuda (the kiosk's GPU path) loads these at run time; JetPack's apt
repository (configured on stock L4T images) provides them:

  cuda-cudart-X-Y       libcudart.so.12
  cuda-cudart-dev-X-Y   cuda_fp16.h, math_constants.h (NVRTC compiles against them)
  cuda-nvrtc-X-Y        libnvrtc.so.12 (compiles tract's kernels on the board)
  libcublas-X-Y         libcublas.so.12, libcublasLt.so.12
  cuda-cccl-X-Y         <cuda/std/...> headers
  libcudnn9-cuda-12     libcudnn.so.9 (JetPack 6.1/6.2)
  libcudnn8, libcudnn8-dev  on JetPack 6.0 instead: cudarc does not open
                        libcudnn.so.8, only the -dev package's libcudnn.so

X-Y follows /etc/nv_tegra_release: L4T R36.4 (JetPack 6.1/6.2) -> 12-6,
R36.2/R36.3 (JetPack 6.0) -> 12-2. The driver (libcuda.so.1) is L4T's
nvidia-l4t-cuda, always present. JetPack 5 (R35, CUDA 11.4) is refused: tract-cuda
needs CUDA 12; run those boards with device = "cpu".

Then, unless --check: runs ldconfig, and when /usr/local/cuda is missing but
/usr/local/cuda-X.Y exists, writes
/etc/systemd/system/transfusion-kiosk.service.d/cuda-home.conf pointing the unit
at it.

Options:
  --check            only report; exit 1 listing what is missing
  --root DIR         check the root filesystem at DIR (dpkg database under it);
                     implies --check
  --cuda-version X-Y use this CUDA version instead of reading nv_tegra_release
  -h, --help         this help
USAGE
}

check=no
root=""
version=""
while [ $# -gt 0 ]; do
  case "$1" in
    --check) check=yes; shift ;;
    --root) [ $# -ge 2 ] || { usage >&2; exit 2; }; root=${2%/}; check=yes; shift 2 ;;
    --cuda-version) [ $# -ge 2 ] || { usage >&2; exit 2; }; version=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) printf 'cuda-setup.sh: unknown argument %q\n\n' "$1" >&2; usage >&2; exit 2 ;;
  esac
done

release="$root/etc/nv_tegra_release"
cudnn=9
if [ -z "$version" ]; then
  if [ ! -f "$release" ]; then
    echo "cuda-setup.sh: $release not found: not an L4T system (pass --cuda-version X-Y to force)" >&2
    exit 1
  fi
  # "# R36 (release), REVISION: 4.3, GCID: ..."
  line=$(head -1 "$release")
  major=$(printf '%s\n' "$line" | sed -n 's/^# R\([0-9][0-9]*\) .*/\1/p')
  minor=$(printf '%s\n' "$line" | sed -n 's/.*REVISION: \([0-9][0-9]*\).*/\1/p')
  if [ -z "$major" ] || [ -z "$minor" ]; then
    echo "cuda-setup.sh: cannot read the L4T release from $release: \"$line\"" >&2
    exit 1
  fi
  if [ "$major" -lt 36 ]; then
    echo "cuda-setup.sh: L4T R$major.$minor is JetPack 5 or older (CUDA 11.4): tract-cuda needs CUDA 12; use device = \"cpu\"" >&2
    exit 1
  elif [ "$major" -eq 36 ] && [ "$minor" -lt 4 ]; then
    version=12-2   # JetPack 6.0
    cudnn=8
  elif [ "$major" -eq 36 ]; then
    version=12-6   # JetPack 6.1 / 6.2
  else
    echo "cuda-setup.sh: L4T R$major.$minor is newer than this script knows (JetPack 6 = R36): pass --cuda-version X-Y" >&2
    exit 1
  fi
  echo "L4T R$major.$minor: CUDA $version, cuDNN $cudnn"
fi
case "$version" in
  [0-9]*-[0-9]*) ;;
  *) printf 'cuda-setup.sh: --cuda-version %q: expected X-Y, e.g. 12-6\n' "$version" >&2; exit 2 ;;
esac
cuda_major=${version%%-*}

packages=(
  "cuda-cudart-$version"
  "cuda-cudart-dev-$version"
  "cuda-nvrtc-$version"
  "libcublas-$version"
  "cuda-cccl-$version"
)
if [ "$cudnn" = 8 ]; then
  packages+=(libcudnn8 libcudnn8-dev)
else
  packages+=("libcudnn9-cuda-$cuda_major")
fi

dpkg_args=()
if [ -n "$root" ]; then dpkg_args=(--admindir="$root/var/lib/dpkg"); fi
installed() {
  dpkg-query "${dpkg_args[@]}" -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

missing=()
for p in "${packages[@]}"; do
  if installed "$p"; then
    echo "  ok       $p"
  else
    echo "  missing  $p"
    missing+=("$p")
  fi
done
if ! installed nvidia-l4t-cuda; then
  echo "  warning: nvidia-l4t-cuda (L4T's libcuda.so.1) is not installed: is this an L4T image after apply_binaries.sh?" >&2
fi

if [ ${#missing[@]} -gt 0 ]; then
  if [ "$check" = yes ]; then
    echo "missing: ${missing[*]}"
    if [ -n "$root" ]; then
      echo "install them on the board after flashing (sudo apt-get install ${missing[*]}, or"
      echo "sudo /opt/transfusion/cuda-setup.sh), or into the rootfs with qemu-user-static:"
      echo "  sudo chroot $root apt-get install -y ${missing[*]}"
    else
      echo "install them: sudo apt-get install ${missing[*]}"
    fi
    exit 1
  fi
  if [ "$(id -u)" -ne 0 ]; then
    echo "cuda-setup.sh: installing packages needs root (run it with sudo)" >&2
    exit 1
  fi
  echo "apt-get install ${missing[*]}"
  if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"; }; then
    echo "cuda-setup.sh: apt-get failed (no network? JetPack's repository in /etc/apt/sources.list.d/nvidia-l4t-apt-source.list?); needed: ${missing[*]}" >&2
    exit 1
  fi
fi
if [ "$check" = yes ]; then
  echo "all CUDA packages are installed"
  exit 0
fi

ldconfig
dotted=${version/-/.}
dropin=/etc/systemd/system/transfusion-kiosk.service.d
if [ ! -e /usr/local/cuda ] && [ -d "/usr/local/cuda-$dotted" ]; then
  mkdir -p "$dropin"
  cat > "$dropin/cuda-home.conf" <<CONF
# Written by cuda-setup.sh: /usr/local/cuda is missing on this board.
[Service]
Environment=CUDA_HOME=/usr/local/cuda-$dotted
Environment=LD_LIBRARY_PATH=/usr/local/cuda-$dotted/lib64
CONF
  echo "wrote $dropin/cuda-home.conf (CUDA_HOME=/usr/local/cuda-$dotted)"
fi
home=/usr/local/cuda
[ -e "$home" ] || home="/usr/local/cuda-$dotted"
for header in include/cuda_fp16.h include/math_constants.h include/cuda/std; do
  [ -e "$home/$header" ] || echo "  warning: $home/$header is missing after the install" >&2
done
if [ "$cudnn" = 8 ] && ! ls /usr/lib/*-linux-gnu/libcudnn.so >/dev/null 2>&1; then
  echo "  warning: no libcudnn.so after the install (libcudnn8-dev provides it; cudarc does not open libcudnn.so.8)" >&2
fi
echo "CUDA packages ready (CUDA $version)"
