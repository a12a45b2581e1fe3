"""The trainer on other devices and several processes (tools/train/README.md, "GPUs and several
processes"): CPU losses pinned bit for bit, data-parallel training under `torchrun` (gloo, 2 CPU
processes) equal to the single-process run of the same global batch, resume from a 2-process
state in one process, and the bad-input errors. Tiny preset, a few steps, one thread."""

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ddp_probe import recording  # noqa: E402
from transfusion_ref.config import preset  # noqa: E402
from transfusion_ref.data import write_synthetic  # noqa: E402
from transfusion_ref.dist import Shard  # noqa: E402
from transfusion_ref.losses import (CAPTION_FIRST, IGNORE, IMAGE_FIRST,  # noqa: E402
                                    UNCONDITIONAL, build_sequences, lm_target_count)
from transfusion_ref.train import main  # noqa: E402

TRAIN_DIR = Path(__file__).resolve().parents[1]
PROBE = Path(__file__).resolve().parent / "ddp_probe.py"

# Recorded with the trainer as it was before --device / torchrun support (same machine: torch
# 2.9.1 CPU, AVX-512 with native bf16, one thread): vae 3, transfusion 3, distill 2 steps of
# the tiny preset, batch 4, on write_synthetic(count=24, seed=0). (stage, step, loss, parts).
PINNED_ENV = ("2.9.1", "AVX512", True)
PINNED = {
    "auto": [
        ("vae", 1, 2.1846559047698975,
         {"l1": 1.0258058309555054, "mse": 1.1588395833969116, "kl": 0.10442209988832474}),
        ("vae", 2, 2.0558791160583496,
         {"l1": 0.988675594329834, "mse": 1.0671952962875366, "kl": 0.0811966210603714}),
        ("vae", 3, 1.9546979665756226,
         {"l1": 0.9596962332725525, "mse": 0.9949944615364075, "kl": 0.0722186341881752}),
        ("transfusion", 1, 9.860568046569824, {"lm": 4.551968574523926, "diff": 1.0617198944091797}),
        ("transfusion", 2, 9.600213050842285, {"lm": 4.22198486328125, "diff": 1.0756456851959229}),
        ("transfusion", 3, 9.313578605651855, {"lm": 4.223940372467041, "diff": 1.017927646636963}),
        ("distill", 1, 4.333468914031982,
         {"lm": 4.255353927612305, "distill": 0.015622956678271294}),
        ("distill", 2, 3.9597764015197754,
         {"lm": 3.8976423740386963, "distill": 0.012426798231899738}),
    ],
    "fp32": [
        ("vae", 1, 2.1854500770568848,
         {"l1": 1.0260344743728638, "mse": 1.159404993057251, "kl": 0.10425227880477905}),
        ("vae", 2, 2.0565783977508545,
         {"l1": 0.9887925982475281, "mse": 1.0677777528762817, "kl": 0.08091931790113449}),
        ("vae", 3, 1.9553388357162476,
         {"l1": 0.9598771929740906, "mse": 0.9954544901847839, "kl": 0.07205567508935928}),
        ("transfusion", 1, 9.873411178588867, {"lm": 4.552662372589111, "diff": 1.0641498565673828}),
        ("transfusion", 2, 9.614166259765625, {"lm": 4.222665786743164, "diff": 1.0782999992370605}),
        ("transfusion", 3, 9.333686828613281, {"lm": 4.223865509033203, "diff": 1.021964192390442}),
        ("distill", 1, 4.3319549560546875,
         {"lm": 4.251486778259277, "distill": 0.016093596816062927}),
        ("distill", 2, 3.958785057067871,
         {"lm": 3.897596597671509, "distill": 0.012237682938575745}),
    ],
}
PINNED_SHA256 = {
    "auto": {"vae": "2d8c8eeba5abc8b27088635facb1b6e10aa04be33c1bc47f8e543152488c853a",
             "teacher": "3c13370b44e259dc9bfa66a48154b83fef42bc31a501e072d668674612ed7f1e",
             "student": "9684359f4b344999d7a67a21829fc08bbaff2614b1645007f5e01734276a7344"},
    "fp32": {"vae": "cef35099050aabee3a36e4215572cef7ae78a3b6585ea2c66bddd8604aac52f5",
             "teacher": "88a54cc818d9917e139857b996f04b253cbe30311000b14de0344e4578a0bc8e",
             "student": "08e6c961cfe33a2c7faa23f4eb5590eb78a26038bb3adca6f7bc721bfed11649"},
}


