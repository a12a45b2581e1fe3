"""Model behaviour: KV cache, the bidirectional image block, patchify, masks, checkpoint I/O."""

import tempfile
import unittest
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from transfusion_ref.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from transfusion_ref.config import Config, preset
from transfusion_ref.model import TransfusionModel, patchify, transfusion_mask, unpatchify

P = 6  # [BOS, 4 words, BOI]


def tiny_model(seed=0, **patch):
    torch.manual_seed(seed)
    d = preset("tiny").to_dict()
    if "position_embedding" in patch or "timestep_tokens" in patch:
        d["format_version"] = 2
        d["patch"].update(position_embedding=False, timestep_tokens=False)
    d["patch"].update(patch)
    return TransfusionModel(Config.from_dict(d)).eval()


def sequence(model, gen):
    """[BOS w w w w BOI] + N patches + [EOI] embeddings."""
    cfg = model.cfg
    ids = torch.tensor([[1, 10, 11, 12, 13, 3]])
    latent = torch.randn(1, 4, cfg.latent_size, cfg.latent_size, generator=gen)
    patches, _ = model.patch_in(latent, torch.tensor([500.0]))
    return torch.cat([model.text_embed(ids), patches, model.text_embed(torch.tensor([[4]]))], 1)


class Backbone(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.model = tiny_model()
        cls.N = cls.model.cfg.num_patches
        cls.total = P + cls.N + 1
        cls.image = [(P, P + cls.N)]

    @torch.no_grad()
    def full(self, emb):
        return self.model.backbone(emb, torch.arange(self.total),
                                   transfusion_mask(self.total, self.image))

    @torch.no_grad()
    def test_kv_cache_matches_full_sequence(self):
        emb = sequence(self.model, torch.Generator().manual_seed(1))
        hidden, keys, values = self.full(emb)
        _, pk, pv = self.model.backbone(emb[:, :P], torch.arange(P), transfusion_mask(P))
        h2, k2, v2 = self.model.backbone(emb[:, P:], torch.arange(P, self.total),
                                         transfusion_mask(self.total, self.image, past_len=P), pk, pv)
        torch.testing.assert_close(h2, hidden[:, P:], atol=1e-5, rtol=1e-5)
        for a, b in zip(k2 + v2, keys + values):
            self.assertEqual(a.shape, (1, 1, self.total, 64))
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)

    @torch.no_grad()
    def test_image_block_is_bidirectional_and_text_causal(self):
        emb = sequence(self.model, torch.Generator().manual_seed(2))
        base = self.full(emb)[0]
        changed = emb.clone()
        changed[:, P + self.N - 1] += 1.0  # the last image patch
        out = self.full(changed)[0]
        self.assertTrue(torch.equal(out[:, :P], base[:, :P]), "text before the image changed")
        self.assertGreater((out[:, P] - base[:, P]).abs().max().item(), 1e-4,
                           "first image position does not see the last patch")
        changed = emb.clone()
        changed[:, 3] += 1.0  # a word: only later positions may change
        out = self.full(changed)[0]
        self.assertTrue(torch.equal(out[:, :3], base[:, :3]))
        self.assertGreater((out[:, 4] - base[:, 4]).abs().max().item(), 1e-4)

    def test_mask(self):
        m = transfusion_mask(6, [(2, 4)])
        allowed = (m == 0).int()
        self.assertEqual(allowed.tolist(), [[1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0],
                                            [1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 0, 0],
                                            [1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]])
        self.assertTrue(torch.isneginf(m[0, 1]))
        self.assertTrue(torch.equal(transfusion_mask(6, [(2, 4)], past_len=2), m[2:]))
        with self.assertRaises(ValueError):
            transfusion_mask(4, [(2, 5)])

    @torch.no_grad()
    def test_batched_training_shapes(self):
        emb = torch.randn(3, 10, 64)
        mask = transfusion_mask(10, [(2, 6)]).expand(3, 10, 10)
        hidden, _, _ = self.model.backbone(emb, torch.arange(10), mask)
        self.assertEqual(self.model.lm_head(hidden).shape, (3, 10, 74))


