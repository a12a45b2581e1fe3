"""Write the reference file of a checkpoint (docs/bundle.md "Reference file").

    python -m transfusion_ref.reference CKPT [-o OUT]         # writes CKPT/reference.safetensors
    python -m transfusion_ref.reference CKPT --check EXISTING # regenerate and compare

Tensors are named `{case}/{tensor}` with `tensor` an input or output name of the case's graph.
All random inputs come from one `torch.Generator` seeded 0, drawn in a fixed order, and the
model runs in float32 with deterministic algorithms, so the file is reproducible. The metadata
key `checkpoint_sha256` records which model.safetensors it was computed from.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .backbone import transfusion_mask
from .checkpoint import WEIGHTS_FILE, CheckpointError, load_checkpoint
from .config import ConfigError
from .model import TransfusionModel

REFERENCE_FILE = "reference.safetensors"
PATCH_TIMESTEPS = [37.5, 901.0]
BLOCK_TIMESTEP = 500.0
CHECK_REL_TOL = 1e-5
PREFIX_WORDS = 4  # backbone cases: [bos, 4 words, boi] = 6 text positions


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _backbone_case(model, name, out, embeddings, positions, mask, past=None):
    """Run the backbone once and store its inputs and outputs under `name/`."""
    out[f"{name}/embeddings"] = embeddings
    out[f"{name}/positions"] = positions
    out[f"{name}/attention_mask"] = mask
    if past is not None:
        for l, (k, v) in enumerate(zip(*past)):
            out[f"{name}/past_key.{l}"] = k
            out[f"{name}/past_value.{l}"] = v
    hidden, keys, values = model.backbone(embeddings, positions, mask, *(past or (None, None)))
    out[f"{name}/hidden"] = hidden
    for l, (k, v) in enumerate(zip(keys, values)):
        out[f"{name}/present_key.{l}"] = k
        out[f"{name}/present_value.{l}"] = v
    return keys, values


@torch.no_grad()
def compute_reference(model: TransfusionModel) -> dict[str, torch.Tensor]:
    """Every case of docs/bundle.md, as `{case}/{tensor}` -> contiguous CPU tensor."""
    cfg = model.cfg
    model = model.eval().float()
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        g = torch.Generator().manual_seed(0)
        V, D = cfg.text.vocab_size, cfg.backbone.dim
        C, Hl, H, N = cfg.vae.latent_channels, cfg.latent_size, cfg.image.size, cfg.num_patches
        tok = cfg.special_tokens
        first_word = max(vars(tok).values()) + 1  # word ids: anything above the special ids
        if first_word >= V:
            raise ValueError(f"text.vocab_size {V} leaves no non-special token id")
        out: dict[str, torch.Tensor] = {}

        ids = torch.randint(0, V, (1, 8), generator=g)
        out["text_embed/input_ids"] = ids
        out["text_embed/embeddings"] = model.text_embed(ids)

        # Backbone: [BOS, words, BOI] | N patches of one image | EOI.
        words = torch.randint(first_word, V, (PREFIX_WORDS,), generator=g)
        prefix_ids = torch.cat([torch.tensor([tok.bos]), words, torch.tensor([tok.boi])])[None]
        P = prefix_ids.shape[1]
        prefix = model.text_embed(prefix_ids)
        block_latent = torch.randn(1, C, Hl, Hl, generator=g)
        patches, _ = model.patch_in(block_latent, torch.tensor([BLOCK_TIMESTEP]))
        block = torch.cat([patches, model.text_embed(torch.tensor([[tok.eoi]]))], dim=1)
        total = P + N + 1
        image = [(P, P + N)]
        past = _backbone_case(model, "backbone.prefill", out, prefix, torch.arange(P),
                              transfusion_mask(P))
        _backbone_case(model, "backbone.block", out, block, torch.arange(P, total),
                       transfusion_mask(total, image, past_len=P), past)
        _backbone_case(model, "backbone.full", out, torch.cat([prefix, block], dim=1),
                       torch.arange(total), transfusion_mask(total, image))

        hidden = torch.randn(1, 5, D, generator=g)
        out["lm_head/hidden"] = hidden
        out["lm_head/logits"] = model.lm_head(hidden)

        latent = torch.randn(2, C, Hl, Hl, generator=g)
        t = torch.tensor(PATCH_TIMESTEPS)
        patches, skips = model.patch_in(latent, t)
        out["patch_in/latent"], out["patch_in/timestep"] = latent, t
        out["patch_in/patches"] = patches
        hidden = torch.randn(2, N, D, generator=g)
        out["patch_out/hidden"] = hidden
        for i, s in enumerate(skips):
            out[f"patch_in/skip.{i}"] = s
            out[f"patch_out/skip.{i}"] = s
        out["patch_out/timestep"] = t
        out["patch_out/prediction"] = model.patch_out(hidden, skips, t)

        image_in = torch.rand(2, cfg.image.channels, H, H, generator=g) * 2 - 1
        out["vae_encoder/image"] = image_in
        out["vae_encoder/latent"] = model.vae_encode(image_in)
        latent = torch.randn(2, C, Hl, Hl, generator=g)
        out["vae_decoder/latent"] = latent
        out["vae_decoder/image"] = model.vae_decode(latent)
    finally:
        torch.use_deterministic_algorithms(previous)
    return {k: v.detach().cpu().clone().contiguous() for k, v in out.items()}


def compare(new: dict[str, torch.Tensor], old: dict[str, torch.Tensor],
            rel_tol: float = CHECK_REL_TOL) -> list[tuple[str, bool, str]]:
    """Per-tensor (name, ok, detail): float tensors within `rel_tol * max|old|` (infinities
    must coincide), integer tensors exactly equal; missing/extra names fail."""
    rows = []
    for name in sorted(new.keys() | old.keys()):
        if name not in old or name not in new:
            rows.append((name, False, "missing in " + ("existing" if name not in old else "new")))
            continue
        a, b = new[name], old[name]
        if a.shape != b.shape or a.dtype != b.dtype:
            rows.append((name, False, f"expected {b.dtype}{list(b.shape)}, "
                                      f"found {a.dtype}{list(a.shape)}"))
        elif not a.is_floating_point():
            same = torch.equal(a, b)
            rows.append((name, same, "exact" if same else "integer values differ"))
        else:
            a, b = a.double(), b.double()
            finite = torch.isfinite(b)
            if not torch.equal(finite, torch.isfinite(a)) or not torch.equal(a[~finite], b[~finite]):
                rows.append((name, False, "non-finite entries differ"))
                continue
            diff = (a[finite] - b[finite]).abs().max().item() if finite.any() else 0.0
            scale = max(b[finite].abs().max().item() if finite.any() else 0.0, 1e-6)
            ok = diff <= rel_tol * scale
            rows.append((name, ok, f"max abs {diff:.3e}, rel {diff / scale:.3e}"))
    return rows


def load_reference(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(path, framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m transfusion_ref.reference",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("-o", "--output", type=Path,
                        help=f"output file (default CHECKPOINT/{REFERENCE_FILE})")
    parser.add_argument("--check", type=Path, metavar="EXISTING",
                        help="regenerate and compare with an existing reference file")
    args = parser.parse_args(argv)
    try:
        _, model = load_checkpoint(args.checkpoint)
    except (ConfigError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    sha = sha256_file(args.checkpoint / WEIGHTS_FILE)
    tensors = compute_reference(model)
    if args.check is None:
        path = args.output or args.checkpoint / REFERENCE_FILE
        save_file(tensors, str(path), metadata={"checkpoint_sha256": sha,
                                                "producer": "transfusion_ref.reference"})
        print(f"wrote {path}: {len(tensors)} tensors")
        return 0
    old, meta = load_reference(args.check)
    failed = 0
    if meta.get("checkpoint_sha256") != sha:
        print(f"FAIL metadata checkpoint_sha256: existing {meta.get('checkpoint_sha256')}, "
              f"checkpoint {sha}")
        failed += 1
    for name, ok, detail in compare(tensors, old):
        print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}")
        failed += not ok
    print(f"{args.check}: {'matches' if not failed else f'{failed} mismatch(es)'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
