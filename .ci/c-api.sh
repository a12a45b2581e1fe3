#!/usr/bin/env bash
# The C ABI as a C app uses it; called by .ci/run after the Rust tests (x86-64, this machine).
#
#  1. the header compiles as C99 and C++ (-Wall -Wextra -Werror -pedantic);
#  2. examples/c/generate.c against the shared library draws a PNG with the default model and
#     captions it, with no library handle left live at exit;
#  3. examples/c/misuse.c: NULLs, invalid UTF-8, wrong buffer sizes, use after free, double
#     free, foreign handles each give their error code;
#  4. both again linked statically and built with AddressSanitizer (and LeakSanitizer): any
#     invalid access or leak on either side of the ABI fails the run.
#
# Usage: .ci/c-api.sh [BUNDLE]   (default: the examples' default model, models/shapes64/bundle,
# converted from its checkpoint when missing)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
cc=${CC:-cc}
cxx=${CXX:-c++}
work="$root/target/c-api"
rm -rf "$work"
mkdir -p "$work"
# The statically linked programs are ~75 MB each and CI disks are tight: whatever happens,
# only the PNGs and logs stay.
trap 'rm -f "$work"/generate-* "$work"/misuse-shared "$work"/misuse-asan' EXIT
lib="${CARGO_TARGET_DIR:-$root/target}/debug"

cargo build --workspace
bundle=${1:-$root/models/shapes64/bundle}
if [ ! -f "$bundle/manifest.json" ]; then
  cargo run --quiet -p transfusion-tools --bin transfusion -- \
    convert models/shapes64/checkpoint -o "$bundle" --precision fp32,fp16,int8
fi

flags=(-std=c99 -Wall -Wextra -Werror -pedantic -pthread -I"$root/sdk/ffi/include")
echo "-- header: C99 and C++"
printf '#include "transfusion.h"\nint main(void) { return tf_version() == 0; }\n' > "$work/h.c"
"$cc" "${flags[@]}" -c "$work/h.c" -o "$work/h.o"
if command -v "$cxx" >/dev/null 2>&1; then
  "$cxx" -std=c++17 -Wall -Wextra -Werror -pedantic -I"$root/sdk/ffi/include" -x c++ -c "$work/h.c" -o "$work/hpp.o"
else
  echo "   no C++ compiler ($cxx): the header's C++ check is skipped"
fi

# What a Rust static library needs from the system (rustc's own list).
static_libs=(-lgcc_s -lutil -lrt -lpthread -lm -ldl -lc)

run_both() {  # $1: which build (shared or asan)
  local kind=$1
  echo "-- generate.c ($kind)"
  TF_CHECK_LEAKS=1 "$work/generate-$kind" "$bundle" "a red circle above a blue square" "$work/c-$kind.png"
  python3 - "$work/c-$kind.png" <<'PY'
import struct, sys
data = open(sys.argv[1], "rb").read()
assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
w, h = struct.unpack(">II", data[16:24])
assert w > 0 and w == h, (w, h)  # the model's square image
print(f"   {sys.argv[1]}: PNG {w}x{h}, {len(data)} bytes")
PY
  echo "-- misuse.c ($kind)"
  "$work/misuse-$kind" "$bundle" > "$work/misuse-$kind.log" || { cat "$work/misuse-$kind.log"; exit 1; }
  echo "   $(grep -c '^ok' "$work/misuse-$kind.log") cases ok"
}

for prog in generate misuse; do
  "$cc" "${flags[@]}" "examples/c/$prog.c" -L"$lib" -ltransfusion -Wl,-rpath,"$lib" -Wl,-z,noexecstack -o "$work/$prog-shared"
  "$cc" "${flags[@]}" -g -fsanitize=address -fno-omit-frame-pointer "examples/c/$prog.c" \
    "$lib/libtransfusion.a" "${static_libs[@]}" -Wl,-z,noexecstack -o "$work/$prog-asan"
done
run_both shared
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 run_both asan
echo "c-api: ok"
