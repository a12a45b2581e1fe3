#!/usr/bin/env python3
"""Image-generation latency of a Transfusion bundle's ONNX graphs under onnxruntime.

The baseline of `transfusion bench --ort` (see docs/performance.md): it runs the SAME ONNX files
as the Rust SDK (tract) with the SAME orchestration, so the two numbers compare runtimes, not
algorithms:

1. prefix `[BOS] + prompt + [BOI]` through `text_embed` and `backbone` once, keeping the KV cache
   (explicit `past_key.{l}`/`past_value.{l}` in, `present_*` out);
2. per diffusion step: `patch_in` -> `backbone` on the N image positions against the cached prefix
   (additive mask: causal + bidirectional inside the image block; nothing is committed) ->
   `patch_out` -> DDIM update (eta = 0, trailing timesteps, numpy in float64);
3. `vae_decoder` of the clean latent. Nothing is committed to the cache after the image: like
   `Model::generate` for an image request without text after it, the image ends the request.

float16 files get float16 inputs and keep a float16 KV cache, like the SDK. The prompt is the
tokenizer's non-special words in id order, repeated up to `--prompt-tokens` (the rule the Rust
bench uses). The initial noise comes from numpy (not ChaCha as in the SDK): it changes the image,
not the amount of work.

Dependencies: numpy and onnxruntime only. Usage:

    ort_bench.py BUNDLE --precision fp32 --threads 1 --steps 1,2,4,8 --prompt-tokens 32 \\
        --runs 20 --json

`--graphs` also times each graph call back to back, as `transfusion bench --profile` does.

Exit status 0 on success; 2 with a message on stderr when the bundle or onnxruntime fails (for
example a float16 graph with an operator onnxruntime's CPU provider lacks in float16).
"""

import argparse
import json
import math
import os
import sys
import time

import numpy as np
import onnxruntime as ort

GRAPHS = ("text_embed", "backbone", "patch_in", "patch_out", "vae_decoder")
GRAPH_OPT = {
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
}
COSINE_OFFSET = 0.008
COSINE_MAX_BETA = 0.999


def fail(message):
    """Prints `message` on stderr and exits with status 2."""
    print(f"ort_bench.py: {message}", file=sys.stderr)
    sys.exit(2)


def percentile(values, q):
    """Linear-interpolation percentile (numpy's default; the Rust bench uses the same rule)."""
    s = sorted(values)
    if not s:
        return None
    pos = q * (len(s) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


# --- noise schedule and DDIM (mirrors sdk/src/diffusion) -------------------------------------


def alpha_bars(schedule, train_timesteps):
    """The cumulative product of (1 - beta) of a VP schedule, or None for `flow`."""
    t = float(train_timesteps)
    if schedule == "cosine":
        f = lambda u: math.cos((u + COSINE_OFFSET) / (1 + COSINE_OFFSET) * math.pi / 2) ** 2
        betas = [min(1 - f((i + 1) / t) / f(i / t), COSINE_MAX_BETA) for i in range(train_timesteps)]
    elif schedule == "linear":
        span = max(train_timesteps - 1, 1)
        betas = [1e-4 + (0.02 - 1e-4) * i / span for i in range(train_timesteps)]
    elif schedule == "flow":
        return None
    else:
        fail(f"unknown schedule {schedule!r}")
    return np.cumprod(1.0 - np.array(betas, dtype=np.float64))


def levels(diffusion, steps):
    """`steps + 1` (alpha, sigma, model_time) triples: the config's `timesteps` when it has
    `steps` of them (as the SDK's `DiffusionConfig::grid`), else trailing spacing; then the
    clean level."""
    T = diffusion["train_timesteps"]
    ab = alpha_bars(diffusion["schedule"], T)
    out = []
    if ab is None:
        for k in range(steps):
            s = 1.0 - k / steps
            out.append((1.0 - s, s, s * T))
    else:
        grid = diffusion.get("timesteps")
        if not grid or len(grid) != steps:
            ratio = T / steps  # np.round: half to even, like Rust
            grid = [max(int(np.round(T - k * ratio)) - 1, 0) for k in range(steps)]
        for t in grid:
            out.append((math.sqrt(ab[t]), math.sqrt(1.0 - ab[t]), float(t)))
    out.append((1.0, 0.0, 0.0))
    return out


def split_prediction(prediction, alpha, sigma, x, out):
    """(x0_hat, eps_hat) from the network output, as `split_prediction` in the SDK."""
    if prediction == "epsilon":
        return (x - sigma * out) / alpha, out
    if prediction == "v":
        return alpha * x - sigma * out, sigma * x + alpha * out
    if prediction == "x0":
        return out, (x - alpha * out) / sigma
    if prediction == "flow":
        return x - sigma * out, x + (1.0 - sigma) * out
    fail(f"unknown prediction {prediction!r}")


def ddim_step(prediction, cur, nxt, x, out):
    """Deterministic DDIM (eta = 0) from level `cur` to `nxt`; the last step returns x0_hat."""
    x64, out64 = x.astype(np.float64), out.astype(np.float64)
    x0, eps = split_prediction(prediction, cur[0], cur[1], x64, out64)
    if nxt[1] == 0.0:
        return x0.astype(np.float32)
    return (nxt[0] * x0 + nxt[1] * eps).astype(np.float32)


# --- the bundle -------------------------------------------------------------------------------


class Part:
    """One graph of the bundle in an onnxruntime session, with its accumulated run time."""

    def __init__(self, bundle, manifest, name, precision, options):
        entry = manifest["graphs"][name]
        file = entry["files"].get(precision)
        if file is None:
            fail(f"the bundle has no {precision} file for {name}")
        path = os.path.join(bundle, file["path"])
        try:
            self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - onnxruntime raises several exception types
            fail(f"onnxruntime cannot load {path}: {e}")
        self.float = np.float16 if file["float"] == "float16" else np.float32
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]
        expected = [t["name"] for t in entry["inputs"]]
        if self.inputs != expected:
            fail(f"{path}: inputs {self.inputs}, manifest says {expected}")
        self.name = name
        self.seconds = 0.0

    def run(self, feeds):
        """Runs the graph on `feeds` (name -> array); returns name -> array."""
        start = time.perf_counter()
        out = self.session.run(None, feeds)
        self.seconds += time.perf_counter() - start
        return dict(zip(self.outputs, out))

    def f(self, array):
        """`array` in this graph's float type."""
        return np.asarray(array, dtype=self.float)


