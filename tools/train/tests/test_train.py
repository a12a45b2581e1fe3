"""Trainer smoke tests (tiny preset, synthetic data): the schedule matches the Rust runtime,
losses fall, resume is bit-identical, checkpoints load (and convert + run when the Rust binary
is built). Each training run is a few dozen steps of the tiny preset on one thread."""

import contextlib
import io
import json
import math
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import unittest
from unittest import mock
from pathlib import Path

import torch

from transfusion_ref import diffusion as Dm
from transfusion_ref import distill as Dist
from transfusion_ref.checkpoint import load_checkpoint
from transfusion_ref.config import preset
from transfusion_ref.data import Shapes, tokenizer_json, write_synthetic
from transfusion_ref.distill import check_nested, rounds
from transfusion_ref.losses import (CAPTION_FIRST, IGNORE, IMAGE_FIRST, UNCONDITIONAL,
                                    build_sequences)
from transfusion_ref.train import main

ROOT = Path(__file__).resolve().parents[3]
BINARY = next((p for p in (ROOT / "target" / d / "transfusion" for d in ("debug", "release"))
               if p.is_file()), ROOT / "target" / "debug" / "transfusion")
TRAIN_DIR = Path(__file__).resolve().parents[1]


def train(*argv):
    """Run the trainer in-process; returns (exit code, stderr text)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, err.getvalue()


def losses(log: str) -> list[float]:
    return [float(m) for m in re.findall(r"\| loss ([0-9.]+)", log)]


class Schedule(unittest.TestCase):
    """Literal values of sdk/src/diffusion/schedule.rs tests (computed there independently)."""

    def test_cosine_alpha_bar(self):
        ab = Dm.alpha_bars("cosine", 1000)
        for t, v in [(0, 0.999958715775178), (499, 0.4938435904406382),
                     (749, 0.14427210238573596), (999, 2.4287669070348567e-09)]:
            self.assertAlmostEqual(ab[t] / v, 1.0, delta=1e-9, msg=f"t={t}")
        self.assertAlmostEqual(ab[999] / (ab[998] * 0.001), 1.0, delta=1e-9)  # clipped beta

    def test_linear_alpha_bar(self):
        ab = Dm.alpha_bars("linear", 1000)
        for t, v in [(249, 0.5240853738253606), (499, 0.07858724288177821),
                     (999, 4.0358297653756754e-05)]:
            self.assertAlmostEqual(ab[t] / v, 1.0, delta=1e-9, msg=f"t={t}")

    def test_trailing_spacing(self):
        self.assertEqual(Dm.trailing_timesteps(1000, 1), [999])
        self.assertEqual(Dm.trailing_timesteps(1000, 4), [999, 749, 499, 249])
        self.assertEqual(Dm.trailing_timesteps(1000, 3), [999, 666, 332])
        self.assertEqual(Dm.trailing_timesteps(1000, 16)[:4], [999, 937, 874, 811])  # ties even
        self.assertEqual(Dm.trailing_timesteps(10, 10), list(range(9, -1, -1)))
        for n in (2, 4, 8, 16, 32, 64):
            check_nested(1000, n)
        self.assertEqual(rounds(32, 4), [16, 8, 4])
        with self.assertRaises(ValueError):
            rounds(24, 4)
        for n in (1, 2, 4, 8):
            check_nested(1000, n, 4)
        self.assertEqual(rounds(16, 4, 4), [4])
        self.assertEqual(rounds(64, 4, 4), [16, 4])
        for bad in ((32, 4, 4), (16, 4, 3), (16, 4, 1), (4, 4, 2)):
            with self.assertRaises(ValueError, msg=str(bad)):
                rounds(*bad)

    def test_distillation_target_of_an_exact_teacher(self):
        """A teacher that knows x0 keeps every DDIM path on `a x0 + s eps`, however many
        substeps it takes: the student's target is then x0 itself, and a student that predicts
        x0 has zero distillation loss. The teacher is asked only at the levels of the
        `substeps * n`-step grid (others raise), the student only at the `n`-step grid's."""
        cfg = preset("tiny")
        sched = Dm.Schedule(cfg.diffusion)
        g = torch.Generator().manual_seed(1)
        x0 = torch.randn(6, cfg.vae.latent_channels, 4, 4, generator=g)
        captions = [[10 + k, 11] for k in range(6)]
        for n, k in ((4, 2), (2, 4), (4, 4)):
            levels = {torch.tensor(lv.model_time).item(): (lv.alpha, lv.sigma)
                      for lv in sched.levels(n * k)[:-1]}
            coarse = {torch.tensor(lv.model_time).item() for lv in sched.levels(n)[:-1]}

            def exact(x, model_time, x0_hat, allowed):
                a, s = zip(*(levels[v] for v in model_time.tolist() if v in allowed))
                self.assertEqual(len(a), len(x), "asked off the grid")
                a, s = torch.tensor(a).double(), torch.tensor(s).double()
                return Dm.output_for_x0(cfg.diffusion.prediction, a, s, x, x0_hat).float()

            for offset, want_zero in ((0.0, True), (0.1, False)):
                def teacher_predict(model, batch, x, model_time, *rest):
                    return exact(x, model_time, x0[:len(x)], levels)

                def student_run(model, batch, x, model_time, want_logits=True):
                    return exact(x, model_time, x0 + offset, coarse), None

                model = type("M", (), {"cfg": cfg})()
                with mock.patch.object(Dist, "predict", teacher_predict), \
                        mock.patch.object(Dist, "run_sequence", student_run):
                    _, parts = Dist.distill_loss(
                        model, model, sched, n, x0, captions, torch.Generator().manual_seed(2),
                        teacher_guidance=1.0, lam=1.0, caption_frac=0.0, caption_max_t=0.5,
                        autocast=False, substeps=k)
                if want_zero:
                    self.assertLess(parts["distill"], 1e-8, f"n={n} k={k}")
                else:
                    self.assertGreater(parts["distill"], 1e-4, f"n={n} k={k}")

    def test_oracle_ddim_reaches_x0(self):
        """A perfect network lands on x0 in 1 and 4 DDIM steps for every prediction type (the
        Rust `oracle_reaches_x0_in_1_and_4_steps`)."""
        g = torch.Generator().manual_seed(0)
        x0 = torch.randn(2, 4, 4, 4, generator=g)
        for schedule, preds in (("cosine", ("epsilon", "v", "x0")), ("flow", ("flow",))):
            cfg = preset("tiny").diffusion
            cfg.schedule = schedule
            for pred in preds:
                cfg.prediction = pred
                s = Dm.Schedule(cfg)
                for steps in (1, 4):
                    lv = s.levels(steps)
                    x = torch.randn(x0.shape, generator=g)
                    for k in range(steps):
                        eps = (x.double() - lv[k].alpha * x0.double()) / lv[k].sigma
                        out = s.target(x0.double(), eps, lv[k].alpha, lv[k].sigma).float()
                        x, _ = Dm.ddim_step(pred, lv[k], lv[k + 1], x, out)
                    tol = 1e-4 + 2.5e-7 * lv[steps - 1].sigma / lv[steps - 1].alpha \
                        if pred == "epsilon" else 1e-4
                    self.assertLess((x - x0).abs().max().item(), tol, f"{schedule} {pred} {steps}")

    def test_output_for_x0_inverts_split(self):
        x, x0 = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)
        a, s = torch.tensor([0.3, 0.7, 0.9], dtype=torch.float64), \
            torch.tensor([0.95, 0.71, 0.43], dtype=torch.float64)
        for pred in ("epsilon", "v", "x0", "flow"):
            out = Dm.output_for_x0(pred, a, s, x, x0)
            back, _ = Dm.split(pred, a, s, x, out)
            torch.testing.assert_close(back.float(), x0, atol=1e-5, rtol=1e-5)

    def test_training_times(self):
        cfg = preset("tiny").diffusion
        s = Dm.Schedule(cfg)
        t = s.sample_times(4000, torch.Generator().manual_seed(0))
        self.assertEqual((t.min().item(), t.max().item()), (0.0, 999.0))
        t = s.sample_times(4000, torch.Generator().manual_seed(0), 0.5)
        self.assertEqual(t.max().item(), 499.0)


