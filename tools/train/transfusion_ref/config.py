"""`config.json` of a Transfusion checkpoint (docs/checkpoint.md), parsed strictly.

Every key is required and unknown keys are rejected, so a typo can never fall back to a
default. Each validation failure raises `ConfigError` naming the key, the expected and the
found value. `Config` also derives the geometry (VAE levels L, latent size Hl, U-Net levels K,
patch grid g, N patches) that the model and the bundle tools need.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from dataclasses import dataclass
from pathlib import Path

GROUPS = 8  # GroupNorm group count; every normalised channel count must be a multiple.
SCHEDULES = ("cosine", "linear", "flow")
PREDICTIONS = ("epsilon", "v", "x0", "flow")
SAMPLERS = ("ddim", "dpmpp_2m", "euler", "lcm")
PATCH_KINDS = ("unet", "linear")


class ConfigError(ValueError):
    """An invalid config.json: the message names the key, expected and found value."""


@dataclass
class TextConfig:
    vocab_size: int
    max_seq_len: int


@dataclass
class SpecialTokens:
    pad: int
    bos: int
    eos: int
    boi: int
    eoi: int
    unk: int


@dataclass
class BackboneConfig:
    dim: int
    n_layers: int
    n_heads: int
    head_dim: int
    ffn_dim: int
    norm_eps: float
    rope_theta: float


@dataclass
class ImageConfig:
    size: int
    channels: int


@dataclass
class VaeConfig:
    latent_channels: int
    channels: list[int]
    scale: float
    shift: float


FORMAT_VERSIONS = (1, 2)


def _since(version: int, default):
    """A key introduced by config format `version`: required from that version on, rejected
    before it (where it reads as `default`, the behaviour of the older format)."""
    return dataclasses.field(default=default, metadata={"since": version})


@dataclass
class PatchConfig:
    kind: str
    size: int
    channels: list[int]
    timestep_freq_dim: int
    # Format 2: a learned per-cell position `patch.pos_embed [N, D]` added to the patch
    # vectors (the 2-D grid place of each patch, which 1-D RoPE over the sequence lacks).
    position_embedding: bool = _since(2, False)
    # Format 2: `patch.time_proj(SiLU(temb))` added to the patch vectors, so the backbone
    # knows the noise level of the image it attends to.
    timestep_tokens: bool = _since(2, False)


@dataclass
class DiffusionConfig:
    schedule: str
    prediction: str
    train_timesteps: int
    sampler: str
    steps: int
    guidance: float
    guidance_distilled: bool
    # Optional (any format): the model timesteps of the recommended `steps`-step trajectory,
    # noisiest first (VP); absent = the trailing grid. The SDK's `DiffusionConfig::grid`.
    timesteps: typing.Optional[list[int]] = dataclasses.field(
        default=None, metadata={"optional": True})


@dataclass
class Config:
    format_version: int
    name: str
    text: TextConfig
    special_tokens: SpecialTokens
    backbone: BackboneConfig
    image: ImageConfig
    vae: VaeConfig
    patch: PatchConfig
    diffusion: DiffusionConfig

    # ---- derived geometry -------------------------------------------------------------
    @property
    def vae_levels(self) -> int:
        """L: the VAE downsamples by 2^L (len(vae.channels) = L + 1)."""
        return len(self.vae.channels) - 1

    @property
    def latent_size(self) -> int:
        """Hl = image.size / 2^L."""
        return self.image.size >> self.vae_levels

    @property
    def unet_levels(self) -> int:
        """K with patch.size = 2^K for the U-Net kind; 0 for linear patch layers."""
        return self.patch.size.bit_length() - 1 if self.patch.kind == "unet" else 0

    @property
    def patch_grid(self) -> int:
        """g = Hl / patch.size."""
        return self.latent_size // self.patch.size

    @property
    def num_patches(self) -> int:
        """N = g^2 latent patches per image."""
        return self.patch_grid ** 2

    @property
    def skips(self) -> list[tuple[int, int]]:
        """(channels, size) of each U-Net skip `skip.{i}`; empty for linear patch layers."""
        return [(self.patch.channels[i], self.latent_size >> i) for i in range(self.unet_levels)]

    # ---- (de)serialisation ------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: typing.Any) -> "Config":
        """Parse and validate a decoded config.json object."""
        version = data.get("format_version") if isinstance(data, dict) else None
        if not isinstance(version, int) or version not in FORMAT_VERSIONS:
            raise ConfigError(f"format_version: expected {' | '.join(map(str, FORMAT_VERSIONS))}, "
                              f"found {version!r}")
        cfg = _parse(cls, data, "", version)
        cfg.validate()
        return cfg

    @classmethod
    def load(cls, path: str | Path) -> "Config":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: not valid JSON: {e}") from None
        try:
            return cls.from_dict(data)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None

    def to_dict(self) -> dict:
        """The config.json object: keys of a later format than `format_version` are left out."""
        return _to_dict(self, self.format_version)

    @property
    def uses_format_2(self) -> bool:
        """Whether a format-2 key is on (such a config must be written as format 2)."""
        return self.patch.position_embedding or self.patch.timestep_tokens

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    # ---- validation (docs/checkpoint.md "Rules checked on load") ----------------------
    def validate(self) -> None:
        _expect(self.format_version in FORMAT_VERSIONS, "format_version",
                " | ".join(map(str, FORMAT_VERSIONS)), self.format_version)
        _expect(self.format_version >= 2 or not self.uses_format_2, "format_version",
                "2 (patch.position_embedding and patch.timestep_tokens are format-2 keys)",
                self.format_version)
        sizes = {
            "text.vocab_size": self.text.vocab_size,
            "text.max_seq_len": self.text.max_seq_len,
            "backbone.dim": self.backbone.dim,
            "backbone.n_layers": self.backbone.n_layers,
            "backbone.n_heads": self.backbone.n_heads,
            "backbone.head_dim": self.backbone.head_dim,
            "backbone.ffn_dim": self.backbone.ffn_dim,
            "image.size": self.image.size,
            "image.channels": self.image.channels,
            "vae.latent_channels": self.vae.latent_channels,
            "patch.size": self.patch.size,
            "patch.timestep_freq_dim": self.patch.timestep_freq_dim,
            "diffusion.train_timesteps": self.diffusion.train_timesteps,
        }
        sizes.update({f"vae.channels[{i}]": c for i, c in enumerate(self.vae.channels)})
        if self.patch.kind == "unet":
            sizes.update({f"patch.channels[{i}]": c for i, c in enumerate(self.patch.channels)})
        for key, value in sizes.items():
            _expect(value > 0, key, "> 0", value)
        b = self.backbone
        _expect(b.dim == b.n_heads * b.head_dim, "backbone.dim",
                f"n_heads * head_dim = {b.n_heads * b.head_dim}", b.dim)
        _expect(b.head_dim % 2 == 0, "backbone.head_dim", "an even number", b.head_dim)
        _expect(b.norm_eps > 0, "backbone.norm_eps", "> 0", b.norm_eps)
        _expect(b.rope_theta > 0, "backbone.rope_theta", "> 0", b.rope_theta)

        ids = dataclasses.asdict(self.special_tokens)
        for key, value in ids.items():
            _expect(0 <= value < self.text.vocab_size, f"special_tokens.{key}",
                    f"in 0..{self.text.vocab_size} (text.vocab_size)", value)
        for key, value in ids.items():
            twins = [k for k, v in ids.items() if v == value and k != key]
            _expect(not twins, f"special_tokens.{key}", f"an id distinct from {twins}", value)

        _expect(len(self.vae.channels) >= 1, "vae.channels", "at least 1 entry (L + 1)",
                self.vae.channels)
        L = self.vae_levels
        _expect(self.image.size % (1 << L) == 0, "image.size",
                f"divisible by 2^L = {1 << L} (L = len(vae.channels) - 1)", self.image.size)
        _expect(self.vae.scale != 0, "vae.scale", "non-zero (the decoder divides by it)",
                self.vae.scale)

        _expect(self.patch.kind in PATCH_KINDS, "patch.kind", " | ".join(PATCH_KINDS),
                self.patch.kind)
        _expect(self.latent_size % self.patch.size == 0, "patch.size",
                f"a divisor of the latent size {self.latent_size}", self.patch.size)
        if self.patch.kind == "unet":
            p = self.patch.size
            _expect(p >= 2 and p & (p - 1) == 0, "patch.size",
                    "a power of two 2^K with K >= 1 (unet)", p)
            K = self.unet_levels
            _expect(len(self.patch.channels) == K, "patch.channels",
                    f"exactly K = {K} entries (patch.size = 2^K)", self.patch.channels)
            for i, c in enumerate(self.patch.channels):
                _expect(c % GROUPS == 0, f"patch.channels[{i}]",
                        f"a multiple of {GROUPS} (GroupNorm groups)", c)
        for i, c in enumerate(self.vae.channels):
            _expect(c % GROUPS == 0, f"vae.channels[{i}]",
                    f"a multiple of {GROUPS} (GroupNorm groups)", c)
        _expect(self.patch.timestep_freq_dim % 2 == 0, "patch.timestep_freq_dim",
                "an even number ([cos, sin] halves)", self.patch.timestep_freq_dim)

        d = self.diffusion
        _expect(d.schedule in SCHEDULES, "diffusion.schedule", " | ".join(SCHEDULES), d.schedule)
        _expect(d.prediction in PREDICTIONS, "diffusion.prediction", " | ".join(PREDICTIONS),
                d.prediction)
        if d.schedule == "flow":
            _expect(d.prediction == "flow", "diffusion.prediction",
                    "flow (the flow schedule needs flow prediction)", d.prediction)
        else:
            _expect(d.prediction != "flow", "diffusion.prediction",
                    "epsilon | v | x0 (flow prediction needs the flow schedule)", d.prediction)
        _expect(d.sampler in SAMPLERS, "diffusion.sampler", " | ".join(SAMPLERS), d.sampler)
        _expect(1 <= d.steps <= 1000, "diffusion.steps", "in 1..=1000", d.steps)
        _expect(d.guidance >= 1, "diffusion.guidance", ">= 1", d.guidance)
        if d.timesteps is not None:
            ts = d.timesteps
            _expect(d.schedule != "flow", "diffusion.timesteps",
                    "no key (the flow schedule has no timestep grid)", ts)
            problem = grid_problem(ts, d.steps, d.train_timesteps)
            _expect(problem is None, "diffusion.timesteps", problem, ts)


def grid_problem(timesteps: list[int], steps: int, T: int) -> str | None:
    """What `timesteps` should have been to be the grid of a `steps`-step trajectory over a VP
    schedule of `T` timesteps (`steps` of them, strictly decreasing from `T - 1`, where pure
    noise starts), or None when they are (the SDK's `check_grid`)."""
    if len(timesteps) == steps and timesteps[:1] == [T - 1] \
            and all(a > b for a, b in zip(timesteps, timesteps[1:])):
        return None
    return f"{steps} strictly decreasing timesteps from {T - 1} (T - 1: pure noise)"


def _expect(ok: bool, key: str, expected: str, found: typing.Any) -> None:
    if not ok:
        raise ConfigError(f"{key}: expected {expected}, found {found!r}")


def _fields(cls, version: int):
    """The fields of dataclass `cls` that config format `version` has."""
    return [f for f in dataclasses.fields(cls) if f.metadata.get("since", 1) <= version]


def _to_dict(obj, version: int) -> dict:
    out = {}
    for f in _fields(type(obj), version):
        value = getattr(obj, f.name)
        if value is None and f.metadata.get("optional"):
            continue
        out[f.name] = _to_dict(value, version) if dataclasses.is_dataclass(value) else \
            (list(value) if isinstance(value, list) else value)
    return out


def _parse(cls, data: typing.Any, prefix: str, version: int):
    """Build dataclass `cls` from `data`, rejecting unknown/missing keys and wrong types; keys
    of a format later than `version` are unknown, earlier ones required."""
    where = prefix.rstrip(".") or "config"
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected an object, found {data!r}")
    hints = typing.get_type_hints(cls)
    fields = _fields(cls, version)
    names = [f.name for f in fields]
    later = {f.name: f.metadata["since"] for f in dataclasses.fields(cls)
             if f.metadata.get("since", 1) > version}
    for key in data:
        if key in later:
            raise ConfigError(f"{prefix}{key}: needs format_version {later[key]} "
                              f"(this config is format_version {version})")
        if key not in names:
            raise ConfigError(f"{prefix}{key}: unknown key (expected one of {', '.join(names)})")
    values = {}
    optional = {f.name for f in fields if f.metadata.get("optional")}
    for name in names:
        key = prefix + name
        if name not in data:
            if name in optional:
                continue
            raise ConfigError(f"{key}: missing key")
        tp = hints[name]
        if name in optional:
            tp = typing.get_args(tp)[0]  # Optional[X] -> X
        values[name] = _convert(tp, data[name], key, version)
    return cls(**values)


def _convert(tp, value, key, version):
    if dataclasses.is_dataclass(tp):
        return _parse(tp, value, key + ".", version)
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        value = float(value) if ok else value
    elif tp is str:
        ok = isinstance(value, str)
    elif typing.get_origin(tp) is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, found {value!r}")
        return [_convert(typing.get_args(tp)[0], v, f"{key}[{i}]", version)
                for i, v in enumerate(value)]
    else:  # pragma: no cover - all field types are handled above
        raise TypeError(tp)
    if not ok:
        raise ConfigError(f"{key}: expected {tp.__name__}, found {value!r}")
    return value


def _preset(name, *, vocab, seq, dim, layers, heads, head_dim, ffn, image, vae_ch, patch_size,
            patch_ch, freq) -> Config:
    return Config.from_dict({
        "format_version": 1,
        "name": name,
        "text": {"vocab_size": vocab, "max_seq_len": seq},
        "special_tokens": {"pad": 0, "bos": 1, "eos": 2, "boi": 3, "eoi": 4, "unk": 5},
        "backbone": {"dim": dim, "n_layers": layers, "n_heads": heads, "head_dim": head_dim,
                     "ffn_dim": ffn, "norm_eps": 1e-5, "rope_theta": 10000.0},
        "image": {"size": image, "channels": 3},
        "vae": {"latent_channels": 4, "channels": vae_ch, "scale": 1.0, "shift": 0.0},
        "patch": {"kind": "unet", "size": patch_size, "channels": patch_ch,
                  "timestep_freq_dim": freq},
        "diffusion": {"schedule": "cosine", "prediction": "epsilon", "train_timesteps": 1000,
                      "sampler": "ddim", "steps": 4, "guidance": 1.0,
                      "guidance_distilled": False},
    })


def preset(name: str) -> Config:
    """Test presets (the product presets live in the Rust `transfusion init`)."""
    if name == "tiny":
        return _preset("tiny", vocab=74, seq=128, dim=64, layers=2, heads=1, head_dim=64, ffn=128,
                       image=32, vae_ch=[8, 16, 16], patch_size=2, patch_ch=[16], freq=64)
    if name == "shapes64":
        return _preset("shapes64", vocab=74, seq=256, dim=256, layers=8, heads=4, head_dim=64,
                       ffn=704, image=64, vae_ch=[16, 32, 64], patch_size=4, patch_ch=[32, 64],
                       freq=256)
    raise ValueError(f"unknown preset {name!r} (expected tiny | shapes64)")


PRESETS = ("tiny", "shapes64")
