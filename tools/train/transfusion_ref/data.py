"""The shapes dataset (`shapes.bin`, docs/dataset.md) for training, and the latent cache.

Images are stored 64x64 RGB uint8. A model whose `image.size` differs (the tiny preset: 32) gets
them area-downsampled (`F.interpolate(mode="area")`, i.e. the mean of each 2x2 block for 64 ->
32) to its size, after mapping to [-1, 1]. Captions are the stored token ids (no BOS/EOS/BOI;
the trainer lays out the sequence).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

MAGIC = b"TFSHAPES"


class DataError(ValueError):
    """A dataset that cannot be used with this model (format, vocabulary, special tokens)."""


def resolve(path: str | Path) -> Path:
    """A `shapes.bin` file, or a directory holding one."""
    path = Path(path)
    if path.is_dir():
        path = path / "shapes.bin"
    if not path.is_file():
        raise DataError(f"{path}: no shapes dataset (generate one with "
                        "`transfusion dataset shapes -o DIR`)")
    return path


def read_header(path: Path) -> dict:
    with open(path, "rb") as f:
        if f.read(8) != MAGIC:
            raise DataError(f"{path}: not a shapes dataset (bad magic)")
        header = json.loads(f.read(int.from_bytes(f.read(4), "little")))
    if header.get("format_version") != 1:
        raise DataError(f"{path}: format_version {header.get('format_version')!r}, expected 1")
    return header


@dataclass
class Shapes:
    """A loaded dataset: images uint8 `[N, H, W, 3]` (memory-mapped), captions int64
    `[N, 32]` (padded), lengths int64 `[N]`."""
    path: Path
    header: dict
    images: np.ndarray
    tokens: torch.Tensor
    lengths: torch.Tensor

    @classmethod
    def open(cls, path: str | Path, limit: int | None = None) -> "Shapes":
        path = resolve(path)
        header = read_header(path)
        s = header["sections"]

        def array(name):
            return np.memmap(path, dtype=s[name]["dtype"], mode="r", offset=s[name]["offset"],
                             shape=tuple(s[name]["shape"]))

        images, tokens, lengths = array("images"), array("tokens"), array("lengths")
        n = len(images) if limit is None else min(limit, len(images))
        return cls(path, header, images[:n], torch.from_numpy(np.array(tokens[:n], np.int64)),
                   torch.from_numpy(np.array(lengths[:n], np.int64)))

    def __len__(self) -> int:
        return len(self.lengths)

    def identity(self) -> str:
        """What the latent cache is keyed on: the file's size and mtime, count, seed, split."""
        st = self.path.stat()
        h = self.header
        return (f"{self.path.resolve()}:{st.st_size}:{int(st.st_mtime)}:{len(self)}:"
                f"{h.get('seed')}:{h.get('split')}")

    def check_vocab(self, cfg, tokenizer_path: Path | None = None) -> None:
        """The dataset's special ids and vocabulary must be the model's (and the tokenizer's)."""
        vocab = self.header["vocab"]
        ours = dict(vars(cfg.special_tokens))
        theirs = {k: vocab["special_tokens"][k] for k in ours}
        if ours != theirs:
            raise DataError(f"{self.path}: special tokens {theirs} differ from config.json's {ours}")
        if vocab["size"] > cfg.text.vocab_size:
            raise DataError(f"{self.path}: vocabulary of {vocab['size']} tokens does not fit "
                            f"text.vocab_size {cfg.text.vocab_size}")
        if int(self.tokens.max()) >= cfg.text.vocab_size:
            raise DataError(f"{self.path}: token id {int(self.tokens.max())} >= vocab size")
        if tokenizer_path is not None:
            tok = json.loads(Path(tokenizer_path).read_text())
            ids = (tok.get("model") or {}).get("vocab") or {}
            bad = [(i, w) for i, w in enumerate(vocab["tokens"]) if ids.get(w) != i]
            if bad:
                raise DataError(f"{self.path}: token ids differ from {tokenizer_path} "
                                f"(first: {bad[0]})")

    def image_batch(self, idx, size: int, device=None) -> torch.Tensor:
        """Images `idx` as float32 `[B, 3, size, size]` in [-1, 1] (area-downsampled) on
        `device` (the uint8 pixels are moved, then converted there)."""
        idx = np.asarray(idx)
        order = np.argsort(idx, kind="stable")  # sorted reads from the memmap
        raw = np.empty((len(idx),) + self.images.shape[1:], np.uint8)
        raw[order] = self.images[idx[order]]
        x = torch.from_numpy(raw)
        if device is not None and torch.device(device).type != "cpu":
            x = x.to(device)
        x = x.permute(0, 3, 1, 2).float() / 127.5 - 1.0
        if x.shape[-1] != size:
            x = F.interpolate(x, size=(size, size), mode="area")
        return x.contiguous()


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def batch_indices(n: int, batch: int, step: int, seed: int) -> torch.Tensor:
    """Sample indices of training step `step` (0-based): consecutive slices of per-epoch random
    permutations, a pure function of (n, batch, step, seed) so a resumed run sees the same data."""
    start = step * batch
    out, cache = [], {}
    for pos in range(start, start + batch):
        epoch, i = divmod(pos, n)
        if epoch not in cache:
            cache[epoch] = epoch_permutation(n, seed, epoch)
        out.append(int(cache[epoch][i]))
    return torch.tensor(out, dtype=torch.long)


# ---- latent cache -----------------------------------------------------------------------

def vae_fingerprint(model) -> str:
    """sha256 of the VAE weights and scale/shift: a cache key for encoded latents."""
    h = hashlib.sha256()
    for name, t in sorted(model.vae.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().to(torch.float32).contiguous().cpu().numpy().tobytes())
    h.update(f"{model.vae.scale!r}:{model.vae.shift!r}".encode())
    return h.hexdigest()


