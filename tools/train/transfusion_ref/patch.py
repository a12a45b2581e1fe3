"""Patch layers: latent `[B, C, Hl, Hl]` <-> N patch vectors `[B, N, D]` for the backbone.

Two kinds (docs/checkpoint.md): `linear` (patchify + Linear, as in the paper's simplest
variant) and `unet` (a small U-Net down to the patch grid, whose per-level activations are
passed from `patch_in` to `patch_out` as skips, as in the paper's U-Net variant).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import ResBlock, conv1x1, conv3x3, group_norm, upsample2x
from .config import Config


def patchify(latent: torch.Tensor, p: int) -> torch.Tensor:
    """`[B, C, H, W]` -> `[B, (H/p)(W/p), C*p*p]`: raster patch order (gy, gx), features (c, py, px)."""
    B, C, H, W = latent.shape
    x = latent.reshape(B, C, H // p, p, W // p, p).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(B, (H // p) * (W // p), C * p * p)


def unpatchify(patches: torch.Tensor, p: int, channels: int, size: int) -> torch.Tensor:
    """Inverse of `patchify` for a square `size x size` latent."""
    B = patches.shape[0]
    g = size // p
    x = patches.reshape(B, g, g, channels, p, p).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(B, channels, size, size)


class UNet(nn.Module):
    """U-Net patch layers with K levels (patch.size = 2^K); tensor names `patch.unet.*`."""

    def __init__(self, latent_channels: int, channels: list[int], dim: int, grid: int):
        super().__init__()
        u, K = channels, len(channels)
        self.grid = grid
        self.conv_in = conv3x3(latent_channels, u[0])
        self.down = nn.ModuleList(
            nn.ModuleDict({"res": ResBlock(u[max(i - 1, 0)], u[i], dim),
                           "downsample": conv3x3(u[i], u[i], stride=2)})
            for i in range(K))
        self.mid_in = ResBlock(u[-1], u[-1], dim)
        self.proj_in = conv1x1(u[-1], dim)
        self.proj_out = conv1x1(dim, u[-1])
        self.mid_out = ResBlock(u[-1], u[-1], dim)
        entering = [u[i + 1] if i + 1 < K else u[-1] for i in range(K)]  # channels entering up.i
        self.up = nn.ModuleList(
            nn.ModuleDict({"upsample": conv3x3(entering[i], entering[i]),
                           "res": ResBlock(entering[i] + u[i], u[i], dim)})
            for i in range(K))
        self.norm_out = group_norm(u[0])
        self.conv_out = conv3x3(u[0], latent_channels)

    def encode(self, latent, temb):
        """`conv_in`, per level `res` (-> skip_i) and `downsample`, `mid_in`, `proj_in`;
        the `[B, D, g, g]` map is read as N vectors in raster order."""
        h = self.conv_in(latent)
        skips = []
        for level in self.down:
            h = level["res"](h, temb)
            skips.append(h)
            h = level["downsample"](h)
        h = self.proj_in(self.mid_in(h, temb))
        return h.flatten(2).transpose(1, 2), skips

    def decode(self, hidden, skips, temb):
        """Reverse of `encode`: vectors -> map, `proj_out`, `mid_out`, per level i = K-1..0
        nearest x2, `upsample`, `res(concat(h, skip_i))`; `norm_out`, SiLU, `conv_out`."""
        B, _, D = hidden.shape
        h = hidden.transpose(1, 2).reshape(B, D, self.grid, self.grid)
        h = self.mid_out(self.proj_out(h), temb)
        for i in reversed(range(len(self.up))):
            h = self.up[i]["upsample"](upsample2x(h))
            h = self.up[i]["res"](torch.cat([h, skips[i].to(h.dtype)], dim=1), temb)
        return self.conv_out(F.silu(self.norm_out(h)))


def grid_sincos(grid: int, dim: int) -> torch.Tensor:
    """`[g*g, D]` 2-D sin-cos table (raster order): the first D/2 features encode the column,
    the last D/2 the row, each as `[sin(x w), cos(x w)]` with `w_k = 10000^(-k/(D/4))`.
    The initial value of `patch.pos_embed` (trained from there)."""
    quarter = dim // 4
    w = torch.exp(-math.log(10000.0) * torch.arange(quarter, dtype=torch.float64) / quarter)
    pos = torch.arange(grid, dtype=torch.float64)
    ang = pos[:, None] * w[None]                                     # [g, D/4]
    axis = torch.cat([ang.sin(), ang.cos()], dim=1)                  # [g, D/2]
    col = axis[None, :, :].expand(grid, grid, -1)                    # [gy, gx, D/2] by gx
    row = axis[:, None, :].expand(grid, grid, -1)                    # by gy
    table = torch.cat([col, row], dim=-1).reshape(grid * grid, -1)
    out = torch.zeros(grid * grid, dim, dtype=torch.float64)
    out[:, :table.shape[1]] = table
    return out.float()


class PatchLayers(nn.Module):
    """`patch.*`: either `in_proj`/`out_proj` (linear) or `unet` (U-Net), and the optional
    format-2 conditioning of the patch vectors: `pos_embed` (2-D cell position) and
    `time_proj` (timestep), both added to what `encode` hands the backbone."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.kind = cfg.patch.kind
        self.size = cfg.patch.size
        self.channels = cfg.vae.latent_channels
        self.latent_size = cfg.latent_size
        D = cfg.backbone.dim
        if self.kind == "unet":
            self.unet = UNet(self.channels, cfg.patch.channels, D, cfg.patch_grid)
        else:
            feat = self.channels * self.size ** 2
            self.in_proj = nn.Linear(feat, D)
            self.out_proj = nn.Linear(D, feat)
        self.pos_embed = nn.Parameter(grid_sincos(cfg.patch_grid, D)) \
            if cfg.patch.position_embedding else None
        self.time_proj = None
        if cfg.patch.timestep_tokens:
            # Zero-initialised: a model starts as its format-1 self and learns how much of
            # the noise level each feature should carry.
            self.time_proj = nn.Linear(D, D)
            nn.init.zeros_(self.time_proj.weight)
            nn.init.zeros_(self.time_proj.bias)

    def encode(self, latent, temb):
        """latent `[B, C, Hl, Hl]`, temb `[B, D]` -> (patches `[B, N, D]`, skips)."""
        if self.kind == "unet":
            patches, skips = self.unet.encode(latent, temb)
        else:
            patches, skips = self.in_proj(patchify(latent, self.size)) + temb[:, None, :], []
        if self.pos_embed is not None:
            patches = patches + self.pos_embed.to(patches.dtype)[None]
        if self.time_proj is not None:
            patches = patches + self.time_proj(F.silu(temb)).to(patches.dtype)[:, None, :]
        return patches, skips

    def decode(self, hidden, skips, temb):
        """hidden `[B, N, D]` (+ U-Net skips), temb `[B, D]` -> prediction `[B, C, Hl, Hl]`."""
        if self.kind == "unet":
            return self.unet.decode(hidden, skips, temb)
        out = self.out_proj(hidden + temb[:, None, :])
        return unpatchify(out, self.size, self.channels, self.latent_size)
