#!/usr/bin/env bash
# Throughput of the reference trainer on a CUDA GPU against the CPU (tools/train/README.md,
# "GPU benchmark"). Prints samples/s per run and writes OUT/gpu_bench.json.
#
#   tools/train/gpu_bench.sh [OUT]          # OUT defaults to /tmp/gpu-bench
#
# Environment (all optional):
#   PY           python with torch >= 2.4 (default: the repo's .venv, else python3)
#   TF           the `transfusion` binary that generates the dataset
#                (default target/release/transfusion, else target/debug/transfusion)
#   DATA         an existing shapes dataset (shapes.bin or its directory): no generation
#   COUNT        images to generate (default 4096)
#   TINY_STEPS   steps of each tiny-preset stage (vae, transfusion) per device (default 200)
#   VAE_STEPS    shapes64 VAE steps per device (default 50; its checkpoint feeds the next runs)
#   STEPS        shapes64 Transfusion steps per device (default 300)
#   GPU_BATCHES  shapes64 Transfusion global batches on the GPU (default "48 192")
#   CPU_THREADS  --threads of the CPU runs (default 1, the trainer's default)
#   NPROC        processes of an extra torchrun run on the GPUs (default: the GPU count when
#                > 1; 0 skips it)
#   COMPILE      1: one more GPU run of shapes64 Transfusion with --compile
#   SKIP_CPU     1: no CPU runs
# Without a usable CUDA GPU the GPU runs are skipped with a message (the CPU runs still go).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
OUT="${1:-/tmp/gpu-bench}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"

if [[ -z "${PY:-}" ]]; then
  if [[ -x "$ROOT/.venv/bin/python" ]]; then PY="$ROOT/.venv/bin/python"; else PY=python3; fi
fi
COUNT="${COUNT:-4096}"
TINY_STEPS="${TINY_STEPS:-200}"
VAE_STEPS="${VAE_STEPS:-50}"
STEPS="${STEPS:-300}"
GPU_BATCHES="${GPU_BATCHES:-48 192}"
CPU_THREADS="${CPU_THREADS:-1}"
COMPILE="${COMPILE:-0}"
SKIP_CPU="${SKIP_CPU:-0}"

say() { echo "[gpu_bench] $*" >&2; }

"$PY" -c 'import torch' 2>/dev/null || { say "error: $PY cannot import torch (set PY=...)"; exit 1; }
NGPU="$("$PY" -c 'import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)')"
NPROC="${NPROC:-$(( NGPU > 1 ? NGPU : 0 ))}"
if (( NGPU == 0 )); then
  say "no usable CUDA GPU (torch.cuda.is_available() is False): skipping the GPU runs"
fi

# ---- the dataset ---------------------------------------------------------------------------
if [[ -n "${DATA:-}" ]]; then
  say "dataset: $DATA"
else
  if [[ -z "${TF:-}" ]]; then
    for t in "$ROOT/target/release/transfusion" "$ROOT/target/debug/transfusion"; do
      if [[ -x "$t" ]]; then TF="$t"; break; fi
    done
  fi
  if [[ -z "${TF:-}" || ! -x "$TF" ]]; then
    say "error: no transfusion binary (build it, or set TF=PATH, or DATA=an existing dataset)"
    exit 1
  fi
  DATA="$OUT/data"
  if [[ ! -f "$DATA/shapes.bin" ]]; then
    say "generating $COUNT images with $TF"
    "$TF" dataset shapes --count "$COUNT" --seed 0 -o "$DATA" >&2
  fi
fi

# ---- runs ------------------------------------------------------------------------------------
cd "$HERE"
RUNS=()   # "name|run directory|stage directory"

train() {  # train NAME RUNDIR STAGE_DIR ARGS...  (ARGS: the trainer's, after `python -m ...`)
  local name="$1" run="$2" stage="$3"; shift 3
  say "$name: $*"
  local t0=$SECONDS
  if ! "$@" --out "$run" --log-every 50 > "$OUT/$name.log" 2>&1; then
    say "error: $name failed; last lines of $OUT/$name.log:"; tail -20 "$OUT/$name.log" >&2
    exit 1
  fi
  grep -E "samples/s" "$OUT/$name.log" | tail -1 >&2 || true
  say "$name: $(( SECONDS - t0 )) s"
  RUNS+=("$name|$run|$stage")
}