class Sequences(unittest.TestCase):
    def test_layouts(self):
        cfg = preset("tiny")
        N = cfg.num_patches
        b = build_sequences(cfg, [[10, 11], [12], [13, 14, 15]],
                            [CAPTION_FIRST, IMAGE_FIRST, UNCONDITIONAL])
        sp = cfg.special_tokens
        self.assertEqual(b.ids[0, :4].tolist(), [sp.bos, 10, 11, sp.boi])
        self.assertEqual(b.ids[0, 4 + N:6 + N].tolist(), [sp.eoi, sp.eos])
        self.assertEqual(b.lm_targets[0, :3].tolist(), [10, 11, sp.boi])
        self.assertEqual(b.lm_targets[0, 4 + N].item(), sp.eos)
        self.assertEqual(int((b.lm_targets[0] != IGNORE).sum()), 4)
        self.assertEqual(b.ids[1, :2].tolist(), [sp.bos, sp.boi])
        self.assertEqual(b.ids[1, 2 + N:5 + N].tolist(), [sp.eoi, 12, sp.eos])
        self.assertEqual(b.lm_targets[1, 2 + N:4 + N].tolist(), [12, sp.eos])
        self.assertEqual(int((b.lm_targets[1] != IGNORE).sum()), 2)
        self.assertEqual(int((b.lm_targets[2] != IGNORE).sum()), 0)  # dropped caption
        self.assertEqual(b.image_index[0, 0].item(), 4)
        self.assertEqual(b.image_index[1, 0].item(), 2)
        m = b.mask[0]
        self.assertEqual(m[4, 4 + N - 1].item(), 0.0)           # image block bidirectional
        self.assertEqual(m[3, 4].item(), float("-inf"))         # BOI does not see the image
        self.assertEqual(m[4 + N, 4].item(), 0.0)               # EOI sees it


