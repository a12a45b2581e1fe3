"""The reference file: deterministic, complete, self-consistent, and `--check` catches changes."""

import contextlib
import io
import tempfile
import unittest
from pathlib import Path

import torch
from safetensors.torch import save_file

from transfusion_ref import reference
from transfusion_ref.checkpoint import save_checkpoint
from transfusion_ref.config import preset
from transfusion_ref.model import TransfusionModel


def run(argv):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = reference.main([str(a) for a in argv])
    return rc, out.getvalue()


class Reference(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = Path(tempfile.mkdtemp())
        torch.manual_seed(0)
        cls.model = TransfusionModel(preset("tiny"))
        save_checkpoint(cls.model, cls.model.cfg, cls.dir)
        cls.rc, _ = run([cls.dir])
        cls.tensors, cls.meta = reference.load_reference(cls.dir / "reference.safetensors")

    def test_written_with_checkpoint_hash(self):
        self.assertEqual(self.rc, 0)
        self.assertEqual(self.meta["checkpoint_sha256"],
                         reference.sha256_file(self.dir / "model.safetensors"))

    def test_deterministic(self):
        again = reference.compute_reference(self.model)
        self.assertEqual(again.keys(), self.tensors.keys())
        for k, v in again.items():
            self.assertTrue(torch.equal(v, self.tensors[k]), k)

    def test_cases_and_shapes(self):
        t, N, D = self.tensors, 16, 64
        self.assertEqual(t["text_embed/input_ids"].shape, (1, 8))
        self.assertEqual(t["backbone.prefill/attention_mask"].shape, (6, 6))
        self.assertEqual(t["backbone.block/attention_mask"].shape, (N + 1, 6 + N + 1))
        self.assertEqual(t["backbone.block/positions"].tolist(), list(range(6, 6 + N + 1)))
        self.assertEqual(t["backbone.block/past_key.1"].shape, (1, 1, 6, 64))
        self.assertNotIn("backbone.prefill/past_key.0", t)
        self.assertNotIn("backbone.full/past_key.0", t)
        self.assertEqual(t["backbone.full/present_value.0"].shape, (1, 1, 6 + N + 1, 64))
        self.assertEqual(t["lm_head/hidden"].shape, (1, 5, D))
        self.assertEqual(t["patch_in/timestep"].tolist(), [37.5, 901.0])
        self.assertTrue(torch.equal(t["patch_in/skip.0"], t["patch_out/skip.0"]))
        self.assertEqual(t["vae_encoder/image"].shape, (2, 3, 32, 32))
        self.assertLessEqual(t["vae_encoder/image"].abs().max().item(), 1.0)
        ids = t["text_embed/input_ids"]
        self.assertEqual((ids.dtype, t["backbone.full/positions"].dtype), (torch.int64,) * 2)
        for k, v in t.items():
            if v.is_floating_point():
                self.assertEqual(v.dtype, torch.float32, k)
        # the KV cache and the bidirectional block at work
        torch.testing.assert_close(t["backbone.block/hidden"], t["backbone.full/hidden"][:, 6:],
                                   atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(t["backbone.block/embeddings"],
                                   t["backbone.full/embeddings"][:, 6:], atol=0, rtol=0)

    def test_check_mode(self):
        rc, out = run([self.dir, "--check", self.dir / "reference.safetensors"])
        self.assertEqual(rc, 0, out)
        bad = dict(self.tensors)
        bad["patch_out/prediction"] = bad["patch_out/prediction"] + 1e-3
        bad.pop("lm_head/logits")
        path = self.dir / "bad.safetensors"
        save_file(bad, path, metadata=self.meta)
        rc, out = run([self.dir, "--check", path])
        self.assertEqual(rc, 1)
        self.assertIn("FAIL patch_out/prediction", out)
        self.assertIn("FAIL lm_head/logits: missing in existing", out)
        self.assertIn("ok   backbone.full/hidden", out)


if __name__ == "__main__":
    unittest.main()
