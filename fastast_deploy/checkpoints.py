"""Checkpoints: original AST ``.pth`` files, Hugging Face AST directories, and this project's own safetensors.

Each foreign format goes through one pure converter (its keys -> FastAST parameter names) and one config reader;
`load_model` then builds FastAST with strict key and shape matching. Pickles are only ever read with
``torch.load(..., weights_only=True)``: tensors, never code.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from .config import ModelConfig, TomeConfig
from .errors import CheckpointError, ConfigError
from .features import AUDIOSET, ESC50, SPEECHCOMMANDS, FeatureConfig
from .files import atomic_path, sha256_file
from .model import FastAST, build_model
from .tome import PROTECTED_TOKENS, make_schedule

FORMAT_VERSION = 1
METADATA_KEY = "fastast_deploy"
HF_MODEL_TYPE = "audio-spectrogram-transformer"
ACCEPTED_FORMATS = (
    "an original AST .pth state dict (keys module.v.*, module.mlp_head.*)",
    "a Hugging Face AST directory (config.json + model.safetensors or pytorch_model.bin)",
    "a fastast-deploy .safetensors file written by save_checkpoint",
)
_EXPECTED = "expected " + "; or ".join(ACCEPTED_FORMATS)
COMMON_FRAMES = (1024, 512, 128)  # AudioSet, ESC-50, Speech Commands input lengths
STATS_BY_LABEL_COUNT: dict[int, FeatureConfig] = {527: AUDIOSET, 50: ESC50, 35: SPEECHCOMMANDS}
_MAX_HEADER_BYTES = 100 * 2**20  # the limit safetensors itself enforces
_EXAMPLES = 3  # keys quoted per kind of mismatch
_T = TypeVar("_T")

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


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint read and converted to FastAST parameter names, before a model is built from it."""

    config: ModelConfig
    state_dict: dict[str, Tensor]
    features: FeatureConfig
    labels: tuple[str, ...] | None = None
    tome: TomeConfig | None = None
    info: dict[str, Any] = field(default_factory=dict)


def load_model(
    source: str | os.PathLike[str],
    *,
    tome_r: int | Sequence[int] | None = None,
    tome_inflection: float = 0.0,
    prop_attn: bool | None = None,
    input_frames: int | None = None,
    merge_impl: str = "matmul",
    labels: str | os.PathLike[str] | None = None,
) -> FastAST:
    """Read any accepted checkpoint and build FastAST in eval mode.

    ``tome_r=None`` keeps the checkpoint's own ToMe schedule (none: no merging); an int becomes
    ``make_schedule(r, depth, tome_inflection)``, a list is the per-block schedule. ``prop_attn=None`` keeps the
    checkpoint's setting (default True). ``input_frames`` adapts the positional embedding to another input length.
    ``labels`` is an AST ``class_labels_indices.csv`` that names the outputs. The model carries ``label_names``,
    ``feature_config`` and ``source_info`` (format, path, sha256 of every file read).
    """
    ckpt = read_checkpoint(source)
    if input_frames is not None and input_frames != ckpt.config.input_frames:
        ckpt = change_input_frames(ckpt, input_frames)
    names, info = ckpt.labels, dict(ckpt.info)
    if labels is not None:
        names = read_label_csv(labels)
        info["sha256"] = {**info["sha256"], str(Path(labels)): sha256_file(labels)}
    if names is not None and len(names) != ckpt.config.num_labels:
        raise CheckpointError(
            f"{len(names)} label names for a model with {ckpt.config.num_labels} outputs; "
            f"give a label CSV with one row per output"
        )
    saved = ckpt.tome or TomeConfig()
    schedule = saved.schedule if tome_r is None else make_schedule(tome_r, ckpt.config.depth, tome_inflection)
    tome = TomeConfig(schedule, saved.prop_attn if prop_attn is None else prop_attn, merge_impl)
    model = build_model(ckpt.config, tome)
    load_state_dict_strict(model, ckpt.state_dict, f"checkpoint {info['path']}")
    model.label_names = names
    model.feature_config = ckpt.features
    model.source_info = info
    return model


def read_checkpoint(source: str | os.PathLike[str]) -> Checkpoint:
    """Detect the format of ``source`` and convert it; CheckpointError naming the path when nothing fits."""
    path = Path(source)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist; {_EXPECTED}")
    if path.is_dir():
        return _read_hf_dir(path)
    if _looks_like_safetensors(path):
        return _read_own(path)
    return _read_pth(path)


# ---- original AST .pth -----------------------------------------------------------------------------------------


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


