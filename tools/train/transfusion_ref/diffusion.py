"""Noise schedules, prediction types, guidance and the DDIM/LCM samplers, exactly as the Rust
runtime interprets a checkpoint's `diffusion` config (sdk/src/diffusion/{schedule,sampler,mod}.rs).

* `cosine` / `linear` are variance-preserving over the integer training timesteps
  `t in {0..T-1}`: `x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps`, the `abar` table computed in
  float64 like diffusers' `squaredcos_cap_v2` (betas clipped at 0.999) and `linear` (1e-4..0.02).
* `flow` is rectified flow: `x = (1 - s) x0 + s eps`, the network is told `s * T`.
* Few-step sampling uses diffusers' "trailing" spacing: `t_k = round(T - k T / n) - 1`
  (round half to even), noisiest first, then the clean level.
* The network output is split into `(x0_hat, eps_hat)` per prediction type; guidance is applied
  to the raw output (`uncond + w (cond - uncond)`) before the sampler step, like `guide()`.

The model time fed to the network is in training-timestep units: the integer `t` for VP
schedules, `s * T` for flow. Coefficients are float64 Python numbers; tensors stay float32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .config import DiffusionConfig

COSINE_OFFSET = 0.008
COSINE_MAX_BETA = 0.999
LINEAR_BETA_START = 1e-4
LINEAR_BETA_END = 0.02


@dataclass(frozen=True)
class NoiseLevel:
    """`x = alpha x0 + sigma eps`; `model_time` is what the network is told."""
    alpha: float
    sigma: float
    model_time: float


CLEAN = NoiseLevel(1.0, 0.0, 0.0)


def _cosine_f(u: float) -> float:
    c = math.cos((u + COSINE_OFFSET) / (1.0 + COSINE_OFFSET) * math.pi / 2.0)
    return c * c


def alpha_bars(schedule: str, T: int) -> list[float]:
    """The float64 `abar` table of a VP schedule (empty for `flow`), as `NoiseSchedule::new`."""
    if schedule == "flow":
        return []
    if schedule == "cosine":
        betas = [min(1.0 - _cosine_f((i + 1) / T) / _cosine_f(i / T), COSINE_MAX_BETA)
                 for i in range(T)]
    elif schedule == "linear":
        span = max(T - 1, 1)
        betas = [LINEAR_BETA_START + (LINEAR_BETA_END - LINEAR_BETA_START) * i / span
                 for i in range(T)]
    else:
        raise ValueError(f"unknown schedule {schedule!r}")
    out, prod = [], 1.0
    for b in betas:
        prod *= 1.0 - b
        out.append(prod)
    return out


def trailing_timesteps(T: int, steps: int) -> list[int]:
    """`t_k = round(T - k T/n) - 1`, k < n, rounding half to even (Python's `round` does)."""
    if not 1 <= steps <= T:
        raise ValueError(f"trailing spacing needs 1..={T} steps, got {steps}")
    ratio = T / steps
    return [max(int(round(T - k * ratio)) - 1, 0) for k in range(steps)]


def flow_sigmas(steps: int) -> list[float]:
    return [1.0 - k / steps for k in range(steps)]


class Schedule:
    """A `diffusion` config's schedule: training noise levels and sampling trajectories."""

    def __init__(self, cfg: DiffusionConfig):
        self.kind = cfg.schedule
        self.prediction = cfg.prediction
        self.T = cfg.train_timesteps
        self.timesteps = getattr(cfg, "timesteps", None)
        self.abar = alpha_bars(self.kind, self.T)
        self.is_vp = self.kind != "flow"
        if self.is_vp:
            ab = torch.tensor(self.abar, dtype=torch.float64)
            self._alpha = ab.sqrt()
            self._sigma = (1.0 - ab).sqrt()

    # ---- training ------------------------------------------------------------------------
    def sample_times(self, n: int, gen: torch.Generator, max_fraction=None) -> torch.Tensor:
        """`n` training times as float64 "schedule positions": integer timesteps for VP
        (uniform over `0..T-1`, or `0..ceil(f T)-1` with `max_fraction` f; a per-sample tensor
        of fractions is accepted), flow sigmas in (0, 1] otherwise (scaled by f likewise)."""
        u = torch.rand(n, generator=gen, dtype=torch.float64)
        f = torch.ones(n, dtype=torch.float64) if max_fraction is None else \
            torch.as_tensor(max_fraction, dtype=torch.float64).expand(n)
        if self.is_vp:
            hi = torch.clamp(torch.ceil(f * self.T), 1, self.T)
            return torch.minimum(torch.floor(u * hi), hi - 1)
        return (1.0 - u) * f  # (0, f]

    def coefficients(self, times: torch.Tensor):
        """(alpha, sigma, model_time) float32 tensors for the positions of `sample_times`."""
        if self.is_vp:
            idx = times.long()
            return (self._alpha[idx].float(), self._sigma[idx].float(), times.float())
        s = times
        return ((1.0 - s).float(), s.float(), (s * self.T).float())

    def target(self, x0: torch.Tensor, eps: torch.Tensor, alpha, sigma) -> torch.Tensor:
        """The training target of `self.prediction` (`prediction_target` in the SDK)."""
        a, s = _bcast(alpha, x0), _bcast(sigma, x0)
        if self.prediction == "epsilon":
            return eps
        if self.prediction == "v":
            return a * eps - s * x0
        if self.prediction == "x0":
            return x0
        if self.prediction == "flow":
            return eps - x0
        raise ValueError(self.prediction)

    # ---- sampling ------------------------------------------------------------------------
    def level(self, t: int) -> NoiseLevel:
        a = self.abar[t]
        return NoiseLevel(math.sqrt(a), math.sqrt(1.0 - a), float(t))

    def flow_level(self, s: float) -> NoiseLevel:
        return NoiseLevel(1.0 - s, s, s * self.T)

    def levels(self, steps: int) -> list[NoiseLevel]:
        """`steps + 1` levels: where the network is evaluated (noisiest first), then CLEAN; at
        the config's `timesteps` when it has `steps` of them (as the SDK), else trailing."""
        if self.is_vp and self.timesteps and len(self.timesteps) == steps:
            return [self.level(t) for t in self.timesteps] + [CLEAN]
        return self.trailing_levels(steps)

    def trailing_levels(self, steps: int) -> list[NoiseLevel]:
        """`levels` on the trailing grid whatever the config says (distillation's grids)."""
        if self.is_vp:
            out = [self.level(t) for t in trailing_timesteps(self.T, steps)]
        else:
            out = [self.flow_level(s) for s in flow_sigmas(steps)]
        return out + [CLEAN]


def _bcast(v, like: torch.Tensor):
    """A per-sample `[B]` tensor viewed as `[B, 1, 1, 1]` in `like`'s dtype; floats pass through."""
    if isinstance(v, torch.Tensor):
        return v.reshape(-1, *([1] * (like.dim() - 1))).to(like.dtype)
    return v


def split(prediction: str, alpha, sigma, x_t: torch.Tensor, out: torch.Tensor):
    """(x0_hat, eps_hat) in float64 from a network output, like the SDK's `split_prediction`;
    `alpha`, `sigma` are floats or per-sample `[B]` tensors."""
    x, o = x_t.double(), out.double()
    a, s = _bcast(alpha, x), _bcast(sigma, x)
    if prediction == "epsilon":
        return (x - s * o) / a, o
    if prediction == "v":
        return a * x - s * o, s * x + a * o
    if prediction == "x0":
        return o, (x - a * o) / s
    if prediction == "flow":
        return x - s * o, x + (1.0 - s) * o
    raise ValueError(prediction)


def split_prediction(prediction: str, level: NoiseLevel, x_t: torch.Tensor, out: torch.Tensor):
    return split(prediction, level.alpha, level.sigma, x_t, out)


def output_for_x0(prediction: str, alpha, sigma, x_t: torch.Tensor, x0: torch.Tensor):
    """The network output that `split` turns into `x0` at (alpha, sigma): its inverse, used for
    distillation targets (needs sigma > 0, and alpha > 0 for epsilon)."""
    x, x0 = x_t.double(), x0.double()
    a, s = _bcast(alpha, x), _bcast(sigma, x)
    if prediction == "x0":
        out = x0
    elif prediction == "v":        # x0 = a x - s v
        out = (a * x - x0) / s
    elif prediction == "epsilon":  # x0 = (x - s e) / a
        out = (x - a * x0) / s
    elif prediction == "flow":     # x0 = x - s u
        out = (x - x0) / s
    else:
        raise ValueError(prediction)
    return out.float()


def guide(uncond: torch.Tensor, cond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance on the raw output: `uncond + scale (cond - uncond)`."""
    return uncond + scale * (cond - uncond)


def ddim_step(prediction: str, cur, nxt, x: torch.Tensor, out: torch.Tensor):
    """Deterministic DDIM (eta = 0) from level `cur` to `nxt` (NoiseLevels, or (alpha, sigma)
    pairs of floats or `[B]` tensors): `x' = a' x0 + s' eps`, which is exactly `x0` on the final
    step (`a' = 1, s' = 0`), as in the SDK. Returns (x', x0_hat) as float32."""
    ca, cs = (cur.alpha, cur.sigma) if isinstance(cur, NoiseLevel) else cur
    na, ns = (nxt.alpha, nxt.sigma) if isinstance(nxt, NoiseLevel) else nxt
    x0, eps = split(prediction, ca, cs, x, out)
    if isinstance(ns, float) and ns == 0.0:
        return x0.float(), x0.float()
    return (_bcast(na, x0) * x0 + _bcast(ns, x0) * eps).float(), x0.float()


def lcm_step(prediction: str, cur: NoiseLevel, nxt: NoiseLevel, x: torch.Tensor,
             out: torch.Tensor, noise: torch.Tensor):
    """LCM multistep (the SDK's `lcm`): jump to x0, re-noise to `nxt` with fresh `noise`."""
    x0, _ = split_prediction(prediction, cur, x, out)
    if nxt.sigma == 0.0:
        return x0.float(), x0.float()
    return (nxt.alpha * x0 + nxt.sigma * noise.double()).float(), x0.float()
