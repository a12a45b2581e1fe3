#!/usr/bin/env bash
# The shapes64 teacher and its 4-step student on one CUDA GPU in a fixed wall-clock budget
# (tools/train/README.md, "A time-boxed GPU run"). Continues a teacher checkpoint (default: the
# shipped teacher, models/shapes64/teacher) on a freshly generated dataset, then distils it.
# Writes to OUT: the teacher (EMA, FP32) as teacher.tar.* parts (`cat OUT/teacher.tar.* |
# tar -x`), the student (float16, the shipping form) as student.tar, both stages' summaries and
# the whole log (log.txt).
#
#   tools/train/gpu_recipe.sh OUT
#
# Environment (all optional):
#   PY               python with torch and a CUDA GPU (default python3)
#   TF               the `transfusion` binary that generates the dataset (default: the repo's
#                    target/release, then target/debug build); not needed with DATA
#   DATA             an existing shapes dataset: no generation
#   COUNT            scenes to generate (default 150000; seed 0, train split)
#   FROM             checkpoint the teacher continues (default models/shapes64/teacher, the
#                    shipped teacher)
#   TEACHER          a trained teacher checkpoint: no teacher stage, the budget goes to
#                    distilling it
#   BUDGET           seconds for the whole script (default 540); the teacher gets
#                    TEACHER_SHARE of what is left after generation and calibration
#   TEACHER_SHARE    default 0.7; the rest goes to distillation
#   BATCH, LR        teacher batch and peak learning rate (default 512, 5e-4)
#   DISTILL_BATCH, DISTILL_LR   default 256, 1e-4
#   DEVICE           --device of every stage (default cuda; cpu for a dry run of this script)
#   CAL_STEPS        calibration steps per stage (default 40)
#   CAL_COUNT        scenes of the calibration runs (default 8192)
#
# How the budget is kept: a short calibration run of each stage at the real batch measures
# seconds per step (first steps excluded: they autotune the kernels), and the stages get the
# step counts that fill their share, so their learning-rate schedules end where they should.
# Each stage also runs under `timeout`: a stage stopped by it saves its state (SIGTERM), and
# the teacher's EMA weights are then taken from that state (`transfusion_ref.snapshot`).
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
OUT="${1:?usage: gpu_recipe.sh OUT}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
WORK="${WORK:-$(mktemp -d)}"
PY="${PY:-python3}"
COUNT="${COUNT:-150000}"
FROM="$(cd "${FROM:-$ROOT/models/shapes64/teacher}" && pwd)"
TEACHER="${TEACHER:+$(cd "$TEACHER" && pwd)}"
BUDGET="${BUDGET:-540}"
TEACHER_SHARE="${TEACHER_SHARE:-0.7}"
BATCH="${BATCH:-512}"
LR="${LR:-5e-4}"
DISTILL_BATCH="${DISTILL_BATCH:-256}"
DISTILL_LR="${DISTILL_LR:-1e-4}"
DEVICE="${DEVICE:-cuda}"
CAL_STEPS="${CAL_STEPS:-40}"
START=$SECONDS

exec > >(tee -a "$OUT/log.txt") 2>&1
say() { echo "[gpu_recipe +$(( SECONDS - START ))s] $*"; }
die() { say "error: $*"; exit 1; }
left() { echo $(( BUDGET - (SECONDS - START) )); }

say "work $WORK, out $OUT, from $FROM"
nvidia-smi -L 2>/dev/null || say "nvidia-smi: none"
"$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda,
  torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU")' \
  || die "$PY cannot import torch"

# ---- the dataset ---------------------------------------------------------------------------
# Scenes are a pure function of (seed, index), so the calibration set (the first CAL_COUNT
# scenes) is generated first and the whole set in the background while calibration runs.
CAL_COUNT="${CAL_COUNT:-8192}"
gen_pid=
if [[ -z "${DATA:-}" ]]; then
  if [[ -z "${TF:-}" ]]; then
    for t in "$ROOT/target/release/transfusion" "$ROOT/target/debug/transfusion"; do
      if [[ -x "$t" ]]; then TF="$t"; break; fi
    done
  fi
  [[ -n "${TF:-}" && -x "$TF" ]] || die "no transfusion binary (set TF=PATH or DATA=DIR)"
  DATA="$WORK/data"
  CAL_DATA="$WORK/cal-data"
  say "generating $CAL_COUNT calibration scenes, then $COUNT scenes, with $TF"
  "$TF" dataset shapes --count "$CAL_COUNT" --seed 0 -o "$CAL_DATA" \
    || die "dataset generation failed"
  "$TF" dataset shapes --count "$COUNT" --seed 0 -o "$DATA" > "$WORK/dataset.log" 2>&1 &
  gen_pid=$!
else
  CAL_DATA="$DATA"
fi
cd "$HERE" || die "cannot enter $HERE"
T=(-m transfusion_ref.train)
common=(--device "$DEVICE" --threads 4)

# Seconds per step of a calibration log: the rate between the last two progress lines up to
# step UPTO (default: all), from their cumulative `N it/s`; the first lines autotune kernels.
sec_per_step() {
  "$PY" - "$1" "${2:-0}" <<'PYEOF'
import re, sys
upto = int(sys.argv[2])
pts = [(int(m[0]), float(m[1])) for m in
       re.findall(r"step\s+(\d+)/\d+ .*? (\d+\.\d+) it/s", open(sys.argv[1]).read())]
pts = [p for p in pts if upto == 0 or p[0] <= upto]
(s0, r0), (s1, r1) = pts[-2], pts[-1]
print(max(1e-3, (s1 / r1 - s0 / r0) / (s1 - s0)))
PYEOF
}

