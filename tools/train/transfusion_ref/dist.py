"""Where the trainer runs: `--device auto|cpu|cuda`, bf16 autocast, TF32, `--compile`, and data
parallelism with torch DistributedDataParallel under `torchrun` (tools/train/README.md, "GPUs
and several processes").

Every process (rank) of a torchrun job runs the same stage over the same global batch order
(`data.batch_indices`); rank r computes samples `[r B/W, (r+1) B/W)` of each global batch of B
samples (`Shard`), DDP averages the gradients, and the losses are scaled so that their mean
over the ranks is the global batch's loss (`Shard.mean_scale`): an update equals the
single-process update of the global batch, up to float rounding. The random draws (layouts,
times, noise) are made for the whole global batch on every rank from the same CPU
`torch.Generator`, and each rank keeps its slice, so a sample's draws do not depend on the world
size (and CPU and CUDA runs draw the same numbers). Only rank 0 writes state, checkpoints, the
latent cache and logs. With one process nothing here changes a number: CPU runs stay
bit-identical to the trainer without this module.

Works with any torch >= 2.4 (no newer API is used).
"""

from __future__ import annotations

import datetime
import functools
import os
import sys
import warnings
from dataclasses import dataclass

import torch
from torch import nn


class TrainError(RuntimeError):
    """A bad option, input or state, reported before any work (re-exported by run.py)."""


@dataclass(frozen=True)
class Shard:
    """This rank's slice `[start, stop)` of a global batch of `total` samples split into
    `world` equal slices."""
    start: int
    stop: int
    total: int
    world: int

    def take(self, x):
        """This rank's rows of a per-sample tensor or list of the global batch."""
        return x[self.start:self.stop]

    def mean_scale(self, local: int, total: int) -> float:
        """The factor for a mean over this rank's `local` items (of `total` in the global
        batch) so that the ranks' average of the scaled means is the global mean:
        `world * local / total` (0 when the global batch has none)."""
        return self.world * local / total if total else 0.0


class _Step(nn.Module):
    """`fn(model, ...)` as a module forward, so that DDP sees every training step."""

    def __init__(self, model: nn.Module, fn):
        super().__init__()
        self.model = model
        self.fn = fn

    def forward(self, *args, **kwargs):
        return self.fn(self.model, *args, **kwargs)


