"""Read and write checkpoint directories (docs/checkpoint.md): config.json + model.safetensors.

`python -m transfusion_ref.checkpoint init --preset tiny --seed 0 -o DIR` writes a randomly
initialised checkpoint for tests (the product path is the Rust `transfusion init`).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .config import PRESETS, Config, ConfigError, preset
from .model import TransfusionModel

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
ACCEPTED_DTYPES = (torch.float32, torch.float16)


class CheckpointError(ValueError):
    """A checkpoint directory that does not match its config (missing/extra/misshapen tensors)."""


def load_checkpoint(directory: str | Path) -> tuple[Config, TransfusionModel]:
    """Load config.json and model.safetensors (float32, or float16 widened to float32).

    Every problem with the tensors is reported at once: missing and unexpected names, wrong
    shapes (expected vs found) and unsupported dtypes.
    """
    directory = Path(directory)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (directory / name).is_file():
            raise CheckpointError(f"{directory}: missing {name}")
    cfg = Config.load(directory / CONFIG_FILE)
    model = TransfusionModel(cfg)
    expected = model.state_dict()
    problems, tensors = [], {}
    with safe_open(directory / WEIGHTS_FILE, framework="pt") as f:
        names = set(f.keys())
        for name in sorted(expected.keys() - names):
            problems.append(f"missing tensor {name} (expected shape {list(expected[name].shape)})")
        for name in sorted(names - expected.keys()):
            problems.append(f"unexpected tensor {name}")
        for name in sorted(names & expected.keys()):
            t = f.get_tensor(name)
            want = list(expected[name].shape)
            if list(t.shape) != want:
                problems.append(f"tensor {name}: expected shape {want}, found {list(t.shape)}")
            elif t.dtype not in ACCEPTED_DTYPES:
                problems.append(f"tensor {name}: expected dtype float32 or float16, found {t.dtype}")
            else:
                tensors[name] = t.to(torch.float32)
    if problems:
        raise CheckpointError(f"{directory / WEIGHTS_FILE} does not match {CONFIG_FILE} "
                              f"({len(problems)} problem(s)):\n  " + "\n  ".join(problems))
    model.load_state_dict(tensors, strict=True)
    return cfg, model


def save_checkpoint(model: TransfusionModel, cfg: Config, directory: str | Path,
                    dtype: torch.dtype = torch.float32) -> None:
    """Write config.json and model.safetensors (`dtype`: float32, or float16 for shipping at half
    the size; loaders widen it) into `directory`.

    Each file is written beside its target and renamed into place, so a crash never leaves a
    half-written file under the final name.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cfg.validate()
    if dtype not in ACCEPTED_DTYPES:
        raise CheckpointError(f"cannot save weights as {dtype}: float32 or float16 only")
    tensors = {k: v.detach().to("cpu", dtype).contiguous()
               for k, v in model.state_dict().items()}
    tmp = directory / (WEIGHTS_FILE + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, directory / WEIGHTS_FILE)
    tmp = directory / (CONFIG_FILE + ".tmp")
    cfg.save(tmp)
    os.replace(tmp, directory / CONFIG_FILE)


def init_checkpoint(cfg: Config, seed: int) -> TransfusionModel:
    """A model with PyTorch's default initialisation drawn from `seed` (for tests)."""
    torch.manual_seed(seed)
    return TransfusionModel(cfg)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m transfusion_ref.checkpoint")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("init", help="write a randomly initialised checkpoint (tests only)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--preset", choices=PRESETS)
    src.add_argument("--config", type=Path, help="a config.json to initialise from")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--output", type=Path, required=True)
    p = sub.add_parser("half", help="copy a checkpoint with float16 weights (shipping size)")
    p.add_argument("checkpoint", type=Path)
    p.add_argument("-o", "--output", type=Path, required=True)
    p = sub.add_parser("check", help="load a checkpoint and report its geometry")
    p.add_argument("checkpoint", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "init":
            cfg = preset(args.preset) if args.preset else Config.load(args.config)
            if (args.output / WEIGHTS_FILE).exists():
                raise CheckpointError(f"{args.output / WEIGHTS_FILE} exists; refusing to overwrite")
            save_checkpoint(init_checkpoint(cfg, args.seed), cfg, args.output)
            print(f"wrote {args.output} ({cfg.name}, seed {args.seed})")
        elif args.command == "half":
            if args.output.exists():
                raise CheckpointError(f"{args.output} exists; refusing to overwrite")
            cfg, model = load_checkpoint(args.checkpoint)
            tokenizer = args.checkpoint / "tokenizer.json"
            if not tokenizer.is_file():
                raise CheckpointError(f"{args.checkpoint}: missing tokenizer.json")
            save_checkpoint(model, cfg, args.output, dtype=torch.float16)
            shutil.copyfile(tokenizer, args.output / "tokenizer.json")
            print(f"wrote {args.output} (float16 weights)")
        else:
            cfg, model = load_checkpoint(args.checkpoint)
            n = sum(p.numel() for p in model.parameters())
            print(f"{cfg.name}: {n} parameters, L={cfg.vae_levels} Hl={cfg.latent_size} "
                  f"K={cfg.unet_levels} g={cfg.patch_grid} N={cfg.num_patches}")
    except (ConfigError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
