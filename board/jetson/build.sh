#!/usr/bin/env bash
# Cross-builds the kiosk (the transfusion-kiosk crate, kiosk/) for a Jetson: aarch64, glibc <= 2.31, so one binary
# runs on JetPack 5.1 (L4T 35) and JetPack 6 (L4T 36). Prints the binary's path on stdout.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: board/jetson/build.sh [--cuda[=FEATURE]] [--features LIST] [--glibc VERSION] [--dev]
                             [--target-dir DIR]

Cross-builds the Transfusion kiosk for aarch64 Jetsons with cargo-zigbuild
(target aarch64-unknown-linux-gnu.<glibc>) and prints the binary's path.
Installs what is missing: the rustup target, cargo-zigbuild (crates.io) and
zig (PyPI `ziglang`, in a venv under ~/.cache/transfusion).

Options:
  --cuda[=FEATURE]  the CUDA kiosk (tract-cuda): --features transfusion-sdk/FEATURE,
                    default cuda-12000, which runs on every JetPack 6 release
                    (6.0 = CUDA 12.2, 6.1/6.2 = 12.6); cuda-12060 needs 6.1+.
                    No CUDA toolkit is needed to build; deploy with deploy.sh --cuda
  --features LIST   passed to cargo as --features
  --glibc VERSION   newest glibc the binary may need (default 2.31 = JetPack 5.1;
                    2.35 = JetPack 6 only)
  --dev             dev profile instead of --release (faster to build; the
                    dependencies are optimised in both, see Cargo.toml)
  --target-dir DIR  cargo target directory (default: the workspace's target/)
  -h, --help        this help

Output: target/aarch64-unknown-linux-gnu/{release,debug}/kiosk
Next:   board/jetson/deploy.sh HOST   or   board/jetson/install-rootfs.sh ROOTFS
USAGE
}

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
# shellcheck source=SCRIPTDIR/toolchain.sh
. "$here/toolchain.sh"

features=""
cuda=""
glibc=$TF_GLIBC
profile=release
target_dir=""
while [ $# -gt 0 ]; do
  case "$1" in
    --cuda) cuda="cuda-12000"; shift ;;
    --cuda=*) cuda=${1#*=}; shift ;;
    --features) [ $# -ge 2 ] || { usage >&2; exit 2; }; features=$2; shift 2 ;;
    --features=*) features=${1#*=}; shift ;;
    --glibc) [ $# -ge 2 ] || { usage >&2; exit 2; }; glibc=$2; shift 2 ;;
    --glibc=*) glibc=${1#*=}; shift ;;
    --dev) profile=dev; shift ;;
    --release) profile=release; shift ;;
    --target-dir) [ $# -ge 2 ] || { usage >&2; exit 2; }; target_dir=$2; shift 2 ;;
    --target-dir=*) target_dir=${1#*=}; shift ;;
    -h|--help) usage; exit 0 ;;
    *) printf 'build.sh: unknown argument %q\n\n' "$1" >&2; usage >&2; exit 2 ;;
  esac
done
case "$cuda" in
  ""|cuda-12000|cuda-12020|cuda-12060) ;;
  cuda-13000) echo "build.sh: note: cuda-13000 needs a CUDA 13 driver (JetPack 7); JetPack 6 boards need cuda-12000" >&2 ;;
  *) printf 'build.sh: --cuda=%q: expected cuda-12000 (JetPack 6), cuda-12020, cuda-12060 or cuda-13000\n' "$cuda" >&2; exit 2 ;;
esac
if [ -n "$cuda" ]; then
  features="${features:+$features,}transfusion-sdk/$cuda"
fi
case "$glibc" in
  2.[0-9]|2.[0-9][0-9]) ;;
  *) printf 'build.sh: --glibc %q: expected a version like 2.31\n' "$glibc" >&2; exit 2 ;;
esac

tf_ensure_cross_toolchain

args=(zigbuild --target "$TF_RUST_TARGET.$glibc" -p transfusion-kiosk --bin kiosk)
if [ "$profile" = release ]; then args+=(--release); fi
if [ -n "$features" ]; then args+=(--features "$features"); fi
if [ -n "$target_dir" ]; then args+=(--target-dir "$target_dir"); fi

cd "$root"
start=$(date +%s)
printf '[build] cargo %s\n' "${args[*]}" >&2
cargo "${args[@]}" >&2
out_dir=${target_dir:-$root/target}
case "$profile" in release) sub=release ;; *) sub=debug ;; esac
bin="$out_dir/$TF_RUST_TARGET/$sub/kiosk"
if [ ! -x "$bin" ]; then
  printf 'build.sh: cargo succeeded but %s is missing\n' "$bin" >&2
  exit 1
fi
printf '[build] %s profile, glibc <= %s%s, %s s\n' "$profile" "$glibc" "${cuda:+, $cuda}" "$(( $(date +%s) - start ))" >&2
printf '%s\n' "$bin"
