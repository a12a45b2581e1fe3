"""`python -m transfusion_ref.train sample CKPT --data DATA -o grid.png`: images of the first
captions of a dataset, sampled in Python as the SDK does (`distill.sample`), as a PNG grid.
The noise is drawn on the CPU from `--seed` and moved to `--device`, so CPU and CUDA draw the
same starting points."""

from __future__ import annotations

from pathlib import Path

import torch

from . import dist
from . import distill as D
from .checkpoint import load_checkpoint
from .data import Shapes
from .run import TrainError, captions_of, log


def sample_cmd(args) -> int:
    ctx = dist.current()
    if ctx.distributed:
        raise TrainError(f"sample runs in one process (WORLD_SIZE is {ctx.world}): start it "
                         "without torchrun")
    cfg, model = load_checkpoint(args.checkpoint)
    model.to(ctx.device).eval()
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
        img = model.vae_decode(lat).clamp(-1, 1).cpu()
    write_png_grid(img, Path(args.output), per_row=8)
    words = data.header["vocab"]["tokens"]
    for i, c in enumerate(caps):
        print(f"{i}\t{' '.join(words[t] for t in c)}")
    log(f"wrote {args.output} ({ctx.describe()})")
    return 0


def write_png_grid(images: torch.Tensor, path: Path, per_row: int = 8) -> None:
    import struct
    import zlib
    images = images.detach().cpu()
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
