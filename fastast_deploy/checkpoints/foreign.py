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
from fastast_deploy.errors import CheckpointError
from fastast_deploy.model.config import AUDIOSET, ESC50, SPEECHCOMMANDS, FeatureConfig, ModelConfig
from fastast_deploy.model.schedule import PROTECTED_TOKENS

HF_MODEL_TYPE = "audio-spectrogram-transformer"
COMMON_FRAMES = (1024, 512, 128)  # AudioSet, ESC-50, Speech Commands input lengths
STATS_BY_LABEL_COUNT: dict[int, FeatureConfig] = {527: AUDIOSET, 50: ESC50, 35: SPEECHCOMMANDS}

# Hugging Face key (after the "audio_spectrogram_transformer." prefix) -> FastAST key. Hub files use the names of
# transformers 4 (encoder.layer.*.attention.attention.query); transformers 5 names modules layers.*.attention.q_proj.
_LAYER = r"^(?:encoder\.layer|layers)\.(\d+)\."
_HF_RENAMES: tuple[tuple[str, str], ...] = (
    (r"^embeddings\.cls_token$", "cls_token"),
    (r"^embeddings\.distillation_token$", "dist_token"),
    (r"^embeddings\.position_embeddings$", "pos_embed"),
    (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (_LAYER + r"layernorm_before\.", r"blocks.\1.norm1."),
    (_LAYER + r"layernorm_after\.", r"blocks.\1.norm2."),
    (_LAYER + r"attention\.(?:attention\.query|q_proj)\.", r"blocks.\1.attn.q."),
    (_LAYER + r"attention\.(?:attention\.key|k_proj)\.", r"blocks.\1.attn.k."),
    (_LAYER + r"attention\.(?:attention\.value|v_proj)\.", r"blocks.\1.attn.v."),
    (_LAYER + r"attention\.(?:output\.dense|o_proj)\.", r"blocks.\1.attn.proj."),
    (_LAYER + r"(?:intermediate\.dense|mlp\.fc1)\.", r"blocks.\1.mlp.fc1."),
    (_LAYER + r"(?:output\.dense|mlp\.fc2)\.", r"blocks.\1.mlp.fc2."),
    (r"^layernorm\.", "norm."),
    (r"^classifier\.layernorm\.", "head_norm."),
    (r"^classifier\.dense\.", "head."),
)



def convert_original_state_dict(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Original AST keys (``module.v.*``, ``module.mlp_head.0/1``) -> FastAST keys; drops DeiT's unused heads."""
    out = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        if key.startswith(("v.head.", "v.head_dist.")):
            continue
        if key.startswith("v."):
            key = key[2:]
        elif key.startswith("mlp_head.0."):
            key = "head_norm." + key[len("mlp_head.0.") :]
        elif key.startswith("mlp_head.1."):
            key = "head." + key[len("mlp_head.1.") :]
        out[key] = value
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


def _read_pth(path: Path) -> Checkpoint:
    state = _torch_load(path)
    keys = [k.removeprefix("module.") for k in state]
    if any(k.startswith("audio_spectrogram_transformer.") for k in keys):
        raise CheckpointError(f"{path} holds Hugging Face AST weights; pass the directory with its config.json")
    if "v.cls_token" not in keys:
        raise CheckpointError(f"{path} is not an AST checkpoint (keys {keys[:_EXAMPLES]}...); {_EXPECTED}")
    strides = re.search(r"_(\d+)_(\d+)_", path.name)
    fstride, tstride = (int(strides[1]), int(strides[2])) if strides else (10, 10)
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
    out = {}
    for key, value in state.items():
        key = key.removeprefix("audio_spectrogram_transformer.")
        for pattern, repl in _HF_RENAMES:
            key, hits = re.subn(pattern, repl, key)
            if hits:
                break
        out[key] = value
    for key in [k for k in out if re.fullmatch(r"blocks\.\d+\.attn\.q\.\w+", k)]:
        block, param = key.split(".attn.q.")
        parts = [f"{block}.attn.{name}.{param}" for name in "qkv"]
        if all(p in out for p in parts):
            out[f"{block}.attn.qkv.{param}"] = torch.cat([out.pop(p) for p in parts], dim=0)  # (3C, ...)
    return out


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


def _read_hf_dir(path: Path) -> Checkpoint:
    config_path = path / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"directory {path} has no config.json; {_EXPECTED}")
    cfg = _read_json(config_path)
    if cfg.get("model_type") != HF_MODEL_TYPE:
        raise CheckpointError(f"{config_path} has model_type {cfg.get('model_type')!r}, expected {HF_MODEL_TYPE!r}")
    weights = next((p for p in (path / "model.safetensors", path / "pytorch_model.bin") if p.is_file()), None)
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
    pre_path = path / "preprocessor_config.json"
    pre: dict[str, Any] = {}
    if pre_path.is_file():
        pre = _read_json(pre_path)
        files.append(pre_path)
    features = _checked(
        pre_path,
        lambda: FeatureConfig(
            sample_rate=int(pre.get("sampling_rate", AUDIOSET.sample_rate)),
            num_mel_bins=config.num_mel_bins,
            frames=config.input_frames,
            mean=float(pre.get("mean", AUDIOSET.mean)),
            std=float(pre.get("std", AUDIOSET.std)),
        ),
    )
    info = _info("huggingface", path, files)
    if not pre:
        info["note"] = "no preprocessor_config.json: AudioSet feature statistics assumed"
    return Checkpoint(config, state, features, labels, info=info)
