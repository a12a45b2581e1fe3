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
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import torch

from . import distill as D
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import PRESETS, Config, ConfigError, preset
from .data import DataError, Shapes, batch_indices, cached_latents, tokenizer_json
from .data import resolve as resolve_data
from .diffusion import Schedule
from .losses import transfusion_loss, vae_loss
from .model import TransfusionModel

STAGES = ("vae", "transfusion", "distill")
STAGE_DIR = {"vae": "vae", "transfusion": "teacher", "distill": "student"}
STATE_FILE = "state.pt"
# One thread: with 2 the step times were 2.5-6x *slower* on the shared 2-core machine (OpenMP
# barriers stall whenever the other thread is descheduled); README "Time budget".
DEFAULT_THREADS = 1
TOKENIZER_FILE = "tokenizer.json"

# Per-preset defaults: (steps, batch, lr). shapes64 is budgeted for <= 2.5 h on this 2-core
# machine with one thread (tools/train/README.md "Time budget"); tiny is for tests and smoke runs.
DEFAULTS = {
    "shapes64": {"vae": (3000, 32, 1e-3), "transfusion": (11000, 48, 5e-4),
                 "distill": (2000, 32, 1e-4)},
    "tiny": {"vae": (200, 16, 2e-3), "transfusion": (300, 16, 1e-3), "distill": (90, 16, 2e-4)},
}


class Stopped(Exception):
    """Training stopped early (signal or --stop-at) after saving its state."""

    def __init__(self, code: int):
        super().__init__(code)
        self.code = code


class TrainError(RuntimeError):
    pass


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def fmt_time(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


# ---- run infrastructure -----------------------------------------------------------------

class Run:
    """One stage's directory, state file, signal handling and progress line."""

    def __init__(self, args, stage: str):
        self.args = args
        self.stage = stage
        self.root = Path(args.out)
        self.dir = self.root / STAGE_DIR[stage]
        self.state_path = self.dir / STATE_FILE
        self.signal = None
        self._old = {}
        self.t0 = None
        self.step0 = 0

    def __enter__(self):
        def handler(signum, frame):
            if self.signal is not None:  # second signal: stop now (the last state is valid)
                raise KeyboardInterrupt
            self.signal = signum
            log(f"[{self.stage}] signal {signal.Signals(signum).name}: saving state after "
                "this step (send again to abort without saving)")
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, handler)
            except ValueError:  # not the main thread (tests): no handlers
                pass
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False

    # state ---------------------------------------------------------------------------------
    def load_state(self):
        if not self.state_path.is_file():
            return None
        return torch.load(self.state_path, weights_only=False)

    def save_state(self, state: dict) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_name(STATE_FILE + ".tmp")
        torch.save(state, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, self.state_path)

    def finished(self) -> bool:
        st = self.load_state() if self.state_path.is_file() else None
        return bool(st and st.get("finished")) and (self.dir / "model.safetensors").is_file()

    # progress ------------------------------------------------------------------------------
    def start_clock(self, step0: int):
        self.t0, self.step0 = time.perf_counter(), step0

    def progress(self, step: int, total: int, loss: float, parts: dict, extra: str = ""):
        """`step` = steps done. Every --log-every steps, the first and the last."""
        every = self.args.log_every
        if not (step == self.step0 + 1 or step % every == 0 or step == total):
            return
        dt = time.perf_counter() - self.t0
        done = step - self.step0
        rate = done / dt if dt > 0 else 0.0
        eta = (total - step) / rate if rate > 0 else float("nan")
        p = " ".join(f"{k} {v:.4f}" for k, v in parts.items())
        log(f"[{self.stage}] step {step:>6}/{total} | loss {loss:.4f} ({p}){extra} | "
            f"{rate:.2f} it/s {1 / rate if rate else 0:.2f} s/step | "
            f"elapsed {fmt_time(dt)} ETA {fmt_time(eta) if eta == eta else '?'}")

    def checkpoint_due(self, step: int) -> bool:
        """After step `step` (steps done): save? Raises Stopped after saving when asked to."""
        a = self.args
        return (step % a.save_every == 0 or self.signal is not None
                or (a.stop_at is not None and step >= a.stop_at))

    def maybe_stop(self, step: int):
        if self.signal is not None:
            log(f"[{self.stage}] stopped at step {step}; state in {self.state_path} "
                "(continue with --resume)")
            raise Stopped(128 + int(self.signal))
        if self.args.stop_at is not None and step >= self.args.stop_at:
            log(f"[{self.stage}] --stop-at {self.args.stop_at}: stopped at step {step}")
            raise Stopped(0)