# ---- calibration (also the smoke test of every stage on this device) ----------------------
cal="$WORK/cal"
if [[ -n "${TEACHER:-}" ]]; then
  TEACHER_SHARE=0
  mkdir -p "$cal" && cp -r "$TEACHER" "$cal/teacher"
  t_step=1
else
  say "calibration: teacher, $CAL_STEPS steps at batch $BATCH"
  "$PY" "${T[@]}" transfusion "${common[@]}" --data "$CAL_DATA" --out "$cal" --from "$FROM" \
    --limit "$CAL_COUNT" \
    --steps "$CAL_STEPS" --batch "$BATCH" --lr "$LR" --log-every $(( CAL_STEPS / 4 )) \
    --save-every 100000 > "$WORK/cal-teacher.log" 2>&1 \
    || { tail -30 "$WORK/cal-teacher.log"; die "teacher calibration failed"; }
  tail -3 "$WORK/cal-teacher.log"
  t_step=$(sec_per_step "$WORK/cal-teacher.log") || die "no rate in the calibration log"
fi
half=$(( CAL_STEPS / 2 ))
say "calibration: distillation, 2 rounds of $half steps at batch $DISTILL_BATCH"
"$PY" "${T[@]}" distill "${common[@]}" --data "$CAL_DATA" --out "$cal" --limit "$CAL_COUNT" \
  --steps "$CAL_STEPS" \
  --round-steps "$half,$half" --batch "$DISTILL_BATCH" --lr "$DISTILL_LR" \
  --log-every $(( half / 2 )) --measure-samples 4 --reference-steps 4 --save-every 100000 \
  > "$WORK/cal-distill.log" 2>&1 \
  || { tail -30 "$WORK/cal-distill.log"; die "distillation calibration failed"; }
tail -3 "$WORK/cal-distill.log"
# Round one only: the second round loads its teacher again, so its first step is slow.
d_step=$(sec_per_step "$WORK/cal-distill.log" "$half") \
  || die "no rate in the distillation calibration log"

if [[ -n "$gen_pid" ]]; then
  wait "$gen_pid" || { cat "$WORK/dataset.log"; die "dataset generation failed"; }
  cat "$WORK/dataset.log"
fi
say "dataset $DATA"

# ---- the budget ------------------------------------------------------------------------------
# Fixed costs of the real runs: start-up, encoding the whole dataset (twice: teacher and
# distill each load it; the second from the cache), round changes, the student measurement.
overhead=$(( 35 + COUNT / 5000 ))
avail=$(( $(left) - overhead ))
(( avail > 60 )) || die "only $avail s left after calibration: raise BUDGET"
read -r teacher_steps distill_steps < <("$PY" -c "
t, d, a, s = $t_step, $d_step, $avail, $TEACHER_SHARE
print(int(a * s / t) // 10 * 10, max(20, int(a * (1 - s) / d) // 20 * 20))")
say "s/step: teacher $t_step, distill $d_step; $avail s left -> teacher $teacher_steps steps," \
  "distill $distill_steps steps"

# ---- the teacher -----------------------------------------------------------------------------
run="$WORK/run"
if [[ -n "${TEACHER:-}" ]]; then
  teacher="$TEACHER"
else
  t_budget=$("$PY" -c "print(int($teacher_steps * $t_step) + 30 + $COUNT // 5000)")
  say "teacher: $teacher_steps steps, batch $BATCH, lr $LR (timeout $t_budget s)"
  timeout --signal=TERM --kill-after=30 "$t_budget" "$PY" "${T[@]}" transfusion "${common[@]}" \
    --data "$DATA" --out "$run" --from "$FROM" --steps "$teacher_steps" --batch "$BATCH" --lr "$LR" \
    --log-every 500 --save-every 2000
  rc=$?
  if [[ ! -f "$run/teacher/train_summary.json" ]]; then
    say "teacher stopped early (exit $rc): EMA weights from its state"
    "$PY" -m transfusion_ref.snapshot "$run/teacher" -o "$run/teacher-snap" || die "no teacher"
    teacher="$run/teacher-snap"
  else
    teacher="$run/teacher"
  fi
  # FP32 weights (training continues from them), in parts that fit the 16 MiB a file of OUT.
  tar -C "$(dirname "$teacher")" -cf - "$(basename "$teacher")" | split -b 15M - "$OUT/teacher.tar."
  cp "$run/teacher/train_summary.json" "$OUT/teacher_summary.json" 2>/dev/null || true
fi

# ---- distillation ------------------------------------------------------------------------------
d_budget=$(( $(left) - 10 ))
say "distillation: $distill_steps steps, batch $DISTILL_BATCH, lr $DISTILL_LR (timeout $d_budget s)"
timeout --signal=TERM --kill-after=20 "$d_budget" "$PY" "${T[@]}" distill "${common[@]}" \
  --data "$DATA" --out "$run" --from "$teacher" --steps "$distill_steps" --batch "$DISTILL_BATCH" \
  --lr "$DISTILL_LR" --log-every 200 --save-every 100000
rc=$?
student="$run/student"
if [[ ! -f "$student/model.safetensors" ]]; then
  # Rounds are named by their step count: the finished one with the fewest steps.
  last=$(for d in "$run"/student/rounds/*/; do
           [[ -f "$d/model.safetensors" ]] && basename "$d"; done | sort -n | head -1)
  last=${last:+$run/student/rounds/$last}
  say "distillation did not finish (exit $rc); last finished round: ${last:-none}"
  student="$last"
fi
if [[ -n "$student" ]]; then
  "$PY" -m transfusion_ref.checkpoint half "$student" -o "$WORK/student" \
    && tar -C "$WORK" -cf "$OUT/student.tar" student
  cp "$run/student/train_summary.json" "$OUT/student_summary.json" 2>/dev/null || true
fi
say "done in $(( SECONDS - START )) s"
