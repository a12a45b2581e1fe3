"""Diagnostics (transfusion_ref.diagnose): val-loss, noise-sweep, probe, overfit on the tiny
preset with synthetic data (labelled squares and circles); each runs in seconds."""

import contextlib
import io
import json
import struct
import tempfile
import unittest
from pathlib import Path

import numpy as np
import torch

from transfusion_ref import diagnose as dg
from transfusion_ref import diagnose_probe as dp
from transfusion_ref.checkpoint import init_checkpoint, load_checkpoint, save_checkpoint
from transfusion_ref.config import Config, preset
from transfusion_ref.data import MAGIC, Shapes, encode_all, read_header, tokenizer_json, \
    write_synthetic
from transfusion_ref.diffusion import Schedule, output_for_x0, trailing_timesteps
from transfusion_ref.run import captions_of


def labelled_dataset(directory: Path, count: int, seed: int = 0) -> Path:
    """`write_synthetic`'s squares, every other one redrawn as a circle in the same box, with
    label lines carrying `objects` (bbox, center, colour, shape, side, size) like the Rust
    generator's."""
    path = write_synthetic(directory, count, seed)
    header = read_header(path)
    s = header["sections"]
    images = np.memmap(path, dtype="uint8", mode="r+", offset=s["images"]["offset"],
                       shape=tuple(s["images"]["shape"]))
    labels = []
    for i in range(count):
        ys, xs = np.nonzero(images[i].any(-1))
        x0, y0, side = int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1)
        colour = images[i, y0, x0].copy()
        shape = "square"
        if i % 2:
            shape = "circle"
            yy, xx = np.mgrid[0:side, 0:side]
            r = (side - 1) / 2
            inside = (yy - r) ** 2 + (xx - r) ** 2 <= r * r
            images[i, y0:y0 + side, x0:x0 + side] = np.where(inside[..., None], colour, 0)
        labels.append({"index": i, "caption": "", "objects": [{
            "bbox": [x0, y0, side, side], "center": [x0 + side / 2, y0 + side / 2],
            "colour": "red", "shape": shape, "side": side,
            "size": "small" if side <= 17 else "large"}]})
    images.flush()
    del images
    blob = b"".join(json.dumps(lb).encode() + b"\n" for lb in labels)
    s["labels"]["bytes"] = len(blob)
    H = s["images"]["offset"] - 12
    text = json.dumps(header).encode()
    assert len(text) <= H
    with open(path, "r+b") as f:
        f.write(MAGIC + H.to_bytes(4, "little") + text.ljust(H, b" "))
        f.seek(s["labels"]["offset"])
        f.write(blob)
        f.truncate()
    return path


def png_size(path: Path):
    raw = path.read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", raw[16:24])


