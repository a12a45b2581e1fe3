"""The Transfusion model (arXiv 2408.11039): one transformer over text tokens and diffusion
latent patches, plus the patch layers and the VAE.

`state_dict()` keys are exactly the tensor names of docs/checkpoint.md. There is one entry
point per ONNX graph of docs/bundle.md, with the same inputs and outputs:

| graph         | call                                                                   |
|---------------|------------------------------------------------------------------------|
| `text_embed`  | `model.text_embed(input_ids)`                                          |
| `backbone`    | `model.backbone(embeddings, positions, attention_mask, past_keys, past_values)` |
| `lm_head`     | `model.lm_head(hidden)`                                                |
| `patch_in`    | `model.patch_in(latent, timestep) -> (patches, skips)`                 |
| `patch_out`   | `model.patch_out(hidden, skips, timestep)`                             |
| `vae_encoder` | `model.vae_encode(image)`                                              |
| `vae_decoder` | `model.vae_decode(latent)`                                             |

(`backbone` is the submodule itself, since its attribute name is fixed by the tensor names.)
"""

from __future__ import annotations

import torch
from torch import nn

from .backbone import Backbone, transfusion_mask  # noqa: F401  (re-exported)
from .blocks import TimestepEmbedding
from .config import Config
from .patch import PatchLayers, patchify, unpatchify  # noqa: F401  (re-exported)
from .vae import VAE


class TextLayers(nn.Module):
    """`text.embed` (token embedding) and `text.lm_head` (untied output projection)."""

    def __init__(self, vocab_size: int, dim: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim)
        self.lm_head = nn.Linear(dim, vocab_size, bias=False)


class TransfusionModel(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        D = cfg.backbone.dim
        self.text = TextLayers(cfg.text.vocab_size, D)
        self.backbone = Backbone(cfg.backbone)
        self.timestep = TimestepEmbedding(cfg.patch.timestep_freq_dim, D)
        self.patch = PatchLayers(cfg)
        self.vae = VAE(cfg)

    def text_embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids int64 `[B, S]` -> embeddings `[B, S, D]`."""
        return self.text.embed(input_ids)

    def lm_head(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden `[B, S, D]` (after the final norm) -> logits `[B, S, V]`."""
        return self.text.lm_head(hidden)

    def patch_in(self, latent: torch.Tensor, timestep: torch.Tensor):
        """latent `[B, C, Hl, Hl]`, timestep `[B]` (training-timestep units) ->
        (patches `[B, N, D]`, skips: list of `[B, u_i, Hl/2^i, Hl/2^i]`, empty for linear)."""
        return self.patch.encode(latent, self.timestep(timestep))

    def patch_out(self, hidden: torch.Tensor, skips, timestep: torch.Tensor) -> torch.Tensor:
        """hidden `[B, N, D]`, the skips of `patch_in`, timestep `[B]` -> prediction
        `[B, C, Hl, Hl]` (what `diffusion.prediction` says: epsilon, v, x0 or flow)."""
        return self.patch.decode(hidden, list(skips), self.timestep(timestep))

    def vae_encode(self, image: torch.Tensor) -> torch.Tensor:
        """image `[B, 3, H, H]` in [-1, 1] -> scaled latent `[B, C, Hl, Hl]` (posterior mean)."""
        return self.vae.encode(image)

    def vae_decode(self, latent: torch.Tensor) -> torch.Tensor:
        """scaled latent `[B, C, Hl, Hl]` -> image `[B, 3, H, H]`."""
        return self.vae.decode(latent)