class Patches(unittest.TestCase):
    def test_patchify_round_trip_and_order(self):
        x = torch.randn(2, 4, 8, 8)
        p = patchify(x, 2)
        self.assertEqual(p.shape, (2, 16, 16))
        self.assertTrue(torch.equal(unpatchify(p, 2, 4, 8), x))
        # patch (gy=1, gx=2) is index 1*4+2; feature (c=3, py=1, px=0) is 3*4+1*2+0
        self.assertEqual(p[1, 6, 14].item(), x[1, 3, 2 * 1 + 1, 2 * 2 + 0].item())

    @torch.no_grad()
    def test_patch_shapes(self):
        for kind, size in (("unet", 2), ("linear", 2)):
            m = tiny_model(kind=kind, size=size, channels=[16] if kind == "unet" else [])
            latent, t = torch.randn(2, 4, 8, 8), torch.tensor([37.5, 901.0])
            patches, skips = m.patch_in(latent, t)
            self.assertEqual(patches.shape, (2, 16, 64))
            self.assertEqual([tuple(s.shape) for s in skips],
                             [(2, 16, 8, 8)] if kind == "unet" else [])
            self.assertEqual(m.patch_out(patches, skips, t).shape, (2, 4, 8, 8))

    @torch.no_grad()
    def test_patch_conditioning_adds_position_and_timestep(self):
        """Format 2: `patch_in` = the format-1 patches + pos_embed[cell] + time_proj(SiLU(temb))."""
        from transfusion_ref.patch import grid_sincos
        for kind in ("unet", "linear"):
            ch = [16] if kind == "unet" else []
            base = tiny_model(seed=4, kind=kind, size=2, channels=ch)
            cond = tiny_model(seed=4, kind=kind, size=2, channels=ch, position_embedding=True,
                              timestep_tokens=True)
            missing, unexpected = cond.load_state_dict(base.state_dict(), strict=False)
            self.assertEqual(sorted(missing), ["patch.pos_embed", "patch.time_proj.bias",
                                               "patch.time_proj.weight"])
            self.assertEqual(unexpected, [])
            torch.testing.assert_close(cond.patch.pos_embed, grid_sincos(4, 64))
            latent, t = torch.randn(2, 4, 8, 8), torch.tensor([37.5, 901.0])
            p0, _ = base.patch_in(latent, t)
            p1, _ = cond.patch_in(latent, t)   # time_proj starts at zero
            torch.testing.assert_close(p1, p0 + grid_sincos(4, 64)[None])
            torch.nn.init.normal_(cond.patch.time_proj.weight)
            p2, _ = cond.patch_in(latent, t)
            temb = cond.timestep(t)
            want = p1 + cond.patch.time_proj(torch.nn.functional.silu(temb))[:, None, :]
            torch.testing.assert_close(p2, want)
            self.assertFalse(torch.allclose(p2[0] - p1[0], p2[1] - p1[1]))

    def test_grid_sincos_tells_rows_from_columns(self):
        from transfusion_ref.patch import grid_sincos
        g = grid_sincos(4, 64)
        # cells 3 (row 0, col 3) and 4 (row 1, col 0) are neighbours in raster order only
        self.assertGreater((g[3] - g[4]).norm(), (g[0] - g[4]).norm())
        self.assertEqual(len({tuple(r.tolist()) for r in g}), 16)

    @torch.no_grad()
    def test_vae_shapes_and_scaling(self):
        m = tiny_model()
        img = torch.rand(2, 3, 32, 32) * 2 - 1
        z = m.vae_encode(img)
        self.assertEqual(z.shape, (2, 4, 8, 8))
        self.assertEqual(m.vae_decode(z).shape, (2, 3, 32, 32))
        m.vae.scale, m.vae.shift = 2.0, 0.5
        torch.testing.assert_close(m.vae_encode(img), (z - 0.5) * 2.0)


class CheckpointIO(unittest.TestCase):
    def setUp(self):
        self.dir = Path(tempfile.mkdtemp())
        self.model = tiny_model(seed=3)
        save_checkpoint(self.model, self.model.cfg, self.dir)

    def test_round_trip(self):
        cfg, model = load_checkpoint(self.dir)
        self.assertEqual(cfg, self.model.cfg)
        for (k, a), b in zip(self.model.state_dict().items(), model.state_dict().values()):
            self.assertTrue(torch.equal(a, b), k)

    def test_float16_widened(self):
        path = self.dir / "model.safetensors"
        save_file({k: v.half() for k, v in load_file(path).items()}, path)
        _, model = load_checkpoint(self.dir)
        w = model.state_dict()["text.embed.weight"]
        self.assertEqual(w.dtype, torch.float32)
        torch.testing.assert_close(w, self.model.state_dict()["text.embed.weight"],
                                   atol=1e-2, rtol=1e-3)

    def test_save_float16(self):
        half = Path(tempfile.mkdtemp()) / "half"
        save_checkpoint(self.model, self.model.cfg, half, dtype=torch.float16)
        self.assertTrue(all(v.dtype == torch.float16
                            for v in load_file(half / "model.safetensors").values()))
        _, model = load_checkpoint(half)
        for (k, a), b in zip(self.model.state_dict().items(), model.state_dict().values()):
            torch.testing.assert_close(b, a.half().float(), rtol=0, atol=0, msg=k)
        with self.assertRaises(CheckpointError):
            save_checkpoint(self.model, self.model.cfg, half, dtype=torch.int8)

    def test_errors_name_the_tensor(self):
        path = self.dir / "model.safetensors"
        t = load_file(path)
        t.pop("backbone.norm.weight")
        t["backbone.extra"] = torch.zeros(1)
        t["text.embed.weight"] = torch.zeros(3, 64)
        t["vae.decoder.conv_out.bias"] = torch.zeros(3, dtype=torch.float64)
        save_file(t, path)
        with self.assertRaises(CheckpointError) as cm:
            load_checkpoint(self.dir)
        msg = str(cm.exception)
        self.assertIn("missing tensor backbone.norm.weight (expected shape [64])", msg)
        self.assertIn("unexpected tensor backbone.extra", msg)
        self.assertIn("text.embed.weight: expected shape [74, 64], found [3, 64]", msg)
        self.assertIn("vae.decoder.conv_out.bias: expected dtype float32 or float16", msg)

    def test_missing_files(self):
        (self.dir / "config.json").unlink()
        with self.assertRaisesRegex(CheckpointError, "missing config.json"):
            load_checkpoint(self.dir)


if __name__ == "__main__":
    unittest.main()
