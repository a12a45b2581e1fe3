"""config.json parsing: strict keys, validation rules of docs/checkpoint.md, derived geometry."""

import json
import tempfile
import unittest
from pathlib import Path

from transfusion_ref.config import Config, ConfigError, preset


def tiny() -> dict:
    return preset("tiny").to_dict()


class Geometry(unittest.TestCase):
    def test_tiny(self):
        c = preset("tiny")
        self.assertEqual((c.vae_levels, c.latent_size, c.unet_levels, c.patch_grid, c.num_patches),
                         (2, 8, 1, 4, 16))
        self.assertEqual(c.skips, [(16, 8)])

    def test_shapes64(self):
        c = preset("shapes64")
        self.assertEqual((c.vae_levels, c.latent_size, c.unet_levels, c.patch_grid, c.num_patches),
                         (2, 16, 2, 4, 16))
        self.assertEqual(c.skips, [(32, 16), (64, 8)])

    def test_docs_example_round_trip(self):
        c = preset("shapes64")
        self.assertEqual(Config.from_dict(json.loads(json.dumps(c.to_dict()))), c)
        with tempfile.TemporaryDirectory() as d:
            c.save(Path(d) / "config.json")
            self.assertEqual(Config.load(Path(d) / "config.json"), c)


class Validation(unittest.TestCase):
    def rejects(self, edit, *fragments):
        d = tiny()
        edit(d)
        with self.assertRaises(ConfigError) as cm:
            Config.from_dict(d)
        for f in fragments:
            self.assertIn(f, str(cm.exception))

    def test_unknown_keys_named(self):
        self.rejects(lambda d: d.update(extra=1), "extra", "unknown key")
        self.rejects(lambda d: d["backbone"].update(n_layer=2), "backbone.n_layer", "unknown key")

    def test_missing_key(self):
        self.rejects(lambda d: d["diffusion"].pop("steps"), "diffusion.steps", "missing")

    def test_types(self):
        self.rejects(lambda d: d["backbone"].update(dim=64.0), "backbone.dim", "int")
        self.rejects(lambda d: d["text"].update(vocab_size=True), "text.vocab_size")
        self.rejects(lambda d: d["diffusion"].update(guidance_distilled=0), "guidance_distilled")
        self.rejects(lambda d: d["vae"].update(channels=8), "vae.channels", "list")
        self.rejects(lambda d: d.update(text=[]), "text", "object")

    def test_backbone_rules(self):
        self.rejects(lambda d: d["backbone"].update(dim=32), "backbone.dim", "64", "32")
        self.rejects(lambda d: d["backbone"].update(n_heads=8, head_dim=7, dim=56),
                     "backbone.head_dim", "even")
        self.rejects(lambda d: d["backbone"].update(ffn_dim=0), "backbone.ffn_dim", "> 0")
        self.rejects(lambda d: d.update(format_version=3), "format_version", "1 | 2", "3")


    def test_special_tokens(self):
        self.rejects(lambda d: d["special_tokens"].update(unk=74), "special_tokens.unk", "74")
        self.rejects(lambda d: d["special_tokens"].update(eoi=3), "special_tokens.", "distinct")

    def test_vae_and_patch_geometry(self):
        self.rejects(lambda d: d["vae"].update(channels=[]), "vae.channels")
        self.rejects(lambda d: d["image"].update(size=34), "image.size", "4")
        self.rejects(lambda d: d["patch"].update(size=3), "patch.size", "8")
        self.rejects(lambda d: d["patch"].update(size=8, channels=[16]), "patch.channels", "K = 3")
        self.rejects(lambda d: d["patch"].update(kind="conv"), "patch.kind")
        self.rejects(lambda d: d["patch"].update(channels=[12]), "patch.channels[0]", "8")
        self.rejects(lambda d: d["vae"].update(channels=[8, 20, 16]), "vae.channels[1]", "8")

    def test_diffusion_rules(self):
        self.rejects(lambda d: d["diffusion"].update(schedule="flow"), "diffusion.prediction",
                     "flow")
        self.rejects(lambda d: d["diffusion"].update(prediction="flow"), "diffusion.prediction")
        self.rejects(lambda d: d["diffusion"].update(schedule="sigmoid"), "diffusion.schedule")
        self.rejects(lambda d: d["diffusion"].update(sampler="heun"), "diffusion.sampler")
        self.rejects(lambda d: d["diffusion"].update(steps=0), "diffusion.steps", "1..=1000")
        self.rejects(lambda d: d["diffusion"].update(steps=1001), "diffusion.steps")
        self.rejects(lambda d: d["diffusion"].update(guidance=0.5), "diffusion.guidance", ">= 1")

    def test_sampling_grid(self):
        """`diffusion.timesteps` is optional: absent keeps the trailing grid and is not
        written; given, it must be `steps` strictly decreasing timesteps from T - 1."""
        from transfusion_ref.diffusion import Schedule
        self.assertNotIn("timesteps", tiny()["diffusion"])
        d = tiny()
        d["diffusion"].update(steps=4, timesteps=[999, 937, 749, 499])
        c = Config.from_dict(d)
        self.assertEqual(c.to_dict()["diffusion"]["timesteps"], [999, 937, 749, 499])
        sched = Schedule(c.diffusion)
        self.assertEqual([round(lv.model_time) for lv in sched.levels(4)[:-1]],
                         [999, 937, 749, 499])
        self.assertEqual([round(lv.model_time) for lv in sched.levels(8)[:4]],
                         [999, 874, 749, 624])  # other step counts: trailing
        self.assertEqual([round(lv.model_time) for lv in sched.trailing_levels(4)[:-1]],
                         [999, 749, 499, 249])
        for bad in ([999, 749, 499], [998, 937, 749, 499], [999, 749, 749, 499],
                    [999, 499, 749, 249]):
            self.rejects(lambda d, bad=bad: d["diffusion"].update(steps=4, timesteps=bad),
                         "diffusion.timesteps")
        self.rejects(lambda d: d["diffusion"].update(steps=4, timesteps=[999, "x", 1, 0]),
                     "diffusion.timesteps[1]")

    def test_accepts_variants(self):
        d = tiny()
        d["diffusion"].update(schedule="flow", prediction="flow", sampler="euler", steps=1000)
        d["patch"].update(kind="linear", size=8, channels=[])
        Config.from_dict(d)


