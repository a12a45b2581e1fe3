"""Run infrastructure of the reference trainer: the stage directory and its atomic training state
(resume, SIGINT/SIGTERM, --stop-at), learning-rate schedule, optimizer, EMA, checkpoints and the
settings fingerprint that `--resume` checks. The stages themselves are in train.py.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import torch

from . import dist
from .checkpoint import save_checkpoint
from .config import Config, preset
from .data import Shapes, tokenizer_json
from .data import resolve as resolve_data
from .dist import TrainError  # noqa: F401  (re-exported: the trainer's error type)

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


def log(msg: str) -> None:
    """Progress and messages, to stderr; rank 0 only under torchrun."""
    if dist.is_main():
        print(msg, file=sys.stderr, flush=True)


def _to_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


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
        self.t_last, self.step_last = None, 0
        self.ctx = dist.current()

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
        return torch.load(self.state_path, weights_only=False, map_location="cpu")

    def save_state(self, state: dict) -> None:
        """Rank 0 writes (atomically); the tensors are saved on the CPU, so a state loads
        anywhere."""
        if not self.ctx.is_main:
            return
        if self.ctx.device.type != "cpu":
            state = _to_cpu(state)
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
        self.t_last, self.step_last = self.t0, step0

    def sync(self, loss: float, parts: dict):
        """Under torchrun: the step's loss and parts averaged over the ranks (= the global
        batch's), and a signal that reached any rank reaches all (they stop at the same step).
        Unchanged with one process."""
        if not self.ctx.distributed:
            return loss, parts
        flag = 0.0 if self.signal is None else 1.0
        values = self.ctx.all_mean([loss, *parts.values(), flag])
        if values[-1] > 0 and self.signal is None:
            self.signal = signal.SIGTERM
        return values[0], dict(zip(parts, values[1:-1]))

    def throughput(self) -> float:
        """Samples per second of this invocation's training steps (global batch)."""
        dt = (self.t_last or 0) - (self.t0 or 0)
        return (self.step_last - self.step0) * self.args.batch / dt if dt > 0 else 0.0

    def progress(self, step: int, total: int, loss: float, parts: dict, extra: str = ""):
        """`step` = steps done. Every --log-every steps, the first and the last."""
        self.t_last, self.step_last = time.perf_counter(), step
        every = self.args.log_every
        if not (step == self.step0 + 1 or step % every == 0 or step == total):
            return
        dt = self.t_last - self.t0
        done = step - self.step0
        rate = done / dt if dt > 0 else 0.0
        eta = (total - step) / rate if rate > 0 else float("nan")
        p = " ".join(f"{k} {v:.4f}" for k, v in parts.items())
        log(f"[{self.stage}] step {step:>6}/{total} | loss {loss:.4f} ({p}){extra} | "
            f"{rate:.2f} it/s {1 / rate if rate else 0:.2f} s/step "
            f"{rate * self.args.batch:.1f} samples/s | "
            f"elapsed {fmt_time(dt)} ETA {fmt_time(eta) if eta == eta else '?'}")

    def checkpoint_due(self, step: int) -> bool:
        """After step `step` (steps done): save? Raises Stopped after saving when asked to."""
        a = self.args
        return (step % a.save_every == 0 or self.signal is not None
                or (a.stop_at is not None and step >= a.stop_at))

    def maybe_stop(self, step: int):
        if self.ctx.distributed and (self.signal is not None or (
                self.args.stop_at is not None and step >= self.args.stop_at)):
            self.ctx.barrier()  # rank 0 has saved: every rank stops at this step
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
    """bf16 autocast on this run's device (`dist.use_bf16`)."""
    return dist.use_bf16(precision, dist.current().device, log)


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
    """The caption token ids of samples `idx` (one gather, then Python lists)."""
    tokens, lengths = data.tokens[idx].tolist(), data.lengths[idx].tolist()
    return [t[:n] for t, n in zip(tokens, lengths)]


