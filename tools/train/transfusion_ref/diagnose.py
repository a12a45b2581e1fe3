"""Diagnostics of a trained checkpoint: why does it draw blobs?

    python -m transfusion_ref.diagnose val-loss    CKPT --data D [--count 256] [--buckets 10]
    python -m transfusion_ref.diagnose noise-sweep CKPT --data D --t0 200,400,600,800,1000 -o DIR
    python -m transfusion_ref.diagnose probe       CKPT --data D [--train 2000 --test 500]
    python -m transfusion_ref.diagnose overfit     --data D --count 64 --steps N -o RUN

* `val-loss`: the diffusion loss of the first `--count` samples with their true captions
  (caption-first layout, no CFG) per equal-width bucket of the schedule, each sample once per
  bucket at a seeded time and noise: the model's native loss and the x0-MSE of its `x0_hat`,
  next to the x0-MSE of the best scalar shrinkage `c x_t`, `c = alpha v / (alpha^2 v + sigma^2)`
  with `v` the latents' mean square (what a model knowing nothing about images gets;
  `sigma^2` for unit-variance latents): ratio < 1 is what the model knows. The cheap A/B
  metric between runs.
* `noise-sweep`: the first `--count` images encoded, noised to `t0` (schedule units, 1000 =
  pure noise), denoised with the true caption by the checkpoint's own sampler settings, decoded,
  written as 64x64 PNGs + `index.jsonl` for `transfusion eval --score-images DIR/t<t0>`
  (`DIR/t0-vae`: plain VAE round trips, the ceiling).
* `probe` (diagnose_probe.py): per-cell linear shape probes on VAE latents, `patch_in` tokens and
  backbone hidden states: where is shape information lost?
* `overfit`: trains the transfusion stage from a fresh transformer (the VAE of `--vae`) on the
  first `--count` scenes, then val-loss and a t0=1000 noise sweep on those same scenes.

Every subcommand prints a table (progress on stderr) and writes `--json FILE`.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from . import distill as D
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import ConfigError, grid_problem
from .data import DataError, Shapes, encode_all
from .diffusion import CLEAN, NoiseLevel, Schedule, ddim_step, lcm_step, split
from .losses import CAPTION_FIRST, UNCONDITIONAL, build_sequences, run_sequence
from .model import TransfusionModel
from .run import DEFAULT_THREADS, TOKENIZER_FILE, TrainError, captions_of, log, set_threads

ROOT = Path(__file__).resolve().parents[3]
SHIPPED = ROOT / "models" / "shapes64" / "checkpoint"
PNG_SIZE = 64  # what `transfusion eval --score-images` reads


class DiagnoseError(ValueError):
    """Bad input to a diagnostic (the message names the path or option)."""


def positive(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        v = int(text)
    except ValueError:
        v = 0
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, found {text!r}")
    return v


ERRORS = (DiagnoseError, TrainError, DataError, ConfigError, CheckpointError)


# ---- inputs -------------------------------------------------------------------------------

def load_model(ckpt):
    """(cfg, model in eval mode, no gradients) of checkpoint directory `ckpt`."""
    path = Path(ckpt)
    if not path.is_dir():
        raise DiagnoseError(f"{path}: no such checkpoint directory (expected config.json and "
                            "model.safetensors in it)")
    cfg, model = load_checkpoint(path)
    model.eval().requires_grad_(False)
    return cfg, model


def open_dataset(path, cfg, count: int, ckpt, option: str = "--count") -> Shapes:
    """The first `count` samples of dataset `path`, checked against the checkpoint's config."""
    data = Shapes.open(path)
    _, H, W, C = data.images.shape
    size = cfg.image.size
    if C != cfg.image.channels:
        raise DiagnoseError(f"{Path(ckpt) / 'config.json'}: image.channels {cfg.image.channels} "
                            f"does not match {data.path}'s {C}-channel images")
    if H != W or size > H or H % size:
        raise DiagnoseError(f"{Path(ckpt) / 'config.json'}: image.size {size} does not match "
                            f"{data.path}'s {H}x{W} images (expected {H} or a divisor of it, "
                            "which the trainer area-downsamples to)")
    data.check_vocab(cfg)
    if not 1 <= count <= len(data):
        raise DiagnoseError(f"{option} {count}: {data.path} has {len(data)} samples "
                            f"(expected 1..={len(data)})")
    return Shapes.open(path, limit=count)


