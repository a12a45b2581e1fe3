"""Convolutional VAE (`vae.*`) mapping RGB `[-1, 1]` images to scaled latents and back.

The encoder outputs `2C` moment channels (mean, log-variance) so it can be trained as a VAE;
the `vae_encoder` graph uses only the mean: `z = (mean - shift) * scale`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import ResBlock, conv3x3, group_norm, upsample2x
from .config import Config


class Encoder(nn.Module):
    """`conv_in`, per level i = 0..L `res` then (i < L) stride-2 `downsample`, `mid`,
    `norm_out`, SiLU, `conv_out` -> `[B, 2C, Hl, Hl]`."""

    def __init__(self, image_channels: int, channels: list[int], latent_channels: int):
        super().__init__()
        c, L = channels, len(channels) - 1
        self.conv_in = conv3x3(image_channels, c[0])
        self.down = nn.ModuleList()
        for i in range(L + 1):
            level = nn.ModuleDict({"res": ResBlock(c[max(i - 1, 0)], c[i])})
            if i < L:
                level["downsample"] = conv3x3(c[i], c[i], stride=2)
            self.down.append(level)
        self.mid = ResBlock(c[L], c[L])
        self.norm_out = group_norm(c[L])
        self.conv_out = conv3x3(c[L], 2 * latent_channels)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(image)
        for level in self.down:
            h = level["res"](h)
            if "downsample" in level:
                h = level["downsample"](h)
        return self.conv_out(F.silu(self.norm_out(self.mid(h))))


class Decoder(nn.Module):
    """`conv_in`, `mid`, per level j = L..0 `res` then (j > 0) nearest x2 and `upsample`;
    `norm_out`, SiLU, `conv_out` -> RGB `[B, 3, H, H]` (not clamped)."""

    def __init__(self, image_channels: int, channels: list[int], latent_channels: int):
        super().__init__()
        c, L = channels, len(channels) - 1
        self.conv_in = conv3x3(latent_channels, c[L])
        self.mid = ResBlock(c[L], c[L])
        self.up = nn.ModuleList()
        for j in range(L + 1):  # indexed by level; run from j = L down to 0
            level = nn.ModuleDict({"res": ResBlock(c[L] if j == L else c[j + 1], c[j])})
            if j > 0:
                level["upsample"] = conv3x3(c[j], c[j])
            self.up.append(level)
        self.norm_out = group_norm(c[0])
        self.conv_out = conv3x3(c[0], image_channels)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for j in reversed(range(len(self.up))):
            h = self.up[j]["res"](h)
            if "upsample" in self.up[j]:
                h = self.up[j]["upsample"](upsample2x(h))
        return self.conv_out(F.silu(self.norm_out(h)))


class VAE(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.latent_channels = cfg.vae.latent_channels
        self.scale, self.shift = cfg.vae.scale, cfg.vae.shift
        self.encoder = Encoder(cfg.image.channels, cfg.vae.channels, cfg.vae.latent_channels)
        self.decoder = Decoder(cfg.image.channels, cfg.vae.channels, cfg.vae.latent_channels)

    def moments(self, image: torch.Tensor):
        """(mean, logvar) of the unscaled posterior, for VAE training."""
        return self.encoder(image).chunk(2, dim=1)

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """image `[B, 3, H, H]` in [-1, 1] -> scaled latent `(mean - shift) * scale`."""
        mean = self.encoder(image)[:, : self.latent_channels]
        return (mean - self.shift) * self.scale

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """scaled latent -> image; the decoder sees `z / scale + shift`."""
        return self.decoder(latent / self.scale + self.shift)
