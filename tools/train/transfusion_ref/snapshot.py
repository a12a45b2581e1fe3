"""A checkpoint of an unfinished `transfusion` stage, from its `state.pt`.

`python -m transfusion_ref.snapshot RUN/teacher -o DIR` writes DIR (config.json,
model.safetensors, tokenizer.json) with the EMA weights at the state's step — what the stage
would write if it ended there — so a run can be converted, evaluated or compared (A/B at
equal steps) while it goes on. The state is only read.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from .config import Config, ConfigError
from .model import TransfusionModel
from .run import STATE_FILE, TrainError, log, write_checkpoint


def snapshot(stage_dir: Path, out: Path) -> int:
    """Writes the checkpoint of `stage_dir/state.pt` to `out`; returns the state's step."""
    path = stage_dir / STATE_FILE
    if not path.is_file():
        raise TrainError(f"{path}: no training state (is {stage_dir} a stage directory?)")
    state = torch.load(path, weights_only=False)
    if state.get("finished"):
        raise TrainError(f"{path}: the stage has finished: its checkpoint is {stage_dir}")
    if state.get("stage") != "transfusion" or "config" not in state:
        raise TrainError(f"{path}: expected the state of a transfusion stage that records its "
                         f"config, found stage {state.get('stage')!r}")
    cfg = Config.from_dict(state["config"])
    model = TransfusionModel(cfg)
    model.load_state_dict(state["model"])
    params = [p for n, p in model.named_parameters() if not n.startswith("vae.")]
    if len(params) != len(state["ema"]):
        raise TrainError(f"{path}: {len(state['ema'])} EMA tensors for {len(params)} parameters")
    with torch.no_grad():
        for p, s in zip(params, state["ema"]):
            p.copy_(s)
    tok = state["tokenizer"]
    write_checkpoint(model, cfg, out, Path(tok) if isinstance(tok, str) else tok)
    return int(state["step"])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m transfusion_ref.snapshot",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("stage_dir", help="the stage directory holding state.pt (e.g. RUN/teacher)")
    p.add_argument("-o", "--output", required=True, help="checkpoint directory to write")
    args = p.parse_args(argv)
    try:
        step = snapshot(Path(args.stage_dir), Path(args.output))
    except (TrainError, ConfigError) as e:
        log(f"error: {e}")
        return 1
    log(f"snapshot of step {step} -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
