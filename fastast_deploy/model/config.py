"""Model, Token Merging and feature settings as frozen dataclasses (plain JSON round-trip). Plain Python: importing
it loads no torch, so configs, FLOP counts and training settings can be read on any machine."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from fastast_deploy.errors import ConfigError
from fastast_deploy.model.schedule import PROTECTED_TOKENS, check_r, clip_schedule, pad_schedule, token_counts

MERGE_IMPLS: tuple[str, ...] = ("matmul", "scatter")  # model.tome.MergeImpl

# Bounds checked before anything is allocated: a config read from a file can claim anything.
LIMITS = {"embed_dim": 8192, "depth": 128, "num_heads": 256, "mlp_dim": 65536, "patch_size": 128, "fstride": 128,
          "tstride": 128, "input_frames": 200_000, "num_mel_bins": 2048, "num_labels": 1_000_000}
MAX_TOKENS = 16_384  # AST-1024 has 1214; the attention scores of one head are tokens^2 floats
MAX_PARAMETERS = 2_000_000_000

# DeiT sizes: (embed_dim, depth, num_heads)
SIZES: dict[str, tuple[int, int, int]] = {"tiny": (192, 12, 3), "small": (384, 12, 6), "base": (768, 12, 12)}


@dataclass(frozen=True)
class ModelConfig:
    """AST geometry. Defaults are AST-base for AudioSet (128 mel bins x 1024 frames, 10/10 strides)."""

    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    patch_size: int = 16
    fstride: int = 10
    tstride: int = 10
    input_frames: int = 1024
    num_mel_bins: int = 128
    num_labels: int = 527
    qkv_bias: bool = True
    # timm's DeiT blocks use 1e-6 and AST's mlp_head LayerNorm 1e-5; HF AST checkpoints use 1e-12 for both.
    layer_norm_eps: float = 1e-6
    head_norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        for name, limit in LIMITS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{name} must be an integer, got {value!r}")
            if not 1 <= value <= limit:
                raise ConfigError(f"{name} must be 1 to {limit}, got {value}")
        for name in ("layer_norm_eps", "head_norm_eps"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0 < value < 1:
                raise ConfigError(f"{name} must be a number in (0, 1), got {value!r}")
        if self.embed_dim % self.num_heads:
            raise ConfigError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.input_frames < self.patch_size or self.num_mel_bins < self.patch_size:
            raise ConfigError(
                f"input of {self.input_frames} frames x {self.num_mel_bins} mel bins is smaller than one "
                f"{self.patch_size}x{self.patch_size} patch; use at least {self.patch_size} of each"
            )
        if self.num_tokens > MAX_TOKENS:
            raise ConfigError(f"{self.input_frames} frames x {self.num_mel_bins} mel bins make {self.num_tokens} "
                              f"tokens; at most {MAX_TOKENS} fit an attention matrix in memory (fewer --frames)")
        if self.parameter_estimate > MAX_PARAMETERS:
            raise ConfigError(f"this geometry has about {self.parameter_estimate / 1e9:.1f} G parameters; at most "
                              f"{MAX_PARAMETERS / 1e9:.0f} G are supported")

    @property
    def parameter_estimate(self) -> int:
        """Parameters of the blocks, patch embedding, positional embedding and head (biases and norms aside)."""
        d = self.embed_dim
        blocks = self.depth * (4 * d * d + 2 * d * self.mlp_dim)  # qkv + proj, two MLP layers
        return blocks + d * self.patch_size**2 + self.num_tokens * d + d * self.num_labels

    @classmethod
    def from_size(cls, size: str, **overrides: Any) -> ModelConfig:
        """A DeiT-sized config ("tiny", "small", "base") with any field overridden."""
        if size not in SIZES:
            raise ConfigError(f"unknown model size {size!r}; available: {list(SIZES)}")
        dim, depth, heads = SIZES[size]
        return cls(**{"embed_dim": dim, "depth": depth, "num_heads": heads, "mlp_dim": 4 * dim, **overrides})

    @property
    def grid(self) -> tuple[int, int]:
        """Patch grid (frequency, time)."""
        f = (self.num_mel_bins - self.patch_size) // self.fstride + 1
        t = (self.input_frames - self.patch_size) // self.tstride + 1
        return f, t

    @property
    def num_patches(self) -> int:
        f, t = self.grid
        return f * t

    @property
    def num_tokens(self) -> int:
        return self.num_patches + PROTECTED_TOKENS

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown model config keys {sorted(unknown)}; known: {sorted(known)}")
        return cls(**data)


@dataclass(frozen=True)
class TomeConfig:
    """Token Merging settings: the requested r of each block (clipped per layer at build time)."""

    schedule: tuple[int, ...] = ()
    prop_attn: bool = True
    merge_impl: str = "matmul"

    def __post_init__(self) -> None:
        check_r(self.schedule)
        if self.merge_impl not in MERGE_IMPLS:
            raise ConfigError(f"unknown merge implementation {self.merge_impl!r}; available: {list(MERGE_IMPLS)}")

    def per_block(self, depth: int) -> tuple[int, ...]:
        """The requested schedule padded with zeros to ``depth`` blocks."""
        return pad_schedule(self.schedule, depth)

    def effective(self, model: ModelConfig) -> tuple[int, ...]:
        """Per-block r after clipping to what each layer's token count allows."""
        return clip_schedule(model.num_tokens, self.per_block(model.depth))

    def counts(self, model: ModelConfig) -> tuple[int, ...]:
        return token_counts(model.num_tokens, self.per_block(model.depth))

    def to_dict(self) -> dict[str, Any]:
        return {"schedule": list(self.schedule), "prop_attn": self.prop_attn, "merge_impl": self.merge_impl}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TomeConfig:
        return cls(
            schedule=tuple(int(r) for r in data.get("schedule", ())),
            prop_attn=bool(data.get("prop_attn", True)),
            merge_impl=str(data.get("merge_impl", "matmul")),
        )


@dataclass(frozen=True)
class FeatureConfig:
    """How a waveform becomes a model input of shape (frames, num_mel_bins).

    `mean` and `std` are the dataset's fbank statistics; inputs are normalised to `(x - mean) / (2 * std)`,
    which gives roughly zero mean and 0.5 std.
    """

    sample_rate: int = 16000
    num_mel_bins: int = 128
    frames: int = 1024  # 10.24 s at a 10 ms shift
    mean: float = -4.2677393  # AudioSet
    std: float = 4.5689974

    def __post_init__(self) -> None:
        for name in ("sample_rate", "num_mel_bins", "frames"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"FeatureConfig.{name} must be a positive integer, got {value!r}")
        if not math.isfinite(self.mean):
            raise ConfigError(f"FeatureConfig.mean must be a finite number, got {self.mean!r}")
        if not (math.isfinite(self.std) and self.std > 0):
            raise ConfigError(f"FeatureConfig.std must be a positive finite number, got {self.std!r}")

    def to_dict(self) -> dict[str, int | float]:
        """Plain JSON-serialisable dict of all fields."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureConfig:
        """Inverse of `to_dict`; missing keys take their defaults, unknown keys raise ConfigError."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown FeatureConfig keys {unknown}; expected a subset of {sorted(known)}")
        return cls(**data)


AUDIOSET = FeatureConfig()
ESC50 = FeatureConfig(frames=512, mean=-6.6268077, std=5.358466)
SPEECHCOMMANDS = FeatureConfig(frames=128, mean=-6.845978, std=5.5654526)
PRESETS: dict[str, FeatureConfig] = {"audioset": AUDIOSET, "esc50": ESC50, "speechcommands": SPEECHCOMMANDS}
