"""The foreign checkpoint formats: original AST ``.pth`` files and Hugging Face AST directories. Each goes
through one pure converter (its keys -> FastAST parameter names) and one config reader."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fastast_deploy.checkpoints.access import (
    _EXAMPLES,
    _EXPECTED,
    Checkpoint,
    _checked,
    _info,
    _load_safetensors,
    _read_json,
    _torch_load,
)
from fastast_deploy.errors import CheckpointError, ConfigError
from fastast_deploy.model.config import AUDIOSET, ESC50, SPEECHCOMMANDS, FeatureConfig, ModelConfig, TomeConfig
from fastast_deploy.model.schedule import PROTECTED_TOKENS

HF_MODEL_TYPE = "audio-spectrogram-transformer"
HF_FEATURE_EXTRACTOR = "ASTFeatureExtractor"
HF_CONFIG_FILES = ("config.json", "preprocessor_config.json")  # the model's, then its feature extractor's
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # in order of preference
NO_NORMALISATION = {"mean": 0.0, "std": 0.5}  # (x - 0) / (2 * 0.5) = x: do_normalize false
COMMON_FRAMES = (1024, 512, 128)  # AudioSet, ESC-50, Speech Commands input lengths
STATS_BY_LABEL_COUNT: dict[int, FeatureConfig] = {527: AUDIOSET, 50: ESC50, 35: SPEECHCOMMANDS}

# FastAST key -> Hugging Face keys, both ways ({i}: a block index; after HF_PREFIX, which the classifier lacks). First
# the names of transformers 4, which Hub files use and transformers 5 still writes (encoder.layer.*.attention.
# attention.query), then transformers 5's module names (layers.*.attention.q_proj), which reading also takes.
HF_PREFIX = "audio_spectrogram_transformer."
HF_KEYS: tuple[tuple[str, ...], ...] = (
    ("cls_token", "embeddings.cls_token"),
    ("dist_token", "embeddings.distillation_token"),
    ("pos_embed", "embeddings.position_embeddings"),
    ("patch_embed.proj.", "embeddings.patch_embeddings.projection."),
    ("blocks.{i}.norm1.", "encoder.layer.{i}.layernorm_before.", "layers.{i}.layernorm_before."),
    ("blocks.{i}.norm2.", "encoder.layer.{i}.layernorm_after.", "layers.{i}.layernorm_after."),
    ("blocks.{i}.attn.q.", "encoder.layer.{i}.attention.attention.query.", "layers.{i}.attention.q_proj."),
    ("blocks.{i}.attn.k.", "encoder.layer.{i}.attention.attention.key.", "layers.{i}.attention.k_proj."),
    ("blocks.{i}.attn.v.", "encoder.layer.{i}.attention.attention.value.", "layers.{i}.attention.v_proj."),
    ("blocks.{i}.attn.proj.", "encoder.layer.{i}.attention.output.dense.", "layers.{i}.attention.o_proj."),
    ("blocks.{i}.mlp.fc1.", "encoder.layer.{i}.intermediate.dense.", "layers.{i}.mlp.fc1."),
    ("blocks.{i}.mlp.fc2.", "encoder.layer.{i}.output.dense.", "layers.{i}.mlp.fc2."),
    ("norm.", "layernorm."),
    ("head_norm.", "classifier.layernorm."),
    ("head.", "classifier.dense."),
)
# FastAST key prefix -> original AST key prefix (after DataParallel's "module."); every other key is "v." + ours.
ORIGINAL_HEAD = (("head_norm.", "mlp_head.0."), ("head.", "mlp_head.1."))
ORIGINAL_UNUSED = ("head", "head_dist")  # v.head, v.head_dist: DeiT's ImageNet heads, which AST holds but never uses
DEIT_CLASSES = 1000  # their outputs
FASTAST_ENTRY = "fastast"  # config.json entry (ignored by transformers) with what ASTConfig cannot say


def _key_rule(source: str, target: str) -> tuple[str, str]:
    """A table row as (anchored regex, replacement): ``{i}`` captures the block index."""
    pattern = "^" + re.escape(source).replace(r"\{i\}", r"(\d+)") + ("" if source.endswith(".") else "$")
    return pattern, target.replace("{i}", r"\1")


_HF_RENAMES = tuple(_key_rule(hf, ours) for ours, *names in HF_KEYS for hf in names)
_HF_NAMES = tuple(_key_rule(ours, names[0]) for ours, *names in HF_KEYS)


def _renamed(key: str, rules: tuple[tuple[str, str], ...]) -> str:
    """``key`` under the first rule that matches it; unchanged when none does."""
    for pattern, repl in rules:
        key, hits = re.subn(pattern, repl, key)
        if hits:
            break
    return key



def convert_original_state_dict(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Original AST keys (``module.v.*``, ``module.mlp_head.0/1``) -> FastAST keys; drops DeiT's unused heads."""
    out = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        if key.startswith(tuple(f"v.{name}." for name in ORIGINAL_UNUSED)):
            continue
        heads = (ours + key[len(theirs) :] for ours, theirs in ORIGINAL_HEAD if key.startswith(theirs))
        out[key[2:] if key.startswith("v.") else next(heads, key)] = value
    return out