def train(*argv):
    """The trainer in-process: (exit code, stderr text, [[stage, step, loss, parts], ...])."""
    err = io.StringIO()
    with recording() as calls, contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, err.getvalue(), calls


def torchrun(nproc: int, losses: Path, *argv, timeout: int = 300):
    """`torchrun --standalone --nproc_per_node N tests/ddp_probe.py LOSSES ARGV` (gloo on the
    CPU); returns (exit code, output, the recorded steps)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", str(PROBE), str(losses), *map(str, argv)]
    p = subprocess.run(cmd, cwd=TRAIN_DIR, env=env, capture_output=True, text=True,
                       timeout=timeout)
    calls = json.loads(losses.read_text()) if losses.is_file() else []
    return p.returncode, p.stdout + p.stderr, calls


def sha256(path: Path) -> str:
    import hashlib
    return hashlib.sha256(path.read_bytes()).hexdigest()


@contextlib.contextmanager
def fake_world(size: int):
    """torchrun's environment for rank 0 of `size`, without the other ranks (for errors that
    must come before the process group is joined)."""
    keys = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    old = {k: os.environ.get(k) for k in keys}
    os.environ.update(WORLD_SIZE=str(size), RANK="0", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT="1")
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class Helpers(unittest.TestCase):
    def test_lm_target_count_matches_sequences(self):
        cfg = preset("tiny")
        caps = [[10, 11], [12], [13, 14, 15], []]
        layouts = [CAPTION_FIRST, IMAGE_FIRST, UNCONDITIONAL, CAPTION_FIRST]
        b = build_sequences(cfg, caps, layouts)
        self.assertEqual(lm_target_count(caps, layouts), int((b.lm_targets != IGNORE).sum()))

    def test_shard_mean_scale(self):
        # Ranks' average of the scaled shard means == the global mean.
        items = [torch.tensor([1.0, 2.0, 3.0]), torch.tensor([10.0])]
        scaled = [Shard(r * 2, r * 2 + 2, 4, 2).mean_scale(len(x), 4) * x.mean()
                  for r, x in enumerate(items)]
        self.assertAlmostEqual(float(sum(scaled) / 2), float(torch.cat(items).mean()), 6)
        self.assertEqual(Shard(0, 2, 4, 2).mean_scale(0, 0), 0.0)
        self.assertEqual(Shard(2, 4, 4, 2).take(list("abcd")), ["c", "d"])


class PinnedLosses(unittest.TestCase):
    """CPU results stay bit for bit those of the trainer before --device/torchrun existed."""

    def test_cpu_losses_bit_identical(self):
        env = (torch.__version__.split("+")[0], torch.backends.cpu.get_cpu_capability(),
               bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()))
        exact = env == PINNED_ENV
        torch.set_num_threads(1)
        tmp = Path(tempfile.mkdtemp(prefix="tf-pinned-"))
        self.addCleanup(shutil.rmtree, tmp, True)
        data = write_synthetic(tmp / "data", count=24, seed=0)
        for prec in (("auto", "fp32") if exact else ("fp32",)):
            out = tmp / prec
            common = ["--data", data, "--out", out, "--threads", 1, "--batch", 4,
                      "--precision", prec]
            got = []
            for argv in (["vae", *common, "--preset", "tiny", "--steps", 3, "--stats-samples", 8],
                         ["transfusion", *common, "--steps", 3, "--sample-steps", 8,
                          "--min-snr-gamma", 0, "--caption-diffusion", "--no-position-embedding",
                          "--no-timestep-tokens"],
                         ["distill", *common, "--steps", 2, "--measure-samples", 0]):
                code, log, calls = train(*argv)
                self.assertEqual(code, 0, log)
                got += [tuple(c) for c in calls]
            if exact:
                self.assertEqual(got, PINNED[prec], f"{prec}: CPU losses changed")
                for d, h in PINNED_SHA256[prec].items():
                    self.assertEqual(sha256(out / d / "model.safetensors"), h, f"{prec} {d}")
            else:  # another machine / torch: the same numbers up to kernel rounding
                self.assertEqual([c[:2] for c in got], [c[:2] for c in PINNED[prec]])
                for g, w in zip(got, PINNED[prec]):
                    self.assertAlmostEqual(g[2] / w[2], 1.0, delta=1e-4, msg=f"{g} vs {w}")


class DataParallel(unittest.TestCase):
    """`torchrun --nproc_per_node 2` (gloo) == one process with the same global batch."""

    @classmethod
    def setUpClass(cls):
        torch.set_num_threads(1)
        cls.tmp = Path(tempfile.mkdtemp(prefix="tf-ddp-test-"))
        cls.data = write_synthetic(cls.tmp / "data", count=32, seed=0)
        cls.common = ["--data", cls.data, "--threads", 1, "--precision", "fp32",
                      "--log-every", 1]
        # Single-process references: the pipeline, and 4 Transfusion steps on its VAE.
        cls.recipe = ["recipe", *cls.common, "--preset", "tiny", "--vae-steps", 3,
                      "--transfusion-steps", 2, "--distill-steps", 2, "--sample-steps", 8,
                      "--stats-samples", 16, "--measure-samples", 0]
        code, log, cls.ref_calls = train(*cls.recipe, "--out", cls.tmp / "ref")
        assert code == 0, log
        cls.tf = ["transfusion", *cls.common, "--steps", 4, "--batch", 8, "--sample-steps", 8]
        cls.tf_ref = cls.with_vae("tf-ref")
        code, log, cls.tf_ref_calls = train(*cls.tf, "--out", cls.tf_ref)
        assert code == 0, log

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    @classmethod
    def with_vae(cls, name: str) -> Path:
        """A run directory holding the reference VAE and its latent cache."""
        run = cls.tmp / name
        shutil.rmtree(run, ignore_errors=True)
        for d in ("vae", "cache"):
            shutil.copytree(cls.tmp / "ref" / d, run / d)
        return run

    def assert_same_losses(self, got, want):
        self.assertEqual([c[:2] for c in got], [c[:2] for c in want])
        for g, w in zip(got, want):
            self.assertAlmostEqual(g[2] / w[2], 1.0, delta=1e-5, msg=f"{g} vs {w}")
            for k in w[3]:
                # Parts are smaller sums over fewer items (e.g. L_diff over captioned samples
                # only): the same rounding is a larger share of them.
                self.assertAlmostEqual(g[3][k], w[3][k], delta=1e-4 * max(1.0, abs(w[3][k])),
                                       msg=f"{k}: {g} vs {w}")

    def test_pipeline_on_two_processes(self):
        """VAE, Transfusion and distillation under DDP: every step's global-batch loss equals
        the single-process one (float tolerance). The VAE's weights are compared through its
        losses, not element by element: AdamW turns the rounding noise of gradients that are
        exactly zero in theory (biases before a one-channel-per-group GroupNorm) into +-lr
        steps that do not change the function."""
        out = self.tmp / "ddp"
        code, log, calls = torchrun(2, self.tmp / "ddp.json", *self.recipe, "--out", out)
        self.assertEqual(code, 0, log)
        self.assert_same_losses(calls, self.ref_calls)
        for stage in ("vae", "teacher", "student"):
            summary = json.loads((out / stage / "train_summary.json").read_text())
            self.assertEqual((summary["world_size"], summary["device"]), (2, "cpu"), stage)
            self.assertGreater(summary["samples_per_second"], 0)
        self.assertTrue((out / "student" / "model.safetensors").is_file())

    def test_resume_two_processes_in_one(self):
        """2 Transfusion steps on 2 processes, stop, 2 more in one process with --resume ==
        4 steps in one process (weights allclose, every step's loss)."""
        run = self.with_vae("tf-resume")
        code, log, first = torchrun(2, self.tmp / "resume.json", *self.tf, "--out", run,
                                    "--stop-at", 2)
        self.assertEqual(code, 0, log)
        self.assertTrue((run / "teacher" / "state.pt").is_file())
        self.assertFalse((run / "teacher" / "model.safetensors").is_file())
        self.assertEqual(torch.load(run / "teacher" / "state.pt", weights_only=False)
                         ["fingerprint"]["world_size"], 2)
        code, log, rest = train(*self.tf, "--out", run, "--resume")
        self.assertEqual(code, 0, log)
        self.assertIn("resumed at step 2", log)
        self.assertIn("world_size", log)  # the warning: not bit-identical to the 2-process run
        self.assert_same_losses(first + rest, self.tf_ref_calls)
        want = load_file(self.tf_ref / "teacher" / "model.safetensors")
        got = load_file(run / "teacher" / "model.safetensors")
        for k in want:
            torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-5, msg=k)