@torch.no_grad()
def encode_all(model, data: Shapes, size: int, batch: int = 256, log=None) -> torch.Tensor:
    """Scaled posterior-mean latents of every image, float32 `[N, C, Hl, Hl]`, on the model's
    device."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(data), batch):
        idx = np.arange(start, min(start + batch, len(data)))
        out.append(model.vae_encode(data.image_batch(idx, size, device)))
        if log and (start // batch) % 20 == 0:
            log(f"encoding latents {start + len(idx)}/{len(data)}")
    return torch.cat(out)


def cached_latents(model, data: Shapes, size: int, cache_dir: Path, log=None,
                   write: bool = True) -> torch.Tensor:
    """Latents of the whole dataset on the model's device, encoded once per (VAE weights,
    dataset, device kind: a GPU's encoding differs in the last bits) and kept in
    `cache_dir/latents-<key>.pt` (written atomically, unless `write` is false)."""
    device = next(model.parameters()).device
    where = "" if device.type == "cpu" else f"|{device.type}"
    key = hashlib.sha256(f"{vae_fingerprint(model)}|{data.identity()}|{size}{where}".encode())
    path = Path(cache_dir) / f"latents-{key.hexdigest()[:16]}.pt"
    if path.is_file():
        return torch.load(path, weights_only=True, map_location="cpu").to(device)
    latents = encode_all(model, data, size, log=log)
    if write:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(latents.cpu(), tmp)
        os.replace(tmp, path)
    return latents


def write_synthetic(path: str | Path, count: int, seed: int = 0, vocab_tokens=None) -> Path:
    """A small valid `shapes.bin` of coloured squares with made-up captions (for tests that
    must not depend on the Rust generator). Returns the file path."""
    rng = np.random.default_rng(seed)
    colours = np.array([[220, 40, 40], [40, 180, 60], [40, 90, 230], [240, 220, 40]], np.uint8)
    images = np.zeros((count, 64, 64, 3), np.uint8)
    tokens = np.zeros((count, 32), np.int32)
    lengths = np.zeros(count, np.int32)
    for i in range(count):
        c, side = rng.integers(4), int(rng.choice([12, 22]))
        x, y = rng.integers(1, 64 - side - 1, size=2)
        images[i, y:y + side, x:x + side] = colours[c]
        caption = [58, 10 + c, 6 + int(side > 17)] + ([20 + int(x > 32)] if rng.random() < .5 else [])
        tokens[i, :len(caption)] = caption
        lengths[i] = len(caption)
    vocab_tokens = vocab_tokens or (["[PAD]", "[BOS]", "[EOS]", "[BOI]", "[EOI]", "[UNK]"]
                                    + [f"w{i}" for i in range(6, 74)])
    sections, blobs, labels = {}, [], b"".join(
        json.dumps({"index": i, "caption": ""}).encode() + b"\n" for i in range(count))
    header = {"format": "transfusion-shapes", "format_version": 1, "count": count, "seed": seed,
              "split": "synthetic",
              "vocab": {"preset": "shapes64", "size": len(vocab_tokens), "tokens": vocab_tokens,
                        "special_tokens": {"pad": 0, "bos": 1, "eos": 2, "boi": 3, "eoi": 4,
                                           "unk": 5}},
              "sections": sections}
    arrays = [("images", images), ("tokens", tokens), ("lengths", lengths)]
    # Lay out: header padded so that every section starts at a multiple of 64.
    for _ in range(2):  # the header's length depends on the offsets it records
        text = json.dumps(header).encode()
        offset = (12 + len(text) + 64 + 63) // 64 * 64  # slack: offsets may grow
        blobs = []
        for name, arr in arrays:
            sections[name] = {"offset": offset, "bytes": arr.nbytes, "dtype": arr.dtype.str
                              if arr.dtype != np.uint8 else "uint8", "shape": list(arr.shape)}
            blobs.append((offset, arr.tobytes()))
            offset = (offset + arr.nbytes + 63) // 64 * 64
        sections["labels"] = {"offset": offset, "bytes": len(labels), "format": "jsonl"}
        blobs.append((offset, labels))
    text = json.dumps(header).encode()
    H = sections["images"]["offset"] - 12
    assert len(text) <= H
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    out = path / "shapes.bin"
    with open(out, "wb") as f:
        f.write(MAGIC + H.to_bytes(4, "little") + text.ljust(H, b" "))
        for offset, blob in blobs:
            f.write(b"\0" * (offset - f.tell()))
            f.write(blob)
    return out


def tokenizer_json(header: dict) -> dict:
    """The `tokenizer.json` (Hugging Face WordLevel, lowercase, whitespace pre-tokenizer) of the
    dataset's vocabulary: the same document `transfusion init` writes for the shapes presets.
    A fallback for when no checkpoint or `--tokenizer` provides one."""
    vocab = header["vocab"]
    tokens = vocab["tokens"]
    special = sorted(vocab["special_tokens"].values())
    added = [{"content": tokens[i], "id": i, "lstrip": False, "normalized": False,
              "rstrip": False, "single_word": False, "special": True} for i in special]
    unk = tokens[vocab["special_tokens"]["unk"]]
    return {"added_tokens": added, "decoder": None,
            "model": {"type": "WordLevel", "unk_token": unk,
                      "vocab": {w: i for i, w in sorted(enumerate(tokens), key=lambda p: p[1])}},
            "normalizer": {"type": "Lowercase"}, "padding": None, "post_processor": None,
            "pre_tokenizer": {"type": "Whitespace"}, "truncation": None, "version": "1.0"}
