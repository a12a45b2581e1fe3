"""Convolutional building blocks shared by the U-Net patch layers and the VAE, and the
timestep embedding (docs/checkpoint.md "Numerics")."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

GROUPS = 8
GN_EPS = 1e-5


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    """3x3 conv, padding 1, with bias (every conv of the checkpoint has one)."""
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1)


def conv1x1(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1)


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(GROUPS, channels, eps=GN_EPS)


def upsample2x(x: torch.Tensor) -> torch.Tensor:
    """Nearest x2 (floor nearest, PyTorch `interpolate(mode="nearest")`)."""
    return F.interpolate(x, scale_factor=2.0, mode="nearest")


def timestep_frequencies(freq_dim: int) -> torch.Tensor:
    """`f_k = exp(-ln(10000) * k / (F/2))`, k < F/2, in float64 rounded to float32."""
    half = freq_dim // 2
    k = torch.arange(half, dtype=torch.float64)
    return torch.exp(-math.log(10000.0) * k / half).float()


class TimestepEmbedding(nn.Module):
    """`temb = linear2(SiLU(linear1([cos(t f), sin(t f)])))`; t in training-timestep units."""

    def __init__(self, freq_dim: int, dim: int):
        super().__init__()
        self.freq_dim = freq_dim
        self.linear1 = nn.Linear(freq_dim, dim)
        self.linear2 = nn.Linear(dim, dim)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """t `[B]` float -> `[B, D]`."""
        f = timestep_frequencies(self.freq_dim).to(t.device)
        args = t.to(torch.float32)[:, None] * f[None]
        e = torch.cat([args.cos(), args.sin()], dim=-1).to(self.linear1.weight.dtype)
        return self.linear2(F.silu(self.linear1(e)))


class ResBlock(nn.Module):
    """`h = conv1(SiLU(norm1(x))) [+ temb_proj(SiLU(temb))]; h = conv2(SiLU(norm2(h)));
    out = skip(x) + h`, skip a 1x1 conv when cin != cout."""

    def __init__(self, cin: int, cout: int, temb_dim: int | None = None):
        super().__init__()
        self.norm1 = group_norm(cin)
        self.conv1 = conv3x3(cin, cout)
        self.temb_proj = nn.Linear(temb_dim, cout) if temb_dim is not None else None
        self.norm2 = group_norm(cout)
        self.conv2 = conv3x3(cout, cout)
        self.skip = conv1x1(cin, cout) if cin != cout else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        if self.temb_proj is not None:
            if temb is None:
                raise ValueError("this ResBlock needs a timestep embedding")
            h = h + self.temb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return (self.skip(x) if self.skip is not None else x) + h