class Context:
    """The device and the process group of this run (one per process)."""

    def __init__(self, device: torch.device, rank: int = 0, world: int = 1,
                 local_rank: int = 0, compile: bool = False):
        self.device, self.rank, self.world, self.local_rank = device, rank, world, local_rank
        self.compile = compile

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def describe(self) -> str:
        if self.device.type == "cuda":
            return f"{self.device} ({torch.cuda.get_device_name(self.device)})"
        return str(self.device)

    def shard(self, batch: int) -> Shard | None:
        """This rank's slice of a global batch; None with one process (nothing is sliced)."""
        if not self.distributed:
            return None
        per = batch // self.world
        return Shard(self.rank * per, (self.rank + 1) * per, batch, self.world)

    def check_batch(self, batch: int, option: str = "--batch") -> None:
        """The global batch must split into equal shards (before any work)."""
        if batch % self.world:
            fits = [w for w in range(1, batch + 1) if batch % w == 0 and w <= 64]
            more = (batch // self.world + 1) * self.world
            raise TrainError(f"{option} {batch}: the global batch must be divisible by the world "
                             f"size {self.world} (the torchrun processes); pass a multiple of "
                             f"{self.world} (e.g. {option} {more}) or start "
                             f"{', '.join(map(str, fits))} processes")

    # ---- process group ---------------------------------------------------------------------
    def start(self) -> None:
        """Join the process group (idempotent; no-op with one process). Call it on every rank
        after the option checks, before the first collective."""
        if not self.distributed:
            return
        import torch.distributed as dist
        if not dist.is_initialized():
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            dist.init_process_group(backend, timeout=datetime.timedelta(minutes=60))
        if dist.get_world_size() != self.world:
            raise TrainError(f"process group of {dist.get_world_size()} ranks, WORLD_SIZE "
                             f"{self.world}")

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist
            self.start()
            if self.device.type == "cuda":
                dist.barrier(device_ids=[self.device.index])
            else:
                dist.barrier()

    def main_first(self, fn):
        """`fn()` on rank 0, then (after a barrier) on the other ranks: for what rank 0 writes
        and the others read, like the latent cache."""
        if self.distributed and not self.is_main:
            self.barrier()
        out = fn()
        if self.distributed and self.is_main:
            self.barrier()
        return out

    def all_mean(self, values: list[float]) -> list[float]:
        """The mean over the ranks of each value (float64; unchanged with one process)."""
        if not self.distributed:
            return list(values)
        import torch.distributed as dist
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return (t / self.world).tolist()

    def wrap(self, model: nn.Module, fn):
        """`fn(model, *args, **kwargs)` as a callable; under data parallelism a DDP module
        (gradients averaged over the ranks in the backward pass). Only the parameters that
        require grad take part: freeze the others before."""
        if not self.distributed:
            return functools.partial(fn, model)
        from torch.nn.parallel import DistributedDataParallel
        self.start()
        # 1x1-convolution weight gradients come channels-last: DDP copies them, harmlessly.
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view")
        return DistributedDataParallel(_Step(model, fn), broadcast_buffers=False)

    def finish(self) -> None:
        if self.distributed:
            import torch.distributed as dist
            if dist.is_initialized():
                dist.destroy_process_group()


_CTX = Context(torch.device("cpu"))


def current() -> Context:
    return _CTX


def is_main() -> bool:
    return _CTX.is_main


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """`auto`: CUDA when a GPU is usable, else CPU. `cuda` without one is an error."""
    if name not in ("auto", "cpu", "cuda"):
        raise TrainError(f"--device {name}: expected auto, cpu or cuda")
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise TrainError(f"--device cuda: no CUDA GPU is usable here (torch {torch.__version__}"
                         f", CUDA build {torch.version.cuda or 'none'}, "
                         "torch.cuda.is_available() is False); pass --device cpu or auto")
    n = torch.cuda.device_count()
    if local_rank >= n:
        raise TrainError(f"--device cuda: LOCAL_RANK {local_rank} but {n} GPU(s) visible; start "
                         f"at most {n} processes per machine (torchrun --nproc_per_node {n})")
    return torch.device("cuda", local_rank)


def setup(args) -> Context:
    """The context of this process from `--device`, `--compile`, `--precision` and torchrun's
    WORLD_SIZE / RANK / LOCAL_RANK. Joins no process group yet (`Context.start`)."""
    global _CTX
    env = os.environ
    try:
        world, rank = int(env.get("WORLD_SIZE", "1")), int(env.get("RANK", "0"))
        local = int(env.get("LOCAL_RANK", "0"))
    except ValueError as e:
        raise TrainError(f"WORLD_SIZE / RANK / LOCAL_RANK: expected integers ({e})") from None
    if world < 1 or not 0 <= rank < world:
        raise TrainError(f"RANK {rank} / WORLD_SIZE {world}: expected 0 <= RANK < WORLD_SIZE")
    if world > 1 and "MASTER_ADDR" not in env:
        raise TrainError(f"WORLD_SIZE {world} but no MASTER_ADDR: start the processes with "
                         "torchrun --nproc_per_node N (README)")
    _CTX = Context(torch.device("cpu"), rank, world, local)
    device = resolve_device(getattr(args, "device", None) or "auto", local)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        tf32 = (getattr(args, "precision", None) or "auto") != "fp32"
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.cudnn.benchmark = True
        # Bit-identical resume is a CPU property; deterministic CUDA kernels only cost time.
        torch.use_deterministic_algorithms(False)
    _CTX = Context(device, rank, world, local, bool(getattr(args, "compile", False)))
    return _CTX


def use_bf16(precision: str | None, device: torch.device, log=None) -> bool:
    """bf16 autocast? `auto`: on CUDA when the GPU supports bf16, on CPU when oneDNN reports
    native bf16; `bf16` always (with a warning where it is emulated); `fp32` never."""
    precision = precision or "auto"
    if precision == "fp32":
        return False
    if device.type == "cuda":
        supported = torch.cuda.is_bf16_supported()
    else:
        supported = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    if precision == "bf16" and not supported and log is not None:
        log(f"warning: this {'GPU' if device.type == 'cuda' else 'CPU'} has no native bf16; "
            "bf16 autocast will be slow")
    return precision == "bf16" or supported


def compile_model(model: nn.Module) -> nn.Module:
    """`--compile`: torch.compile the repeated blocks (decoder layers, ResBlocks) in place, so
    the state-dict names stay those of docs/checkpoint.md. Off by default: minutes of compile
    time, and a recompile when the sequence length changes (then dynamic shapes)."""
    from .backbone import DecoderLayer
    from .blocks import ResBlock
    for m in model.modules():
        if isinstance(m, (DecoderLayer, ResBlock)):
            m.compile()
    return model


def compiled(model: nn.Module, ctx: Context) -> nn.Module:
    """`model`, compiled in place when the run has `--compile`."""
    return compile_model(model) if ctx.compile else model


def where(ctx: Context) -> str:
    """The device (and the processes) for the log."""
    procs = f" x {ctx.world} processes" if ctx.distributed else ""
    return f"{ctx.describe()}{procs}{', torch.compile' if ctx.compile else ''}"


def log_error(msg: str) -> None:
    """Errors are printed by every rank (prefixed with it when there are several)."""
    c = _CTX
    prefix = f"[rank {c.rank}/{c.world}] " if c.distributed else ""
    print(prefix + msg, file=sys.stderr, flush=True)