def run(*argv):
    """The CLI in-process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = dg.main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


class Diagnose(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls._tmp = tempfile.TemporaryDirectory()
        cls.tmp = Path(cls._tmp.name)
        cls.data = labelled_dataset(cls.tmp / "data", count=48)
        d = preset("tiny").to_dict()
        d["diffusion"]["prediction"] = "v"
        cls.cfg = Config.from_dict(d)
        cls.ckpt = cls.tmp / "ckpt"
        save_checkpoint(init_checkpoint(cls.cfg, 0), cls.cfg, cls.ckpt)
        (cls.ckpt / "tokenizer.json").write_text(json.dumps(tokenizer_json(
            read_header(cls.data))))

    @classmethod
    def tearDownClass(cls):
        cls._tmp.cleanup()

    # ---- val-loss -------------------------------------------------------------------------
    def test_val_loss_cli(self):
        out = self.tmp / "vl.json"
        code, text, err = run("val-loss", self.ckpt, "--data", self.data, "--count", 12,
                              "--buckets", 4, "--batch", 16, "--json", out)
        self.assertEqual(code, 0, err)
        rep = json.loads(out.read_text())
        self.assertEqual([(b["t_lo"], b["t_hi"]) for b in rep["buckets"]],
                         [(0, 250), (250, 500), (500, 750), (750, 1000)])
        self.assertTrue(all(b["n"] == 12 for b in rep["buckets"]))
        self.assertIn("x0-MSE", text)
        # Deterministic (seeded times and noise), whatever the batch size.
        code, _, _ = run("val-loss", self.ckpt, "--data", self.data, "--count", 12,
                         "--buckets", 4, "--batch", 5, "--json", out)
        again = json.loads(out.read_text())
        for a, b in zip(rep["buckets"], again["buckets"]):
            self.assertAlmostEqual(a["native"], b["native"], places=5)
            self.assertAlmostEqual(a["x0_mse"], b["x0_mse"], places=5)
        # The shrinkage baseline v sigma^2 / (alpha^2 v + sigma^2) grows with t.
        lin = [b["x0_mse_linear"] for b in rep["buckets"]]
        self.assertEqual(lin, sorted(lin))

    def test_val_loss_of_an_exact_oracle_is_zero(self):
        _, model = load_checkpoint(self.ckpt)
        model.eval()
        data = Shapes.open(self.data, limit=10)
        latents = encode_all(model, data, self.cfg.image.size)
        caps = captions_of(data, torch.arange(10))
        sched = Schedule(self.cfg.diffusion)
        calls = []

        def oracle(seq, x_t, model_time, rows):
            a, s, _ = sched.coefficients(model_time.double())
            calls.append(len(rows))
            return output_for_x0("v", a.double(), s.double(), x_t, latents[rows])

        rep = dg.val_loss(model, latents, caps, buckets=5, batch=7, forward=oracle)
        self.assertEqual(sum(calls), 50)
        for b in rep["buckets"]:
            self.assertLess(b["x0_mse"], 1e-9, b)
            self.assertLess(b["native"], 1e-6, b)
            self.assertGreater(b["x0_mse_linear"], 0)

        def zero(seq, x_t, model_time, rows):  # v = 0: x0_hat = alpha x_t
            return torch.zeros_like(x_t)

        rep = dg.val_loss(model, latents, caps, buckets=5, forward=zero)
        top = rep["buckets"][-1]
        self.assertAlmostEqual(top["x0_mse"], latents.double().square().mean().item(), delta=0.05)

    # ---- noise-sweep ----------------------------------------------------------------------
    def test_sweep_levels(self):
        sched = Schedule(self.cfg.diffusion)
        full = dg.sweep_levels(sched, 1000, 4)
        self.assertEqual([lv.model_time for lv in full[:-1]], trailing_timesteps(1000, 4))
        self.assertEqual([lv.model_time for lv in dg.sweep_levels(sched, 400, 2)[:-1]],
                         [399.0, 199.0])
        self.assertEqual(dg.sweep_levels(sched, 0, 3), [dg.CLEAN])
        with self.assertRaises(dg.DiagnoseError):
            dg.sweep_levels(sched, 1001, 1)

    def test_noise_sweep_cli(self):
        out = self.tmp / "sweep"
        code, text, err = run("noise-sweep", self.ckpt, "--data", self.data, "--count", 5,
                              "--t0", "0,400,1000", "-o", out, "--json", out / "r.json")
        self.assertEqual(code, 0, err)
        for name in ("t0-vae", "t0", "t400", "t1000"):
            d = out / name
            self.assertIn(f"--score-images {d}", text)
            lines = [json.loads(x) for x in (d / "index.jsonl").read_text().splitlines()]
            self.assertEqual([x["scene"] for x in lines],
                             [{"split": "synthetic", "seed": 0, "index": i} for i in range(5)])
            for x in lines:
                self.assertEqual(png_size(d / x["file"]), (64, 64))
        # Only the images from pure noise are scored against what their captions name.
        self.assertIn(f"--score-images {out / 't1000'} --scene-truth caption", text)
        self.assertNotIn(f"--score-images {out / 't400'} --scene-truth", text)
        # t0 = 0 is exactly the VAE round trip.
        for i in range(5):
            self.assertEqual((out / "t0" / f"{i:06d}.png").read_bytes(),
                             (out / "t0-vae" / f"{i:06d}.png").read_bytes())
        rep = json.loads((out / "r.json").read_text())
        self.assertEqual([e["steps"] for e in rep["t0"]], [0, 2, 4])  # config steps 4
        self.assertEqual(rep["t0"][0]["pixel_rmse_vs_vae"], 0.0)
        # An existing directory is refused without --force.
        code, _, err = run("noise-sweep", self.ckpt, "--data", self.data, "--count", 2,
                           "--t0", "0", "-o", out)
        self.assertEqual(code, 1)
        self.assertIn("--force", err)

    def test_noise_sweep_on_another_grid(self):
        """--timesteps: the pure-noise sweep samples at exactly those model times; misuse is
        refused naming the option."""
        out = self.tmp / "grid"
        code, text, err = run("noise-sweep", self.ckpt, "--data", self.data, "--count", 3,
                              "--t0", "1000", "--timesteps", "999,937,749,499", "-o", out,
                              "--json", out / "r.json")
        self.assertEqual(code, 0, err)
        rep = json.loads((out / "r.json").read_text())
        self.assertEqual([round(t) for t in rep["t0"][0]["model_times"]], [999, 937, 749, 499])
        self.assertEqual(rep["t0"][0]["steps"], 4)
        for bad in (["--t0", "400,1000", "--timesteps", "999,499"],
                    ["--t0", "1000", "--timesteps", "499,999"],
                    ["--t0", "1000", "--timesteps", "1000,499"],
                    ["--t0", "1000", "--steps", "2", "--timesteps", "999,499"]):
            code, _, err = run("noise-sweep", self.ckpt, "--data", self.data, "--count", 2,
                               *bad, "-o", self.tmp / "grid-bad", "--force")
            self.assertEqual(code, 1, bad)
            self.assertIn("--timesteps", err)

    # ---- probe ----------------------------------------------------------------------------
    def test_fit_probe_on_a_feature_holding_the_label(self):
        g = torch.Generator().manual_seed(0)
        y = torch.randint(0, 5, (600,), generator=g)
        x = torch.randn(600, 12, generator=g)
        x[:, :5] += 3 * torch.nn.functional.one_hot(y, 5)
        pred = dp.fit_probe(x[:400], y[:400], x[400:], 5)
        self.assertGreater((pred == y[400:]).float().mean().item(), 0.9)
        pred = dp.fit_probe(torch.randn(400, 12, generator=g), y[:400], x[400:], 5)
        self.assertLess((pred == y[400:]).float().mean().item(), 0.5)  # noise: near chance

    def test_cell_targets(self):
        labels = [{"objects": [{"center": [8.0, 8.0], "shape": "circle", "size": "small"},
                               {"center": [63.5, 40.0], "shape": "square", "size": "large"}]},
                  {"objects": [{"center": [20.0, 20.0], "shape": "square", "size": "small"},
                               {"center": [30.0, 30.0], "shape": "circle", "size": "small"}]}]
        cls, size = dp.cell_targets(labels, 4, 64, ["circle", "square"])
        self.assertEqual(cls[0, 0].item(), 0)
        self.assertEqual(cls[0, 2 * 4 + 3].item(), 1)
        self.assertEqual(size[0, 2 * 4 + 3].item(), 2)
        self.assertEqual(cls[1, 5].item(), dp.AMBIGUOUS)  # two centres in one cell
        self.assertEqual(int((cls[0] == 2).sum()), 14)

    def test_probe_cli(self):
        out = self.tmp / "probe.json"
        labels = dg.read_labels(Shapes.open(self.data), 48)
        cls, _ = dp.cell_targets(labels, 4, 64, ["circle", "square"])
        extract = dp.extract

        def with_oracle(model, images, **kw):
            """The real features plus the cell's label one-hot under noise: the probe must
            find it, which holds only if features, cells and scenes line up."""
            feats = extract(model, images, **kw)
            g = torch.Generator().manual_seed(0)
            hot = torch.nn.functional.one_hot(cls.clamp_min(0), 3).float()
            feats["oracle"] = hot + 0.1 * torch.randn(hot.shape, generator=g)
            return feats

        dp.extract = with_oracle
        try:
            code, text, err = run("probe", self.ckpt, "--data", self.data, "--train", 32,
                                  "--test", 16, "--iters", 50, "--json", out)
        finally:
            dp.extract = extract
        self.assertEqual(code, 0, err)
        rep = json.loads(out.read_text())
        self.assertEqual(rep["shapes"], ["circle", "square"])
        self.assertEqual(list(rep["features"]), ["pixels", "latent", "latent_3x3", "patch_in",
                                                 "layer0", "layer1", "hidden", "oracle"])
        dims = {k: v["dim"] for k, v in rep["features"].items()}
        self.assertEqual(dims, {"pixels": 192, "latent": 16, "latent_3x3": 144, "patch_in": 64,
                                "layer0": 64, "layer1": 64, "hidden": 64, "oracle": 3})
        self.assertEqual(rep["cells"]["test_objects"], 16)
        self.assertEqual(rep["cells"]["test_small"] + rep["cells"]["test_large"], 16)
        for v in rep["features"].values():
            for acc in (v["objects"]["acc"], v["all_cells"]["acc"]):
                self.assertTrue(0 <= acc <= 1)
        oracle = rep["features"]["oracle"]
        self.assertEqual((oracle["objects"]["acc"], oracle["all_cells"]["acc"]), (1.0, 1.0))
        self.assertLess(rep["chance"]["objects"], 0.75)
        self.assertIn("chance (majority)", text)

    def test_probe_needs_object_labels(self):
        plain = write_synthetic(self.tmp / "plain", 8)
        code, _, err = run("probe", self.ckpt, "--data", plain, "--train", 4, "--test", 4)
        self.assertEqual(code, 1)
        self.assertIn("objects", err)

    # ---- overfit --------------------------------------------------------------------------
    def test_overfit(self):
        out = self.tmp / "overfit"
        code, text, err = run("overfit", "--data", self.data, "--count", 6, "--steps", 3,
                              "--batch", 4, "--vae", self.ckpt, "--seed", 3, "-o", out, "--json",
                              out / "r.json")
        self.assertEqual(code, 0, err)
        _, src = load_checkpoint(self.ckpt)
        _, init = load_checkpoint(out / "init")
        a, b = src.state_dict(), init.state_dict()
        for k in a:
            same = torch.equal(a[k], b[k])
            if k.startswith("vae."):
                self.assertTrue(same, k)
        self.assertFalse(torch.equal(a["backbone.layers.0.attn.q.weight"],
                                     b["backbone.layers.0.attn.q.weight"]))
        self.assertTrue((out / "teacher" / "model.safetensors").is_file())
        rep = json.loads((out / "r.json").read_text())
        self.assertEqual(rep["sweep"]["t0"][0]["t0"], 1000)
        lines = (out / "sweep" / "t1000" / "index.jsonl").read_text().splitlines()
        self.assertEqual(len(lines), 6)
        self.assertEqual(rep["val_loss"]["samples"], 6)
        self.assertIn("--score-images", text)

    # ---- errors ---------------------------------------------------------------------------
    def test_errors_name_the_input(self):
        code, _, err = run("val-loss", self.tmp / "nope", "--data", self.data)
        self.assertEqual(code, 1)
        self.assertIn(str(self.tmp / "nope"), err)
        self.assertNotIn("Traceback", err)
        code, _, err = run("val-loss", self.ckpt, "--data", self.tmp / "nodata")
        self.assertEqual(code, 1)
        self.assertIn("nodata", err)
        code, _, err = run("val-loss", self.ckpt, "--data", self.data, "--count", 1000)
        self.assertEqual((code, "--count 1000" in err), (1, True))
        d = self.cfg.to_dict()
        d["image"]["size"] = 48
        bad = self.tmp / "bad48"
        cfg48 = Config.from_dict(d)
        save_checkpoint(init_checkpoint(cfg48, 0), cfg48, bad)
        code, _, err = run("noise-sweep", bad, "--data", self.data, "--count", 2, "-o",
                           self.tmp / "x")
        self.assertEqual(code, 1)
        self.assertIn("image.size 48", err)
        code, _, err = run("noise-sweep", self.ckpt, "--data", self.data, "--t0", "1200",
                           "--count", 2,
                           "-o", self.tmp / "y")
        self.assertEqual((code, "--t0 1200" in err), (1, True))


if __name__ == "__main__":
    unittest.main()