def write_checkpoint(model, cfg: Config, directory: Path, tokenizer: dict | Path) -> None:
    """Rank 0 writes."""
    if not dist.is_main():
        return
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
    ok = st.is_file() and torch.load(st, weights_only=False,
                                     map_location="cpu").get("finished")
    if not ok or not (d / "model.safetensors").is_file():
        raise TrainError(f"{d}: the {prev} stage has not finished (run it first, or pass "
                         f"--from CKPT)")
    return d


def _defaults_name(cfg) -> str:
    return cfg.name if cfg.name in DEFAULTS else ("tiny" if cfg.image.size <= 32 else "shapes64")


def resolve_hparams(args, cfg, stage: str):
    steps, batch, lr = DEFAULTS[_defaults_name(cfg)][stage]
    args.steps = args.steps or steps
    args.batch = args.batch or batch
    args.lr = args.lr or lr
    dist.current().check_batch(args.batch)


def check_recipe_batches(args) -> None:
    """`recipe` under torchrun: every stage's default batch must split over the ranks, checked
    before the first stage runs (not after hours of training)."""
    ctx = dist.current()
    if not ctx.distributed:
        return
    cfg = Config.load(Path(args.init) / "config.json") if args.init else preset(args.preset)
    for stage, (_, batch, _) in DEFAULTS[_defaults_name(cfg)].items():
        if not Run(args, stage).finished():
            try:
                ctx.check_batch(batch)
            except TrainError as e:
                raise TrainError(f"recipe, {stage} stage: {e} (the recipe uses each stage's "
                                 "default batch: run the stages one by one with --batch)") \
                    from None


def check_resume(run: Run, args, state, fingerprint: dict):
    if state is None:
        return
    if state.get("finished"):
        return
    if not args.resume:
        raise TrainError(f"{run.state_path} exists (an interrupted run): pass --resume to "
                         "continue it, or use another --out")
    old = dict(FINGERPRINT_DEFAULTS, **state["fingerprint"])
    for key in ("seed", "batch", "data", "limit"):
        if old.get(key) != fingerprint.get(key):
            raise TrainError(f"--resume: --{key} was {old.get(key)!r} in the interrupted run "
                             f"({run.state_path}), now {fingerprint.get(key)!r}: resume with "
                             f"the run's --{key} (seed, global batch, data and limit fix the "
                             "sample order; the world size and device may change)")
    changed = [k for k in fingerprint if old.get(k) != fingerprint[k]]
    if changed:
        log(f"[{run.stage}] warning: resuming with changed settings {changed}: the result will "
            "not be bit-identical to an uninterrupted run")


# What a state written before these keys existed ran with.
FINGERPRINT_DEFAULTS = {"device": "cpu", "world_size": 1, "compile": False,
                        "teacher_substeps": 2}


def fingerprint_of(args, extra=()) -> dict:
    keys = ("seed", "batch", "steps", "lr", "limit", "precision", "threads") + tuple(extra)
    fp = {k: getattr(args, k) for k in keys}
    fp["data"] = str(resolve_data(args.data).resolve())
    ctx = dist.current()
    fp.update(device=ctx.device.type, world_size=ctx.world, compile=ctx.compile)
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



def finish(run: Run, step: int, fp: dict, summary: dict) -> None:
    """Replace the (large) training state by a small 'finished' record (rank 0)."""
    ctx = run.ctx
    summary = dict(summary, steps=step, seconds=round(time.perf_counter() - run.t0, 1)
                   if run.t0 else None, steps_this_run=run.step_last - run.step0,
                   global_batch=run.args.batch,
                   samples_per_second=round(run.throughput(), 2), device=ctx.describe(),
                   world_size=ctx.world, compile=ctx.compile)
    if not ctx.is_main:
        return
    run.save_state({"stage": run.stage, "step": step, "finished": True, "fingerprint": fp,
                    "summary": summary})
    (run.dir / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    log(f"[{run.stage}] done: {run.dir}")
