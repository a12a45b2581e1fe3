"""Guidance + step distillation by progressive distillation (Salimans & Ho 2022; guidance folded
in as in Meng et al. 2023), and Python-side sampling with the runtime's DDIM/trailing schedule.

Round `r` trains a student for `n` steps from a teacher sampling with `k n` steps on the
trailing grids of the runtime (`k`, `--teacher-substeps`, is 2 by default: `trailing_timesteps(T,
2n)` contains `trailing_timesteps(T, n)` as its even entries). For a student level `t_i` the
teacher takes `k` deterministic DDIM steps `t_i -> u_1 -> ... -> t_{i+1}` (the first round's
teacher is the base model *with classifier-free guidance* `w`, so the student learns the guided
trajectory and needs no unconditional pass); the student's target is the `x0` for which ONE DDIM
step from `(x_{t_i}, t_i)` lands exactly on the teacher's `x_{t_{i+1}}`:

    x0* = (x_next - (s_next / s) x_t) / (a_next - (s_next / s) a)    (= x_next on the last step)

expressed in the student's prediction type (`output_for_x0`), MSE-regressed. The student starts
from its teacher's weights; the next round's teacher is this round's student. Rounds divide the
step count by `k`: 16 -> 8 -> 4 with the recipe's 16-step teacher and `k = 2`, or 16 -> 4 in one
round with `k = 4` (each target then costs twice the teacher evaluations, but it comes from the
16-step teacher itself rather than from an 8-step student). Captioning is kept alive by the LM
loss on the caption tokens of the distillation sequences plus a share of image-first
(captioning) sequences.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from .diffusion import NoiseLevel, Schedule, ddim_step, guide, lcm_step, output_for_x0, \
    trailing_timesteps
from .dist import TrainError
from .losses import CAPTION_FIRST, IGNORE, IMAGE_FIRST, UNCONDITIONAL, build_sequences, \
    lm_target_count, run_sequence


def student_config(teacher_cfg, steps: int, prediction: str | None = None):
    """The config of a round's student: its teacher's, sampling `steps` DDIM steps with the
    guidance folded in (no unconditional pass), in `prediction` if given."""
    c = copy.deepcopy(teacher_cfg)
    c.diffusion.steps, c.diffusion.sampler = steps, "ddim"
    c.diffusion.guidance, c.diffusion.guidance_distilled = 1.0, True
    if prediction:
        c.diffusion.prediction = prediction
    c.validate()
    return c


def rounds(teacher_steps: int, student_steps: int, substeps: int = 2) -> list[int]:
    """Student step counts of the rounds: teacher_steps/k, /k^2, ... down to student_steps
    (`k = substeps`, the teacher's DDIM steps per student step)."""
    if substeps < 2:
        raise ValueError(f"teacher substeps {substeps}: each student step must replace at "
                         "least 2 teacher steps")
    out, n = [], teacher_steps
    while n > student_steps:
        if n % substeps:
            break
        n //= substeps
        out.append(n)
    if n != student_steps or not out:
        raise ValueError(f"teacher steps {teacher_steps} must be student steps {student_steps} "
                         f"times a power of {substeps} (the teacher substeps), at least once")
    return out


def grid(schedule: Schedule, steps: int) -> list[NoiseLevel]:
    """The trailing grid of `steps` steps (nested grids are what distillation needs)."""
    return schedule.trailing_levels(steps)


def check_nested(T: int, n: int, substeps: int = 2) -> None:
    """The n-step trailing grid is every `substeps`-th entry of the `substeps * n`-step one
    (distillation needs it)."""
    fine, coarse = trailing_timesteps(T, substeps * n), trailing_timesteps(T, n)
    if fine[::substeps] != coarse:
        raise ValueError(f"trailing grids of {n} and {substeps * n} steps over T={T} are not "
                         "nested")


@torch.no_grad()
def predict(model, batch, x, model_time, uncond_batch=None, guidance=1.0, autocast=False):
    """The network output for the image blocks of `batch` (with CFG when `uncond_batch`)."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
        out, _ = run_sequence(model, batch, x, model_time, want_logits=False)
        out = out.float()
        if uncond_batch is not None and guidance != 1.0:
            u, _ = run_sequence(model, uncond_batch, x, model_time, want_logits=False)
            out = guide(u.float(), out, guidance)
    return out


def _levels_tensor(levels: list[NoiseLevel], idx: torch.Tensor):
    a = torch.tensor([levels[i].alpha for i in idx.tolist()], dtype=torch.float64)
    s = torch.tensor([levels[i].sigma for i in idx.tolist()], dtype=torch.float64)
    t = torch.tensor([levels[i].model_time for i in idx.tolist()], dtype=torch.float32)
    return a, s, t


def distill_loss(student, teacher, schedule: Schedule, n: int, latents, captions, gen, *,
                 teacher_guidance: float, lam: float, caption_frac: float,
                 caption_max_t: float, autocast: bool, shard=None, substeps: int = 2):
    """One progressive-distillation batch for an `n`-step student whose every step replaces
    `substeps` teacher steps (on the `substeps * n`-step grid). Samples with
    `u < caption_frac` are image-first captioning sequences (LM loss only); the others are
    caption-first distillation sequences (distillation loss + LM loss on their captions).
    With `shard` (`dist.Shard`, data parallel) `latents` and `captions` are the global batch:
    every draw is made for all of it and this rank computes its slice, its means scaled so
    that the ranks' average is the global batch's loss (as `transfusion_loss`)."""
    cfg = student.cfg
    pred_type = cfg.diffusion.prediction
    teacher_pred = teacher.cfg.diffusion.prediction
    B = latents.shape[0]
    u = torch.rand(B, generator=gen)
    is_lm = u < caption_frac
    eps = torch.randn(latents.shape, generator=gen)
    coarse, fine = grid(schedule, n), grid(schedule, substeps * n)
    i = torch.randint(0, n, (B,), generator=gen)
    a, s, t = _levels_tensor(coarse, i)
    # The teacher's intermediate levels, one column per substep boundary: [B, substeps - 1].
    mids = [_levels_tensor(fine, substeps * i + j) for j in range(1, substeps)]
    am, sm, tm = (torch.stack(v, dim=1) for v in zip(*mids))
    an, sn, _ = _levels_tensor(coarse, i + 1)
    # Captioning samples: a low noise level (like the trainer's image-first samples).
    cap_times = schedule.sample_times(B, gen, caption_max_t)
    ca, cs, ct = schedule.coefficients(cap_times)
    a = torch.where(is_lm, ca.double(), a)
    s = torch.where(is_lm, cs.double(), s)
    t = torch.where(is_lm, ct, t)
    layouts = [IMAGE_FIRST if lm else CAPTION_FIRST for lm in is_lm.tolist()]
    if shard is not None:
        scale_pd = shard.mean_scale(int((~shard.take(is_lm)).sum()), int((~is_lm).sum()))
        scale_lm = shard.mean_scale(lm_target_count(shard.take(captions), shard.take(layouts)),
                                    lm_target_count(captions, layouts))
        captions, layouts = shard.take(captions), shard.take(layouts)
        is_lm, eps, a, s, t, am, sm, tm, an, sn, latents = (shard.take(v) for v in (
            is_lm, eps, a, s, t, am, sm, tm, an, sn, latents))
    dev = latents.device
    if dev.type != "cpu":
        is_lm, eps, a, s, t, am, sm, tm, an, sn = (v.to(dev) for v in (
            is_lm, eps, a, s, t, am, sm, tm, an, sn))
    x_t = (a.view(-1, 1, 1, 1) * latents.double() + s.view(-1, 1, 1, 1) * eps.double()).float()
    batch = build_sequences(cfg, captions, layouts)
    if dev.type != "cpu":
        batch = batch.to(dev)

    pd = (~is_lm).nonzero().flatten()
    loss_pd = torch.zeros((), device=dev)
    if len(pd):
        caps = [captions[k] for k in pd.tolist()]
        tb = build_sequences(teacher.cfg, caps, [CAPTION_FIRST] * len(caps)).to(dev)
        ub = build_sequences(teacher.cfg, caps, [UNCONDITIONAL] * len(caps)).to(dev) \
            if teacher_guidance != 1.0 else None
        xs = x_t[pd]
        # The teacher's path t_i -> u_1 -> ... -> t_{i+1}, one DDIM step per substep.
        path_a = [a[pd]] + [am[pd, j] for j in range(substeps - 1)] + [an[pd]]
        path_s = [s[pd]] + [sm[pd, j] for j in range(substeps - 1)] + [sn[pd]]
        path_t = [t[pd]] + [tm[pd, j] for j in range(substeps - 1)]
        x_next = xs
        for j in range(substeps):
            out = predict(teacher, tb, x_next, path_t[j], ub, teacher_guidance, autocast)
            x_next, _ = ddim_step(teacher_pred, (path_a[j], path_s[j]),
                                  (path_a[j + 1], path_s[j + 1]), x_next, out)
        r = (sn[pd] / s[pd]).view(-1, 1, 1, 1)
        x0_target = (x_next.double() - r * xs.double()) / (an[pd].view(-1, 1, 1, 1)
                                                            - r * a[pd].view(-1, 1, 1, 1))
        target = output_for_x0(pred_type, a[pd], s[pd], xs, x0_target)
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=autocast):
        pred, logits = run_sequence(student, batch, x_t, t)
    if len(pd):
        loss_pd = (pred.float()[pd] - target).square().mean()
    lm = F.cross_entropy(logits.float(), batch.lm_targets[batch.lm_targets != IGNORE]) \
        if logits is not None else torch.zeros((), device=dev)
    if shard is not None:
        # Keep the student's output in the graph when this rank has no distillation sample
        # (DDP expects a gradient of every parameter on every rank).
        loss_pd = loss_pd * scale_pd + 0.0 * pred.float().sum()
        lm = lm * scale_lm
    loss = lm + lam * loss_pd
    return loss, {"lm": lm.item(), "distill": loss_pd.item()}


@torch.no_grad()
def sample(model, captions, noise, steps: int, guidance: float = 1.0, sampler: str = "ddim",
           gen: torch.Generator | None = None, autocast: bool = False, batch: int = 32):
    """Latents generated as the SDK does for `Request::Image`: `[BOS caption BOI]` then the
    sampler over the image block from `noise` (`[B, C, Hl, Hl]`), CFG with `[BOS BOI]` when
    `guidance > 1`. Full sequences each step (no KV cache: same numbers up to rounding)."""
    cfg = model.cfg
    sched = Schedule(cfg.diffusion)
    levels = sched.levels(steps)
    pred = cfg.diffusion.prediction
    dev = next(model.parameters()).device  # noise (drawn on the CPU) moves there
    outs = []
    for start in range(0, len(captions), batch):
        caps = captions[start:start + batch]
        x = noise[start:start + batch].clone().to(dev)
        cb = build_sequences(cfg, caps, [CAPTION_FIRST] * len(caps)).to(dev)
        ub = build_sequences(cfg, caps, [UNCONDITIONAL] * len(caps)).to(dev) \
            if guidance > 1 else None
        for k in range(steps):
            cur, nxt = levels[k], levels[k + 1]
            t = torch.full((len(caps),), cur.model_time, dtype=torch.float32, device=dev)
            out = predict(model, cb, x, t, ub, guidance, autocast)
            if sampler == "lcm":
                z = torch.randn(x.shape, generator=gen).to(dev)
                x, _ = lcm_step(pred, cur, nxt, x, out, z)
            elif sampler == "ddim":
                x, _ = ddim_step(pred, cur, nxt, x, out)
            else:
                raise ValueError(f"sampler {sampler!r}: only ddim and lcm are implemented here")
        outs.append(x)
    return torch.cat(outs)


@torch.no_grad()
def measure(teacher, student, captions, noise, *, reference_steps: int, guidance: float,
            teacher_steps: list[int], student_steps: int, student_sampler: str,
            autocast: bool = False):
    """Student vs teacher on the same captions and initial noise: RMSE (latent, and decoded
    pixels in [-1, 1]) against the teacher's `reference_steps`-step CFG images, for the student
    and for the teacher itself at each of `teacher_steps` (with CFG)."""
    noise = noise.to(next(teacher.parameters()).device)
    ref = sample(teacher, captions, noise, reference_steps, guidance, autocast=autocast)
    ref_px = teacher.vae_decode(ref).clamp(-1, 1)

    def rmse(model, x):
        px = model.vae_decode(x).clamp(-1, 1)
        return {"latent_rmse": round((x - ref).square().mean().sqrt().item(), 5),
                "pixel_rmse": round((px - ref_px).square().mean().sqrt().item(), 5)}

    cfg_passes = 2 if guidance > 1 else 1
    report = {"samples": len(captions),
              "reference": f"teacher, {reference_steps} DDIM steps, guidance {guidance}",
              "reference_evaluations": reference_steps * (2 if guidance > 1 else 1),
              "reference_latent_std": round(ref.std().item(), 5)}
    for n in teacher_steps:
        x = sample(teacher, captions, noise, n, guidance, autocast=autocast)
        report[f"teacher_{n}_steps_cfg"] = dict(rmse(teacher, x), evaluations=n * cfg_passes)
    x = sample(student, captions, noise, student_steps, 1.0, student_sampler,
               gen=torch.Generator().manual_seed(0), autocast=autocast)
    report[f"student_{student_steps}_steps"] = dict(rmse(student, x), evaluations=student_steps)
    return report


def split_steps(total: int, rounds: int, explicit: str | None) -> list[int]:
    """Steps per round: `--round-steps`, else `total` split evenly (the first rounds get the
    remainder)."""
    if explicit:
        steps = [int(s) for s in explicit.split(",")]
        if len(steps) != rounds:
            raise TrainError(f"--round-steps lists {len(steps)} rounds, the plan has {rounds}")
        return steps
    base = total // rounds
    return [base + (1 if i < total - base * rounds else 0) for i in range(rounds)]


def measure_student(args, teacher, student, data, latents, teacher_steps, guidance, scfg,
                    autocast):
    """`measure` of the final student on the first `--measure-samples` captions of the dataset,
    from one fixed noise (drawn on the CPU)."""
    n = min(args.measure_samples, len(data))
    if n == 0:
        return {}
    idx = torch.arange(n)
    g = torch.Generator().manual_seed(1234)
    noise = torch.randn((n,) + tuple(latents.shape[1:]), generator=g)
    teacher.eval()
    student.eval()
    caps = [data.tokens[i, : int(data.lengths[i])].tolist() for i in idx.tolist()]
    return measure(teacher, student, caps, noise,
                   reference_steps=args.reference_steps, guidance=guidance,
                   teacher_steps=sorted({teacher_steps, scfg.diffusion.steps}, reverse=True),
                   student_steps=scfg.diffusion.steps, student_sampler=scfg.diffusion.sampler,
                   autocast=False)
