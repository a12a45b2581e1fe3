"""state_dict names and shapes equal the tensor table of docs/checkpoint.md.

The expected list is written here directly from the docs' table, independently of model.py.
"""

import unittest

from transfusion_ref.config import Config, preset
from transfusion_ref.model import TransfusionModel


def resblock(prefix, cin, cout, temb_dim=None):
    out = {
        f"{prefix}.norm1.weight": [cin], f"{prefix}.norm1.bias": [cin],
        f"{prefix}.conv1.weight": [cout, cin, 3, 3], f"{prefix}.conv1.bias": [cout],
        f"{prefix}.norm2.weight": [cout], f"{prefix}.norm2.bias": [cout],
        f"{prefix}.conv2.weight": [cout, cout, 3, 3], f"{prefix}.conv2.bias": [cout],
    }
    if temb_dim is not None:
        out[f"{prefix}.temb_proj.weight"] = [cout, temb_dim]
        out[f"{prefix}.temb_proj.bias"] = [cout]
    if cin != cout:
        out[f"{prefix}.skip.weight"] = [cout, cin, 1, 1]
        out[f"{prefix}.skip.bias"] = [cout]
    return out


def conv(prefix, cin, cout, k=3):
    return {f"{prefix}.weight": [cout, cin, k, k], f"{prefix}.bias": [cout]}


def expected_tensors(c: dict) -> dict:
    """Name -> shape from docs/checkpoint.md "Tensor names", given a config.json dict."""
    b = c["backbone"]
    D, V, F = b["dim"], c["text"]["vocab_size"], b["ffn_dim"]
    Hd = b["n_heads"] * b["head_dim"]
    C = c["vae"]["latent_channels"]
    vc = c["vae"]["channels"]
    L = len(vc) - 1
    p = c["patch"]["size"]
    Ft = c["patch"]["timestep_freq_dim"]
    t = {"text.embed.weight": [V, D], "text.lm_head.weight": [V, D], "backbone.norm.weight": [D]}
    for l in range(b["n_layers"]):
        pre = f"backbone.layers.{l}"
        t[f"{pre}.attn_norm.weight"] = [D]
        t[f"{pre}.ffn_norm.weight"] = [D]
        for n in "qkv":
            t[f"{pre}.attn.{n}.weight"] = [Hd, D]
        t[f"{pre}.attn.o.weight"] = [D, Hd]
        t[f"{pre}.ffn.gate.weight"] = [F, D]
        t[f"{pre}.ffn.up.weight"] = [F, D]
        t[f"{pre}.ffn.down.weight"] = [D, F]
    t.update({"timestep.linear1.weight": [D, Ft], "timestep.linear1.bias": [D],
              "timestep.linear2.weight": [D, D], "timestep.linear2.bias": [D]})
    if c["patch"]["kind"] == "linear":
        t.update({"patch.in_proj.weight": [D, C * p * p], "patch.in_proj.bias": [D],
                  "patch.out_proj.weight": [C * p * p, D], "patch.out_proj.bias": [C * p * p]})
    else:
        u = c["patch"]["channels"]
        K = len(u)
        t.update(conv("patch.unet.conv_in", C, u[0]))
        for i in range(K):
            t.update(resblock(f"patch.unet.down.{i}.res", u[i - 1] if i else u[0], u[i], D))
            t.update(conv(f"patch.unet.down.{i}.downsample", u[i], u[i]))
        t.update(resblock("patch.unet.mid_in", u[-1], u[-1], D))
        t.update(conv("patch.unet.proj_in", u[-1], D, 1))
        t.update(conv("patch.unet.proj_out", D, u[-1], 1))
        t.update(resblock("patch.unet.mid_out", u[-1], u[-1], D))
        ch = u[-1]
        for i in reversed(range(K)):
            t.update(conv(f"patch.unet.up.{i}.upsample", ch, ch))
            t.update(resblock(f"patch.unet.up.{i}.res", ch + u[i], u[i], D))
            ch = u[i]
        t.update({"patch.unet.norm_out.weight": [u[0]], "patch.unet.norm_out.bias": [u[0]]})
        t.update(conv("patch.unet.conv_out", u[0], C))
    N = (c["image"]["size"] >> L) // p
    N *= N
    if c["patch"].get("position_embedding"):
        t["patch.pos_embed"] = [N, D]
    if c["patch"].get("timestep_tokens"):
        t.update({"patch.time_proj.weight": [D, D], "patch.time_proj.bias": [D]})
    t.update(conv("vae.encoder.conv_in", 3, vc[0]))
    for i in range(L + 1):
        t.update(resblock(f"vae.encoder.down.{i}.res", vc[i - 1] if i else vc[0], vc[i]))
        if i < L:
            t.update(conv(f"vae.encoder.down.{i}.downsample", vc[i], vc[i]))
    t.update(resblock("vae.encoder.mid", vc[L], vc[L]))
    t.update({"vae.encoder.norm_out.weight": [vc[L]], "vae.encoder.norm_out.bias": [vc[L]]})
    t.update(conv("vae.encoder.conv_out", vc[L], 2 * C))
    t.update(conv("vae.decoder.conv_in", C, vc[L]))
    t.update(resblock("vae.decoder.mid", vc[L], vc[L]))
    for j in range(L, -1, -1):
        t.update(resblock(f"vae.decoder.up.{j}.res", vc[L] if j == L else vc[j + 1], vc[j]))
        if j > 0:
            t.update(conv(f"vae.decoder.up.{j}.upsample", vc[j], vc[j]))
    t.update({"vae.decoder.norm_out.weight": [vc[0]], "vae.decoder.norm_out.bias": [vc[0]]})
    t.update(conv("vae.decoder.conv_out", vc[0], 3))
    return t


class TensorNames(unittest.TestCase):
    def check(self, cfg: Config):
        got = {k: list(v.shape) for k, v in TransfusionModel(cfg).state_dict().items()}
        want = expected_tensors(cfg.to_dict())
        self.assertEqual(sorted(got.keys() - want.keys()), [], "unexpected tensors")
        self.assertEqual(sorted(want.keys() - got.keys()), [], "missing tensors")
        for name, shape in want.items():
            self.assertEqual(got[name], shape, name)

    def test_tiny(self):
        self.check(preset("tiny"))

    def test_shapes64(self):
        self.check(preset("shapes64"))

    def test_linear_patch_layers(self):
        d = preset("tiny").to_dict()
        d["patch"].update(kind="linear", size=4, channels=[])
        self.check(Config.from_dict(d))

    def test_format_2_patch_conditioning(self):
        for kind, size, channels in (("unet", 2, [16]), ("linear", 4, [])):
            for pos, time in ((True, True), (True, False), (False, True)):
                d = preset("tiny").to_dict()
                d["format_version"] = 2
                d["patch"].update(kind=kind, size=size, channels=channels,
                                  position_embedding=pos, timestep_tokens=time)
                self.check(Config.from_dict(d))

    def test_single_level_vae(self):
        d = preset("tiny").to_dict()
        d["vae"]["channels"] = [16]
        d["image"]["size"] = 8
        self.check(Config.from_dict(d))


if __name__ == "__main__":
    unittest.main()
