#!/usr/bin/env bash
# aarch64 (Jetson) in CI, self-contained and idempotent; called by .ci/run.
#
#  1. installs what is missing: qemu-user, an aarch64 glibc sysroot (libc6-arm64-cross,
#     libgcc-s1-arm64-cross: /usr/aarch64-linux-gnu), shellcheck, the rustup target, zig (PyPI
#     ziglang, in a venv under ~/.cache/transfusion) and cargo-zigbuild (crates.io; skipped
#     when present); shellchecks board/jetson/*.sh and this script;
#  2. cross-builds the test binaries of the SDK, image, board, C ABI and kiosk crates, the kiosk
#     and the static C library for
#     aarch64-unknown-linux-gnu.2.31 (glibc <= 2.31: JetPack 5.1) in ONE cargo invocation, dev
#     profile: the workspace's dev profile builds every dependency at opt-level 3 (Cargo.toml),
#     so tract's kernels are the optimised ones, and tests (test profile = dev) and the kiosk
#     share one dependency build instead of two (a release kiosk would build tract again);
#  3. runs the SDK and board test binaries under qemu-aarch64 (QEMU_LD_PREFIX = the sysroot;
#     the zig-linked binaries load glibc dynamically). The kiosk crate's kiosk test is not run
#     there: it spawns the kiosk binary, which needs binfmt_misc; the kiosk is run directly in 4.
#     The emulated CPU is a Cortex-A57 (Jetson Nano; ARMv8.0, no FP16 arithmetic), because
#     under qemu-user tract reads the HOST's /proc/cpuinfo, finds no aarch64 "Features" line
#     and runs its baseline ARMv8.0 kernels whatever CPU qemu emulates; with qemu's default
#     `max` CPU the SDK's own check (HWCAP: asimdhp present) would pick FP16 for
#     `precision auto` while tract runs no FP16 kernels — a mix no real board has;
#  4. runs the kiosk headless for one prompt on x86 and on aarch64 (same model, seed 0, fp32,
#     1 thread, --no-timings) and compares the final frames (see TOLERANCE below);
#  5. checks that the aarch64 kiosk needs no GLIBC symbol version newer than 2.31;
#  5b. builds examples/c against the static C library with zig cc and runs them under qemu;
#  6. probes FP16 on aarch64 (kiosk --precision fp16): reported, not failed, unless
#     AARCH64_FP16_STRICT=1 (untrained bundles overflow FP16; the trained shapes64 is finite).
#
# Environment: AARCH64_TESTS=0 skips step 3 (build and qemu run of the test binaries);
# AARCH64_QEMU_CPU overrides the emulated CPU (default cortex-a57).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
t_start=$(date +%s)
timings=()
t_step=$t_start
step() {
  local now
  now=$(date +%s)
  if [ -n "${step_name:-}" ]; then timings+=("$(printf '%5d s  %s' $((now - t_step)) "$step_name")"); fi
  step_name=$1
  t_step=$now
  printf '\n==== aarch64: %s (%s)\n' "$1" "$(date +%T)"
}

triple=aarch64-unknown-linux-gnu
sysroot=/usr/aarch64-linux-gnu
work="$root/target/aarch64-ci"
rm -rf "$work"
mkdir -p "$work"
# The final frames of x86 and aarch64 may differ by at most this much per channel (0-255): see
# the comparison step for why they can differ at all.
TOLERANCE=${AARCH64_FRAME_TOLERANCE:-2}

step "install qemu-user, the aarch64 sysroot, the rust target, zig, cargo-zigbuild"
missing=()
command -v qemu-aarch64 >/dev/null 2>&1 || missing+=(qemu-user)
[ -e "$sysroot/lib/libc.so.6" ] || missing+=(libc6-arm64-cross)
[ -e "$sysroot/lib/libgcc_s.so.1" ] || missing+=(libgcc-s1-arm64-cross)
command -v readelf >/dev/null 2>&1 || missing+=(binutils)
command -v shellcheck >/dev/null 2>&1 || missing+=(shellcheck)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=()
  if [ "$(id -u)" -ne 0 ]; then sudo=(sudo); fi
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# shellcheck source=SCRIPTDIR/../board/jetson/toolchain.sh
. board/jetson/toolchain.sh
tf_ensure_cross_toolchain
export QEMU_LD_PREFIX=$sysroot
qemu=(qemu-aarch64 -L "$sysroot" -cpu "${AARCH64_QEMU_CPU:-cortex-a57}")
"${qemu[@]}" --version | head -1

