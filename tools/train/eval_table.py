"""Quality vs steps, sampler and precision for a teacher and a student bundle: the model card's table.

Runs `transfusion eval --json` (the held-out split, GenEval-style categories and captioning) once
per configuration and writes every summary to OUT.json and the Markdown table to OUT.md.
Standard library only; the numbers come from the Rust evaluator, nothing is scored here.

    python tools/train/eval_table.py --tf target/release/transfusion \
        --student models/shapes64/bundle --teacher /tmp/teacher.bundle --out models/shapes64/eval
"""

import argparse
import json
import subprocess
import sys
import time

CATEGORIES = ["single_object", "two_objects", "counting", "colors", "position", "attribute_binding"]


def configurations(args):
    """(model, bundle, steps, sampler, guidance, precision) in table order."""
    rows = []
    if args.student:
        for steps in args.steps:
            rows.append(("student", args.student, steps, "ddim", None, "fp32"))
        for precision in ("fp16", "int8"):
            rows.append(("student", args.student, 4, "ddim", None, precision))
        for sampler in ("euler", "dpmpp_2m"):
            rows.append(("student", args.student, 4, sampler, None, "fp32"))
    if args.teacher:
        for sampler in ("ddim", "dpmpp_2m"):
            for steps in args.steps:
                rows.append(("teacher", args.teacher, steps, sampler, None, "fp32"))
        rows.append(("teacher", args.teacher, 16, "ddim", 1.0, "fp32"))
    return rows


def run(args, model, bundle, steps, sampler, guidance, precision):
    cmd = [args.tf, "eval", bundle, "--json", "--steps", str(steps), "--sampler", sampler,
           "--precision", precision, "--seeds", str(args.seeds), "--threads", str(args.threads)]
    if guidance is not None:
        cmd += ["--guidance", str(guidance)]
    start = time.monotonic()
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    report = json.loads(done.stdout)
    summary = {k: report[k] for k in ["overall", "caption_accuracy", "steps", "sampler",
                                      "guidance", "precision", "seeds", "graph_precisions"]}
    summary.update({c: report.get(c) for c in CATEGORIES})
    summary["model"] = model
    summary["command"] = " ".join(cmd)
    summary["seconds"] = round(time.monotonic() - start, 1)
    return summary


def fmt(x):
    return "–" if x is None else f"{x:.3f}"


def table(results):
    head = ["model", "steps", "sampler", "guidance", "precision", "overall", *CATEGORIES, "caption"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        cells = [r["model"], str(r["steps"]), r["sampler"], f"{r['guidance']:g}", r["precision"],
                 f"**{fmt(r['overall'])}**", *(fmt(r[c]) for c in CATEGORIES),
                 fmt(r["caption_accuracy"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tf", required=True, help="the transfusion binary")
    p.add_argument("--student", help="the distilled bundle")
    p.add_argument("--teacher", help="the teacher bundle (optional)")
    p.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4, 8, 25])
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", required=True, help="writes OUT.json and OUT.md")
    args = p.parse_args()
    if not (args.student or args.teacher):
        p.error("give --student, --teacher or both")
    results = []
    for config in configurations(args):
        r = run(args, *config)
        print(f"{r['model']} {r['steps']} {r['sampler']} g={r['guidance']} {r['precision']}: "
              f"overall {fmt(r['overall'])} caption {fmt(r['caption_accuracy'])} "
              f"({r['seconds']} s)", file=sys.stderr, flush=True)
        results.append(r)
        with open(args.out + ".json", "w") as f:
            json.dump(results, f, indent=1)
    with open(args.out + ".md", "w") as f:
        f.write(table(results))


if __name__ == "__main__":
    main()
