"""Test helper: a bundle exported with torch.onnx (NOT the product converter, which is the Rust
`transfusion convert`), so that check_onnx can be exercised before that exists.

fp32 and fp16 graphs come from the TorchScript exporter (opset 17); int8 graphs from
onnxruntime's dynamic quantisation (DynamicQuantizeLinear + MatMulInteger / ConvInteger).
"""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import torch
from torch import nn

QUANTIZED = ("backbone", "lm_head", "patch_out")


class _Graph(nn.Module):
    """Wraps one model entry point with flat tensor inputs/outputs for export."""

    def __init__(self, model, graph):
        super().__init__()
        self.model, self.graph = model, graph

    def forward(self, *xs):
        m, n = self.model, self.model.cfg.backbone.n_layers
        if self.graph == "text_embed":
            return m.text_embed(xs[0])
        if self.graph == "backbone":
            past = xs[3:]
            hidden, keys, values = m.backbone(xs[0], xs[1], xs[2], past[0::2], past[1::2])
            return (hidden, *[t for kv in zip(keys, values) for t in kv])
        if self.graph == "lm_head":
            return m.lm_head(xs[0])
        if self.graph == "patch_in":
            patches, skips = m.patch_in(*xs)
            return (patches, *skips)
        if self.graph == "patch_out":
            return m.patch_out(xs[0], list(xs[1:-1]), xs[-1])
        if self.graph == "vae_encoder":
            return m.vae_encode(xs[0])
        return m.vae_decode(xs[0])


def _signature(cfg, graph, dtype):
    """(example inputs, input names, output names, dynamic axes) of one graph."""
    D, H, hd, n = cfg.backbone.dim, cfg.backbone.n_heads, cfg.backbone.head_dim, cfg.backbone.n_layers
    C, Hl, N, img = cfg.vae.latent_channels, cfg.latent_size, cfg.num_patches, cfg.image.size
    skips = [f"skip.{i}" for i in range(cfg.unet_levels)]
    skip_x = [torch.randn(2, c, s, s, dtype=dtype) for c, s in cfg.skips]
    t = torch.tensor([1.0, 2.0], dtype=dtype)
    if graph == "text_embed":
        return (torch.zeros(1, 3, dtype=torch.long),), ["input_ids"], ["embeddings"], \
            {"input_ids": {1: "S"}, "embeddings": {1: "S"}}
    if graph == "backbone":
        past_names = [f"past_{kv}.{l}" for l in range(n) for kv in ("key", "value")]
        present = [f"present_{kv}.{l}" for l in range(n) for kv in ("key", "value")]
        x = (torch.randn(1, 3, D, dtype=dtype), torch.arange(2, 5), torch.zeros(3, 5, dtype=dtype),
             *[torch.randn(1, H, 2, hd, dtype=dtype) for _ in past_names])
        axes = {"embeddings": {1: "S"}, "positions": {0: "S"}, "attention_mask": {0: "S", 1: "P+S"},
                "hidden": {1: "S"}}
        axes.update({p: {2: "P"} for p in past_names})
        axes.update({p: {2: "P+S"} for p in present})
        return x, ["embeddings", "positions", "attention_mask", *past_names], \
            ["hidden", *present], axes
    if graph == "lm_head":
        return (torch.randn(1, 3, D, dtype=dtype),), ["hidden"], ["logits"], \
            {"hidden": {1: "S"}, "logits": {1: "S"}}
    batch = {0: "B"}
    if graph == "patch_in":
        names, outs = ["latent", "timestep"], ["patches", *skips]
        return (torch.randn(2, C, Hl, Hl, dtype=dtype), t), names, outs, \
            {k: batch for k in names + outs}
    if graph == "patch_out":
        names = ["hidden", *skips, "timestep"]
        return (torch.randn(2, N, D, dtype=dtype), *skip_x, t), names, ["prediction"], \
            {k: batch for k in names + ["prediction"]}
    if graph == "vae_encoder":
        return (torch.randn(2, 3, img, img, dtype=dtype),), ["image"], ["latent"], \
            {"image": batch, "latent": batch}
    return (torch.randn(2, C, Hl, Hl, dtype=dtype),), ["latent"], ["image"], \
        {"latent": batch, "image": batch}


GRAPHS = ("text_embed", "backbone", "lm_head", "patch_in", "patch_out", "vae_encoder",
          "vae_decoder")


def export_bundle(model, out: Path, precisions=("fp32", "fp16", "int8")) -> Path:
    """Write `out/manifest.json` and the graphs of `precisions` (int8 quantises QUANTIZED and
    points the other graphs at the fp32 files)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    cfg = model.cfg
    out.mkdir(parents=True, exist_ok=True)
    graphs = {g: {"files": {}} for g in GRAPHS}
    for precision in [p for p in ("fp32", "fp16") if p in precisions or p == "fp32"]:
        dtype = torch.float16 if precision == "fp16" else torch.float32
        m = copy.deepcopy(model).to(dtype).eval()
        (out / precision).mkdir(exist_ok=True)
        for g in GRAPHS:
            args, names, outs, axes = _signature(cfg, g, dtype)
            path = f"{precision}/{g}.onnx"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(_Graph(m, g), args, str(out / path), dynamo=False,
                                  opset_version=17, input_names=names, output_names=outs,
                                  dynamic_axes=axes)
            if precision in precisions:
                graphs[g]["files"][precision] = {"path": path, "float": str(dtype)[6:]}
    if "int8" in precisions:
        (out / "int8").mkdir(exist_ok=True)
        for g in GRAPHS:
            path = f"int8/{g}.onnx" if g in QUANTIZED else f"fp32/{g}.onnx"
            if g in QUANTIZED:
                quantize_dynamic(str(out / f"fp32/{g}.onnx"), str(out / path),
                                 weight_type=QuantType.QUInt8)
            graphs[g]["files"]["int8"] = {"path": path, "float": "float32",
                                          "int8_ops": g in QUANTIZED}
    manifest = {
        "format_version": 1, "producer": "tests/onnx_bundle.py", "name": cfg.name,
        "config": cfg.to_dict(),
        "geometry": {"dim": cfg.backbone.dim, "n_layers": cfg.backbone.n_layers,
                     "n_heads": cfg.backbone.n_heads, "head_dim": cfg.backbone.head_dim,
                     "num_patches": cfg.num_patches, "latent_size": cfg.latent_size,
                     "skips": [{"channels": c, "size": s} for c, s in cfg.skips]},
        "precisions": list(precisions), "graphs": graphs,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return out


if __name__ == "__main__":  # cd tools/train && python tests/onnx_bundle.py CKPT -o BUNDLE
    import argparse
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from transfusion_ref.checkpoint import load_checkpoint

    p = argparse.ArgumentParser()
    p.add_argument("checkpoint", type=Path)
    p.add_argument("-o", "--output", type=Path, required=True)
    a = p.parse_args()
    export_bundle(load_checkpoint(a.checkpoint)[1], a.output)
