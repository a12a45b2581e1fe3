#!/usr/bin/env bash
# The GPU check of issue #6, for a machine with an NVIDIA GPU (x86_64, a CUDA 13 driver: >= 580)
# and no network. Steps, each logged and timed; a failing step does not stop the others, the
# exit status is 1 when any failed:
#   1. the machine: nvidia-smi, `transfusion doctor` (text and JSON; must say CUDA ready);
#   2. the SDK test binaries built with CUDA (the device test compares a CUDA image with the
#      CPU's; the platform tests check the preflight);
#   3. every graph of the shipped model on CUDA against the CPU on the same seeded inputs,
#      within the bundle's tolerances (`transfusion verify --device cuda`), per precision;
#   4. `bench --device cuda` and `bench --device cpu` (JSON), and a sustained CUDA run
#      (`bench --duration`: throughput and sensors per interval);
#   5. $OUT/summary.md: the figures side by side.
#
# Nothing is downloaded. The binaries come from elsewhere (default) or are built here:
#
#   prebuilt: TRANSFUSION_BIN=path/to/transfusion  (the CLI, with CUDA)
#             SDK_TEST_BINS="path/to/device-<hash> path/to/platform-<hash>"  (optional)
#     built on a machine with the registry, in this checkout:
#       cargo build --workspace --release --features transfusion-tools/cuda-13000
#       cargo test --workspace --release --features transfusion-sdk/cuda-13000 --no-run
#     (the test binaries are the target/release/deps/{device,platform}-<hash> files cargo
#     lists; `strip` them and the CLI to fit what can be carried). The SDK tests find their
#     fixture at the absolute path they were built in (CARGO_MANIFEST_DIR): set
#     TRANSFUSION_BUILD_ROOT to that checkout's path (default /work/main); when it does not
#     exist here it is linked to this checkout.
#   --build:  cargo build --offline here (needs a Rust toolchain and a registry that already
#     holds every crate: run `cargo fetch` on a networked machine with the same
#     ~/.cargo, or `cargo vendor` plus its .cargo/config.toml, beforehand).
#
# CUDA libraries: a system toolkit (/usr/local/cuda, the loader's path), else those of Python's
# NVIDIA wheels (torch's dependencies) through a shim under $OUT/work (cuda_from_wheels below).
#
# Environment: OUT (default target/gpu-out), BUNDLE (default models/shapes64/bundle, converted
# from models/shapes64/checkpoint into $OUT/work when missing: the bundle is not committed),
# GPU_BENCH_RUNS (10), GPU_SUSTAIN_SECONDS (60), GPU_STEP_TIMEOUT (seconds per step, 300).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

build=no
case "${1:-}" in
  --build) build=yes ;;
  -h|--help) awk 'NR > 1 && /^set -euo/ { exit } NR > 1' "$0"; exit 0 ;;
  "") ;;
  *) printf 'gpu.sh: unknown argument %q (--build or nothing)\n' "$1" >&2; exit 2 ;;
esac

out=${OUT:-$root/target/gpu-out}
mkdir -p "$out" "$out/work"
runs=${GPU_BENCH_RUNS:-10}
sustain=${GPU_SUSTAIN_SECONDS:-60}
interval=$(( sustain < 10 ? sustain : 10 ))
step_timeout=${GPU_STEP_TIMEOUT:-300}
summary="$out/summary.md"
status=0
results=()

# step NAME LOGFILE [--stdout FILE] COMMAND...: runs COMMAND with a timeout, its output to
# LOGFILE and the console (with --stdout, standard output to FILE instead: the JSON reports),
# and records ok/FAIL with the seconds it took.
step() {
  local name=$1 log=$2 stdout="" start rc
  shift 2
  if [ "$1" = --stdout ]; then
    stdout=$2
    shift 2
  fi
  printf '\n==== gpu: %s (%s)\n' "$name" "$(date +%T)"
  start=$(date +%s)
  set +e
  if [ -n "$stdout" ]; then
    timeout "$step_timeout" "$@" > "$stdout" 2> >(tee "$log" >&2)
  else
    timeout "$step_timeout" "$@" > >(tee "$log") 2>&1
  fi
  rc=$?
  set -e
  local took=$(( $(date +%s) - start ))
  if [ "$rc" -eq 0 ]; then
    results+=("| $name | ok | $took s |")
  else
    results+=("| $name | FAIL (exit $rc) | $took s |")
    status=1
  fi
  return 0
}