def set_threads(n: int) -> None:
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set in this process
        pass
    torch.use_deterministic_algorithms(True, warn_only=True)


def use_bf16(precision: str) -> bool:
    if precision == "fp32":
        return False
    supported = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    if precision == "bf16" and not supported:
        log("warning: this CPU has no native bf16; bf16 autocast will be slow")
    return precision == "bf16" or supported


def lr_at(step: int, total: int, lr: float, warmup: int, floor: float = 0.1) -> float:
    """Linear warm-up, then cosine decay to `floor * lr`."""
    if step < warmup:
        return lr * (step + 1) / warmup
    p = min(1.0, (step - warmup) / max(1, total - warmup))
    return lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * p)))


def set_lr(opt, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr


def make_optimizer(named_params, lr: float, weight_decay: float):
    """AdamW; no weight decay on norms, biases and the token embedding."""
    decay, no_decay = [], []
    for name, p in named_params:
        (decay if p.dim() >= 2 and "embed" not in name else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.99), eps=1e-8)


class Ema:
    """Exponential moving average of parameters, decay warmed up as (1 + s) / (10 + s)."""

    def __init__(self, params, decay: float):
        self.params = list(params)
        self.decay = decay
        self.shadow = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def update(self, step: int):
        d = min(self.decay, (1 + step) / (10 + step))
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], 1.0 - d)

    @torch.no_grad()
    def copy_to(self, params):
        for s, p in zip(self.shadow, params):
            p.copy_(s)


def captions_of(data: Shapes, idx) -> list[list[int]]:
    return [data.tokens[i, : int(data.lengths[i])].tolist() for i in idx.tolist()]


def write_checkpoint(model, cfg: Config, directory: Path, tokenizer: dict | Path) -> None:
    save_checkpoint(model, cfg, directory)
    tmp = directory / (TOKENIZER_FILE + ".tmp")
    if isinstance(tokenizer, dict):
        tmp.write_text(json.dumps(tokenizer, indent=2) + "\n")
    else:
        shutil.copyfile(tokenizer, tmp)
    os.replace(tmp, directory / TOKENIZER_FILE)


# ---- config / inputs --------------------------------------------------------------------

def base_config(args, data: Shapes):
    """(config, tokenizer) for a fresh run: --init CKPT (its config.json and tokenizer.json)
    or --preset; the tokenizer from --tokenizer, --init, or built from the dataset's vocab."""
    if args.init:
        cfg = Config.load(Path(args.init) / "config.json")
        tok = Path(args.init) / TOKENIZER_FILE
        tok = tok if tok.is_file() else None
    else:
        cfg = preset(args.preset)
        tok = None
    if args.tokenizer:
        tok = Path(args.tokenizer)
    if tok is None:
        log(f"tokenizer.json built from {data.path}'s vocabulary (same document as "
            "`transfusion init` writes)")
        tok = tokenizer_json(data.header)
    return cfg, tok


def stage_tokenizer(directory: Path):
    tok = directory / TOKENIZER_FILE
    if not tok.is_file():
        raise TrainError(f"{directory}: no {TOKENIZER_FILE}")
    return tok


def open_data(args, cfg, tok) -> Shapes:
    data = Shapes.open(args.data, limit=args.limit)
    data.check_vocab(cfg, tok if isinstance(tok, Path) else None)
    return data


def previous_stage(args, stage: str) -> Path:
    """The input checkpoint of `transfusion` / `distill`: --from, else the previous stage's
    output in the run directory (which must be finished)."""
    if args.source:
        return Path(args.source)
    prev = {"transfusion": "vae", "distill": "transfusion"}[stage]
    d = Path(args.out) / STAGE_DIR[prev]
    st = d / STATE_FILE
    ok = st.is_file() and torch.load(st, weights_only=False).get("finished")
    if not ok or not (d / "model.safetensors").is_file():
        raise TrainError(f"{d}: the {prev} stage has not finished (run it first, or pass "
                         f"--from CKPT)")
    return d