def _torch_load(path: Path) -> dict[str, Tensor]:
    """A tensor state dict from a torch file, with weights_only=True; anything else is a CheckpointError."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # an untrusted file fails in many ways; each means "not a checkpoint"
        unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if unsafe:
            raise CheckpointError(
                f"refusing to load {path}: its pickle calls {unsafe[1]}, which could run code; "
                f"expected a plain state dict of tensors (re-save it with torch.save(model.state_dict()))"
            ) from None
        reason = re.search(r"WeightsUnpickler error: \s*(.+)", str(err))
        reason = reason[1].strip() if reason else _one_line(err)
        raise CheckpointError(f"cannot read {path} with torch.load ({reason}); {_EXPECTED}") from None
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not any(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict of tensors; {_EXPECTED}")
    return {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}


# ---- Hugging Face AST directory --------------------------------------------------------------------------------


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


# ---- this project's safetensors --------------------------------------------------------------------------------


def save_checkpoint(
    model: FastAST,
    path: str | os.PathLike[str],
    *,
    label_names: Sequence[str] | None = None,
    feature_config: FeatureConfig | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` as one safetensors file with its configs in the header; atomic (temp file + rename).

    Label names and feature config default to the model's ``label_names`` / ``feature_config`` attributes.
    """
    config = model.config
    if label_names is None:
        label_names = getattr(model, "label_names", None)
    if feature_config is None:
        feature_config = getattr(model, "feature_config", None) or replace(
            AUDIOSET, num_mel_bins=config.num_mel_bins, frames=config.input_frames
        )
    if label_names is not None and len(label_names) != config.num_labels:
        raise ConfigError(f"{len(label_names)} label names for a model with {config.num_labels} outputs")
    if (feature_config.frames, feature_config.num_mel_bins) != (config.input_frames, config.num_mel_bins):
        raise ConfigError(
            f"feature config gives {feature_config.frames} frames x {feature_config.num_mel_bins} mel bins but the "
            f"model takes {config.input_frames} x {config.num_mel_bins}"
        )
    meta = {
        "format_version": FORMAT_VERSION,
        "model": config.to_dict(),
        "tome": model.tome.to_dict(),
        "labels": None if label_names is None else [str(n) for n in label_names],
        "features": feature_config.to_dict(),
        "extra": extra or {},
    }
    try:
        header = json.dumps(meta)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"checkpoint extra must be JSON-serialisable: {err}") from None
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata={"format": "pt", METADATA_KEY: header})
    return Path(path)


def read_checkpoint_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The fastast-deploy metadata of a checkpoint written by `save_checkpoint`; reads only the file header."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is not a file; expected a .safetensors file from save_checkpoint")
    header = _safetensors_header(path)
    raw = (header.get("__metadata__") or {}).get(METADATA_KEY)
    if raw is None:
        hf = any(k.startswith(("audio_spectrogram_transformer.", "classifier.")) for k in header)
        hint = f"pass the Hugging Face directory {path.parent} instead" if hf else _EXPECTED
        raise CheckpointError(f"{path} is a safetensors file without fastast-deploy metadata; {hint}")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: fastast-deploy metadata is not valid JSON ({err})") from None
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        version = meta.get("format_version") if isinstance(meta, dict) else None
        raise CheckpointError(f"{path} has checkpoint format version {version!r}; this version reads {FORMAT_VERSION}")
    return meta


def _read_own(path: Path) -> Checkpoint:
    meta = read_checkpoint_metadata(path)

    def parse() -> tuple[ModelConfig, TomeConfig, FeatureConfig]:
        return (
            ModelConfig.from_dict(meta["model"]),
            TomeConfig.from_dict(meta["tome"]),
            FeatureConfig.from_dict(meta["features"]),
        )

    config, tome, features = _checked(path, parse)
    labels = meta.get("labels")
    if labels is not None and not (isinstance(labels, list) and all(isinstance(n, str) for n in labels)):
        raise CheckpointError(f"{path}: metadata labels must be a list of strings or null")
    info = _info("fastast-deploy", path, [path]) | {"extra": meta.get("extra") or {}}
    state = _load_safetensors(path)
    return Checkpoint(config, state, features, None if labels is None else tuple(labels), tome, info)