def read_labels(data: Shapes, n: int) -> list[dict]:
    """The label JSON of the first `n` samples (docs/dataset.md)."""
    sec = data.header["sections"].get("labels")
    if sec is None:
        raise DataError(f"{data.path}: no labels section")
    with open(data.path, "rb") as f:
        f.seek(sec["offset"])
        lines = f.read(sec["bytes"]).splitlines()
    if len(lines) < n:
        raise DataError(f"{data.path}: {len(lines)} label lines for {n} samples")
    return [json.loads(line) for line in lines[:n]]


def parse_ints(text: str, option: str) -> list[int]:
    try:
        out = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise DiagnoseError(f"{option} {text!r}: expected comma-separated integers") from None
    if not out:
        raise DiagnoseError(f"{option}: no values")
    return out


def table(headers: list[str], rows: list[list]) -> str:
    def fmt(v):
        return f"{v:.4f}" if isinstance(v, float) else str(v)
    cells = [headers] + [[fmt(v) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_json(path, report: dict) -> None:
    if path:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(report, indent=2) + "\n")
        log(f"wrote {p}")


# ---- val-loss -----------------------------------------------------------------------------

def bucket_times(sched: Schedule, n: int, buckets: int, gen: torch.Generator):
    """`[n, buckets]` schedule positions (integer t for VP, sigma for flow), sample i at a
    seeded uniform time inside each bucket, and the bucket bounds (t_lo, t_hi) in model-time
    units (half-open integer ranges `[lo, hi)` for VP, `(lo, hi]` sigma * T for flow)."""
    T = sched.T
    if not 1 <= buckets <= T:
        raise DiagnoseError(f"--buckets {buckets}: expected 1..={T}")
    u = torch.rand(n, buckets, generator=gen, dtype=torch.float64)
    b = torch.arange(buckets, dtype=torch.float64)
    if sched.is_vp:
        lo, hi = (b * T / buckets).floor(), ((b + 1) * T / buckets).floor()
        times = lo + (u * (hi - lo)).floor()
        bounds = list(zip(lo.long().tolist(), hi.long().tolist()))
    else:
        times = (b + 1 - u) / buckets
        bounds = [(int(T * i / buckets), int(T * (i + 1) / buckets)) for i in range(buckets)]
    return times, bounds


@torch.no_grad()
def val_loss(model, latents: torch.Tensor, captions, *, buckets: int = 10, seed: int = 0,
             batch: int = 64, forward=None) -> dict:
    """Per-bucket diffusion loss of `latents` (`[n, C, Hl, Hl]`) with their captions.
    `forward(seq, x_t, model_time, rows) -> prediction` replaces the model (tests: oracles);
    `rows` are the sample indices of the batch."""
    cfg = model.cfg
    sched = Schedule(cfg.diffusion)
    pred_type = sched.prediction
    n = len(latents)
    gen = torch.Generator().manual_seed(seed)
    times, bounds = bucket_times(sched, n, buckets, gen)
    eps_all = torch.randn((n, buckets) + tuple(latents.shape[1:]), generator=gen)
    if forward is None:
        def forward(seq, x_t, model_time, rows):
            return run_sequence(model, seq, x_t, model_time, want_logits=False)[0].float()
    jobs = [(i, k) for k in range(buckets) for i in range(n)]
    v = latents.double().square().mean().item()  # the shrinkage baseline's one statistic
    sums = torch.zeros(buckets, 3, dtype=torch.float64)
    counts = torch.zeros(buckets, dtype=torch.float64)
    for start in range(0, len(jobs), batch):
        part = jobs[start:start + batch]
        rows = torch.tensor([i for i, _ in part])
        ks = torch.tensor([k for _, k in part])
        x0, eps = latents[rows], eps_all[rows, ks]
        alpha, sigma, model_time = sched.coefficients(times[rows, ks])
        a4, s4 = alpha.double().view(-1, 1, 1, 1), sigma.double().view(-1, 1, 1, 1)
        x_t = (a4 * x0.double() + s4 * eps.double()).float()
        target = sched.target(x0, eps, alpha, sigma)
        seq = build_sequences(cfg, [captions[i] for i in rows.tolist()],
                              [CAPTION_FIRST] * len(part))
        pred = forward(seq, x_t, model_time, rows)
        native = (pred.double() - target.double()).square().flatten(1).mean(1)
        x0_hat, _ = split(pred_type, alpha.double(), sigma.double(), x_t, pred)
        x0_mse = (x0_hat - x0.double()).square().flatten(1).mean(1)
        lin = a4 * v / (a4.square() * v + s4.square()) * x_t.double()
        lin_mse = (lin - x0.double()).square().flatten(1).mean(1)
        sums.index_add_(0, ks, torch.stack([native, x0_mse, lin_mse], 1))
        counts.index_add_(0, ks, torch.ones(len(part), dtype=torch.float64))
        if (start // batch) % 10 == 0:
            log(f"[val-loss] {min(start + batch, len(jobs))}/{len(jobs)} sequences")
    means = sums / counts[:, None]
    rows_out = []
    for k, (lo, hi) in enumerate(bounds):
        native, x0_mse, lin = means[k].tolist()
        rows_out.append({"bucket": k, "t_lo": lo, "t_hi": hi, "n": int(counts[k]),
                         "native": native, "x0_mse": x0_mse, "x0_mse_linear": lin,
                         "x0_mse_ratio": x0_mse / lin if lin > 0 else None})
    overall = means.mean(0).tolist()
    return {"prediction": pred_type, "schedule": sched.kind, "samples": n, "buckets": rows_out,
            "mean": {"native": overall[0], "x0_mse": overall[1], "x0_mse_linear": overall[2]},
            "latent_mean_square": v, "seed": seed}


def val_loss_table(rep: dict) -> str:
    rows = [[f"[{b['t_lo']},{b['t_hi']})", b["n"], b["native"], b["x0_mse"], b["x0_mse_linear"],
             "-" if b["x0_mse_ratio"] is None else b["x0_mse_ratio"]] for b in rep["buckets"]]
    m = rep["mean"]
    ratio = m["x0_mse"] / m["x0_mse_linear"] if m["x0_mse_linear"] else "-"
    rows.append(["mean", rep["samples"] * len(rep["buckets"]), m["native"], m["x0_mse"],
                 m["x0_mse_linear"], ratio])
    return table(["t", "n", f"native ({rep['prediction']})", "x0-MSE", "x0-MSE linear",
                  "ratio"], rows)


def cmd_val_loss(args) -> dict:
    cfg, model = load_model(args.checkpoint)
    data = open_dataset(args.data, cfg, args.count, args.checkpoint)
    log(f"[val-loss] encoding {len(data)} images with {args.checkpoint}'s VAE")
    latents = encode_all(model, data, cfg.image.size, batch=64)
    rep = val_loss(model, latents, captions_of(data, torch.arange(len(data))),
                   buckets=args.buckets, seed=args.seed, batch=args.batch)
    rep.update(checkpoint=str(args.checkpoint), data=str(data.path))
    print(val_loss_table(rep))
    return rep


# ---- noise-sweep --------------------------------------------------------------------------

def sweep_levels(sched: Schedule, t0: int, steps: int) -> list[NoiseLevel]:
    """The levels of a trailing DDIM schedule from `t0` (schedule units, T = pure noise) down:
    `t_k = round(t0 - k t0 / steps) - 1` (k < steps; the runtime's grid when t0 = T), then
    CLEAN; just [CLEAN] for t0 = 0. Flow: sigmas `(t0/T)(1 - k/steps)`."""
    T = sched.T
    if not 0 <= t0 <= T:
        raise DiagnoseError(f"--t0 {t0}: expected 0..={T} (schedule units, {T} = pure noise)")
    if t0 == 0:
        return [CLEAN]
    if sched.is_vp:
        if not 1 <= steps <= t0:
            raise DiagnoseError(f"--steps {steps}: expected 1..={t0} for t0 {t0}")
        ts = [max(int(round(t0 - k * t0 / steps)) - 1, 0) for k in range(steps)]
        return [sched.level(t) for t in ts] + [CLEAN]
    s0 = t0 / T
    return [sched.flow_level(s0 * (1 - k / steps)) for k in range(steps)] + [CLEAN]


def timestep_levels(sched: Schedule, timesteps: list[int]) -> list[NoiseLevel]:
    """The levels of a sampling grid given as model timesteps (a VP schedule's grid from pure
    noise, `grid_problem`), then CLEAN: a grid other than the trailing one."""
    if not sched.is_vp:
        raise DiagnoseError("--timesteps: only for VP schedules (the flow schedule has no "
                            "timestep grid)")
    problem = grid_problem(timesteps, len(timesteps), sched.T)
    if problem:
        raise DiagnoseError(f"--timesteps {','.join(map(str, timesteps))}: expected {problem}")
    return [sched.level(t) for t in timesteps] + [CLEAN]


def sampler_settings(cfg, guidance=None):
    """(sampler, guidance, notes): the checkpoint's own, as `train.py sample` runs them."""
    d, notes = cfg.diffusion, []
    sampler = d.sampler
    if sampler not in ("ddim", "lcm"):
        notes.append(f"sampler {sampler} is not implemented in Python: ddim instead")
        sampler = "ddim"
    if d.guidance_distilled:
        if guidance not in (None, 1.0):
            raise DiagnoseError(f"--guidance {guidance}: the checkpoint is guidance-distilled "
                                "(config diffusion.guidance_distilled), it runs no CFG pass")
        return sampler, 1.0, notes
    w = d.guidance if guidance is None else guidance
    if w < 1:
        raise DiagnoseError(f"--guidance {w}: expected >= 1")
    return sampler, w, notes


@torch.no_grad()
def denoise(model, captions, x, levels, *, guidance: float, sampler: str, gen, batch: int = 32):
    """Run the sampler over `levels` (noisiest first, CLEAN last) from `x` with caption-first
    sequences (CFG with `[BOS BOI]` when guidance > 1), as `distill.sample` does."""
    cfg = model.cfg
    pred = cfg.diffusion.prediction
    outs = []
    for start in range(0, len(captions), batch):
        caps = captions[start:start + batch]
        xb = x[start:start + batch].clone()
        cb = build_sequences(cfg, caps, [CAPTION_FIRST] * len(caps))
        ub = build_sequences(cfg, caps, [UNCONDITIONAL] * len(caps)) if guidance > 1 else None
        for cur, nxt in zip(levels[:-1], levels[1:]):
            t = torch.full((len(caps),), cur.model_time, dtype=torch.float32)
            out = D.predict(model, cb, xb, t, ub, guidance)
            if sampler == "lcm":
                xb, _ = lcm_step(pred, cur, nxt, xb, out, torch.randn(xb.shape, generator=gen))
            else:
                xb, _ = ddim_step(pred, cur, nxt, xb, out)
        outs.append(xb)
    return torch.cat(outs)


def write_pngs(images: torch.Tensor, directory: Path, data: Shapes, indices: list[int]) -> None:
    """One 64x64 PNG per image (`[B, 3, H, H]` in [-1, 1]; resized when H != 64) plus
    `index.jsonl` naming each image's dataset scene."""
    from .train import write_png_grid
    if images.shape[-1] != PNG_SIZE:
        images = F.interpolate(images, size=(PNG_SIZE, PNG_SIZE), mode="bilinear",
                               align_corners=False)
    images = images.clamp(-1, 1)
    directory.mkdir(parents=True, exist_ok=True)
    h = data.header
    lines = []
    for img, i in zip(images, indices):
        name = f"{i:06d}.png"
        write_png_grid(img[None], directory / name, per_row=1)
        lines.append(json.dumps({"file": name, "scene": {"split": h.get("split"),
                                                         "seed": h.get("seed"), "index": i}}))
    (directory / "index.jsonl").write_text("\n".join(lines) + "\n")


def prepare_dir(directory: Path, force: bool) -> None:
    if directory.exists() and any(directory.iterdir()):
        if not force:
            raise DiagnoseError(f"{directory} exists and is not empty (pass --force to "
                                "replace its PNGs and index.jsonl)")
        for p in list(directory.glob("*.png")) + [directory / "index.jsonl"]:
            p.unlink(missing_ok=True)


def scorer() -> str:
    for kind in ("release", "debug"):
        p = ROOT / "target" / kind / "transfusion"
        if p.is_file():
            return os.path.relpath(p)
    return "transfusion"


@torch.no_grad()
def noise_sweep(model, data: Shapes, t0s: list[int], out: Path, *, steps=None, guidance=None,
                seed: int = 0, force: bool = False, timesteps=None) -> dict:
    """Writes `out/t<t0>/` per t0 and `out/t0-vae/`; returns the report. `timesteps`
    (checked by `timestep_levels`) replaces the trailing grid of a pure-noise t0."""
    cfg = model.cfg
    sched = Schedule(cfg.diffusion)
    sampler, w, notes = sampler_settings(cfg, guidance)
    n = len(data)
    idx = list(range(n))
    images = data.image_batch(idx, cfg.image.size)
    log(f"[noise-sweep] encoding {n} images")
    x0 = torch.cat([model.vae_encode(images[s:s + 64]) for s in range(0, n, 64)])
    gen = torch.Generator().manual_seed(seed)
    eps = torch.randn(x0.shape, generator=gen)
    captions = captions_of(data, torch.arange(n))
    roundtrip = model.vae_decode(x0).clamp(-1, 1)
    dirs = {"t0-vae": out / "t0-vae"}
    for name in [f"t{t}" for t in t0s]:
        dirs[name] = out / name
    for d in dirs.values():
        prepare_dir(d, force)
    write_pngs(roundtrip, dirs["t0-vae"], data, idx)
    # Distillation trains on the trailing grid, whatever grid the config then samples at.
    trained = {round(lv.model_time) for lv in sched.trailing_levels(cfg.diffusion.steps)[:-1]}
    report = {"checkpoint_sampler": sampler, "guidance": w, "notes": notes, "seed": seed,
              "samples": n, "directories": {"t0-vae": str(dirs["t0-vae"])}, "t0": []}
    rows = [["vae", 0, "-", 0.0, _rmse(roundtrip, images), 0.0]]
    for t0 in t0s:
        S = steps or max(1, int(round(cfg.diffusion.steps * t0 / sched.T)))
        S = min(S, t0) if t0 > 0 and sched.is_vp else S
        levels = timestep_levels(sched, timesteps) if timesteps and t0 >= sched.T \
            else sweep_levels(sched, t0, S)
        if t0 >= sched.T:
            x = eps.clone()  # pure noise, as the runtime starts
        else:
            lv = levels[0]
            x = (lv.alpha * x0.double() + lv.sigma * eps.double()).float()
        log(f"[noise-sweep] t0 {t0}: {len(levels) - 1} {sampler} steps at "
            f"{[round(lv.model_time, 1) for lv in levels[:-1]]}, guidance {w}")
        lat = denoise(model, captions, x, levels, guidance=w, sampler=sampler,
                      gen=torch.Generator().manual_seed(seed + 1))
        img = model.vae_decode(lat).clamp(-1, 1)
        write_pngs(img, dirs[f"t{t0}"], data, idx)
        off = sorted({round(lv.model_time) for lv in levels[:-1]} - trained) \
            if cfg.diffusion.guidance_distilled else []
        entry = {"t0": t0, "steps": len(levels) - 1, "directory": str(dirs[f"t{t0}"]),
                 "model_times": [lv.model_time for lv in levels[:-1]],
                 "latent_rmse": _rmse(lat, x0), "pixel_rmse": _rmse(img, images),
                 "pixel_rmse_vs_vae": _rmse(img, roundtrip),
                 "off_student_grid": off}
        report["t0"].append(entry)
        report["directories"][f"t{t0}"] = str(dirs[f"t{t0}"])
        rows.append([f"t{t0}", t0, entry["steps"], entry["latent_rmse"], entry["pixel_rmse"],
                     entry["pixel_rmse_vs_vae"]])
    # From pure noise only the caption is known: score those against what it names.
    pure = {f"t{t0}" for t0 in t0s if t0 >= sched.T}
    report["scorer_commands"] = [
        f"{scorer()} eval --score-images {d}"
        + (" --scene-truth caption" if k in pure else "")
        for k, d in dirs.items()]
    print(table(["dir", "t0", "steps", "latent RMSE", "pixel RMSE", "vs VAE"], rows))
    for e in report["t0"]:
        if e["off_student_grid"]:
            print(f"note: t0 {e['t0']} evaluates the distilled student at {e['off_student_grid']}, "
                  f"off the grid it was trained on ({sorted(trained, reverse=True)})")
    if any(e["off_student_grid"] for e in report["t0"]):
        k = sched.T // cfg.diffusion.steps
        print(f"note: --t0 {','.join(str(k * i) for i in range(1, cfg.diffusion.steps + 1))} "
              "keeps a guidance-distilled student on its trained levels")
    for note in notes:
        print(f"note: {note}")
    print(f"images ({PNG_SIZE}x{PNG_SIZE} PNG + index.jsonl): {out}/{{{','.join(dirs)}}}")
    print("score them with:")
    for c in report["scorer_commands"]:
        print(f"  {c}")
    return report


def _rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).square().mean().sqrt().item()


def cmd_noise_sweep(args) -> dict:
    cfg, model = load_model(args.checkpoint)
    data = open_dataset(args.data, cfg, args.count, args.checkpoint)
    t0s = list(dict.fromkeys(parse_ints(args.t0, "--t0")))  # one directory each
    if args.steps is not None and args.steps < 1:
        raise DiagnoseError(f"--steps {args.steps}: expected >= 1")
    sched = Schedule(cfg.diffusion)
    for t0 in t0s:
        sweep_levels(sched, t0, 1)  # range check before any work
    timesteps = parse_ints(args.timesteps, "--timesteps") if args.timesteps else None
    if timesteps:
        if t0s != [sched.T] or args.steps is not None:
            raise DiagnoseError(f"--timesteps: the grid of a sweep from pure noise; use it with "
                                f"--t0 {sched.T} alone and without --steps")
        timestep_levels(sched, timesteps)
    rep = noise_sweep(model, data, t0s, Path(args.output), steps=args.steps,
                      guidance=args.guidance, seed=args.seed, force=args.force,
                      timesteps=timesteps)
    rep.update(checkpoint=str(args.checkpoint), data=str(data.path))
    return rep


# ---- overfit ------------------------------------------------------------------------------

def fresh_init(vae_ckpt, out: Path, seed: int) -> Path:
    """A checkpoint with `vae_ckpt`'s config and VAE tensors and a freshly initialised
    (seeded) everything else, at `out` (with its tokenizer.json)."""
    cfg, src = load_model(vae_ckpt)
    tok = Path(vae_ckpt) / TOKENIZER_FILE
    if not tok.is_file():
        raise DiagnoseError(f"{vae_ckpt}: missing {TOKENIZER_FILE}")
    torch.manual_seed(seed)
    fresh = TransfusionModel(cfg)
    state = fresh.state_dict()
    vae = {k: v for k, v in src.state_dict().items() if k.startswith("vae.")}
    state.update(vae)
    fresh.load_state_dict(state, strict=True)
    save_checkpoint(fresh, cfg, out)
    shutil.copyfile(tok, out / TOKENIZER_FILE)
    return out


def cmd_overfit(args) -> dict:
    from .train import main as train_main
    run = Path(args.output)
    vae = Path(args.vae)
    teacher = run / "teacher"
    vcfg, _ = load_model(vae)
    open_dataset(args.data, vcfg, args.count, vae)  # check before training
    if args.keep_transformer:
        source = vae
    elif (run / "init" / "model.safetensors").is_file():
        source = run / "init"
    else:
        source = fresh_init(vae, run / "init", args.seed)
        log(f"[overfit] {source}: VAE of {vae}, fresh transformer (seed {args.seed})")
    argv = ["transfusion", "--data", str(args.data), "--out", str(run), "--from", str(source),
            "--limit", str(args.count), "--steps", str(args.steps), "--seed", str(args.seed),
            "--threads", str(args.threads), "--log-every", str(args.log_every)]
    argv += ["--batch", str(args.batch)] if args.batch else []
    argv += ["--lr", str(args.lr)] if args.lr else []
    argv += shlex.split(args.train_args or "")
    log(f"[overfit] python -m transfusion_ref.train {shlex.join(argv)}")
    code = train_main(argv)  # skips a finished RUN/teacher itself
    if code:
        raise DiagnoseError(f"training {run} failed (exit {code}, message above)")
    cfg, model = load_model(teacher)
    data = open_dataset(args.data, cfg, args.count, teacher)
    log("[overfit] val-loss on the training scenes")
    latents = encode_all(model, data, cfg.image.size, batch=64)
    vl = val_loss(model, latents, captions_of(data, torch.arange(len(data))),
                  buckets=args.buckets, seed=args.seed)
    print(f"val-loss of {teacher} on its {len(data)} training scenes:")
    print(val_loss_table(vl))
    sweep = noise_sweep(model, data, [cfg.diffusion.train_timesteps], run / "sweep",
                        seed=args.seed, force=True)
    summary = teacher / "train_summary.json"
    return {"run": str(run), "teacher": str(teacher), "count": args.count,
            "train_summary": json.loads(summary.read_text()) if summary.is_file() else None,
            "val_loss": vl, "sweep": sweep}


# ---- CLI ----------------------------------------------------------------------------------

def parser() -> argparse.ArgumentParser:
    from .diagnose_probe import add_probe_parser
    p = argparse.ArgumentParser(prog="python -m transfusion_ref.diagnose",
                                description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    def common(q, ckpt=True):
        if ckpt:
            q.add_argument("checkpoint", help="checkpoint directory")
        q.add_argument("--data", required=True, help="shapes.bin or its directory")
        q.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
        q.add_argument("--threads", type=positive, default=DEFAULT_THREADS)
        q.add_argument("--json", default=None, metavar="FILE", help="write the report here")

    q = sub.add_parser("val-loss", help="diffusion loss per noise bucket (forward only)")
    common(q)
    q.add_argument("--count", type=positive, default=256, help="first N samples (default 256)")
    q.add_argument("--buckets", type=positive, default=10, help="equal-width t buckets")
    q.add_argument("--batch", type=positive, default=64, help="sequences per forward pass")

    q = sub.add_parser("noise-sweep", help="noise dataset images to t0, denoise, write PNGs")
    common(q)
    q.add_argument("--t0", default="200,400,600,800,1000",
                   help="comma-separated start levels in schedule units (1000 = pure noise)")
    q.add_argument("--count", type=positive, default=64)
    q.add_argument("--steps", type=positive, default=None,
                   help="sampler steps per t0 (default: config steps * t0 / T, at least 1)")
    q.add_argument("--guidance", type=float, default=None,
                   help="CFG scale (default the config's; none for guidance-distilled)")
    q.add_argument("--timesteps", default=None,
                   help="with --t0 T alone: the sampling grid as comma-separated model "
                   "timesteps, noisiest first (default: the trailing grid)")
    q.add_argument("-o", "--output", required=True, help="output directory")
    q.add_argument("--force", action="store_true", help="replace existing images")

    add_probe_parser(sub, common)

    q = sub.add_parser("overfit", help="train on the first --count scenes, then sweep them")
    common(q, ckpt=False)
    q.add_argument("--count", type=positive, default=64)
    q.add_argument("--steps", type=positive, required=True)
    q.add_argument("-o", "--output", required=True, help="run directory")
    q.add_argument("--vae", default=str(SHIPPED), help="checkpoint whose VAE (and config) to "
                   "use (default: the shipped models/shapes64/checkpoint)")
    q.add_argument("--keep-transformer", action="store_true",
                   help="start from --vae's transformer weights too (default: fresh)")
    q.add_argument("--batch", type=positive, default=None)
    q.add_argument("--lr", type=float, default=None)
    q.add_argument("--buckets", type=positive, default=10)
    q.add_argument("--log-every", type=positive, default=50)
    q.add_argument("--train-args", default=None,
                   help="more options for `train transfusion`, one string")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    set_threads(args.threads)
    try:
        if args.command == "val-loss":
            rep = cmd_val_loss(args)
        elif args.command == "noise-sweep":
            rep = cmd_noise_sweep(args)
        elif args.command == "probe":
            from .diagnose_probe import cmd_probe
            rep = cmd_probe(args)
        else:
            rep = cmd_overfit(args)
        write_json(args.json, rep)
    except ERRORS as e:
        log(f"error: {e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
