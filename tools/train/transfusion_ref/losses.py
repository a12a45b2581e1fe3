"""Training objectives: the VAE loss and the Transfusion loss `L_LM + lambda * L_diffusion`.

Sequence layouts (one image of N latent patches per sample, right-padded with `pad`):

| layout | sequence | LM targets |
|---|---|---|
| `caption_first` | `BOS caption BOI <N patches> EOI EOS` | caption, BOI, EOS |
| `image_first`   | `BOS BOI <N patches> EOI caption EOS` | caption, EOS (predicted from EOI on) |
| `unconditional` | `BOS BOI <N patches> EOI`             | none |

`unconditional` is the dropped caption of classifier-free guidance; it is exactly what the SDK
runs for the unconditional branch (`[BOS, BOI]` then the image). Positions are `0..S` and the
attention mask is `transfusion_mask` per sample (causal, bidirectional inside the image block),
so a sample's numbers do not depend on the padding of the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .backbone import transfusion_mask
from .diffusion import Schedule

CAPTION_FIRST, IMAGE_FIRST, UNCONDITIONAL = "caption_first", "image_first", "unconditional"
IGNORE = -100


# ---- VAE --------------------------------------------------------------------------------

def vae_loss(model, images: torch.Tensor, gen: torch.Generator, kl_weight: float,
             shard=None):
    """L1 + MSE reconstruction of a reparameterised posterior sample, plus `kl_weight` times
    the per-element KL to N(0, 1). Returns (loss, parts dict of floats). With `shard`
    (`dist.Shard`, data parallel) `images` are this rank's slice of the global batch; the
    noise is drawn for the whole global batch and sliced (the same draws at any world size)."""
    mean, logvar = model.vae.moments(images)
    mean, logvar = mean.float(), logvar.float().clamp(-30.0, 20.0)
    if shard is None:
        noise = torch.randn(mean.shape, generator=gen)
    else:
        noise = shard.take(torch.randn((shard.total,) + tuple(mean.shape[1:]), generator=gen))
    noise = noise.to(mean.device)
    z = mean + (0.5 * logvar).exp() * noise
    rec = model.vae.decoder(z).float()
    l1 = (rec - images).abs().mean()
    mse = (rec - images).square().mean()
    kl = 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar).mean()
    loss = l1 + mse + kl_weight * kl
    return loss, {"l1": l1.item(), "mse": mse.item(), "kl": kl.item()}


# ---- sequences --------------------------------------------------------------------------

@dataclass
class SequenceBatch:
    ids: torch.Tensor         # int64 [B, S]; pad at image positions and after the end
    image_index: torch.Tensor  # int64 [B, N]: positions of the N patches
    lm_targets: torch.Tensor  # int64 [B, S]: next token at each position, IGNORE where none
    mask: torch.Tensor        # float32 [B, S, S] additive
    positions: torch.Tensor   # int64 [S]

    def to(self, device) -> "SequenceBatch":
        """The same batch on `device`."""
        return SequenceBatch(*(t.to(device) for t in (
            self.ids, self.image_index, self.lm_targets, self.mask, self.positions)))


_MASKS: dict = {}


def _mask(S: int, start: int, N: int) -> torch.Tensor:
    key = (S, start, N)
    if key not in _MASKS:
        _MASKS[key] = transfusion_mask(S, [(start, start + N)])
    return _MASKS[key]


def build_sequences(cfg, captions: list[list[int]], layouts: list[str]) -> SequenceBatch:
    """Lay out one image per sample with its caption (token ids without specials)."""
    sp, N = cfg.special_tokens, cfg.num_patches
    rows, starts, targets = [], [], []
    for cap, layout in zip(captions, layouts):
        cap = list(cap)
        if layout == CAPTION_FIRST:
            seq = [sp.bos] + cap + [sp.boi] + [sp.pad] * N + [sp.eoi, sp.eos]
            start = len(cap) + 2
            tgt = [IGNORE] * len(seq)
            for p in range(start - 1):             # BOS..last caption word -> next word, BOI
                tgt[p] = seq[p + 1]
            tgt[start + N] = sp.eos                 # EOI -> EOS
        elif layout == IMAGE_FIRST:
            seq = [sp.bos, sp.boi] + [sp.pad] * N + [sp.eoi] + cap + [sp.eos]
            start = 2
            tgt = [IGNORE] * len(seq)
            for p in range(start + N, len(seq) - 1):  # EOI..last word -> next word, EOS
                tgt[p] = seq[p + 1]
        elif layout == UNCONDITIONAL:
            seq = [sp.bos, sp.boi] + [sp.pad] * N + [sp.eoi]
            start = 2
            tgt = [IGNORE] * len(seq)
        else:
            raise ValueError(layout)
        rows.append(seq)
        starts.append(start)
        targets.append(tgt)
    S = max(len(r) for r in rows)
    if S > cfg.text.max_seq_len:
        raise ValueError(f"sequence of {S} positions exceeds text.max_seq_len "
                         f"{cfg.text.max_seq_len}")
    # Filled in numpy: a torch tensor per row made this several times slower at GPU batch
    # sizes (hundreds of rows), time that a GPU training step waits for.
    ids = np.full((len(rows), S), sp.pad, dtype=np.int64)
    lm = np.full((len(rows), S), IGNORE, dtype=np.int64)
    for b, (r, t) in enumerate(zip(rows, targets)):
        ids[b, :len(r)] = r
        lm[b, :len(t)] = t
    ids, lm = torch.from_numpy(ids), torch.from_numpy(lm)
    start_t = torch.tensor(starts, dtype=torch.long)
    image_index = start_t[:, None] + torch.arange(N)[None, :]
    mask = torch.stack([_mask(S, s, N) for s in starts])
    return SequenceBatch(ids, image_index, lm, mask, torch.arange(S))


def lm_target_count(captions: list[list[int]], layouts: list[str]) -> int:
    """The LM targets `build_sequences` lays out for these samples (caption-first: the caption,
    BOI and EOS; image-first: the caption and EOS; unconditional: none)."""
    return sum(len(c) + 2 if l == CAPTION_FIRST else len(c) + 1 if l == IMAGE_FIRST else 0
               for c, l in zip(captions, layouts))


def run_sequence(model, batch: SequenceBatch, x_t: torch.Tensor, model_time: torch.Tensor,
                 want_logits: bool = True):
    """One pass of the Transfusion model over laid-out sequences with noisy latents `x_t`
    at `model_time` in their image blocks. Returns (prediction `[B, C, Hl, Hl]`,
    logits at the LM-target positions `[M, V]` or None)."""
    D = model.cfg.backbone.dim
    emb = model.text_embed(batch.ids)
    patches, skips = model.patch_in(x_t, model_time)
    index = batch.image_index[..., None].expand(-1, -1, D)
    emb = emb.scatter(1, index, patches.to(emb.dtype))
    hidden, _, _ = model.backbone(emb, batch.positions, batch.mask)
    pred = model.patch_out(hidden.gather(1, index), skips, model_time)
    logits = None
    if want_logits:
        sel = batch.lm_targets != IGNORE
        logits = model.lm_head(hidden[sel]) if bool(sel.any()) else None
    return pred, logits


def choose_layouts(n: int, gen: torch.Generator, image_first: float, drop: float) -> list[str]:
    """Per sample: image-first with probability `image_first`, else caption-first with the
    caption dropped (unconditional) with probability `drop`."""
    u = torch.rand(n, 2, generator=gen)
    out = []
    for a, b in u.tolist():
        if a < image_first:
            out.append(IMAGE_FIRST)
        else:
            out.append(UNCONDITIONAL if b < drop else CAPTION_FIRST)
    return out


def native_x0_weights(prediction: str, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """`[B]` float64: the weight an unweighted loss of `prediction` puts on each sample's x0
    error — `SNR + 1` (`1/sigma^2`) for v and flow, `SNR` for epsilon, 1 for x0."""
    a, s = alpha.double(), sigma.double().clamp_min(1e-12)
    if prediction in ("v", "flow"):
        return 1.0 / s.square()
    if prediction == "epsilon":
        return (a / s).square()
    if prediction == "x0":
        return torch.ones_like(s)
    raise ValueError(prediction)


def min_snr_weights(prediction: str, alpha: torch.Tensor, sigma: torch.Tensor,
                    gamma: float) -> torch.Tensor:
    """Min-SNR-gamma loss weights (Hang et al. 2023) `[B]` for the native loss of
    `prediction`: the weight that turns it into `min(SNR, gamma) * |x0_hat - x0|^2`.
    With v-prediction this also lowers high-noise samples (the weight falls to 0 with SNR)."""
    snr = (alpha.double() / sigma.double().clamp_min(1e-12)).square()
    native = native_x0_weights(prediction, alpha, sigma)
    return (torch.clamp(snr, max=gamma) / native.clamp_min(1e-12)).float()


def snr_cap_weights(prediction: str, alpha: torch.Tensor, sigma: torch.Tensor,
                    cap: float) -> torch.Tensor:
    """Weights `[B]` that cap the x0-space weight of the native loss at `cap` and leave every
    weight below it as it is: `min(1, cap / native)` (for epsilon this is Min-SNR-gamma).
    High-noise samples keep their full weight; only the nearly clean ones, which dominate an
    unweighted v-loss, are turned down."""
    native = native_x0_weights(prediction, alpha, sigma)
    return torch.clamp(cap / native.clamp_min(1e-12), max=1.0).float()


def transfusion_loss(model, schedule: Schedule, latents: torch.Tensor, captions: list[list[int]],
                     gen: torch.Generator, *, lam: float, image_first: float, drop: float,
                     caption_max_t: float, autocast: bool = False, min_snr_gamma: float = 0.0,
                     caption_diffusion: bool = True, shard=None, snr_cap: float = 0.0):
    """`L_LM + lam * L_diff` on one batch. `caption_max_t` caps the noise of image-first
    samples (fraction of the schedule), so captioning learns from clean-ish images.
    `min_snr_gamma > 0` weighs the diffusion loss per sample (`min_snr_weights`), and so
    does `snr_cap > 0` (`snr_cap_weights`; at most one of the two);
    `caption_diffusion = False` leaves image-first (captioning) samples out of `L_diff`, so
    it is spent on images drawn from a caption or unconditionally.
    With `shard` (`dist.Shard`, data parallel) `latents` and `captions` are the global batch:
    every draw is made for all of it, this rank computes its slice, and the means over a
    varying number of items (LM targets, kept samples) are scaled so that the ranks' average
    is the global batch's loss (`Shard.mean_scale`); the parts are scaled likewise.
    Returns (loss, parts dict of floats)."""
    B = latents.shape[0]
    layouts = choose_layouts(B, gen, image_first, drop)
    cap_frac = torch.tensor([caption_max_t if l == IMAGE_FIRST else 1.0 for l in layouts],
                            dtype=torch.float64)
    times = schedule.sample_times(B, gen, cap_frac)
    alpha, sigma, model_time = schedule.coefficients(times)
    eps = torch.randn(latents.shape, generator=gen).to(latents.device)
    alpha, sigma, model_time = (x.to(latents.device) for x in (alpha, sigma, model_time))
    if shard is not None:
        all_captions, all_layouts = captions, layouts
        captions, layouts = shard.take(captions), shard.take(layouts)
        latents, eps, alpha, sigma, model_time = (
            shard.take(x) for x in (latents, eps, alpha, sigma, model_time))
    a4, s4 = alpha.view(-1, 1, 1, 1), sigma.view(-1, 1, 1, 1)
    x_t = a4 * latents + s4 * eps
    target = schedule.target(latents, eps, alpha, sigma)
    batch = build_sequences(model.cfg, captions, layouts).to(latents.device)
    with torch.autocast(latents.device.type, dtype=torch.bfloat16, enabled=autocast):
        pred, logits = run_sequence(model, batch, x_t, model_time)
    if min_snr_gamma > 0 and snr_cap > 0:
        raise ValueError("min_snr_gamma and snr_cap are two weightings: pass at most one")
    if min_snr_gamma > 0 or snr_cap > 0 or not caption_diffusion:
        per_sample = (pred.float() - target).square().flatten(1).mean(1)
        if min_snr_gamma > 0:
            w = min_snr_weights(schedule.prediction, alpha, sigma, min_snr_gamma)
        elif snr_cap > 0:
            w = snr_cap_weights(schedule.prediction, alpha, sigma, snr_cap)
        else:
            w = torch.ones_like(per_sample)
        if not caption_diffusion:
            keep = torch.tensor([l != IMAGE_FIRST for l in layouts], device=w.device)
            w = w * keep
            diff = (per_sample * w).sum() / keep.sum().clamp_min(1)
            if shard is not None:
                diff = diff * shard.mean_scale(
                    sum(l != IMAGE_FIRST for l in layouts),
                    sum(l != IMAGE_FIRST for l in all_layouts))
        else:
            diff = (per_sample * w).mean()
    else:
        diff = (pred.float() - target).square().mean()
    if logits is not None:
        lm = F.cross_entropy(logits.float(), batch.lm_targets[batch.lm_targets != IGNORE])
    else:
        lm = diff.new_zeros(())
    if shard is not None:
        lm = lm * shard.mean_scale(lm_target_count(captions, layouts),
                                   lm_target_count(all_captions, all_layouts))
        if logits is None:  # keep lm_head in the graph: DDP expects a gradient on every rank
            lm = lm + 0.0 * model.text.lm_head.weight.sum()
    loss = lm + lam * diff
    return loss, {"lm": lm.item(), "diff": diff.item()}
