"""The transformer backbone: RMSNorm, RoPE attention with a K/V cache, SwiGLU decoder layers.

Module attribute names give exactly the `backbone.*` tensor names of docs/checkpoint.md.
The attention mask is additive and built by the caller (`transfusion_mask`), so the same
module serves training (full sequences) and cached inference (prefix, then suffix).
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .config import BackboneConfig


class RMSNorm(nn.Module):
    """`x * rsqrt(mean(x^2, -1) + eps) * w` (no bias, no mean subtraction); the statistics are
    taken in float32 so half-precision activations cannot overflow `x^2`."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


def rope_inv_freq(head_dim: int, theta: float) -> torch.Tensor:
    """`inv_freq_j = theta^(-2j/hd)`, j < hd/2, evaluated in float64 then rounded to float32
    (what a converter naturally bakes in as a constant)."""
    j = torch.arange(head_dim // 2, dtype=torch.float64)
    return (theta ** (-2.0 * j / head_dim)).float()


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float):
    """cos/sin tables `[..., S, hd]` for the rotate-half convention: angle = pos * inv_freq,
    duplicated over both halves."""
    inv_freq = rope_inv_freq(head_dim, theta).to(positions.device)
    angles = positions.to(torch.float32)[..., None] * inv_freq
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """`rotate_half([a, b]) = [-b, a]` over the last dim."""
    a, b = x.chunk(2, dim=-1)
    return torch.cat([-b, a], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """`x * cos + rotate_half(x) * sin`; x `[B, H, S, hd]`, cos/sin `[S, hd]` or `[B, S, hd]`."""
    if cos.dim() == 3:
        cos, sin = cos[:, None], sin[:, None]
    return x * cos.to(x.dtype) + rotate_half(x) * sin.to(x.dtype)


class Attention(nn.Module):
    """Multi-head attention without biases; RoPE on q and k; k/v appended to the past cache."""

    def __init__(self, cfg: BackboneConfig):
        super().__init__()
        self.n_heads, self.head_dim, self.theta = cfg.n_heads, cfg.head_dim, cfg.rope_theta
        hd = cfg.n_heads * cfg.head_dim
        self.q = nn.Linear(cfg.dim, hd, bias=False)
        self.k = nn.Linear(cfg.dim, hd, bias=False)
        self.v = nn.Linear(cfg.dim, hd, bias=False)
        self.o = nn.Linear(hd, cfg.dim, bias=False)

    def forward(self, x, cos, sin, mask, past_k=None, past_v=None):
        """x `[B, S, D]`, mask additive `[S, P+S]` (or broadcastable to `[B, H, S, P+S]`),
        past `[B, H, P, hd]`. Returns (out `[B, S, D]`, present_k, present_v `[B, H, P+S, hd]`)."""
        B, S, _ = x.shape

        def heads(t):
            return t.view(B, S, self.n_heads, self.head_dim).transpose(1, 2)

        q = apply_rope(heads(self.q(x)), cos, sin)
        k = apply_rope(heads(self.k(x)), cos, sin)
        v = heads(self.v(x))
        if past_k is not None:
            k = torch.cat([past_k.to(k.dtype), k], dim=2)
            v = torch.cat([past_v.to(v.dtype), v], dim=2)
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)
        if mask.dim() == 3:  # [B, S, P+S] -> per-sample mask shared by the heads
            mask = mask[:, None]
        scores = scores + mask.to(scores.dtype)
        out = torch.softmax(scores, dim=-1) @ v
        out = out.transpose(1, 2).reshape(B, S, self.n_heads * self.head_dim)
        return self.o(out), k, v


class FeedForward(nn.Module):
    """SwiGLU: `down(SiLU(gate(x)) * up(x))`."""

    def __init__(self, dim: int, ffn_dim: int):
        super().__init__()
        self.gate = nn.Linear(dim, ffn_dim, bias=False)
        self.up = nn.Linear(dim, ffn_dim, bias=False)
        self.down = nn.Linear(ffn_dim, dim, bias=False)

    def forward(self, x):
        return self.down(F.silu(self.gate(x)) * self.up(x))


class DecoderLayer(nn.Module):
    """Pre-norm residual layer: `x += attn(attn_norm(x)); x += ffn(ffn_norm(x))`."""

    def __init__(self, cfg: BackboneConfig):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.ffn = FeedForward(cfg.dim, cfg.ffn_dim)

    def forward(self, x, cos, sin, mask, past_k=None, past_v=None):
        h, k, v = self.attn(self.attn_norm(x), cos, sin, mask, past_k, past_v)
        x = x + h
        x = x + self.ffn(self.ffn_norm(x))
        return x, k, v


class Backbone(nn.Module):
    """The `backbone` graph: decoder layers then the final RMSNorm (`hidden` feeds both
    `lm_head` and `patch_out`)."""

    def __init__(self, cfg: BackboneConfig):
        super().__init__()
        self.cfg = cfg
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)

    def forward(self, embeddings: torch.Tensor, positions: torch.Tensor,
                attention_mask: torch.Tensor, past_keys: Sequence[torch.Tensor] | None = None,
                past_values: Sequence[torch.Tensor] | None = None):
        """embeddings `[B, S, D]`, positions int `[S]` (or `[B, S]`), attention_mask additive
        `[S, P+S]`, past_keys/values: one `[B, H, P, hd]` per layer, or None for P = 0.
        Returns (hidden `[B, S, D]`, present_keys, present_values: lists of `[B, H, P+S, hd]`)."""
        cos, sin = rope_cos_sin(positions, self.cfg.head_dim, self.cfg.rope_theta)
        n = len(self.layers)
        past_keys = [None] * n if past_keys is None else list(past_keys)
        past_values = [None] * n if past_values is None else list(past_values)
        if len(past_keys) != n or len(past_values) != n:
            raise ValueError(f"expected {n} past key/value tensors, got "
                             f"{len(past_keys)}/{len(past_values)}")
        x, keys, values = embeddings, [], []
        for layer, pk, pv in zip(self.layers, past_keys, past_values):
            x, k, v = layer(x, cos, sin, attention_mask, pk, pv)
            keys.append(k)
            values.append(v)
        return self.norm(x), keys, values


def transfusion_mask(length: int, image_blocks: Iterable[tuple[int, int]] = (),
                     past_len: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Additive Transfusion attention mask (0 attend, -inf blocked) for a sequence of `length`
    positions: causal, except that the positions of one image block see each other.

    `image_blocks` lists half-open `(start, end)` absolute position ranges of the N latent
    patches of each image (BOI and EOI are ordinary causal positions). The rows returned are
    those of the suffix after `past_len` cached positions: shape `[length - past_len, length]`,
    i.e. `[S, P+S]` as the backbone graph takes it.
    """
    if not 0 <= past_len <= length:
        raise ValueError(f"past_len {past_len} outside 0..={length}")
    idx = torch.arange(length)
    allowed = idx[None, :] <= idx[:, None]
    for start, end in image_blocks:
        if not 0 <= start <= end <= length:
            raise ValueError(f"image block ({start}, {end}) outside 0..={length}")
        inside = (idx >= start) & (idx < end)
        allowed |= inside[:, None] & inside[None, :]
    mask = torch.zeros(length, length, dtype=dtype).masked_fill(~allowed, float("-inf"))
    return mask[past_len:]