class Trainer(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        torch.set_num_threads(1)
        cls.tmp = Path(tempfile.mkdtemp(prefix="tf-train-test-"))
        cls.data = write_synthetic(cls.tmp / "data", count=48, seed=0)
        cls.rundir = cls.tmp / "run"
        cls.common = ["--data", cls.data, "--threads", "1", "--log-every", "1"]
        code, cls.vae_log = train("vae", *cls.common, "--out", cls.rundir, "--preset", "tiny",
                                  "--steps", 40, "--batch", 8, "--stats-samples", 48)
        assert code == 0, cls.vae_log
        code, cls.tf_log = train("transfusion", *cls.common, "--out", cls.rundir, "--steps", 40,
                                 "--batch", 8, "--sample-steps", 8, "--ema", 0.9)
        assert code == 0, cls.tf_log
        code, cls.distill_log = train("distill", *cls.common, "--out", cls.rundir, "--steps", 6,
                                      "--batch", 8, "--measure-samples", 4)
        assert code == 0, cls.distill_log

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def assert_falls(self, log, what):
        values = losses(log)
        self.assertGreater(len(values), 10, log)
        first, last = sum(values[:5]) / 5, sum(values[-5:]) / 5
        self.assertLess(last, 0.8 * first, f"{what} loss did not fall: {values}")

    def test_losses_fall(self):
        self.assert_falls(self.vae_log, "VAE")
        self.assert_falls(self.tf_log, "Transfusion")
        lm = [float(m) for m in re.findall(r"lm ([0-9.]+)", self.tf_log)]
        self.assertLess(sum(lm[-5:]) / 5, sum(lm[:5]) / 5 - 0.5)

    def test_stage_outputs_load(self):
        for stage in ("vae", "teacher", "student", "student/rounds/4"):
            cfg, model = load_checkpoint(self.rundir / stage)
            self.assertTrue((self.rundir / stage / "tokenizer.json").is_file())
        vae_cfg, _ = load_checkpoint(self.rundir / "vae")
        self.assertNotEqual((vae_cfg.vae.scale, vae_cfg.vae.shift), (1.0, 0.0))
        t_cfg, _ = load_checkpoint(self.rundir / "teacher")
        self.assertEqual((t_cfg.diffusion.prediction, t_cfg.diffusion.steps,
                          t_cfg.diffusion.guidance), ("v", 8, 3.0))
        s_cfg, _ = load_checkpoint(self.rundir / "student")
        d = s_cfg.diffusion
        self.assertEqual((d.steps, d.sampler, d.guidance, d.guidance_distilled),
                         (4, "ddim", 1.0, True))
        self.assertEqual(rounds(8, 4), [4])
        report = json.loads((self.rundir / "student" / "distill_report.json").read_text())
        self.assertIn("student_4_steps", report)
        # Finished stages are skipped, not retrained.
        code, log = train("vae", *self.common, "--out", self.rundir, "--preset", "tiny")
        self.assertEqual(code, 0)
        self.assertIn("already finished", log)

    def test_tokenizer_matches_init(self):
        if not BINARY.is_file():
            self.skipTest(f"{BINARY} not built (cargo build -p transfusion-tools): skipping the "
                          "comparison with `transfusion init`'s tokenizer.json")
        out = self.tmp / "init"
        subprocess.run([BINARY, "init", "--preset", "tiny", "-o", out], check=True,
                       capture_output=True)
        header = Shapes.open(self.data).header
        ours = tokenizer_json(header)
        theirs = json.loads((out / "tokenizer.json").read_text())
        # Same structure; the synthetic vocabulary's words differ from the real one.
        self.assertEqual({k: v for k, v in ours.items() if k != "model"},
                         {k: v for k, v in theirs.items() if k != "model"})
        self.assertEqual(ours["model"]["type"], theirs["model"]["type"])

    def test_resume_is_bit_identical(self):
        """N steps straight == N/2 steps, stop, resume N/2, for every stage (distillation across
        a round boundary)."""
        for stage, out_dir, n in (("vae", "vae", 8), ("transfusion", "teacher", 8),
                                  ("distill", "student", 8)):
            runs = {}
            for name in ("straight", "resumed"):
                run = self.tmp / f"resume-{stage}-{name}"
                shutil.rmtree(run, ignore_errors=True)
                for prev in {"vae": (), "transfusion": ("vae",),
                             "distill": ("vae", "teacher")}[stage]:
                    shutil.copytree(self.rundir / prev, run / prev)
                if stage != "vae":
                    shutil.copytree(self.rundir / "cache", run / "cache")
                args = [stage, *self.common, "--out", run, "--steps", n, "--batch", 4]
                if stage == "vae":
                    args += ["--preset", "tiny", "--stats-samples", 16]
                if stage == "distill":
                    args += ["--teacher-steps", 16, "--measure-samples", 0]
                if name == "resumed":
                    code, log = train(*args, "--stop-at", n // 2 + (1 if stage == "distill" else 0))
                    self.assertEqual(code, 0, log)
                    self.assertTrue((run / out_dir / "state.pt").is_file())
                    self.assertFalse((run / out_dir / "model.safetensors").is_file())
                    code, log = train(*args)  # without --resume: refused
                    self.assertEqual(code, 1)
                    self.assertIn("--resume", log)
                    args.append("--resume")
                code, log = train(*args)
                self.assertEqual(code, 0, log)
                if name == "resumed":
                    self.assertIn("resumed", log)
                runs[name] = (run / out_dir / "model.safetensors").read_bytes()
            self.assertEqual(runs["straight"], runs["resumed"], f"{stage}: resume differs")

    def test_distill_continues_a_student(self):
        """--student-from: the first round's student starts from those weights instead of the
        teacher's; a checkpoint of another architecture is refused, naming the tensors."""
        from transfusion_ref.run import write_checkpoint
        run = self.tmp / "continue"
        shutil.copytree(self.rundir / "cache", run / "cache")
        args = ["distill", *self.common, "--out", run, "--from", self.rundir / "teacher",
                "--steps", 1, "--batch", 4, "--measure-samples", 0]
        code, log = train(*args, "--student-from", self.rundir / "student")
        self.assertEqual(code, 0, log)
        self.assertIn(f"starts from {self.rundir / 'student'}", log)
        cfg, _ = load_checkpoint(self.rundir / "student")
        cfg.backbone.n_layers += 1
        from transfusion_ref.model import TransfusionModel
        other = self.tmp / "deeper"
        write_checkpoint(TransfusionModel(cfg), cfg, other, self.rundir / "student" /
                         "tokenizer.json")
        shutil.rmtree(run / "student", ignore_errors=True)
        code, log = train(*args, "--student-from", other)
        self.assertEqual(code, 1, log)
        self.assertIn("not the teacher's architecture", log)

    def test_distill_with_four_teacher_substeps(self):
        """--teacher-substeps 4: the 8-step teacher distils to 2 steps in one round; a plan the
        step counts cannot make is refused naming the options."""
        run = self.tmp / "substeps"
        shutil.copytree(self.rundir / "cache", run / "cache")
        args = ["distill", *self.common, "--out", run, "--from", self.rundir / "teacher",
                "--steps", 2, "--batch", 4, "--measure-samples", 0, "--teacher-substeps", 4]
        code, log = train(*args, "--student-steps", 2)
        self.assertEqual(code, 0, log)
        self.assertIn("8 -> 2 steps (4 teacher steps per student step)", log)
        self.assertEqual(sorted(p.name for p in (run / "student" / "rounds").iterdir()), ["2"])
        cfg, _ = load_checkpoint(run / "student")
        self.assertEqual(cfg.diffusion.steps, 2)
        code, log = train(*args, "--student-steps", 4, "--out", self.tmp / "substeps-bad")
        self.assertEqual(code, 1, log)
        self.assertIn("--teacher-substeps", log)

    def test_snapshot_of_an_unfinished_distillation(self):
        """`transfusion_ref.snapshot RUN/student` mid-round: the round's student config and the
        state's weights, loadable as a checkpoint."""
        from transfusion_ref.snapshot import snapshot
        run = self.tmp / "snapshot-distill"
        for prev in ("vae", "teacher", "cache"):
            shutil.copytree(self.rundir / prev, run / prev)
        args = ["distill", *self.common, "--out", run, "--steps", 4, "--batch", 4,
                "--teacher-steps", 16, "--measure-samples", 0]
        code, log = train(*args, "--stop-at", 3)
        self.assertEqual(code, 0, log)
        self.assertEqual(snapshot(run / "student", self.tmp / "snap"), 3)
        cfg, model = load_checkpoint(self.tmp / "snap")
        d = cfg.diffusion
        self.assertEqual((d.steps, d.guidance, d.guidance_distilled), (4, 1.0, True))
        state = torch.load(run / "student" / "state.pt", weights_only=False)
        self.assertEqual(state["round"], 1)
        for name, value in model.state_dict().items():
            self.assertTrue(torch.equal(value, state["model"][name]), name)

    def test_sigterm_saves_state(self):
        run = self.tmp / "signal"
        shutil.copytree(self.rundir / "vae", run / "vae")
        shutil.copytree(self.rundir / "cache", run / "cache")
        cmd = [sys.executable, "-m", "transfusion_ref.train", "transfusion", "--data",
               str(self.data), "--out", str(run), "--threads", "1", "--steps", "100000",
               "--batch", "4", "--log-every", "1"]
        proc = subprocess.Popen(cmd, cwd=TRAIN_DIR, stderr=subprocess.PIPE, text=True)
        try:
            for line in proc.stderr:
                if "step " in line and "/100000" in line:
                    break
            proc.send_signal(signal.SIGTERM)
            rest = proc.stderr.read()
            code = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.stderr.close()
        self.assertEqual(code, 128 + signal.SIGTERM, rest)
        self.assertIn("--resume", rest)
        state = torch.load(run / "teacher" / "state.pt", weights_only=False)
        self.assertGreater(state["step"], 0)
        self.assertFalse(state["finished"])

    def test_student_converts_and_runs(self):
        if not BINARY.is_file():
            self.skipTest(f"{BINARY} not built (cargo build -p transfusion-tools): skipping "
                          "`transfusion convert` + `transfusion eval` of the trained student")
        bundle = self.tmp / "student.bundle"
        subprocess.run([BINARY, "convert", self.rundir / "student", "-o", bundle,
                        "--precision", "fp32"], check=True, capture_output=True)
        prompts = self.tmp / "prompts.jsonl"
        prompts.write_text(json.dumps({"category": "single_object", "prompt": "a red circle",
                                       "objects": [{"shape": "circle"}],
                                       "mode": "contains"}) + "\n")
        out = subprocess.run([BINARY, "eval", bundle, "--prompts", prompts, "--seeds", "1",
                              "--captions", "1", "--json"], check=True, capture_output=True)
        report = json.loads(out.stdout)
        self.assertEqual(report["steps"], 4)
        self.assertTrue(math.isfinite(report["overall"]))


if __name__ == "__main__":
    unittest.main()