def prompt_ids(bundle, manifest, n):
    """The deterministic prompt: non-special vocabulary words in id order, cycled to `n` ids."""
    with open(os.path.join(bundle, manifest["tokenizer"]), encoding="utf-8") as fh:
        tok = json.load(fh)
    special = {t["id"] for t in tok.get("added_tokens", []) if t.get("special")}
    special |= set(manifest["special_tokens"].values())
    words = sorted(i for i in tok["model"]["vocab"].values() if i not in special)
    if not words:
        fail("the tokenizer has no ordinary words")
    return [words[k % len(words)] for k in range(n)]


class Generator:
    """Runs one image generation at a time with the SDK's orchestration."""

    def __init__(self, bundle, precision, threads, graph_opt="all", spin=True):
        with open(os.path.join(bundle, "manifest.json"), encoding="utf-8") as fh:
            self.manifest = json.load(fh)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = GRAPH_OPT[graph_opt]
        # Exact INT8 on x86 without VNNI (u8×u8 kernels instead of saturating u8×s8), so
        # onnxruntime computes the same numbers as tract; a no-op on VNNI and ARM CPUs.
        options.add_session_config_entry("session.x64quantprecision", "1")
        if not spin:
            # Idle pool threads sleep instead of spinning (matters when threads = cores).
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        start = time.perf_counter()
        self.parts = {n: Part(bundle, self.manifest, n, precision, options) for n in GRAPHS}
        self.load_ms = (time.perf_counter() - start) * 1e3
        self.bundle = bundle
        g = self.manifest["geometry"]
        self.g = g
        self.sp = self.manifest["special_tokens"]

    def embed(self, ids):
        p = self.parts["text_embed"]
        return p.run({"input_ids": np.asarray([ids], dtype=np.int64)})["embeddings"]

    def backbone(self, emb, past_len, mask, past):
        """Backbone on new positions `emb` [1, S, D] after `past_len` cached ones."""
        p = self.parts["backbone"]
        s = emb.shape[1]
        feeds = {
            "embeddings": p.f(emb),
            "positions": np.arange(past_len, past_len + s, dtype=np.int64),
            "attention_mask": p.f(mask),
        }
        feeds.update(past)
        out = p.run(feeds)
        present = {}
        for name, value in out.items():
            if name.startswith("present_"):
                present["past_" + name[len("present_"):]] = value
        return out["hidden"], present

    def patch_in(self, latent, t):
        p = self.parts["patch_in"]
        out = p.run({"latent": p.f(latent[None]), "timestep": p.f([t])})
        skips = {k: v for k, v in out.items() if k.startswith("skip.")}
        return out["patches"], skips

    def patch_out(self, hidden, skips, t):
        p = self.parts["patch_out"]
        feeds = {"hidden": p.f(hidden), "timestep": p.f([t])}
        feeds.update({k: p.f(v) for k, v in skips.items()})
        return p.run(feeds)["prediction"][0].astype(np.float32)

    def empty_past(self):
        g = self.g
        bb = self.parts["backbone"]
        shape = (1, g["n_heads"], 0, g["head_dim"])
        past = {}
        for layer in range(g["n_layers"]):
            past[f"past_key.{layer}"] = np.zeros(shape, dtype=bb.float)
            past[f"past_value.{layer}"] = np.zeros(shape, dtype=bb.float)
        return past

    def image(self, prompt, steps, rng):
        """One image; returns wall seconds."""
        g, sp, diffusion = self.g, self.sp, self.manifest["diffusion"]
        start = time.perf_counter()
        ids = [sp["bos"]] + prompt + [sp["boi"]]
        length = len(ids)
        causal = np.triu(np.full((length, length), -np.inf, dtype=np.float32), k=1)
        _, past = self.backbone(self.embed(ids), 0, causal, self.empty_past())
        n = g["num_patches"]
        shape = (g["latent_channels"], g["latent_size"], g["latent_size"])
        latent = rng.standard_normal(shape).astype(np.float32)
        lv = levels(diffusion, steps)
        # Image positions see the whole prefix and each other: an all-zero additive mask.
        step_mask = np.zeros((n, length + n), dtype=np.float32)
        for k in range(steps):
            t = lv[k][2]
            patches, skips = self.patch_in(latent, t)
            hidden, _ = self.backbone(patches, length, step_mask, past)
            prediction = self.patch_out(hidden, skips, t)
            latent = ddim_step(diffusion["prediction"], lv[k], lv[k + 1], latent, prediction)
        vae = self.parts["vae_decoder"]
        vae.run({"latent": vae.f(latent[None])})
        return time.perf_counter() - start


