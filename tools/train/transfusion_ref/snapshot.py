"""A checkpoint of an unfinished `transfusion` or `distill` stage, from its `state.pt`.

`python -m transfusion_ref.snapshot RUN/teacher -o DIR` writes DIR (config.json,
model.safetensors, tokenizer.json) with the EMA weights at the state's step — what the stage
would write if it ended there — so a run can be converted, evaluated or compared (A/B at
equal steps) while it goes on. For `RUN/student` it writes the current round's student (its
weights as they are: distillation keeps no EMA), with that round's config. The state is only
read.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from .checkpoint import CONFIG_FILE
from .config import Config, ConfigError
from .distill import student_config
from .model import TransfusionModel
from .run import STATE_FILE, TOKENIZER_FILE, TrainError, log, write_checkpoint


def snapshot(stage_dir: Path, out: Path) -> int:
    """Writes the checkpoint of `stage_dir/state.pt` to `out`; returns the state's step."""
    path = stage_dir / STATE_FILE
    if not path.is_file():
        raise TrainError(f"{path}: no training state (is {stage_dir} a stage directory?)")
    state = torch.load(path, weights_only=False)
    if state.get("finished"):
        raise TrainError(f"{path}: the stage has finished: its checkpoint is {stage_dir}")
    if state.get("stage") == "distill":
        return student_snapshot(path, state, out)
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


def student_snapshot(path: Path, state: dict, out: Path) -> int:
    """The student of a distillation state: the teacher's config (the run's `--from`, in the
    state's fingerprint) as the current round's student config, the weights and tokenizer.json
    of that round. Returns the step within the run."""
    fp = state.get("fingerprint", {})
    plan, per_round, r = fp.get("plan"), fp.get("per_round"), state.get("round")
    if "model" not in state or not plan or not per_round or r is None or r >= len(plan):
        raise TrainError(f"{path}: a distillation state between rounds or without its plan: "
                         "no student to write")
    source = Path(fp["source"])
    cfg = student_config(Config.load(source / CONFIG_FILE), plan[r], fp.get("student_prediction"))
    model = TransfusionModel(cfg)
    model.load_state_dict(state["model"])
    write_checkpoint(model, cfg, out, source / TOKENIZER_FILE)
    return sum(per_round[:r]) + int(state["step_in_round"])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m transfusion_ref.snapshot",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("stage_dir", help="the stage directory holding state.pt (RUN/teacher or RUN/student)")
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