class FormatVersions(unittest.TestCase):
    """Format 2 adds `patch.position_embedding` and `patch.timestep_tokens`; format 1
    configs (every checkpoint written before) keep loading, with both off."""

    def v2(self) -> dict:
        d = tiny()
        d["format_version"] = 2
        d["patch"].update(position_embedding=True, timestep_tokens=False)
        return d

    def test_format_1_reads_as_no_conditioning(self):
        c = Config.from_dict(tiny())
        self.assertEqual((c.patch.position_embedding, c.patch.timestep_tokens), (False, False))
        self.assertNotIn("position_embedding", c.to_dict()["patch"])

    def test_format_2_round_trip(self):
        c = Config.from_dict(self.v2())
        self.assertTrue(c.patch.position_embedding)
        self.assertEqual(c.to_dict(), self.v2())

    def test_format_2_keys_required_and_refused_in_format_1(self):
        d = self.v2()
        d["patch"].pop("timestep_tokens")
        with self.assertRaises(ConfigError) as cm:
            Config.from_dict(d)
        self.assertIn("patch.timestep_tokens: missing key", str(cm.exception))
        d = tiny()
        d["patch"]["position_embedding"] = False
        with self.assertRaises(ConfigError) as cm:
            Config.from_dict(d)
        self.assertIn("patch.position_embedding: needs format_version 2", str(cm.exception))

    def test_a_format_1_config_cannot_switch_conditioning_on(self):
        c = preset("tiny")
        c.patch.timestep_tokens = True
        with self.assertRaises(ConfigError) as cm:
            c.validate()
        self.assertIn("format_version", str(cm.exception))


if __name__ == "__main__":
    unittest.main()