def resolve_hparams(args, cfg, stage: str):
    name = cfg.name if cfg.name in DEFAULTS else ("tiny" if cfg.image.size <= 32 else "shapes64")
    steps, batch, lr = DEFAULTS[name][stage]
    args.steps = args.steps or steps
    args.batch = args.batch or batch
    args.lr = args.lr or lr


def check_resume(run: Run, args, state, fingerprint: dict):
    if state is None:
        return
    if state.get("finished"):
        return
    if not args.resume:
        raise TrainError(f"{run.state_path} exists (an interrupted run): pass --resume to "
                         "continue it, or use another --out")
    old = state["fingerprint"]
    for key in ("seed", "batch", "data", "limit"):
        if old.get(key) != fingerprint.get(key):
            raise TrainError(f"--resume: {key} was {old.get(key)!r}, now "
                             f"{fingerprint.get(key)!r}")
    changed = [k for k in fingerprint if old.get(k) != fingerprint[k]]
    if changed:
        log(f"[{run.stage}] warning: resuming with changed settings {changed}: the result will "
            "not be bit-identical to an uninterrupted run")


def fingerprint_of(args, extra=()) -> dict:
    keys = ("seed", "batch", "steps", "lr", "limit", "precision", "threads") + tuple(extra)
    fp = {k: getattr(args, k) for k in keys}
    fp["data"] = str(resolve_data(args.data).resolve())
    return fp


