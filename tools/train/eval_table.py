"""The model card's evaluation table: a student and a teacher bundle, by steps, precision and
prompt set.

Runs `transfusion eval --json` (GenEval-style categories, captioning of held-out and
train-split images) once per row and writes every report, keyed by row and with the command
that made it, to OUT.json and the Markdown table to OUT.md. Standard library only; the numbers
come from the Rust evaluator, nothing is scored here. OUT.json is rewritten after every row, and
a row already in it with the same command is kept, not run again: an interrupted run continues,
and a teacher measured earlier stays beside a new student.

    python tools/train/eval_table.py --tf target/debug/transfusion \\
        --student models/shapes64/bundle --teacher RUN/teacher.bundle --out models/shapes64/eval

Rows (keys `model-steps-precision-prompts`): the student at each of `--steps` in FP32 on the
held-out prompts; at 4 steps in FP16 and INT8; at 4 steps in FP32 and INT8 on the seen-pair
prompts; the teacher with its guidance at each of `--teacher-steps`, and at the most of them on
the seen-pair prompts. Captions (which do not depend on the diffusion steps) are measured on
the 4-step rows of each precision and prompt set `heldout`.
"""

import argparse
import json
import subprocess
import sys
import time

CATEGORIES = ["single_object", "two_objects", "counting", "colors", "position", "attribute_binding"]
# Per-image and per-caption records of the evaluator's report: not kept in OUT.json (they are
# most of its size); the row's command prints them again.
DETAIL = ("images", "captions", "captions_seen")
STUDENT_STEPS = 4


def configurations(args):
    """(model, bundle, steps, precision, prompt set, seeds, captions) in table order."""
    rows = []
    if args.student:
        for steps in args.steps:
            captions = args.captions if steps == STUDENT_STEPS else 0
            rows.append(("student", args.student, steps, "fp32", "heldout", args.seeds, captions))
        for precision in ("fp16", "int8"):
            rows.append(("student", args.student, STUDENT_STEPS, precision, "heldout",
                         args.seeds, args.captions))
        for precision in ("fp32", "int8"):
            rows.append(("student", args.student, STUDENT_STEPS, precision, "seen", args.seeds, 0))
    if args.teacher:
        for steps in args.teacher_steps:
            rows.append(("teacher", args.teacher, steps, "fp32", "heldout", args.teacher_seeds, 0))
        rows.append(("teacher", args.teacher, max(args.teacher_steps), "fp32", "seen",
                     args.teacher_seeds, 0))
    return rows


def command(args, model, bundle, steps, precision, prompts, seeds, captions):
    """The row's key and its `transfusion eval` command line."""
    cmd = [args.tf, "eval", bundle, "--json", "--steps", str(steps), "--precision", precision,
           "--prompt-set", prompts, "--seeds", str(seeds), "--captions", str(captions)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    return f"{model}-{steps}-{precision}-{prompts}", cmd


def run(args, model, cmd):
    """The evaluator's report of one row, with the model, the command and its wall time."""
    start = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"error: `{' '.join(cmd)}` failed ({done.returncode}):\n{done.stderr}")
    report = json.loads(done.stdout)
    report["model"] = model
    report["command"] = " ".join(cmd)
    report["seconds"] = round(time.monotonic() - start, 1)
    return report


def summary(report):
    """A report without its `DETAIL` records."""
    return {k: v for k, v in report.items() if k not in DETAIL}


def fmt(x):
    return "–" if x is None else f"{x:.3f}"


def table(results):
    head = ["model", "steps", "guidance", "precision", "prompts", "seeds", "overall", *CATEGORIES,
            "captions held-out", "captions seen"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results.values():
        cells = [r["model"], str(r["steps"]), f"{r['guidance']:.1f}", r["precision"],
                 r["prompt_set"], str(r["seeds"]), f"**{fmt(r['overall'])}**",
                 *(fmt(r[c]) for c in CATEGORIES),
                 fmt(r.get("caption_accuracy")), fmt(r.get("caption_accuracy_seen"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tf", help="the transfusion binary (required unless --markdown-only)")
    p.add_argument("--student", help="the distilled bundle")
    p.add_argument("--teacher", help="the teacher bundle (optional)")
    p.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4, 8],
                   help="student steps (default 1 2 4 8)")
    p.add_argument("--teacher-steps", type=int, nargs="+", default=[1, 2, 4, 8, 16],
                   help="teacher steps (default 1 2 4 8 16)")
    p.add_argument("--seeds", type=int, default=4, help="seeds per prompt, student rows")
    p.add_argument("--teacher-seeds", type=int, default=2,
                   help="seeds per prompt, teacher rows (each step is two evaluations)")
    p.add_argument("--captions", type=int, default=32,
                   help="images captioned per split on the 4-step rows")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", required=True, help="writes OUT.json and OUT.md")
    p.add_argument("--markdown-only", action="store_true",
                   help="run nothing: write OUT.md from every row of OUT.json, in its order "
                   "(rows added by their own `transfusion eval` commands included)")
    args = p.parse_args()
    try:
        with open(args.out + ".json") as f:
            earlier = {k: summary(v) for k, v in json.load(f).items()}
    except FileNotFoundError:
        earlier = {}
    if args.markdown_only:
        with open(args.out + ".md", "w") as f:
            f.write(table(earlier))
        return
    if not (args.student or args.teacher):
        p.error("give --student, --teacher or both")
    if not args.tf:
        p.error("give --tf, the transfusion binary")
    results = {}
    for config in configurations(args):
        key, cmd = command(args, *config)
        if key in earlier and earlier[key].get("command") == " ".join(cmd):
            r = earlier.pop(key)
            how = "kept from " + args.out + ".json"
        else:
            r = summary(run(args, config[0], cmd))
            how = f"{r['seconds']} s"
        results[key] = r
        print(f"{key}: overall {fmt(r['overall'])}, captions held-out "
              f"{fmt(r.get('caption_accuracy'))} seen {fmt(r.get('caption_accuracy_seen'))} "
              f"({how})", file=sys.stderr, flush=True)
        with open(args.out + ".json", "w") as f:
            json.dump({**results, **earlier}, f, indent=1)
            f.write("\n")
    with open(args.out + ".md", "w") as f:
        f.write(table(results))


if __name__ == "__main__":
    main()
