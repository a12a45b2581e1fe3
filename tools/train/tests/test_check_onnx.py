"""check_onnx against a torch.onnx-exported bundle (fp32, fp16, int8 via ORT quantisation)."""

import contextlib
import io
import sys
import tempfile
import unittest
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import save_file

from transfusion_ref import check_onnx
from transfusion_ref.config import preset
from transfusion_ref.model import TransfusionModel
from transfusion_ref.reference import compute_reference

sys.path.insert(0, str(Path(__file__).parent))
from onnx_bundle import export_bundle  # noqa: E402


class CheckOnnx(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = Path(tempfile.mkdtemp())
        torch.manual_seed(0)
        model = TransfusionModel(preset("tiny")).eval()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            export_bundle(model, cls.dir / "bundle")
        cls.ref = {k: v.numpy() for k, v in compute_reference(model).items()}

    def check(self, ref, tract=None):
        lines = []
        rows = check_onnx.check_bundle(self.dir / "bundle", ref, tract, log=lines.append)
        return rows, lines

    def test_all_pass(self):
        rows, lines = self.check(self.ref)
        self.assertTrue(all(r.ok for r in rows), "\n".join(lines))
        seen = {(r.precision, r.case) for r in rows}
        for case in ("backbone.prefill", "backbone.block", "backbone.full", "patch_out"):
            for precision in ("fp32", "fp16", "int8"):
                self.assertIn((precision, case), seen)
        self.assertEqual(len(lines), len(rows))

    def test_mismatch_fails_and_cli_exit_code(self):
        bad = dict(self.ref)
        bad["vae_decoder/image"] = bad["vae_decoder/image"] * 1.05
        rows, _ = self.check(bad)
        failed = {(r.precision, r.case) for r in rows if not r.ok}
        self.assertIn(("fp32", "vae_decoder"), failed)
        self.assertIn(("fp16", "vae_decoder"), failed)
        self.assertNotIn(("int8", "vae_decoder"), failed)  # 5% is within the int8 tolerance
        path = self.dir / "bad.safetensors"
        save_file(bad, str(path))
        with contextlib.redirect_stdout(io.StringIO()) as out:
            rc = check_onnx.main([str(self.dir / "bundle"), "--reference", str(path)])
        self.assertEqual(rc, 1)
        self.assertIn("FAIL", out.getvalue())

    def test_tract_outputs(self):
        tract = {f"{p}/{k}": v for k, v in self.ref.items() for p in ("fp32", "fp16", "int8")}
        rows, lines = self.check(self.ref, tract)
        self.assertTrue(all(r.ok for r in rows), "\n".join(lines))
        self.assertIn("ort-tract", lines[0])
        tract["fp32/lm_head/logits"] = tract["fp32/lm_head/logits"] + np.float32(1.0)
        del tract["int8/patch_in/patches"]
        rows, _ = self.check(self.ref, tract)
        failed = {(r.precision, r.case, r.tensor) for r in rows if not r.ok}
        self.assertEqual(failed, {("fp32", "lm_head", "logits"), ("int8", "patch_in", "patches")})


if __name__ == "__main__":
    unittest.main()
