"""Reference trainer (CPU, PyTorch): VAE, then the Transfusion objective, then guidance + step
distillation. Each stage writes a checkpoint directory in the project's format
(config.json + model.safetensors + tokenizer.json, docs/checkpoint.md).

    python -m transfusion_ref.train vae         --data DATA --out RUN [--preset shapes64] ...
    python -m transfusion_ref.train transfusion --data DATA --out RUN ...
    python -m transfusion_ref.train distill     --data DATA --out RUN ...
    python -m transfusion_ref.train recipe      --data DATA --out RUN ...   # all three, resumable
    python -m transfusion_ref.train sample      RUN/student --data DATA -o grid.png

Stage outputs: RUN/vae/, RUN/teacher/, RUN/student/ (plus RUN/student/rounds/<n>/ for every
distillation round and RUN/cache/ for the encoded latents). Training state (weights, optimizer,
EMA, step, RNG) goes to RUN/<stage>/state.pt every `--save-every` steps and on SIGINT/SIGTERM,
written atomically; `--resume` continues bit-for-bit. See tools/train/README.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

import torch

from . import dist
from . import distill as D
from .checkpoint import CheckpointError, load_checkpoint
from .config import PRESETS, Config, ConfigError
from .data import DataError, Shapes, batch_indices, cached_latents
from .diffusion import Schedule
from .losses import transfusion_loss, vae_loss
from .model import TransfusionModel
from .run import (DEFAULT_THREADS, Ema, Run, Stopped, TrainError, base_config, captions_of,
                  check_recipe_batches, check_resume, fingerprint_of, finish, fmt_time, log,
                  lr_at, make_optimizer, open_data, previous_stage, resolve_hparams, rng_state,
                  set_lr, set_rng_state, set_threads, skip_if_finished, stage_tokenizer,
                  use_bf16, write_checkpoint)
from .sample import sample_cmd, write_png_grid  # noqa: F401  (re-exported)


# ---- stage 1: VAE -------------------------------------------------------------------------

def train_vae(args) -> int:
    run = Run(args, "vae")
    if skip_if_finished(run):
        return 0
    state = run.load_state()
    if state is not None and state.get("tokenizer") is not None:
        cfg, tok = Config.from_dict(state["config"]), state["tokenizer"]
        tok = Path(tok) if isinstance(tok, str) else tok
        data = open_data(args, cfg, tok)
    else:
        data = Shapes.open(args.data, limit=args.limit)
        cfg, tok = base_config(args, data)
        data.check_vocab(cfg, tok if isinstance(tok, Path) else None)
    resolve_hparams(args, cfg, "vae")
    fp = fingerprint_of(args, ("kl_weight",))
    check_resume(run, args, state, fp)
    ctx = dist.current()
    ctx.start()
    dev = ctx.device
    torch.manual_seed(args.seed)
    model = TransfusionModel(cfg)
    for n, p in model.named_parameters():  # only the VAE trains (DDP: the others are frozen)
        p.requires_grad_(n.startswith("vae."))
    model.to(dev)
    params = list(model.vae.parameters())
    opt = make_optimizer(model.vae.named_parameters(), args.lr, 0.0)
    gen = torch.Generator().manual_seed(args.seed + 1)
    step = 0
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        set_rng_state(gen, state["rng"])
        step = state["step"]
        log(f"[vae] resumed at step {step} from {run.state_path}")
    autocast = use_bf16(args.precision)
    size = cfg.image.size
    shard, vae_step = ctx.shard(args.batch), ctx.wrap(dist.compiled(model, ctx), vae_loss)
    log(f"[vae] {cfg.name}: {len(data)} images at {size}px, batch {args.batch}, "
        f"{args.steps} steps, lr {args.lr}, {'bf16 autocast' if autocast else 'fp32'}, "
        f"{torch.get_num_threads()} threads, {dist.where(ctx)} -> {run.dir}")

    def save(step):
        run.save_state({"stage": "vae", "step": step, "finished": False, "fingerprint": fp,
                        "config": cfg.to_dict(),
                        "tokenizer": str(tok) if isinstance(tok, Path) else tok,
                        "model": model.state_dict(), "optimizer": opt.state_dict(),
                        "rng": rng_state(gen)})

    model.train()
    with run:
        run.start_clock(step)
        while step < args.steps:
            set_lr(opt, lr_at(step, args.steps, args.lr, warmup=min(100, args.steps // 10 + 1)))
            idx = batch_indices(len(data), args.batch, step, args.seed)
            x = data.image_batch((idx if shard is None else shard.take(idx)).numpy(), size, dev)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=autocast):
                loss, parts = vae_step(x, gen, args.kl_weight, shard=shard)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            step += 1
            loss_v, parts = run.sync(loss.item(), parts)  # torchrun: the global batch's
            run.progress(step, args.steps, loss_v, parts)
            if step < args.steps and run.checkpoint_due(step):
                save(step)
                run.maybe_stop(step)
    if not ctx.is_main:  # rank 0 measures and writes the checkpoint
        ctx.barrier()
        return 0

    # Latent statistics -> vae.scale / vae.shift (latents ~ zero mean, unit variance).
    model.eval()
    with torch.no_grad():
        n = min(len(data), args.stats_samples)
        means = []
        for s in range(0, n, 256):
            x = data.image_batch(list(range(s, min(n, s + 256))), size, dev)
            means.append(model.vae.moments(x)[0])
        m = torch.cat(means).double()
        shift, std = m.mean().item(), m.std().item()
        cfg.vae.shift, cfg.vae.scale = float(shift), float(1.0 / std)
        model.vae.shift, model.vae.scale = cfg.vae.shift, cfg.vae.scale
        x = data.image_batch(list(range(min(n, 256))), size, dev)
        rec = model.vae_decode(model.vae_encode(x)).clamp(-1, 1)
        mse = (rec - x).square().mean().item()
        psnr = 10 * math.log10(4.0 / max(mse, 1e-12))
        l1 = (rec - x).abs().mean().item()
    summary = {"latent_shift": cfg.vae.shift, "latent_scale": cfg.vae.scale,
               "reconstruction_psnr_db": psnr, "reconstruction_l1": l1,
               "max_abs_error_8bit": ((rec - x).abs().max().item() * 127.5)}
    log(f"[vae] latents: shift {shift:.4f}, std {std:.4f} -> scale {cfg.vae.scale:.4f}; "
        f"reconstruction PSNR {psnr:.2f} dB, L1 {l1:.4f} (first {x.shape[0]} images)")
    write_checkpoint(model, cfg, run.dir, tok)
    finish(run, step, fp, summary)
    ctx.barrier()
    return 0


# ---- stage 2: Transfusion --------------------------------------------------------------

def fresh_except_vae(cfg, model, seed: int):
    """A model of `cfg` initialised from `seed` (as the VAE stage does) with `model`'s VAE:
    `--only-vae` trains a new transformer on an existing, trained VAE."""
    torch.manual_seed(seed)
    fresh = TransfusionModel(cfg)
    fresh.vae.load_state_dict(model.vae.state_dict())
    return fresh


def with_patch_conditioning(cfg, model, position: bool, timestep: bool, trained: bool = False):
    """`model` with the format-2 patch conditioning asked for (docs/checkpoint.md): the config
    becomes format 2 and the new tensors start at their initial values (`PatchLayers`); every
    other weight is `model`'s. `trained`: `model`'s transformer is already trained (a
    continued run), so `patch.pos_embed` starts at zero too and the model starts as exactly
    its format-1 self. Returns `model` itself when nothing is added."""
    if not (position or timestep) or (cfg.patch.position_embedding, cfg.patch.timestep_tokens) \
            == (position, timestep):
        return model
    cfg.format_version = 2
    cfg.patch.position_embedding = cfg.patch.position_embedding or position
    cfg.patch.timestep_tokens = cfg.patch.timestep_tokens or timestep
    cfg.validate()
    bigger = TransfusionModel(cfg)
    missing, unexpected = bigger.load_state_dict(model.state_dict(), strict=False)
    new = {n for n in missing if n == "patch.pos_embed" or n.startswith("patch.time_proj.")}
    if unexpected or set(missing) != new:
        raise TrainError(f"adding patch conditioning: unexpected tensors {sorted(unexpected)}, "
                         f"missing {sorted(set(missing) - new)}")
    if trained and bigger.patch.pos_embed is not None and "patch.pos_embed" in new:
        with torch.no_grad():
            bigger.patch.pos_embed.zero_()
    return bigger


def train_transfusion(args) -> int:
    run = Run(args, "transfusion")
    if skip_if_finished(run):
        return 0
    if args.min_snr_gamma > 0 and args.snr_cap > 0:
        raise TrainError("--min-snr-gamma and --snr-cap are two weightings of L_diff: "
                         "pass at most one")
    src = previous_stage(args, "transfusion")
    cfg, model = load_checkpoint(src)
    if args.only_vae:
        model = fresh_except_vae(cfg, model, args.seed)
    tok = stage_tokenizer(src) if args.tokenizer is None else Path(args.tokenizer)
    d = cfg.diffusion
    if args.prediction:
        d.prediction = args.prediction
    if args.schedule:
        d.schedule = args.schedule
    d.sampler, d.steps, d.guidance, d.guidance_distilled = "ddim", args.sample_steps, \
        args.guidance, False
    # A checkpoint given with --from (without --only-vae) brings a trained transformer.
    model = with_patch_conditioning(cfg, model, args.position_embedding, args.timestep_tokens,
                                    trained=args.source is not None and not args.only_vae)
    cfg.validate()
    resolve_hparams(args, cfg, "transfusion")
    fp = fingerprint_of(args, ("prediction", "schedule", "lam", "image_first", "caption_drop",
                               "caption_max_t", "ema", "min_snr_gamma", "snr_cap",
                               "caption_diffusion",
                               "position_embedding", "timestep_tokens"))
    fp["source"] = str(src.resolve())
    fp["only_vae"] = bool(args.only_vae)
    state = run.load_state()
    check_resume(run, args, state, fp)
    if state is not None and not state.get("finished"):
        for key in ("position_embedding", "timestep_tokens"):
            if state["fingerprint"].get(key, False) != fp[key]:
                raise TrainError(f"--resume: the interrupted run has {key} = "
                                 f"{state['fingerprint'].get(key, False)}, now {fp[key]}: "
                                 "the architecture cannot change mid-run")
    ctx = dist.current()
    ctx.start()
    data = open_data(args, cfg, tok)
    model.to(ctx.device)
    latents = ctx.main_first(lambda: cached_latents(
        model, data, cfg.image.size, Path(args.out) / "cache", log=log, write=ctx.is_main))
    log(f"[transfusion] latents {tuple(latents.shape)}: mean {latents.mean():.3f}, "
        f"std {latents.std():.3f}")
    for p in model.vae.parameters():
        p.requires_grad_(False)
    named = [(n, p) for n, p in model.named_parameters() if not n.startswith("vae.")]
    params = [p for _, p in named]
    opt = make_optimizer(named, args.lr, args.weight_decay)
    ema = Ema(params, args.ema)
    gen = torch.Generator().manual_seed(args.seed + 2)
    schedule = Schedule(cfg.diffusion)
    step = 0
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        for s, v in zip(ema.shadow, state["ema"]):
            s.copy_(v)
        set_rng_state(gen, state["rng"])
        step = state["step"]
        log(f"[transfusion] resumed at step {step} from {run.state_path}")
    autocast = use_bf16(args.precision)
    shard, tf_step = ctx.shard(args.batch), ctx.wrap(dist.compiled(model, ctx), transfusion_loss)
    n_params = sum(p.numel() for p in params)
    log(f"[transfusion] {cfg.name}: {n_params / 1e6:.2f}M trainable, {len(data)} samples, "
        f"batch {args.batch}, {args.steps} steps, lr {args.lr}, {d.schedule}/{d.prediction}, "
        f"lambda {args.lam}, image-first {args.image_first}, caption drop {args.caption_drop}, "
        f"min-SNR gamma {args.min_snr_gamma or 'off'}, SNR cap {args.snr_cap or 'off'}, "
        f"captioning samples in L_diff: {args.caption_diffusion}, patch position embedding: "
        f"{cfg.patch.position_embedding}, timestep tokens: {cfg.patch.timestep_tokens}, "
        f"{'bf16 autocast' if autocast else 'fp32'}, {torch.get_num_threads()} threads, "
        f"{dist.where(ctx)} -> {run.dir}")

    def save(step):
        run.save_state({"stage": "transfusion", "step": step, "finished": False,
                        "fingerprint": fp, "config": cfg.to_dict(),
                        "tokenizer": str(tok.resolve()) if isinstance(tok, Path) else tok,
                        "model": model.state_dict(),
                        "optimizer": opt.state_dict(), "ema": ema.shadow,
                        "rng": rng_state(gen)})

    model.train()
    with run:
        run.start_clock(step)
        while step < args.steps:
            set_lr(opt, lr_at(step, args.steps, args.lr, warmup=min(200, args.steps // 10 + 1)))
            idx = batch_indices(len(data), args.batch, step, args.seed)
            loss, parts = tf_step(
                schedule, latents[idx], captions_of(data, idx), gen, lam=args.lam,
                image_first=args.image_first, drop=args.caption_drop,
                caption_max_t=args.caption_max_t, autocast=autocast,
                min_snr_gamma=args.min_snr_gamma, snr_cap=args.snr_cap,
                caption_diffusion=args.caption_diffusion,
                shard=shard)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            ema.update(step)
            step += 1
            loss_v, parts = run.sync(loss.item(), parts)  # torchrun: the global batch's
            run.progress(step, args.steps, loss_v, parts)
            if step < args.steps and run.checkpoint_due(step):
                save(step)
                run.maybe_stop(step)
    if args.ema > 0:
        ema.copy_to(params)
    write_checkpoint(model, cfg, run.dir, tok)
    finish(run, step, fp, {"final_loss": parts, "ema": args.ema})
    ctx.barrier()
    return 0


# ---- stage 3: distillation --------------------------------------------------------------

def load_student_start(student, source: str) -> None:
    """Start the first round's student from the weights of `source` (a checkpoint of the same
    architecture, e.g. an earlier student of this teacher, to continue distilling it) instead of
    its teacher's. The VAE stays the teacher's: the cached latents are the teacher VAE's."""
    cfg, init = load_checkpoint(source)
    mine = student.state_dict()
    theirs = {k: v for k, v in init.state_dict().items() if not k.startswith("vae.")}
    wrong = [f"{k}: expected shape {list(mine[k].shape)}, found {list(v.shape)}"
             for k, v in theirs.items() if k in mine and mine[k].shape != v.shape]
    missing = [f"missing tensor {k}" for k in sorted(mine)
               if not k.startswith("vae.") and k not in theirs]
    unexpected = [f"unexpected tensor {k}" for k in sorted(theirs) if k not in mine]
    if wrong or missing or unexpected:
        raise TrainError(f"--student-from {source}: not the teacher's architecture ("
                         + "; ".join(wrong + missing + unexpected) + ")")
    student.load_state_dict(theirs, strict=False)
    log(f"[distill] first round's student starts from {source} (the teacher's VAE kept)")


