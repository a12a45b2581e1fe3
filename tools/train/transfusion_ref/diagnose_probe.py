"""`python -m transfusion_ref.diagnose probe CKPT --data D [--train 2000 --test 500]`: where is
shape information lost?

For each scene and each of the N cells of the patch grid (4x4 over the image: 16x16 px cells at
64 px), the label is the shape word of the object whose centre lies in the cell ("none" for
cells without a centre; cells holding two centres are left out). Features at the cell, from
clean images (`--t 0`: the captioning path's timestep) in the `BOS BOI <patches> EOI` layout
(no caption):

| kind | what | size |
|---|---|---|
| `pixels` | the cell's own pixels (model resolution) | 3 (H/g)^2 |
| `latent` | the VAE latent patch | C p^2 |
| `latent_3x3` | the latent patches of the cell and its 8 neighbours (zero outside) | 9 C p^2 |
| `patch_in` | the `patch_in` token handed to the backbone | D |
| `layer<i>` | the residual stream after backbone layer i (forward hooks) | D |
| `hidden` | the backbone's final (normed) hidden state, what `patch_out` reads | D |

A multinomial logistic regression (standardised features, L2, full-batch L-BFGS) is fitted on
the cells of the first `--train` scenes and tested on the next `--test`: `objects` on cells with
an object (shape classes only; also split by the object's size), `all_cells` on every cell
(shapes + none). Chance = the majority class of the training cells.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .diagnose import DiagnoseError, load_model, open_dataset, positive, read_labels, table
from .diffusion import Schedule
from .losses import UNCONDITIONAL, build_sequences, run_sequence
from .patch import patchify
from .run import log

NONE = "none"
AMBIGUOUS = -1


def cell_targets(labels: list[dict], grid: int, image_px: int, shapes: list[str]):
    """(shape class `[S, N]`: index into `shapes`, len(shapes) for none, -1 for a cell with two
    centres; size `[S, N]`: 0 none, 1 small, 2 large) from label JSON objects."""
    S, N = len(labels), grid * grid
    cls = torch.full((S, N), len(shapes), dtype=torch.long)
    size = torch.zeros((S, N), dtype=torch.long)
    for s, label in enumerate(labels):
        seen = set()
        for obj in label["objects"]:
            cx, cy = obj["center"]
            gx = min(max(int(cx * grid // image_px), 0), grid - 1)
            gy = min(max(int(cy * grid // image_px), 0), grid - 1)
            c = gy * grid + gx
            if c in seen:
                cls[s, c], size[s, c] = AMBIGUOUS, 0
                continue
            seen.add(c)
            cls[s, c] = shapes.index(obj["shape"])
            small = obj.get("size", "small" if obj.get("side", 0) <= 17 else "large") == "small"
            size[s, c] = 1 if small else 2
    return cls, size


@torch.no_grad()
def extract(model, images: torch.Tensor, *, t: int = 0, seed: int = 0, layers: bool = True,
            batch: int = 64) -> dict[str, torch.Tensor]:
    """Features `[S, N, F]` per kind (module docstring) of images `[S, 3, H, H]` in [-1, 1]."""
    cfg = model.cfg
    p, g, N, H = cfg.patch.size, cfg.patch_grid, cfg.num_patches, cfg.image.size
    sched = Schedule(cfg.diffusion)
    gen = torch.Generator().manual_seed(seed)
    captured = {}
    hooks = [model.backbone.register_forward_hook(
        lambda m, i, out: captured.__setitem__("hidden", out[0]))]
    if layers:
        for k, layer in enumerate(model.backbone.layers):
            hooks.append(layer.register_forward_hook(
                lambda m, i, out, k=k: captured.__setitem__(f"layer{k}", out[0])))
    feats: dict[str, list] = {}
    try:
        for start in range(0, len(images), batch):
            img = images[start:start + batch]
            B = len(img)
            x0 = model.vae_encode(img)
            if t == 0:
                x, mt = x0, torch.zeros(B)
            else:
                times = torch.full((B,), float(t) if sched.is_vp else t / sched.T,
                                   dtype=torch.float64)
                a, s, mt = sched.coefficients(times)
                eps = torch.randn(x0.shape, generator=gen)
                x = a.view(-1, 1, 1, 1) * x0 + s.view(-1, 1, 1, 1) * eps
            c = H // g
            out = {"pixels": img.reshape(B, 3, g, c, g, c).permute(0, 2, 4, 1, 3, 5)
                   .reshape(B, N, -1),
                   "latent": patchify(x, p),
                   "latent_3x3": F.unfold(x, kernel_size=3 * p, stride=p, padding=p)
                   .transpose(1, 2),
                   "patch_in": model.patch_in(x, mt)[0]}
            seq = build_sequences(cfg, [[]] * B, [UNCONDITIONAL] * B)
            run_sequence(model, seq, x, mt, want_logits=False)
            index = seq.image_index[..., None].expand(-1, -1, cfg.backbone.dim)
            names = [f"layer{k}" for k in range(len(model.backbone.layers))] if layers else []
            for name in names + ["hidden"]:
                out[name] = captured[name].gather(1, index)
            for name, v in out.items():
                feats.setdefault(name, []).append(v.float())
            log(f"[probe] features {start + B}/{len(images)}")
    finally:
        for h in hooks:
            h.remove()
    return {k: torch.cat(v) for k, v in feats.items()}


def fit_probe(xtr: torch.Tensor, ytr: torch.Tensor, xte: torch.Tensor, classes: int, *,
              l2: float = 1e-3, iters: int = 200) -> torch.Tensor:
    """Multinomial logistic regression on standardised features (train statistics), L2 on the
    weights, full-batch L-BFGS from zero; returns the predicted classes of `xte`."""
    mu, sd = xtr.mean(0), xtr.std(0).clamp_min(1e-6)
    xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
    W = torch.zeros(xtr.shape[1], classes, requires_grad=True)
    b = torch.zeros(classes, requires_grad=True)
    opt = torch.optim.LBFGS([W, b], lr=1.0, max_iter=iters, history_size=20,
                            tolerance_grad=1e-6, tolerance_change=1e-9,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(xtr @ W + b, ytr) + 0.5 * l2 * W.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        return (xte @ W + b).argmax(1)


def _acc(pred, y, mask=None) -> float | None:
    if mask is not None:
        pred, y = pred[mask], y[mask]
    return round((pred == y).double().mean().item(), 4) if len(y) else None


def probe(feats: dict, cls: torch.Tensor, size: torch.Tensor, shapes: list[str], train: int,
          *, l2: float = 1e-3, iters: int = 200) -> dict:
    """Both probes for every feature kind; scenes `[:train]` train, the rest test."""
    K = len(shapes)
    tr, te = slice(0, train), slice(train, None)
    ytr, yte = cls[tr].reshape(-1), cls[te].reshape(-1)
    ste = size[te].reshape(-1)
    obj_tr, obj_te = (ytr >= 0) & (ytr < K), (yte >= 0) & (yte < K)
    all_tr, all_te = ytr >= 0, yte >= 0
    if not bool(obj_tr.any()) or not bool(obj_te.any()):
        raise DiagnoseError("no object centres in the training or test scenes")
    maj_obj = int(torch.bincount(ytr[obj_tr], minlength=K).argmax())
    maj_all = int(torch.bincount(ytr[all_tr], minlength=K + 1).argmax())
    y_obj = yte[obj_te]
    s_obj = ste[obj_te]
    chance = {"objects": _acc(torch.full_like(y_obj, maj_obj), y_obj),
              "small": _acc(torch.full_like(y_obj, maj_obj), y_obj, s_obj == 1),
              "large": _acc(torch.full_like(y_obj, maj_obj), y_obj, s_obj == 2),
              "all_cells": _acc(torch.full_like(yte[all_te], maj_all), yte[all_te]),
              "majority_object_class": shapes[maj_obj]}
    out = {"shapes": shapes, "chance": chance, "features": {},
           "cells": {"train_objects": int(obj_tr.sum()), "test_objects": int(obj_te.sum()),
                     "test_small": int((s_obj == 1).sum()), "test_large": int((s_obj == 2).sum()),
                     "train_all": int(all_tr.sum()), "test_all": int(all_te.sum()),
                     "ambiguous": int((cls < 0).sum())}}
    for name, f in feats.items():
        ftr, fte = f[tr].reshape(-1, f.shape[-1]), f[te].reshape(-1, f.shape[-1])
        pred = fit_probe(ftr[obj_tr], ytr[obj_tr], fte[obj_te], K, l2=l2, iters=iters)
        per_shape = {s: _acc(pred, y_obj, y_obj == k) for k, s in enumerate(shapes)}
        pred_all = fit_probe(ftr[all_tr], ytr[all_tr], fte[all_te], K + 1, l2=l2, iters=iters)
        y_all = yte[all_te]
        out["features"][name] = {
            "dim": f.shape[-1],
            "objects": {"acc": _acc(pred, y_obj), "small": _acc(pred, y_obj, s_obj == 1),
                        "large": _acc(pred, y_obj, s_obj == 2), "per_shape": per_shape},
            "all_cells": {"acc": _acc(pred_all, y_all),
                          "object_cells": _acc(pred_all, y_all, y_all < K)}}
        log(f"[probe] {name}: objects {out['features'][name]['objects']['acc']}")
    return out


def probe_table(rep: dict) -> str:
    c = rep["chance"]
    rows = [["chance (majority)", "-", c["objects"], c["small"], c["large"], c["all_cells"], "-"]]
    for name, r in rep["features"].items():
        o, a = r["objects"], r["all_cells"]
        rows.append([name, r["dim"], o["acc"], o["small"], o["large"], a["acc"],
                     a["object_cells"]])
    rows = [[("-" if v is None else v) for v in row] for row in rows]
    return table(["feature", "dim", "objects", "small", "large", "all cells",
                  "all: object cells"], rows)


def cmd_probe(args) -> dict:
    if args.l2 < 0:
        raise DiagnoseError(f"--l2 {args.l2}: expected >= 0")
    cfg, model = load_model(args.checkpoint)
    n = args.train + args.test
    data = open_dataset(args.data, cfg, n, args.checkpoint, option="--train + --test")
    labels = read_labels(data, n)
    if any("objects" not in lb for lb in labels):
        raise DiagnoseError(f"{data.path}: labels without `objects` (the probe needs a dataset "
                            "from `transfusion dataset shapes`)")
    sched_T = cfg.diffusion.train_timesteps
    if not 0 <= args.t < sched_T:
        raise DiagnoseError(f"--t {args.t}: expected 0..{sched_T - 1}")
    shapes = sorted({o["shape"] for lb in labels for o in lb["objects"]})
    cls, size = cell_targets(labels, cfg.patch_grid, data.images.shape[1], shapes)
    log(f"[probe] {n} scenes, {cfg.patch_grid}x{cfg.patch_grid} cells, shapes {shapes}")
    images = data.image_batch(list(range(n)), cfg.image.size)
    feats = extract(model, images, t=args.t, seed=args.seed, layers=not args.no_layers,
                    batch=args.batch)
    rep = probe(feats, cls, size, shapes, args.train, l2=args.l2, iters=args.iters)
    rep.update(checkpoint=str(args.checkpoint), data=str(data.path), train=args.train,
               test=args.test, t=args.t)
    print(probe_table(rep))
    return rep


def add_probe_parser(sub, common) -> None:
    q = sub.add_parser("probe", help="per-cell linear shape probes (latent, patch_in, hidden)")
    common(q)
    q.add_argument("--train", type=positive, default=2000, help="training scenes (the first ones)")
    q.add_argument("--test", type=positive, default=500, help="test scenes (the next ones)")
    q.add_argument("--t", type=int, default=0, help="timestep of the features (default 0: clean)")
    q.add_argument("--no-layers", action="store_true", help="skip the per-layer hidden states")
    q.add_argument("--l2", type=float, default=1e-3, help="L2 weight (default 1e-3)")
    q.add_argument("--iters", type=positive, default=200, help="L-BFGS iterations")
    q.add_argument("--batch", type=positive, default=64)
