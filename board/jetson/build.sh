#!/usr/bin/env bash
# Cross-builds the kiosk (examples/kiosk.rs) for a Jetson: aarch64, glibc <= 2.31, so one binary
# runs on JetPack 5.1 (L4T 35) and JetPack 6 (L4T 36). Prints the binary's path on stdout.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: board/jetson/build.sh [--features LIST] [--glibc VERSION] [--dev] [--target-dir DIR]

Cross-builds the Transfusion kiosk for aarch64 Jetsons with cargo-zigbuild
(target aarch64-unknown-linux-gnu.<glibc>) and prints the binary's path.
Installs what is missing: the rustup target, cargo-zigbuild (crates.io) and
zig (PyPI `ziglang`, in a venv under ~/.cache/transfusion).

Options:
  --features LIST   passed to cargo as --features (e.g. a future CUDA build,
                    issue #6: --features transfusion-sdk/cuda-12060)
  --glibc VERSION   newest glibc the binary may need (default 2.31 = JetPack 5.1;
                    2.35 = JetPack 6 only)
  --dev             dev profile instead of --release (faster to build; the
                    dependencies are optimised in both, see Cargo.toml)
  --target-dir DIR  cargo target directory (default: the workspace's target/)
  -h, --help        this help

Output: target/aarch64-unknown-linux-gnu/{release,debug}/examples/kiosk
Next:   board/jetson/deploy.sh HOST   or   board/jetson/install-rootfs.sh ROOTFS
USAGE
}

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
# shellcheck source=SCRIPTDIR/toolchain.sh
. "$here/toolchain.sh"

features=""
glibc=$TF_GLIBC
profile=release
target_dir=""
while [ $# -gt 0 ]; do
  case "$1" in
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
case "$glibc" in
  2.[0-9]|2.[0-9][0-9]) ;;
  *) printf 'build.sh: --glibc %q: expected a version like 2.31\n' "$glibc" >&2; exit 2 ;;
esac

tf_ensure_cross_toolchain

args=(zigbuild --target "$TF_RUST_TARGET.$glibc" -p transfusion --example kiosk)
if [ "$profile" = release ]; then args+=(--release); fi
if [ -n "$features" ]; then args+=(--features "$features"); fi
if [ -n "$target_dir" ]; then args+=(--target-dir "$target_dir"); fi

cd "$root"
start=$(date +%s)
printf '[build] cargo %s\n' "${args[*]}" >&2
cargo "${args[@]}" >&2
out_dir=${target_dir:-$root/target}
case "$profile" in release) sub=release ;; *) sub=debug ;; esac
bin="$out_dir/$TF_RUST_TARGET/$sub/examples/kiosk"
if [ ! -x "$bin" ]; then
  printf 'build.sh: cargo succeeded but %s is missing\n' "$bin" >&2
  exit 1
fi
printf '[build] %s profile, glibc <= %s, %s s\n' "$profile" "$glibc" "$(( $(date +%s) - start ))" >&2
printf '%s\n' "$bin"
