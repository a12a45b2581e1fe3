"""`transfusion_ref.train.main(argv)` that also records the exact loss of every training step.

    torchrun --nproc_per_node 2 tests/ddp_probe.py LOSSES.json STAGE ARGS...   # test_scale.py

Rank 0 writes `[[stage, step, loss, {part: value}], ...]` (the values the progress line
prints, unrounded: under torchrun the ranks' mean, i.e. the global batch's) to LOSSES.json.
`recording()` does the same in-process (the pinned-loss test)."""

import contextlib
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from transfusion_ref import dist, run  # noqa: E402
from transfusion_ref.train import main  # noqa: E402


@contextlib.contextmanager
def recording():
    """Yields the list that every `Run.progress` call appends `[stage, step, loss, parts]` to."""
    calls, orig = [], run.Run.progress

    def progress(self, step, total, loss, parts, *args, **kwargs):
        calls.append([self.stage, step, loss, dict(parts)])
        return orig(self, step, total, loss, parts, *args, **kwargs)

    run.Run.progress = progress
    try:
        yield calls
    finally:
        run.Run.progress = orig


if __name__ == "__main__":
    with recording() as calls:
        code = main(sys.argv[2:])
    if dist.is_main():
        Path(sys.argv[1]).write_text(json.dumps(calls))
    sys.exit(code)