step "shellcheck: Jetson deployment scripts"
scripts=(board/jetson/*.sh .ci/aarch64.sh)
shellcheck -x "${scripts[@]}"
echo "ok: ${#scripts[@]} scripts clean"

step "cross-build for $triple.$TF_GLIBC (dev profile): tests, kiosk, libtransfusion.a"
targets=(-p transfusion-kiosk -p transfusion-ffi --bins --lib)
if [ "${AARCH64_TESTS:-1}" != 0 ]; then
  targets=(-p transfusion-sdk -p transfusion-image -p transfusion-board --tests "${targets[@]}")
fi
cargo zigbuild --target "$triple.$TF_GLIBC" "${targets[@]}" \
  --message-format=json-render-diagnostics > "$work/build.json"
# Test executables of the SDK, image, board, C ABI and kiosk crates, as
# "DIR<TAB>NAME<TAB>KIND<TAB>EXECUTABLE" lines (KIND: test = tests/*.rs, unit = a crate's own).
python3 - "$work/build.json" > "$work/tests.tsv" <<'PY'
import json, os, sys
seen = set()
for line in open(sys.argv[1]):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    exe = m.get("executable")
    if m.get("reason") != "compiler-artifact" or not exe or not m["profile"]["test"]:
        continue
    pkg_dir = os.path.dirname(m["manifest_path"])
    if os.path.basename(pkg_dir) not in ("sdk", "image", "board", "ffi", "kiosk") or exe in seen:
        continue
    seen.add(exe)
    kind = "test" if m["target"]["kind"] == ["test"] else "unit"
    print(f"{pkg_dir}\t{m['target']['name']}\t{kind}\t{exe}")
PY
kiosk_arm="$root/target/$triple/debug/kiosk"
[ -x "$kiosk_arm" ] || { echo "missing $kiosk_arm" >&2; exit 1; }
file "$kiosk_arm" 2>/dev/null || true

if [ "${AARCH64_TESTS:-1}" != 0 ]; then
  step "SDK, image, board, C ABI and kiosk tests under qemu-aarch64"
  failed=0
  while IFS=$'\t' read -r dir name kind exe; do
    if [ "$name" = kiosk ] && [ "$kind" = test ]; then
      echo "-- $(basename "$dir")/$name: skipped under qemu (spawns the kiosk; run directly below)"
      continue
    fi
    if [ "$name" = header ] && [ "$kind" = test ]; then
      echo "-- $(basename "$dir")/$name: skipped under qemu (runs cargo metadata; checked on x86)"
      continue
    fi
    echo "-- $(basename "$dir")/$name"
    # The Jetson deployment test spawns the kiosk too (its --check): skipped here, run on x86.
    skip=()
    if [ "$name" = jetson ]; then
      skip=(--skip kiosk_check_reports_the_preflight_and_warm_up_explains_itself)
    fi
    # As cargo test runs them: from the package directory, with CARGO_MANIFEST_DIR set.
    if ! (cd "$dir" && CARGO_MANIFEST_DIR="$dir" "${qemu[@]}" "$exe" --test-threads=2 "${skip[@]}"); then
      failed=$((failed + 1))
    fi
  done < "$work/tests.tsv"
  if [ "$failed" -ne 0 ]; then
    echo "aarch64: $failed test binaries failed under qemu" >&2
    exit 1
  fi
fi

step "kiosk, 1 prompt, headless: x86 and aarch64"
cargo build --workspace
kiosk_x86="$root/target/debug/kiosk"
printf 'a red circle above a blue square\n' > "$work/prompts.txt"
# The shipped model's bundle (converted from models/shapes64/checkpoint when missing, as the
# examples' first run does; the kiosk itself never converts). Both runs use the same files.
model="$root/models/shapes64/bundle"
if [ ! -f "$model/manifest.json" ]; then
  "$root/target/debug/transfusion" convert models/shapes64/checkpoint -o "$model" --precision fp32,fp16,int8
fi
kiosk_args=(--prompts "$work/prompts.txt" --max-prompts 1 --seed 0 --threads 1 --no-timings
  --max-tokens 8)
RUST_LOG=warn "$kiosk_x86" "${kiosk_args[@]}" --precision fp32 --model "$model" \
  --display "png:$work/x86,size=320x240"
t0=$(date +%s)
RUST_LOG=warn "${qemu[@]}" "$kiosk_arm" "${kiosk_args[@]}" --precision fp32 --model "$model" \
  --display "png:$work/arm,size=320x240"
echo "aarch64 kiosk under qemu: $(( $(date +%s) - t0 )) s"

step "compare the final frames (x86 vs aarch64)"
# Why they may differ: tract picks different matrix-product kernels per CPU (x86 AVX2/FMA,
# aarch64 NEON) and they sum in different orders; float results then differ in the last bits,
# and an 8-bit pixel can round the other way. Everything else (seeded ChaCha noise, the
# tokenizer, the layout, text) is bit-identical. Measured max difference and pixel count are
# printed; the check allows TOLERANCE levels per channel.
python3 - "$work/x86" "$work/arm" "$TOLERANCE" <<'PY'
import os, struct, sys, zlib

def load_png(path):
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    pos, idat, w = 8, b"", None
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        pos += 12 + n
        if kind == b"IHDR":
            w, h, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and interlace == 0, (path, depth, interlace)
            bpp = {2: 3, 6: 4, 0: 1, 4: 2}[ctype]
        elif kind == b"IDAT":
            idat += body
    raw, stride = zlib.decompress(idat), w * bpp
    out, prev, i = bytearray(), bytearray(stride), 0
    for _ in range(h):
        f, line = raw[i], bytearray(raw[i + 1:i + 1 + stride])
        i += 1 + stride
        for x in range(stride):
            a = line[x - bpp] if x >= bpp else 0
            b = prev[x]
            c = prev[x - bpp] if x >= bpp else 0
            if f == 1: line[x] = (line[x] + a) & 255
            elif f == 2: line[x] = (line[x] + b) & 255
            elif f == 3: line[x] = (line[x] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        out += line
        prev = line
    return w, h, bpp, bytes(out)

def last_frame(d):
    frames = sorted(f for f in os.listdir(d) if f.endswith(".png"))
    assert frames, f"no frames in {d}"
    return os.path.join(d, frames[-1]), len(frames)

(xa, na), (aa, nb) = last_frame(sys.argv[1]), last_frame(sys.argv[2])
tol = int(sys.argv[3])
wa, ha, ba, pa = load_png(xa)
wb, hb, bb, pb = load_png(aa)
assert (wa, ha, ba) == (wb, hb, bb), ((wa, ha, ba), (wb, hb, bb))
diffs = [abs(p - q) for p, q in zip(pa, pb)]
worst = max(diffs)
pixels = sum(1 for i in range(0, len(diffs), ba) if any(diffs[i:i + ba]))
print(f"x86 {xa} ({na} frames) vs aarch64 {aa} ({nb} frames): {wa}x{ha}")
if worst == 0:
    print("final frames are identical (bit-exact)")
else:
    print(f"final frames differ: max |diff| {worst}/255 per channel, {pixels} of {wa * ha} pixels")
if worst > tol:
    sys.exit(f"difference {worst} exceeds the tolerance {tol}")
PY

step "glibc symbol versions of the aarch64 kiosk"
versions=$(readelf -V -W "$kiosk_arm" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -uV)
newest=$(printf '%s\n' "$versions" | tail -1)
echo "GLIBC versions needed: $(printf '%s\n' "$versions" | tr '\n' ' ')"
if [ "$(printf '%s\n%s\n' "$newest" "$TF_GLIBC" | sort -V | tail -1)" != "$TF_GLIBC" ]; then
  echo "aarch64 kiosk needs GLIBC_$newest > $TF_GLIBC: it would not run on JetPack 5.1" >&2
  exit 1
fi
echo "ok: newest is GLIBC_$newest <= $TF_GLIBC (JetPack 5.1)"
interp=$(readelf -l -W "$kiosk_arm" | sed -n 's/.*Requesting program interpreter: \(.*\)]/\1/p')
echo "interpreter: $interp"

step "C API on aarch64: examples/c against the static libtransfusion.a (zig cc), under qemu"
libtf="$root/target/$triple/debug/libtransfusion.a"
[ -f "$libtf" ] || { echo "missing $libtf" >&2; exit 1; }
for prog in generate misuse; do
  "$CARGO_ZIGBUILD_ZIG_PATH" cc -target "aarch64-linux-gnu.$TF_GLIBC" -std=c99 -Wall -Wextra \
    -Werror -pthread -I"$root/sdk/ffi/include" "examples/c/$prog.c" "$libtf" -lpthread -ldl -lm -lunwind \
    -o "$work/$prog-c"
done
TF_CHECK_LEAKS=1 "${qemu[@]}" "$work/generate-c" "$model" "a red circle above a blue square" \
  "$work/c-arm.png"
"${qemu[@]}" "$work/misuse-c" "$model" > "$work/misuse-c.log" || { cat "$work/misuse-c.log"; exit 1; }
echo "ok: generate.c wrote $(stat -c %s "$work/c-arm.png") bytes; misuse.c $(grep -c '^ok' "$work/misuse-c.log") cases"

step "FP16 on aarch64 (probe)"
fp16_status=0
RUST_LOG=error "${qemu[@]}" "$kiosk_arm" "${kiosk_args[@]}" --model "$model" --precision fp16 \
  --display "png:$work/arm-fp16,size=320x240" 2> "$work/fp16.log" || fp16_status=$?
if [ "$fp16_status" -eq 0 ]; then
  echo "ok: an FP16 generation on aarch64 is finite"
else
  echo "WARNING: FP16 on aarch64 failed (exit $fp16_status): $(grep -m1 -o 'numerical failure.*' "$work/fp16.log" || tail -1 "$work/fp16.log")"
  if [ "${AARCH64_FP16_STRICT:-0}" = 1 ]; then exit 1; fi
fi

step "done"
printf '\naarch64 step times:\n'
printf '%s\n' "${timings[@]}"
printf '%5d s  total\n' $(( $(date +%s) - t_start ))