def train_distill(args) -> int:
    run = Run(args, "distill")
    if skip_if_finished(run):
        return 0
    src = previous_stage(args, "distill")
    tcfg, teacher = load_checkpoint(src)
    tok = stage_tokenizer(src) if args.tokenizer is None else Path(args.tokenizer)
    guidance = args.guidance if args.guidance is not None else tcfg.diffusion.guidance
    teacher_steps = args.teacher_steps or tcfg.diffusion.steps
    try:
        plan = D.rounds(teacher_steps, args.student_steps, args.teacher_substeps)
    except ValueError as e:
        raise TrainError(f"--teacher-steps/--student-steps/--teacher-substeps: {e}") from e
    schedule = Schedule(tcfg.diffusion)
    if schedule.is_vp:
        for n in plan:
            D.check_nested(schedule.T, n, args.teacher_substeps)
    resolve_hparams(args, tcfg, "distill")
    per_round = D.split_steps(args.steps, len(plan), args.round_steps)
    fp = fingerprint_of(args, ("teacher_steps", "student_steps", "guidance", "lam",
                               "caption_frac", "caption_max_t", "student_prediction",
                               "student_from", "teacher_substeps"))
    fp.update(source=str(src.resolve()), plan=plan, per_round=per_round, guidance=guidance)
    state = run.load_state()
    check_resume(run, args, state, fp)
    ctx = dist.current()
    ctx.start()
    if ctx.device.type == "cuda":
        # The teacher runs on each batch's distillation samples, a count that changes from
        # step to step: cuDNN's autotuner would search again for every new batch size (with
        # it on, distillation steps at batch 256 took 0.5-0.95 s on an H200, teacher steps
        # at batch 512 0.12 s).
        torch.backends.cudnn.benchmark = False
    data = open_data(args, tcfg, tok)
    dev, shard = ctx.device, ctx.shard(args.batch)
    teacher = dist.compiled(teacher.to(dev), ctx)
    latents = ctx.main_first(lambda: cached_latents(
        teacher, data, tcfg.image.size, Path(args.out) / "cache", log=log, write=ctx.is_main))
    autocast = use_bf16(args.precision)
    log(f"[distill] progressive distillation {teacher_steps} -> {' -> '.join(map(str, plan))} "
        f"steps ({args.teacher_substeps} teacher steps per student step), guidance {guidance} "
        f"folded in; {per_round} steps per round, batch "
        f"{args.batch}, lr {args.lr}, {'bf16 autocast' if autocast else 'fp32'}, "
        f"{dist.where(ctx)} -> {run.dir}")

    r, step_in_round, gen = 0, 0, torch.Generator().manual_seed(args.seed + 3)
    if state is not None:
        r, step_in_round = state["round"], state["step_in_round"]
        set_rng_state(gen, state["rng"])
        log(f"[distill] resumed at round {r} ({plan[r]} steps), step {step_in_round}")

    def round_dir(n):
        return run.dir / "rounds" / str(n)

    total_steps = sum(per_round)
    with run:
        run.start_clock(sum(per_round[:r]) + step_in_round)
        while r < len(plan):
            n = plan[r]
            if r == 0:
                cur_teacher, t_guidance = teacher, guidance
            else:
                _, cur_teacher = load_checkpoint(round_dir(plan[r - 1]))
                cur_teacher = dist.compiled(cur_teacher.to(dev), ctx)
                t_guidance = 1.0
            cur_teacher.eval()
            for p in cur_teacher.parameters():
                p.requires_grad_(False)
            scfg = D.student_config(tcfg, n, args.student_prediction)
            student = TransfusionModel(scfg).to(dev)
            student.load_state_dict(cur_teacher.state_dict())
            if r == 0 and args.student_from:
                load_student_start(student, args.student_from)
            for p in student.vae.parameters():
                p.requires_grad_(False)
            named = [(k, p) for k, p in student.named_parameters() if not k.startswith("vae.")]
            params = [p for _, p in named]
            opt = make_optimizer(named, args.lr, 0.0)
            if state is not None and state.get("round") == r and "model" in state:
                student.load_state_dict(state["model"])
                opt.load_state_dict(state["optimizer"])
            state = None
            student.train()
            K = per_round[r]
            distill_step = ctx.wrap(dist.compiled(student, ctx), D.distill_loss)

            def save(step_in_round):
                run.save_state({"stage": "distill", "round": r, "step_in_round": step_in_round,
                                "finished": False, "fingerprint": fp,
                                "model": student.state_dict(), "optimizer": opt.state_dict(),
                                "rng": rng_state(gen)})

            while step_in_round < K:
                # Per round: short warm-up, then linear decay to 0 (Salimans & Ho).
                w = min(20, K // 10 + 1)
                lr = args.lr * min((step_in_round + 1) / w, (K - step_in_round) / max(1, K - w))
                set_lr(opt, lr)
                g = sum(per_round[:r]) + step_in_round
                idx = batch_indices(len(data), args.batch, g, args.seed)
                loss, parts = distill_step(
                    cur_teacher, schedule, n, latents[idx], captions_of(data, idx), gen,
                    teacher_guidance=t_guidance, lam=args.lam, caption_frac=args.caption_frac,
                    caption_max_t=args.caption_max_t, autocast=autocast, shard=shard,
                    substeps=args.teacher_substeps)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                step_in_round += 1
                loss_v, parts = run.sync(loss.item(), parts)
                run.progress(g + 1, total_steps, loss_v, parts, f" round {n} steps")
                if step_in_round < K and run.checkpoint_due(g + 1):
                    save(step_in_round)
                    run.maybe_stop(g + 1)
            write_checkpoint(student, scfg, round_dir(n), tok)
            ctx.barrier()  # the next round's teacher is read back from round_dir(n)
            log(f"[distill] round {r + 1}/{len(plan)} done: {n}-step student in {round_dir(n)}")
            r, step_in_round = r + 1, 0
            if r < len(plan):
                run.save_state({"stage": "distill", "round": r, "step_in_round": 0,
                                "finished": False, "fingerprint": fp, "rng": rng_state(gen)})
                if run.signal is not None or (args.stop_at is not None
                                              and sum(per_round[:r]) >= args.stop_at):
                    run.maybe_stop(sum(per_round[:r]))

    if not ctx.is_main:  # rank 0 measures and writes the student
        ctx.barrier()
        return 0
    # The final student is the last round's; measure it against the CFG teacher.
    final = round_dir(plan[-1])
    scfg, student = load_checkpoint(final)
    student.to(dev)
    write_checkpoint(student, scfg, run.dir, tok)
    report = D.measure_student(args, teacher, student, data, latents, teacher_steps, guidance,
                             scfg, autocast)
    (run.dir / "distill_report.json").write_text(json.dumps(report, indent=2) + "\n")
    log(f"[distill] student vs teacher: {json.dumps(report)}")
    finish(run, total_steps, fp, {"plan": plan, "per_round": per_round, "report": report})
    ctx.barrier()
    return 0


# ---- recipe, sample ---------------------------------------------------------------------

def recipe(args) -> int:
    t0 = time.perf_counter()
    check_recipe_batches(args)
    for stage, steps in (("vae", args.vae_steps), ("transfusion", args.transfusion_steps),
                         ("distill", args.distill_steps)):
        a = copy.copy(args)
        a.steps, a.batch, a.lr, a.resume = steps, None, None, True
        a.precision = args.precision or "auto"
        code = STAGE_FN[stage](a)
        if code:
            return code
    log(f"recipe done in {fmt_time(time.perf_counter() - t0)} (this invocation): "
        f"{Path(args.out) / 'student'}")
    return 0


STAGE_FN = {"vae": train_vae, "transfusion": train_transfusion, "distill": train_distill}


# ---- CLI --------------------------------------------------------------------------------

def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m transfusion_ref.train",
                                description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    def common(q, stage=None):
        q.add_argument("--data", required=True, help="shapes.bin or its directory")
        q.add_argument("--out", required=True, help="run directory")
        q.add_argument("--seed", type=int, default=0)
        q.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                       help=f"torch threads (default {DEFAULT_THREADS}; README: why)")
        q.add_argument("--resume", action="store_true", help="continue an interrupted stage")
        q.add_argument("--save-every", type=int, default=200, help="state save interval (steps)")
        q.add_argument("--log-every", type=int, default=10)
        q.add_argument("--limit", type=int, default=None, help="use the first N samples only")
        q.add_argument("--tokenizer", default=None, help="tokenizer.json to write with the "
                       "checkpoints (default: --init's, else built from the dataset vocabulary)")
        q.add_argument("--stop-at", type=int, default=None, help=argparse.SUPPRESS)
        device_opts(q)
        q.add_argument("--compile", action="store_true",
                       help="torch.compile the decoder layers and ResBlocks (default off)")
        if stage is not None:
            q.add_argument("--steps", type=int, default=None)
            q.add_argument("--batch", type=int, default=None)
            q.add_argument("--lr", type=float, default=None)
            q.add_argument("--precision", choices=("auto", "fp32", "bf16"),
                           default="auto",
                           help="bf16 autocast for the matrix products (auto: when the CPU "
                           "has native bf16)")

    def device_opts(q):
        q.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                       help="auto (default): CUDA when a GPU is usable, else the CPU; under "
                       "torchrun each process takes the GPU of its LOCAL_RANK")

    def base(q):
        src = q.add_mutually_exclusive_group()
        src.add_argument("--preset", choices=PRESETS, default="shapes64")
        src.add_argument("--init", default=None,
                         help="checkpoint whose config.json (and tokenizer.json) to start from")

    def transfusion_opts(q, recipe=False):
        q.add_argument("--prediction", choices=("epsilon", "v", "x0", "flow"), default="v",
                       help="what the network predicts (default v; README: why not epsilon)")
        q.add_argument("--schedule", choices=("cosine", "linear", "flow"), default=None)
        q.add_argument("--lam", type=float, default=5.0, help="lambda of L_LM + lambda L_diff")
        q.add_argument("--image-first", type=float, default=0.2)
        q.add_argument("--caption-drop", type=float, default=0.1)
        q.add_argument("--caption-max-t", type=float, default=0.5,
                       help="noise cap of image-first samples (fraction of the schedule)")
        q.add_argument("--ema", type=float, default=0.999)
        q.add_argument("--weight-decay", type=float, default=0.01)
        q.add_argument("--min-snr-gamma", type=float, default=0.0,
                       help="Min-SNR-gamma weighting of the diffusion loss (0: unweighted)")
        q.add_argument("--snr-cap", type=float, default=0.0,
                       help="cap the x0-space weight of the diffusion loss at this value, "
                       "leaving lower weights as they are (0: off; not with --min-snr-gamma)")
        q.add_argument("--caption-diffusion", action=argparse.BooleanOptionalAction,
                       default=False, help="image-first (captioning) samples in L_diff too")
        q.add_argument("--position-embedding", action=argparse.BooleanOptionalAction,
                       default=True, help="learned 2-D cell position of each patch vector "
                       "(config format 2, tensor patch.pos_embed)")
        q.add_argument("--timestep-tokens", action=argparse.BooleanOptionalAction,
                       default=True, help="the timestep embedding added to each patch vector "
                       "(config format 2, tensors patch.time_proj.*)")
        q.add_argument("--sample-steps", type=int, default=16,
                       help="the teacher's recommended steps (config diffusion.steps)")
        if not recipe:
            q.add_argument("--guidance", type=float, default=3.0,
                           help="the teacher's CFG scale (config diffusion.guidance)")

    def distill_opts(q):
        q.add_argument("--teacher-steps", type=int, default=None,
                       help="teacher DDIM steps of the first round (default: its config's)")
        q.add_argument("--student-steps", type=int, default=4)
        q.add_argument("--teacher-substeps", type=int, default=2,
                       help="teacher DDIM steps per student step in each round (default 2: "
                       "16 -> 8 -> 4; 4: 16 -> 4 in one round, twice the teacher evaluations "
                       "per target)")
        q.add_argument("--caption-frac", type=float, default=0.2,
                       help="share of image-first captioning sequences (LM loss only)")
        q.add_argument("--student-prediction", default=None,
                       choices=("epsilon", "v", "x0", "flow"))
        q.add_argument("--round-steps", default=None, help="steps per round, comma-separated")
        q.add_argument("--student-from", default=None,
                       help="checkpoint the first round's student starts from instead of its "
                       "teacher's weights (same architecture; e.g. to continue distilling a "
                       "student)")
        q.add_argument("--measure-samples", type=int, default=64,
                       help="captions for the student-vs-teacher measurement (0: skip)")
        q.add_argument("--reference-steps", type=int, default=32,
                       help="teacher DDIM steps (with CFG) of the measurement's reference")

    q = sub.add_parser("vae", help="stage 1: the VAE -> RUN/vae")
    common(q, "vae")
    base(q)
    q.add_argument("--kl-weight", type=float, default=1e-4)
    q.add_argument("--stats-samples", type=int, default=2048)

    q = sub.add_parser("transfusion", help="stage 2: L_LM + lambda L_diff -> RUN/teacher")
    common(q, "transfusion")
    q.add_argument("--from", dest="source", default=None, help="VAE checkpoint (default RUN/vae)")
    q.add_argument("--only-vae", action="store_true",
                   help="take only the VAE of --from; every other weight starts fresh from --seed")
    transfusion_opts(q)

    q = sub.add_parser("distill", help="stage 3: guidance + step distillation -> RUN/student")
    common(q, "distill")
    q.add_argument("--from", dest="source", default=None,
                   help="teacher checkpoint (default RUN/teacher)")
    q.add_argument("--lam", type=float, default=5.0)
    q.add_argument("--caption-max-t", type=float, default=0.5)
    q.add_argument("--guidance", type=float, default=None,
                   help="CFG scale folded into the student (default: the teacher config's)")
    distill_opts(q)

    q = sub.add_parser("recipe", help="all three stages in order, resuming where it stopped")
    common(q)
    base(q)
    q.add_argument("--precision", choices=("auto", "fp32", "bf16"), default=None)
    q.add_argument("--vae-steps", type=int, default=None)
    q.add_argument("--transfusion-steps", type=int, default=None)
    q.add_argument("--distill-steps", type=int, default=None)
    q.add_argument("--kl-weight", type=float, default=1e-4)
    q.add_argument("--stats-samples", type=int, default=2048)
    q.add_argument("--guidance", type=float, default=3.0)
    transfusion_opts(q, recipe=True)
    distill_opts(q)
    q.set_defaults(source=None, only_vae=False)

    q = sub.add_parser("sample", help="images of the first captions of a dataset (PNG grid)")
    q.add_argument("checkpoint")
    q.add_argument("--data", required=True)
    q.add_argument("-o", "--output", required=True)
    q.add_argument("--count", type=int, default=16)
    q.add_argument("--steps", type=int, default=None)
    q.add_argument("--guidance", type=float, default=None)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--threads", type=int, default=DEFAULT_THREADS)
    device_opts(q)
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    set_threads(args.threads)
    try:
        dist.setup(args)  # --device, --compile, torchrun's ranks (README "GPUs")
        if args.command == "recipe":
            return recipe(args)
        if args.command == "sample":
            return sample_cmd(args)
        return STAGE_FN[args.command](args)
    except Stopped as s:
        return s.code
    except (TrainError, DataError, ConfigError, CheckpointError) as e:
        dist.log_error(f"error: {e}")
        return 1
    finally:
        dist.current().finish()


if __name__ == "__main__":
    sys.exit(main())