def rng_state(gen: torch.Generator) -> dict:
    return {"gen": gen.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(gen: torch.Generator, st: dict) -> None:
    gen.set_state(st["gen"])
    torch.set_rng_state(st["torch"])


def skip_if_finished(run: Run) -> bool:
    if run.finished():
        log(f"[{run.stage}] already finished: {run.dir} (delete it to train this stage again)")
        return True
    return False


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
    torch.manual_seed(args.seed)
    model = TransfusionModel(cfg)
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
    log(f"[vae] {cfg.name}: {len(data)} images at {size}px, batch {args.batch}, "
        f"{args.steps} steps, lr {args.lr}, {'bf16 autocast' if autocast else 'fp32'}, "
        f"{torch.get_num_threads()} threads -> {run.dir}")

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
            x = data.image_batch(idx.numpy(), size)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                loss, parts = vae_loss(model, x, gen, args.kl_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            step += 1
            run.progress(step, args.steps, loss.item(), parts)
            if step < args.steps and run.checkpoint_due(step):
                save(step)
                run.maybe_stop(step)

    # Latent statistics -> vae.scale / vae.shift (latents ~ zero mean, unit variance).
    model.eval()
    with torch.no_grad():
        n = min(len(data), args.stats_samples)
        means = []
        for s in range(0, n, 256):
            x = data.image_batch(list(range(s, min(n, s + 256))), size)
            means.append(model.vae.moments(x)[0])
        m = torch.cat(means).double()
        shift, std = m.mean().item(), m.std().item()
        cfg.vae.shift, cfg.vae.scale = float(shift), float(1.0 / std)
        model.vae.shift, model.vae.scale = cfg.vae.shift, cfg.vae.scale
        x = data.image_batch(list(range(min(n, 256))), size)
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
    return 0


def finish(run: Run, step: int, fp: dict, summary: dict) -> None:
    """Replace the (large) training state by a small 'finished' record."""
    summary = dict(summary, steps=step, seconds=round(time.perf_counter() - run.t0, 1)
                   if run.t0 else None)
    run.save_state({"stage": run.stage, "step": step, "finished": True, "fingerprint": fp,
                    "summary": summary})
    (run.dir / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    log(f"[{run.stage}] done: {run.dir}")


# ---- stage 2: Transfusion --------------------------------------------------------------

def train_transfusion(args) -> int:
    run = Run(args, "transfusion")
    if skip_if_finished(run):
        return 0
    src = previous_stage(args, "transfusion")
    cfg, model = load_checkpoint(src)
    tok = stage_tokenizer(src) if args.tokenizer is None else Path(args.tokenizer)
    d = cfg.diffusion
    if args.prediction:
        d.prediction = args.prediction
    if args.schedule:
        d.schedule = args.schedule
    d.sampler, d.steps, d.guidance, d.guidance_distilled = "ddim", args.sample_steps, \
        args.guidance, False
    cfg.validate()
    resolve_hparams(args, cfg, "transfusion")
    fp = fingerprint_of(args, ("prediction", "schedule", "lam", "image_first", "caption_drop",
                               "caption_max_t", "ema"))
    fp["source"] = str(src.resolve())
    state = run.load_state()
    check_resume(run, args, state, fp)
    data = open_data(args, cfg, tok)
    latents = cached_latents(model, data, cfg.image.size, Path(args.out) / "cache", log=log)
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
    n_params = sum(p.numel() for p in params)
    log(f"[transfusion] {cfg.name}: {n_params / 1e6:.2f}M trainable, {len(data)} samples, "
        f"batch {args.batch}, {args.steps} steps, lr {args.lr}, {d.schedule}/{d.prediction}, "
        f"lambda {args.lam}, image-first {args.image_first}, caption drop {args.caption_drop}, "
        f"{'bf16 autocast' if autocast else 'fp32'}, {torch.get_num_threads()} threads "
        f"-> {run.dir}")

    def save(step):
        run.save_state({"stage": "transfusion", "step": step, "finished": False,
                        "fingerprint": fp, "model": model.state_dict(),
                        "optimizer": opt.state_dict(), "ema": ema.shadow,
                        "rng": rng_state(gen)})

    model.train()
    with run:
        run.start_clock(step)
        while step < args.steps:
            set_lr(opt, lr_at(step, args.steps, args.lr, warmup=min(200, args.steps // 10 + 1)))
            idx = batch_indices(len(data), args.batch, step, args.seed)
            loss, parts = transfusion_loss(
                model, schedule, latents[idx], captions_of(data, idx), gen, lam=args.lam,
                image_first=args.image_first, drop=args.caption_drop,
                caption_max_t=args.caption_max_t, autocast=autocast)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            ema.update(step)
            step += 1
            run.progress(step, args.steps, loss.item(), parts)
            if step < args.steps and run.checkpoint_due(step):
                save(step)
                run.maybe_stop(step)
    if args.ema > 0:
        ema.copy_to(params)
    write_checkpoint(model, cfg, run.dir, tok)
    finish(run, step, fp, {"final_loss": parts, "ema": args.ema})
    return 0


# ---- stage 3: distillation --------------------------------------------------------------

def train_distill(args) -> int:
    run = Run(args, "distill")
    if skip_if_finished(run):
        return 0
    src = previous_stage(args, "distill")
    tcfg, teacher = load_checkpoint(src)
    tok = stage_tokenizer(src) if args.tokenizer is None else Path(args.tokenizer)
    guidance = args.guidance if args.guidance is not None else tcfg.diffusion.guidance
    teacher_steps = args.teacher_steps or tcfg.diffusion.steps
    plan = D.rounds(teacher_steps, args.student_steps)
    schedule = Schedule(tcfg.diffusion)
    if schedule.is_vp:
        for n in plan:
            D.check_nested(schedule.T, n)
    resolve_hparams(args, tcfg, "distill")
    per_round = split_steps(args.steps, len(plan), args.round_steps)
    fp = fingerprint_of(args, ("teacher_steps", "student_steps", "guidance", "lam",
                               "caption_frac", "caption_max_t", "student_prediction"))
    fp.update(source=str(src.resolve()), plan=plan, per_round=per_round, guidance=guidance)
    state = run.load_state()
    check_resume(run, args, state, fp)
    data = open_data(args, tcfg, tok)
    latents = cached_latents(teacher, data, tcfg.image.size, Path(args.out) / "cache", log=log)
    autocast = use_bf16(args.precision)
    log(f"[distill] progressive distillation {teacher_steps} -> {' -> '.join(map(str, plan))} "
        f"steps, guidance {guidance} folded in; {per_round} steps per round, batch "
        f"{args.batch}, lr {args.lr}, {'bf16 autocast' if autocast else 'fp32'} -> {run.dir}")

    r, step_in_round, gen = 0, 0, torch.Generator().manual_seed(args.seed + 3)
    if state is not None:
        r, step_in_round = state["round"], state["step_in_round"]
        set_rng_state(gen, state["rng"])
        log(f"[distill] resumed at round {r} ({plan[r]} steps), step {step_in_round}")

    def round_dir(n):
        return run.dir / "rounds" / str(n)

    def student_config(n):
        c = copy.deepcopy(tcfg)
        c.diffusion.steps, c.diffusion.sampler = n, "ddim"
        c.diffusion.guidance, c.diffusion.guidance_distilled = 1.0, True
        if args.student_prediction:
            c.diffusion.prediction = args.student_prediction
        c.validate()
        return c

    total_steps = sum(per_round)
    with run:
        run.start_clock(sum(per_round[:r]) + step_in_round)
        while r < len(plan):
            n = plan[r]
            if r == 0:
                cur_teacher, t_guidance = teacher, guidance
            else:
                _, cur_teacher = load_checkpoint(round_dir(plan[r - 1]))
                t_guidance = 1.0
            cur_teacher.eval()
            for p in cur_teacher.parameters():
                p.requires_grad_(False)
            scfg = student_config(n)
            student = TransfusionModel(scfg)
            student.load_state_dict(cur_teacher.state_dict())
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
                loss, parts = D.distill_loss(
                    student, cur_teacher, schedule, n, latents[idx], captions_of(data, idx), gen,
                    teacher_guidance=t_guidance, lam=args.lam, caption_frac=args.caption_frac,
                    caption_max_t=args.caption_max_t, autocast=autocast)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                step_in_round += 1
                run.progress(g + 1, total_steps, loss.item(), parts, f" round {n} steps")
                if step_in_round < K and run.checkpoint_due(g + 1):
                    save(step_in_round)
                    run.maybe_stop(g + 1)
            write_checkpoint(student, scfg, round_dir(n), tok)
            log(f"[distill] round {r + 1}/{len(plan)} done: {n}-step student in {round_dir(n)}")
            r, step_in_round = r + 1, 0
            if r < len(plan):
                run.save_state({"stage": "distill", "round": r, "step_in_round": 0,
                                "finished": False, "fingerprint": fp, "rng": rng_state(gen)})
                if run.signal is not None or (args.stop_at is not None
                                              and sum(per_round[:r]) >= args.stop_at):
                    run.maybe_stop(sum(per_round[:r]))

    # The final student is the last round's; measure it against the CFG teacher.
    final = round_dir(plan[-1])
    scfg, student = load_checkpoint(final)
    write_checkpoint(student, scfg, run.dir, tok)
    report = measure_student(args, teacher, student, data, latents, teacher_steps, guidance,
                             scfg, autocast)
    (run.dir / "distill_report.json").write_text(json.dumps(report, indent=2) + "\n")
    log(f"[distill] student vs teacher: {json.dumps(report)}")
    finish(run, total_steps, fp, {"plan": plan, "per_round": per_round, "report": report})
    return 0


def split_steps(total: int, rounds: int, explicit: str | None) -> list[int]:
    if explicit:
        steps = [int(s) for s in explicit.split(",")]
        if len(steps) != rounds:
            raise TrainError(f"--round-steps lists {len(steps)} rounds, the plan has {rounds}")
        return steps
    base = total // rounds
    return [base + (1 if i < total - base * rounds else 0) for i in range(rounds)]


def measure_student(args, teacher, student, data, latents, teacher_steps, guidance, scfg,
                    autocast):
    n = min(args.measure_samples, len(data))
    if n == 0:
        return {}
    idx = torch.arange(n)
    g = torch.Generator().manual_seed(1234)
    noise = torch.randn((n,) + tuple(latents.shape[1:]), generator=g)
    teacher.eval()
    student.eval()
    return D.measure(teacher, student, captions_of(data, idx), noise,
                     reference_steps=args.reference_steps, guidance=guidance,
                     teacher_steps=sorted({teacher_steps, scfg.diffusion.steps}, reverse=True),
                     student_steps=scfg.diffusion.steps, student_sampler=scfg.diffusion.sampler,
                     autocast=False)


# ---- recipe, sample ---------------------------------------------------------------------

def recipe(args) -> int:
    t0 = time.perf_counter()
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


def sample_cmd(args) -> int:
    cfg, model = load_checkpoint(args.checkpoint)
    model.eval()
    data = Shapes.open(args.data, limit=args.count)
    idx = torch.arange(min(args.count, len(data)))
    caps = captions_of(data, idx)
    g = torch.Generator().manual_seed(args.seed)
    noise = torch.randn((len(caps), cfg.vae.latent_channels, cfg.latent_size, cfg.latent_size),
                        generator=g)
    guidance = 1.0 if cfg.diffusion.guidance_distilled else (args.guidance or
                                                           cfg.diffusion.guidance)
    lat = D.sample(model, caps, noise, args.steps or cfg.diffusion.steps, guidance,
                   cfg.diffusion.sampler if cfg.diffusion.sampler in ("ddim", "lcm") else "ddim",
                   gen=g)
    with torch.no_grad():
        img = model.vae_decode(lat).clamp(-1, 1)
    write_png_grid(img, Path(args.output), per_row=8)
    words = data.header["vocab"]["tokens"]
    for i, c in enumerate(caps):
        print(f"{i}\t{' '.join(words[t] for t in c)}")
    log(f"wrote {args.output}")
    return 0


def write_png_grid(images: torch.Tensor, path: Path, per_row: int = 8) -> None:
    import struct
    import zlib
    B, _, H, W = images.shape
    rows = (B + per_row - 1) // per_row
    grid = torch.zeros(3, rows * H, per_row * W)
    for i in range(B):
        r, c = divmod(i, per_row)
        grid[:, r * H:(r + 1) * H, c * W:(c + 1) * W] = images[i]
    px = ((grid + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    raw = b"".join(b"\0" + px[y].tobytes() for y in range(px.shape[0]))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", px.shape[1], px.shape[0],
                                                             8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png)


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
        if stage is not None:
            q.add_argument("--steps", type=int, default=None)
            q.add_argument("--batch", type=int, default=None)
            q.add_argument("--lr", type=float, default=None)
            q.add_argument("--precision", choices=("auto", "fp32", "bf16"),
                           default="auto",
                           help="bf16 autocast for the matrix products (auto: when the CPU "
                           "has native bf16)")

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
        q.add_argument("--sample-steps", type=int, default=16,
                       help="the teacher's recommended steps (config diffusion.steps)")
        if not recipe:
            q.add_argument("--guidance", type=float, default=3.0,
                           help="the teacher's CFG scale (config diffusion.guidance)")

    def distill_opts(q):
        q.add_argument("--teacher-steps", type=int, default=None,
                       help="teacher DDIM steps of the first round (default: its config's)")
        q.add_argument("--student-steps", type=int, default=4)
        q.add_argument("--caption-frac", type=float, default=0.2,
                       help="share of image-first captioning sequences (LM loss only)")
        q.add_argument("--student-prediction", default=None,
                       choices=("epsilon", "v", "x0", "flow"))
        q.add_argument("--round-steps", default=None, help="steps per round, comma-separated")
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
    q.set_defaults(source=None)

    q = sub.add_parser("sample", help="images of the first captions of a dataset (PNG grid)")
    q.add_argument("checkpoint")
    q.add_argument("--data", required=True)
    q.add_argument("-o", "--output", required=True)
    q.add_argument("--count", type=int, default=16)
    q.add_argument("--steps", type=int, default=None)
    q.add_argument("--guidance", type=float, default=None)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--threads", type=int, default=DEFAULT_THREADS)
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    set_threads(args.threads)
    try:
        if args.command == "recipe":
            return recipe(args)
        if args.command == "sample":
            return sample_cmd(args)
        return STAGE_FN[args.command](args)
    except Stopped as s:
        return s.code
    except (TrainError, DataError, ConfigError, CheckpointError) as e:
        log(f"error: {e}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