class BadInput(unittest.TestCase):
    """Clear errors before any work; nothing written."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = Path(tempfile.mkdtemp(prefix="tf-badinput-"))
        cls.data = write_synthetic(cls.tmp / "data", count=16, seed=0)
        cls.common = ["--data", cls.data, "--threads", 1, "--log-every", 1]

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def test_cuda_without_gpu(self):
        if torch.cuda.is_available():
            self.skipTest("a CUDA GPU is available here")
        for argv in (["vae", "--preset", "tiny"], ["recipe", "--preset", "tiny"],
                     ["transfusion"], ["distill"]):
            out = self.tmp / f"cuda-{argv[0]}"
            code, log, _ = train(*argv, *self.common, "--out", out, "--device", "cuda")
            self.assertEqual(code, 1, log)
            self.assertIn("--device cuda", log)
            self.assertIn("--device cpu", log)
            self.assertFalse(out.exists(), f"{argv[0]}: wrote {out}")
        code, log, _ = train("sample", self.tmp / "nothing", "--data", self.data, "-o",
                             self.tmp / "grid.png", "--device", "cuda")
        self.assertEqual(code, 1, log)
        self.assertFalse((self.tmp / "grid.png").exists())

    def test_world_size_must_divide_batch(self):
        out = self.tmp / "world"
        with fake_world(3):
            code, log, _ = train("vae", *self.common, "--out", out, "--preset", "tiny",
                                 "--batch", 8)
            self.assertEqual(code, 1, log)
            self.assertIn("--batch 8", log)
            self.assertIn("world size 3", log)
            code, log, _ = train("recipe", *self.common, "--out", out, "--preset", "tiny")
            self.assertEqual(code, 1, log)
            self.assertIn("recipe, vae stage: --batch 16", log)  # tiny's default batch
        self.assertFalse(out.exists())

    def test_resume_with_other_batch(self):
        out = self.tmp / "resume"
        args = ["vae", *self.common, "--out", out, "--preset", "tiny", "--steps", 4,
                "--stats-samples", 8]
        code, log, _ = train(*args, "--batch", 4, "--stop-at", 2)
        self.assertEqual(code, 0, log)
        state = (out / "vae" / "state.pt").read_bytes()
        code, log, calls = train(*args, "--batch", 8, "--resume")
        self.assertEqual(code, 1, log)
        self.assertIn("--batch was 4", log)
        self.assertEqual(calls, [])
        self.assertEqual((out / "vae" / "state.pt").read_bytes(), state)
        self.assertFalse((out / "vae" / "model.safetensors").exists())


if __name__ == "__main__":
    unittest.main()