def graph_calls(gen, prompt_tokens, runs, warmup, rng):
    """p50 ms of each graph call an image and a decoded token make, each call repeated back to
    back on random inputs: the cases and sizes of `transfusion bench --profile` (backbone
    prefill of `[BOS] + prompt + [BOI]`, a 16-position step after it, one decoded token after
    the committed image; `patch_in`, `patch_out`, `vae_decoder`), for a per-graph comparison.
    """
    g = gen.g
    prefix, n = prompt_tokens + 2, g["num_patches"]
    bb = gen.parts["backbone"]

    def backbone_feeds(s, p):
        feeds = {
            "embeddings": bb.f(rng.standard_normal((1, s, g["dim"]))),
            "positions": np.arange(p, p + s, dtype=np.int64),
            "attention_mask": bb.f(np.zeros((s, p + s))),
        }
        past = (1, g["n_heads"], p, g["head_dim"])
        for layer in range(g["n_layers"]):
            feeds[f"past_key.{layer}"] = bb.f(rng.standard_normal(past))
            feeds[f"past_value.{layer}"] = bb.f(rng.standard_normal(past))
        return bb, feeds

    latent = rng.standard_normal((1, g["latent_channels"], g["latent_size"], g["latent_size"]))
    pin, pout, vae = gen.parts["patch_in"], gen.parts["patch_out"], gen.parts["vae_decoder"]
    skips = {k: v for k, v in pin.run({"latent": pin.f(latent), "timestep": pin.f([500.0])}).items()
             if k.startswith("skip.")}
    out_feeds = {"hidden": pout.f(rng.standard_normal((1, n, g["dim"]))), "timestep": pout.f([500.0])}
    out_feeds.update(skips)
    cases = [
        ("backbone", "prefill", *backbone_feeds(prefix, 0)),
        ("backbone", "step", *backbone_feeds(n, prefix)),
        ("backbone", "decode", *backbone_feeds(1, prefix + n + 1)),
        ("patch_in", "call", pin, {"latent": pin.f(latent), "timestep": pin.f([500.0])}),
        ("patch_out", "call", pout, out_feeds),
        ("vae_decoder", "call", vae, {"latent": vae.f(latent)}),
    ]
    rows = []
    for graph, case, part, feeds in cases:
        times = []
        for run in range(warmup + runs):
            start = time.perf_counter()
            part.session.run(None, feeds)
            if run >= warmup:
                times.append((time.perf_counter() - start) * 1e3)
        rows.append({"graph": graph, "case": case, "ms_p50": percentile(times, 0.5)})
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundle")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "int8"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", default="4", help="one step count or a comma-separated list")
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--graph-opt", default="all", choices=list(GRAPH_OPT),
                    help="onnxruntime graph optimisation level (the comparison uses all)")
    ap.add_argument("--no-spin", action="store_true",
                    help="idle onnxruntime pool threads sleep instead of spinning")
    ap.add_argument("--json", action="store_true", help="one JSON document on stdout")
    ap.add_argument("--graphs", action="store_true",
                    help="also time each graph call back to back, as `transfusion bench "
                         "--profile` does (p50 of --runs calls per case)")
    args = ap.parse_args()
    try:
        steps_list = [int(s) for s in args.steps.split(",") if s.strip()]
    except ValueError:
        fail(f"--steps must be integers, got {args.steps!r}")
    if not steps_list or min(steps_list) < 1 or args.runs < 1 or args.threads < 1:
        fail("--steps, --runs and --threads must be positive")

    gen = Generator(args.bundle, args.precision, args.threads, args.graph_opt, not args.no_spin)
    prompt = prompt_ids(args.bundle, gen.manifest, args.prompt_tokens)
    rng = np.random.default_rng(args.seed)
    results = []
    for steps in steps_list:
        totals, parts = [], {k: [] for k in ("text_embed", "backbone", "patch", "vae_decode", "host")}
        for run in range(args.warmup + args.runs):
            for p in gen.parts.values():
                p.seconds = 0.0
            try:
                wall = gen.image(prompt, steps, rng)
            except Exception as e:  # noqa: BLE001
                fail(f"{args.precision} generation failed: {e}")
            if run < args.warmup:
                continue
            s = {n: p.seconds for n, p in gen.parts.items()}
            graphs = sum(s.values())
            totals.append(wall * 1e3)
            parts["text_embed"].append(s["text_embed"] * 1e3)
            parts["backbone"].append(s["backbone"] * 1e3)
            parts["patch"].append((s["patch_in"] + s["patch_out"]) * 1e3)
            parts["vae_decode"].append(s["vae_decoder"] * 1e3)
            parts["host"].append(max(wall - graphs, 0.0) * 1e3)
        row = {
            "steps": steps,
            "ort_image_ms_p50": percentile(totals, 0.5),
            "ort_image_ms_p90": percentile(totals, 0.9),
        }
        for name, values in parts.items():
            row[f"ort_{name}_ms_p50"] = percentile(values, 0.5)
        results.append(row)

    calls = graph_calls(gen, args.prompt_tokens, args.runs, args.warmup, rng) if args.graphs else None

    report = {
        "tool": "ort_bench.py",
        "onnxruntime": ort.__version__,
        "numpy": np.__version__,
        "precision": args.precision,
        "threads": args.threads,
        "prompt_tokens": args.prompt_tokens,
        "runs": args.runs,
        "warmup": args.warmup,
        "graph_opt": args.graph_opt,
        "spin": not args.no_spin,
        "ort_load_ms": gen.load_ms,
        "results": results,
    }
    if calls is not None:
        report["graph_calls"] = calls
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"onnxruntime {ort.__version__}, {args.precision}, {args.threads} thread(s), "
              f"graph optimisation {args.graph_opt}, "
              f"prompt {args.prompt_tokens} tokens, {args.runs} runs, load {gen.load_ms:.1f} ms")
        print(f"{'steps':>5} {'p50 ms':>9} {'p90 ms':>9} {'backbone':>9} {'patch':>7} {'vae':>7} {'host':>7}")
        for r in results:
            print(f"{r['steps']:>5} {r['ort_image_ms_p50']:>9.2f} {r['ort_image_ms_p90']:>9.2f} "
                  f"{r['ort_backbone_ms_p50']:>9.2f} {r['ort_patch_ms_p50']:>7.2f} "
                  f"{r['ort_vae_decode_ms_p50']:>7.2f} {r['ort_host_ms_p50']:>7.2f}")
        for c in calls or []:
            print(f"{c['graph']} {c['case']}: {c['ms_p50']:.3f} ms per call (p50)")


if __name__ == "__main__":
    main()