T=(-m transfusion_ref.train)
bench_device() {  # bench_device DEVICE THREADS
  local dev="$1" threads="$2" r="$OUT/runs/$1"
  rm -rf "$r"
  local c=(--data "$DATA" --device "$dev" --threads "$threads")
  train "tiny-vae-$dev" "$r/tiny" vae "$PY" "${T[@]}" vae "${c[@]}" --preset tiny \
    --steps "$TINY_STEPS" --stats-samples 256
  train "tiny-transfusion-$dev" "$r/tiny" teacher "$PY" "${T[@]}" transfusion "${c[@]}" \
    --steps "$TINY_STEPS" --sample-steps 8
  train "shapes64-vae-$dev" "$r/s64" vae "$PY" "${T[@]}" vae "${c[@]}" --preset shapes64 \
    --steps "$VAE_STEPS" --stats-samples 256
  if [[ "$dev" == cpu ]]; then
    train "shapes64-transfusion-cpu-b48" "$r/s64" teacher "$PY" "${T[@]}" transfusion \
      "${c[@]}" --steps "$STEPS" --batch 48
    return
  fi
  for b in $GPU_BATCHES; do
    local rb="$r/s64-b$b"
    mkdir -p "$rb" && cp -r "$r/s64/vae" "$rb/"
    train "shapes64-transfusion-cuda-b$b" "$rb" teacher "$PY" "${T[@]}" transfusion \
      "${c[@]}" --steps "$STEPS" --batch "$b"
  done
  if [[ "$COMPILE" == 1 ]]; then
    local rc="$r/s64-compile"
    mkdir -p "$rc" && cp -r "$r/s64/vae" "$rc/"
    train "shapes64-transfusion-cuda-b48-compile" "$rc" teacher "$PY" "${T[@]}" transfusion \
      "${c[@]}" --steps "$STEPS" --batch 48 --compile
  fi
  if (( NPROC > 1 )); then
    local b=$(( 48 * NPROC )) rd="$r/s64-ddp"
    mkdir -p "$rd" && cp -r "$r/s64/vae" "$rd/"
    train "shapes64-transfusion-cuda-ddp$NPROC-b$b" "$rd" teacher "$PY" -m torch.distributed.run \
      --standalone --nproc_per_node "$NPROC" -m transfusion_ref.train transfusion "${c[@]}" \
      --steps "$STEPS" --batch "$b"
  fi
}

if (( NGPU > 0 )); then bench_device cuda 1; fi
if [[ "$SKIP_CPU" != 1 ]]; then bench_device cpu "$CPU_THREADS"; fi

# ---- report ----------------------------------------------------------------------------------
printf '%s\n' "${RUNS[@]}" > "$OUT/runs.txt"
"$PY" - "$OUT/gpu_bench.json" "$DATA" "$OUT/runs.txt" <<'PYEOF'
import json, os, platform, sys
from pathlib import Path
import torch
rows = []
for line in Path(sys.argv[3]).read_text().split():
    name, run, stage = line.split("|")
    s = json.loads((Path(run) / stage / "train_summary.json").read_text())
    rows.append({"name": name, "device": s.get("device"), "world_size": s.get("world_size"),
                 "global_batch": s.get("global_batch"), "steps": s.get("steps_this_run"),
                 "samples_per_second": s.get("samples_per_second"),
                 "seconds": s.get("seconds"), "compile": s.get("compile")})
# Speed-up of each GPU run over the CPU run of the same preset and stage.
kind = lambda name: "-".join(name.split("-")[:2])  # noqa: E731  e.g. shapes64-transfusion
cpu = {kind(r["name"]): r["samples_per_second"] for r in rows if r["device"] == "cpu"}
speedup = {r["name"]: round(r["samples_per_second"] / cpu[kind(r["name"])], 2)
           for r in rows if r["device"] != "cpu" and cpu.get(kind(r["name"]))}
report = {"torch": torch.__version__, "cuda": torch.version.cuda,
          "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
          "gpus": torch.cuda.device_count() if torch.cuda.is_available() else 0,
          "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
          "data": sys.argv[2], "runs": rows, "speedup_vs_cpu": speedup}
Path(sys.argv[1]).write_text(json.dumps(report, indent=2) + "\n")
print(f"{'run':44} {'device':28} {'procs':>5} {'batch':>5} {'steps':>5} {'samples/s':>10}")
for r in rows:
    print(f"{r['name']:44} {str(r['device'])[:28]:28} {r['world_size']:>5} "
          f"{r['global_batch']:>5} {r['steps']:>5} {r['samples_per_second']:>10.1f}")
for k, v in speedup.items():
    print(f"speed-up {k}: {v}x the CPU")
print(f"wrote {sys.argv[1]}")
PYEOF