def original_state_dict(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """FastAST keys -> the original AST repository's layout (``module.v.*``, ``module.mlp_head.0/1``), the inverse
    of `convert_original_state_dict`, with the unused DeiT heads (zeros) that AST's model holds, so that its strict
    ``load_state_dict`` takes the file."""
    out = {}
    for key, value in state.items():
        heads = (theirs + key[len(ours) :] for ours, theirs in ORIGINAL_HEAD if key.startswith(ours))
        out["module." + next(heads, "v." + key)] = value
    dim = state["cls_token"].shape[-1]
    for name in ORIGINAL_UNUSED:
        out[f"module.v.{name}.weight"] = torch.zeros(DEIT_CLASSES, dim)
        out[f"module.v.{name}.bias"] = torch.zeros(DEIT_CLASSES)
    return out


def original_config(state: Mapping[str, Tensor], fstride: int = 10, tstride: int = 10) -> ModelConfig:
    """ModelConfig of a converted original AST state dict, from its shapes (DeiT: 64-dim heads; 128 mel bins).

    The input length is the first of 1024, 512, 128 frames that gives the positional embedding's time grid,
    else the shortest length that does.
    """
    required = ("cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.0.mlp.fc1.weight", "head.weight")
    missing = [k for k in required if k not in state]
    if missing:
        raise CheckpointError(f"AST state dict lacks {missing} (after renaming); {_EXPECTED}")
    dim = state["cls_token"].shape[-1]
    depth = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k)))
    patch, mel_bins = state["patch_embed.proj.weight"].shape[-1], 128
    freq = (mel_bins - patch) // fstride + 1
    patches = state["pos_embed"].shape[1] - PROTECTED_TOKENS
    if patches < freq or patches % freq:
        raise CheckpointError(
            f"pos_embed holds {patches} patches, not a multiple of the {freq} frequency positions of 128 mel bins "
            f"at frequency stride {fstride}; name the file with its strides like AST does (audioset_10_10_0.4593.pth)"
        )
    time = patches // freq
    frames = next((n for n in COMMON_FRAMES if (n - patch) // tstride + 1 == time), (time - 1) * tstride + patch)
    return ModelConfig(
        embed_dim=dim,
        depth=depth,
        num_heads=max(dim // 64, 1),
        mlp_dim=state["blocks.0.mlp.fc1.weight"].shape[0],
        patch_size=patch,
        fstride=fstride,
        tstride=tstride,
        input_frames=frames,
        num_mel_bins=mel_bins,
        num_labels=state["head.weight"].shape[0],
        qkv_bias="blocks.0.attn.qkv.bias" in state,
        layer_norm_eps=1e-6,
        head_norm_eps=1e-5,
    )


def original_strides(name: str) -> tuple[int, int]:
    """(frequency, time) strides of an original AST file, from its name as AST writes it
    (``audioset_10_10_0.4593.pth``); 10, 10 when the name gives none."""
    strides = re.search(r"_(\d+)_(\d+)_", name)
    return (int(strides[1]), int(strides[2])) if strides else (10, 10)


def _read_pth(path: Path) -> Checkpoint:
    state = _torch_load(path)
    keys = [k.removeprefix("module.") for k in state]
    if any(k.startswith("audio_spectrogram_transformer.") for k in keys):
        raise CheckpointError(f"{path} holds Hugging Face AST weights; pass the directory with its config.json")
    if "v.cls_token" not in keys:
        raise CheckpointError(f"{path} is not an AST checkpoint (keys {keys[:_EXAMPLES]}...); {_EXPECTED}")
    fstride, tstride = original_strides(path.name)
    converted = convert_original_state_dict(state)
    config = _checked(path, lambda: original_config(converted, fstride, tstride))
    stats, note = STATS_BY_LABEL_COUNT.get(config.num_labels), None
    if stats is None:
        stats, note = AUDIOSET, f"{config.num_labels} labels match no AST recipe: AudioSet feature statistics assumed"
    features = replace(stats, num_mel_bins=config.num_mel_bins, frames=config.input_frames)
    info = _info("ast-original", path, [path]) | ({"note": note} if note else {})
    return Checkpoint(config, converted, features, info=info)


def convert_hf_state_dict(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``ASTForAudioClassification`` keys -> FastAST keys; split q/k/v become one fused qkv (q|k|v rows)."""
    out = {_renamed(key.removeprefix(HF_PREFIX), _HF_RENAMES): value for key, value in state.items()}
    for key in [k for k in out if re.fullmatch(r"blocks\.\d+\.attn\.q\.\w+", k)]:
        block, param = key.split(".attn.q.")
        parts = [f"{block}.attn.{name}.{param}" for name in "qkv"]
        if all(p in out for p in parts):
            out[f"{block}.attn.qkv.{param}"] = torch.cat([out.pop(p) for p in parts], dim=0)  # (3C, ...)
    return out


def hf_state_dict(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """FastAST keys -> ``ASTForAudioClassification`` keys as Hub files name them, the inverse of
    `convert_hf_state_dict`: each fused qkv (q|k|v rows) becomes query, key and value."""
    split = {}
    for key, value in state.items():
        fused = re.fullmatch(r"(blocks\.\d+\.attn)\.qkv\.(\w+)", key)
        if fused is None:
            split[key] = value
            continue
        for name, part in zip("qkv", value.chunk(3, dim=0), strict=True):  # 3 x (C, ...)
            split[f"{fused[1]}.{name}.{fused[2]}"] = part.contiguous()
    out = {}
    for key, value in split.items():
        name = _renamed(key, _HF_NAMES)
        out[name if name.startswith("classifier.") else HF_PREFIX + name] = value
    return out


def fastast_entry(tome: TomeConfig, config: ModelConfig, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """config.json's ``fastast`` entry: what ASTConfig cannot say (the ToMe schedule, the head's LayerNorm eps,
    which ASTConfig shares with every norm) and what training recorded (``extra``); `with_fastast_entry` reads it."""
    return {"tome": tome.to_dict(), "head_norm_eps": config.head_norm_eps, "extra": dict(extra or {})}


def with_fastast_entry(where: Path, cfg: Mapping[str, Any], ckpt: Checkpoint) -> Checkpoint:
    """``ckpt``, read from the Hugging Face config ``cfg``, with what its ``fastast`` entry adds (none: as it is)."""
    entry = cfg.get(FASTAST_ENTRY)
    if entry is None:
        return ckpt

    def parse() -> tuple[ModelConfig, TomeConfig]:
        if not isinstance(entry, dict) or not isinstance(entry.get("tome", {}), dict):
            raise TypeError(f"its {FASTAST_ENTRY!r} entry must be an object with a 'tome' object")
        tome = TomeConfig.from_dict(entry.get("tome", {}))
        config = replace(ckpt.config, head_norm_eps=entry.get("head_norm_eps", ckpt.config.head_norm_eps))
        tome.per_block(config.depth)  # a schedule longer than the model fails here
        return config, tome

    config, tome = _checked(where, parse)
    extra = entry.get("extra")
    info = ckpt.info | ({"extra": extra} if isinstance(extra, dict) and extra else {})
    return replace(ckpt, config=config, tome=tome, info=info)


def hf_config(cfg: Mapping[str, Any], num_labels: int) -> ModelConfig:
    """ModelConfig from an ``ASTConfig`` dict (config.json); missing fields take ASTConfig's defaults."""
    if cfg.get("hidden_act", "gelu") != "gelu":
        raise CheckpointError(f"hidden_act {cfg['hidden_act']!r} is not supported; FastAST uses 'gelu'")
    eps = float(cfg.get("layer_norm_eps", 1e-12))
    return ModelConfig(
        embed_dim=int(cfg.get("hidden_size", 768)),
        depth=int(cfg.get("num_hidden_layers", 12)),
        num_heads=int(cfg.get("num_attention_heads", 12)),
        mlp_dim=int(cfg.get("intermediate_size", 3072)),
        patch_size=int(cfg.get("patch_size", 16)),
        fstride=int(cfg.get("frequency_stride", 10)),
        tstride=int(cfg.get("time_stride", 10)),
        input_frames=int(cfg.get("max_length", 1024)),
        num_mel_bins=int(cfg.get("num_mel_bins", 128)),
        num_labels=num_labels,
        qkv_bias=bool(cfg.get("qkv_bias", True)),
        layer_norm_eps=eps,
        head_norm_eps=eps,
    )


def read_hf_config(path: Path, what: str | None = None) -> dict[str, Any]:
    """A Hugging Face config.json, refused unless it describes an AST (its model_type named otherwise)."""
    cfg = _read_json(path)
    if cfg.get("model_type") != HF_MODEL_TYPE:
        raise CheckpointError(f"{what or path} has model_type {cfg.get('model_type')!r}, expected {HF_MODEL_TYPE!r} "
                              "(an Audio Spectrogram Transformer, ASTForAudioClassification)")
    return cfg


def hf_features(pre: Mapping[str, Any], config: ModelConfig, where: Path) -> FeatureConfig:
    """The feature settings of an ``ASTFeatureExtractor`` config (preprocessor_config.json) for a model of
    ``config``: its sampling_rate, mean and std (AudioSet's where absent; do_normalize false: none), and its
    num_mel_bins and max_length, which must be the model's (absent: the model's)."""
    kind = pre.get("feature_extractor_type", HF_FEATURE_EXTRACTOR)
    if kind != HF_FEATURE_EXTRACTOR:
        raise CheckpointError(f"{where} is for a {kind!r}, expected {HF_FEATURE_EXTRACTOR!r}")
    for key, wanted in (("num_mel_bins", config.num_mel_bins), ("max_length", config.input_frames)):
        if key in pre and pre[key] != wanted:
            raise CheckpointError(f"{where} gives {key} {pre[key]!r}, but the model (config.json) takes {wanted}: "
                                  "its features would not fit the model; make the two files agree")
    stats = {"mean": pre.get("mean", AUDIOSET.mean), "std": pre.get("std", AUDIOSET.std)}
    if pre.get("do_normalize", True) is False:
        stats = NO_NORMALISATION
    elif pre.get("do_normalize", True) is not True:
        raise CheckpointError(f"{where}: do_normalize must be true or false, got {pre['do_normalize']!r}")

    def make() -> FeatureConfig:
        rate = pre.get("sampling_rate", AUDIOSET.sample_rate)
        if isinstance(rate, bool) or not isinstance(rate, int):
            raise ConfigError(f"sampling_rate must be an integer, got {rate!r}")
        numbers = {k: v for k, v in stats.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        if len(numbers) != len(stats):
            raise ConfigError(f"mean and std must be numbers, got {stats['mean']!r} and {stats['std']!r}")
        return FeatureConfig(sample_rate=rate, num_mel_bins=config.num_mel_bins, frames=config.input_frames,
                             mean=float(numbers["mean"]), std=float(numbers["std"]))

    return _checked(where, make)


def _read_hf_dir(path: Path) -> Checkpoint:
    config_path, pre_path = (path / name for name in HF_CONFIG_FILES)
    if not config_path.is_file():
        raise CheckpointError(f"directory {path} has no config.json; {_EXPECTED}")
    cfg = read_hf_config(config_path)
    weights = next((path / name for name in HF_WEIGHT_FILES if (path / name).is_file()), None)
    if weights is None:
        raise CheckpointError(f"directory {path} has config.json but neither model.safetensors nor pytorch_model.bin")
    raw = _load_safetensors(weights) if weights.suffix == ".safetensors" else _torch_load(weights)
    state = convert_hf_state_dict(raw)
    id2label = cfg.get("id2label") or {}
    try:
        labels = tuple(str(id2label[k]) for k in sorted(id2label, key=int)) or None
    except (TypeError, ValueError):
        keys = list(id2label)[:_EXAMPLES]
        raise CheckpointError(f"{config_path}: id2label keys must be integers, got {keys}") from None
    num_labels = len(labels) if labels else 0  # 0: ModelConfig rejects it, unless the head's shape tells
    if not labels and "head.weight" in state:
        num_labels = state["head.weight"].shape[0]
    config = _checked(config_path, lambda: hf_config(cfg, num_labels))
    files = [config_path, weights]
    pre: dict[str, Any] = {}
    if pre_path.is_file():
        pre = _read_json(pre_path)
        files.append(pre_path)
    features = hf_features(pre, config, pre_path)
    info = _info("huggingface", path, files)
    if not pre:
        info["note"] = "no preprocessor_config.json: AudioSet feature statistics assumed"
    return with_fastast_entry(config_path, cfg, Checkpoint(config, state, features, labels, info=info))