def _looks_like_safetensors(path: Path) -> bool:
    """A .safetensors name, or a file that starts with a plausible header length and '{'."""
    if path.suffix == ".safetensors":
        return True
    with path.open("rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:] == b"{" and int.from_bytes(head[:8], "little") < path.stat().st_size


def _safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header (tensor table and "__metadata__") of a safetensors file, reading nothing else."""
    size = path.stat().st_size
    with path.open("rb") as f:
        length = int.from_bytes(f.read(8), "little")
        if size < 8 or length > min(size - 8, _MAX_HEADER_BYTES):
            raise CheckpointError(f"{path} is truncated or not a safetensors file ({size} bytes); {_EXPECTED}")
        raw = f.read(length)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(f"{path} has a corrupt safetensors header; {_EXPECTED}") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} has a corrupt safetensors header; {_EXPECTED}")
    return header


def _load_safetensors(path: Path) -> dict[str, Tensor]:
    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"cannot read {path} ({_one_line(err)}); expected a complete safetensors file") from None


# ---- shared steps ----------------------------------------------------------------------------------------------


def adapt_pos_embed(pos_embed: Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int]) -> Tensor:
    """Positional embedding (1, 2 + f*t, C) for patch grid ``old_grid`` -> (1, 2 + f'*t', C) for ``new_grid``.

    As AST does: the 2 prefix entries (cls, dist) are kept; the patch part, laid out as a (f, t) grid, is
    centre-cropped along an axis that shrinks (start ``old // 2 - new // 2``) and bilinearly interpolated
    (``align_corners=False``) along one that grows, time axis first.
    """
    (f0, t0), (f1, t1) = old_grid, new_grid
    _, n, c = pos_embed.shape
    if n != PROTECTED_TOKENS + f0 * t0:
        raise ConfigError(f"pos_embed has {n} entries, expected 2 + {f0}x{t0} = {2 + f0 * t0} for grid {old_grid}")
    if (f0, t0) == (f1, t1):
        return pos_embed
    prefix, patches = pos_embed[:, :PROTECTED_TOKENS], pos_embed[:, PROTECTED_TOKENS:]
    grid = patches.transpose(1, 2).reshape(1, c, f0, t0).float()  # (1, C, f, t)
    grid = _resize_axis(grid, 3, t1)
    grid = _resize_axis(grid, 2, f1)  # (1, C, f', t')
    patches = grid.flatten(2).transpose(1, 2).to(pos_embed.dtype)  # (1, f'*t', C)
    return torch.cat([prefix, patches], dim=1).contiguous()


def _resize_axis(grid: Tensor, axis: int, new: int) -> Tensor:
    """Centre-crop or bilinearly stretch one axis (2: frequency, 3: time) of a (1, C, f, t) grid."""
    old = grid.shape[axis]
    if new == old:
        return grid
    if new < old:
        return grid.narrow(axis, old // 2 - new // 2, new)
    size = (new, grid.shape[3]) if axis == 2 else (grid.shape[2], new)
    return F.interpolate(grid, size=size, mode="bilinear", align_corners=False)


def change_input_frames(ckpt: Checkpoint, input_frames: int) -> Checkpoint:
    """The checkpoint for another input length: new config, adapted pos_embed, feature frames to match."""
    config = replace(ckpt.config, input_frames=input_frames)  # ConfigError when shorter than one patch
    state = dict(ckpt.state_dict)
    if "pos_embed" in state:
        state["pos_embed"] = adapt_pos_embed(state["pos_embed"], ckpt.config.grid, config.grid)
    info = ckpt.info | {"pos_embed_grid": [list(ckpt.config.grid), list(config.grid)]}
    features = replace(ckpt.features, frames=input_frames)
    return replace(ckpt, config=config, state_dict=state, features=features, info=info)


def load_state_dict_strict(model: torch.nn.Module, state: Mapping[str, Tensor], source: str = "checkpoint") -> None:
    """Copy ``state`` into ``model``; any missing, unexpected or mis-shaped key is one CheckpointError with counts."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = [
        _count(items, what)
        for items, what in ((missing, "missing key"), (unexpected, "unexpected key"), (mismatched, "shape mismatch"))
        if items
    ]
    if problems:
        raise CheckpointError(f"{source} does not match the model: {', '.join(problems)}")
    model.load_state_dict(state, strict=True)


def read_label_csv(path: str | os.PathLike[str]) -> tuple[str, ...]:
    """Display names, in index order, from an AST ``class_labels_indices.csv`` (header index,mid,display_name)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"label file {path} does not exist; expected a CSV with header index,mid,display_name")
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"index", "display_name"} <= set(rows[0]):
        raise CheckpointError(
            f"label file {path} has no rows with columns index and display_name; "
            f"expected a CSV with header index,mid,display_name"
        )
    try:
        by_index = {int(row["index"]): row["display_name"] for row in rows}
    except (TypeError, ValueError):
        raise CheckpointError(f"label file {path} has a non-integer index") from None
    if sorted(by_index) != list(range(len(rows))):
        raise CheckpointError(f"label file {path}: indices must be 0..{len(rows) - 1}, each once")
    return tuple(by_index[i] for i in range(len(rows)))


def _info(fmt: str, path: Path, files: Sequence[Path]) -> dict[str, Any]:
    return {"format": fmt, "path": str(path), "sha256": {str(p): sha256_file(p) for p in files}}


def _checked(path: Path, make: Callable[[], _T]) -> _T:
    """``make()``, with a ConfigError or a missing/mistyped field reported as this checkpoint's error."""
    try:
        return make()
    except (ConfigError, IndexError, KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: invalid configuration ({_one_line(err)})") from None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"cannot read {path} as JSON ({_one_line(err)})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} holds a JSON {type(data).__name__}, expected an object")
    return data


def _count(items: Sequence[str], what: str) -> str:
    shown = ", ".join(items[:_EXAMPLES]) + (", ..." if len(items) > _EXAMPLES else "")
    plural = what if len(items) == 1 else (what + "es" if what.endswith("ch") else what + "s")
    return f"{len(items)} {plural} ({shown})"


def _one_line(err: BaseException) -> str:
    """The exception's type and message on one line, at most ~300 characters."""
    message = " ".join(str(err).split())[:300]
    return f"{type(err).__name__}: {message}" if message else type(err).__name__