if [ "$build" = yes ]; then
  printf '==== gpu: cargo build --offline (CUDA 13)\n'
  cargo build --offline --workspace --release --features transfusion-tools/cuda-13000
  TRANSFUSION_BIN="$root/target/release/transfusion"
  SDK_TEST_BINS=$(cargo test --offline --workspace --release --features transfusion-sdk/cuda-13000 \
      --no-run --message-format=json 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    t = m.get("target", {})
    if m.get("reason") == "compiler-artifact" and m.get("executable") and "test" in t.get("kind", []) \
            and m.get("package_id", "").find("transfusion-sdk") >= 0 and t.get("name") in ("device", "platform"):
        print(m["executable"])
')
  TRANSFUSION_BUILD_ROOT=$root
fi

tf=${TRANSFUSION_BIN:-}
if [ -z "$tf" ] || [ ! -x "$tf" ]; then
  echo "gpu.sh: set TRANSFUSION_BIN to a transfusion binary built with --features transfusion-tools/cuda-13000, or run with --build" >&2
  exit 2
fi
build_root=${TRANSFUSION_BUILD_ROOT:-/work/main}
if [ ! -e "$build_root" ] && [ -n "${SDK_TEST_BINS:-}" ]; then
  mkdir -p "$(dirname "$build_root")"
  ln -s "$root" "$build_root"
  echo "linked $build_root -> $root (the test binaries' fixture paths)"
fi

# Without a system CUDA toolkit, the CUDA libraries and headers of Python's NVIDIA wheels
# (torch's dependencies) can stand in: LD_LIBRARY_PATH gets every nvidia/*/lib; a shim directory
# gives each library its unversioned name (cudarc opens libX.so first, and the wheels ship only
# libX.so.N, like a runtime-only install: libcudnn.so.9 alone does not load); CUDA_HOME is a
# directory whose include/ links the wheels' headers together (NVRTC's cuda_fp16.h,
# math_constants.h, cuda/std/).
cuda_from_wheels() {
  local nv shim dir lib name
  nv=$(python3 -c 'import nvidia; print(list(nvidia.__path__)[0])' 2>/dev/null) || return 0
  shim="$out/work/cuda-shim"
  mkdir -p "$shim/lib" "$shim/include"
  for dir in "$nv"/*/lib; do
    [ -d "$dir" ] || continue
    for lib in "$dir"/lib*.so.*; do
      [ -e "$lib" ] || continue
      name=$(basename "$lib")
      name=${name%%.so.*}.so
      [ -e "$shim/lib/$name" ] || ln -s "$lib" "$shim/lib/$name"
    done
    LD_LIBRARY_PATH="$dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  done
  for dir in "$nv"/*/include; do
    if [ -d "$dir" ]; then cp -rsn "$dir/." "$shim/include/" 2>/dev/null || true; fi
  done
  export LD_LIBRARY_PATH="$shim/lib:$LD_LIBRARY_PATH"
  export CUDA_HOME="$shim"
  results+=("| CUDA from Python's nvidia wheels ($nv) | used | - |")
}

nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || true
nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv \
  > "$out/gpu.csv" 2>&1 || true
if ! "$tf" doctor --require-cuda > /dev/null 2>&1 && [ ! -d /usr/local/cuda ]; then
  cuda_from_wheels
fi
step "doctor: CUDA ready" "$out/doctor.txt" "$tf" doctor --require-cuda
"$tf" doctor --json > "$out/doctor.json" 2>/dev/null || true

for bin in ${SDK_TEST_BINS:-}; do
  name=$(basename "$bin" | sed 's/-[0-9a-f]*$//')
  step "SDK test $name (CUDA build)" "$out/test-$name.log" \
    env RUST_LOG=info "$bin" --test-threads=1 --nocapture
done
if [ -z "${SDK_TEST_BINS:-}" ]; then
  results+=("| SDK tests | not run (SDK_TEST_BINS empty) | - |")
fi

bundle=${BUNDLE:-$root/models/shapes64/bundle}
if [ ! -f "$bundle/manifest.json" ]; then
  bundle="$out/work/shapes64"
  if [ ! -f "$bundle/manifest.json" ]; then
    step "convert models/shapes64/checkpoint" "$out/convert.log" \
      "$tf" convert "$root/models/shapes64/checkpoint" -o "$bundle" --precision fp32,fp16,int8
  fi
fi

step "verify: every graph, CUDA vs CPU" "$out/verify-cuda.log" --stdout "$out/verify-cuda.json" \
  "$tf" verify "$bundle" --device cuda --json

step "bench --device cuda" "$out/bench-cuda.log" --stdout "$out/bench-cuda.json" \
  "$tf" bench "$bundle" --device cuda --precision fp32,fp16 --threads 1 --steps 1,4 \
  --runs "$runs" --warmup 2 --json
step "bench --device cpu" "$out/bench-cpu.log" --stdout "$out/bench-cpu.json" \
  "$tf" bench "$bundle" --device cpu --precision fp32,int8 --threads "1,$(nproc)" --steps 1,4 \
  --runs "$runs" --warmup 1 --json
step "bench --device cuda --duration $sustain" "$out/sustained-cuda.log" \
  --stdout "$out/sustained-cuda.json" \
  "$tf" bench "$bundle" --device cuda --precision fp16 --steps 4 --duration "$sustain" \
  --interval "$interval" --json

{
  echo "# GPU check ($(date -u +%FT%TZ))"
  echo
  sed 's/^/    /' "$out/gpu.csv" 2>/dev/null || true
  echo
  echo "| step | result | time |"
  echo "|---|---|---|"
  printf '%s\n' "${results[@]}"
  echo
  python3 - "$out" <<'PY' || echo "(no figures: $out/*.json missing or unreadable)"
import json, os, sys
out = sys.argv[1]
def load(name):
    try:
        with open(os.path.join(out, name)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
rows = []
for name in ("bench-cuda.json", "bench-cpu.json"):
    report = load(name)
    if not report:
        continue
    for r in report["results"]:
        rows.append((report.get("device", "?"), r["precision"], r["threads"], r["steps"],
                     r["image_ms_p50"], r["image_ms_p90"], r["load_ms"], r["text_decode_tok_s"]))
if rows:
    print("| device | precision | threads | steps | image p50 ms | p90 ms | load ms | decode tok/s |")
    print("|---|---|---|---|---|---|---|---|")
    for d, p, t, s, p50, p90, load_ms, tok in rows:
        print(f"| {d} | {p} | {t} | {s} | {p50:.2f} | {p90:.2f} | {load_ms:.0f} | {tok:.1f} |")
    print()
verify = load("verify-cuda.json")
if verify:
    worst = {}
    for c in verify:
        # A graph the GPU could not run has rel null (infinite) and its error as the tensor.
        c["rel"] = float("inf") if c["rel"] is None else c["rel"]
        key = c["precision"]
        if key not in worst or c["rel"] > worst[key]["rel"]:
            worst[key] = c
    print("| precision | outputs | beyond tolerance | worst (graph, tensor, rel / tol) |")
    print("|---|---|---|---|")
    for p, w in worst.items():
        n = sum(1 for c in verify if c["precision"] == p)
        bad = sum(1 for c in verify if c["precision"] == p and not c["pass"])
        print(f"| {p} | {n} | {bad} | {w['case']} {w['tensor']} {w['rel']:.2e} / {w['tolerance']:.0e} |")
    print()
s = load("sustained-cuda.json")
if s:
    print(f"sustained: {s['images']} images in {s['duration_s']} s, last/first "
          f"{s['last_over_first']}, throttled {s['throttled']}, hottest {s['max_celsius']}")
PY
} > "$summary"
cat "$summary"
echo "figures and logs: $out"
exit "$status"
