"""Writing a FastAST model in the formats others read: a Hugging Face AST directory (config.json, model.safetensors
under transformers' key names, preprocessor_config.json, a model card) and the original AST repository's ``.pth``
state dict. The key names come from the tables in ``foreign``, which reads the same formats back."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from fastast_deploy.checkpoints.foreign import (
    FASTAST_ENTRY,
    HF_CONFIG_FILES,
    HF_FEATURE_EXTRACTOR,
    HF_MODEL_TYPE,
    STATS_BY_LABEL_COUNT,
    fastast_entry,
    hf_state_dict,
    original_config,
    original_state_dict,
    original_strides,
)
from fastast_deploy.checkpoints.model_card import model_card
from fastast_deploy.errors import FastASTError, UsageError, error_summary
from fastast_deploy.files import atomic_path, json_text, temp_dir_beside
from fastast_deploy.model.config import AUDIOSET, FeatureConfig, ModelConfig
from fastast_deploy.model.fastast import FastAST

HF_FILES = (*HF_CONFIG_FILES, "model.safetensors", "README.md")  # what `write_hf_dir` writes
_PROBLEM_TYPES = {"singlelabel": "single_label_classification", "multilabel": "multi_label_classification"}


def label_names(model: FastAST) -> tuple[str, ...]:
    """The model's label names; transformers' LABEL_i where it has none."""
    names = model.label_names
    return tuple(names) if names else tuple(f"LABEL_{i}" for i in range(model.config.num_labels))


def hf_config_dict(model: FastAST, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``ASTConfig`` of ``model`` as config.json holds it (the inverse of `foreign.hf_config`): geometry,
    id2label / label2id, the problem type training recorded, and the ``fastast`` entry (`foreign.fastast_entry`)."""
    c, names = model.config, label_names(model)
    cfg: dict[str, Any] = {
        "architectures": ["ASTForAudioClassification"],
        "model_type": HF_MODEL_TYPE,
        "hidden_size": c.embed_dim,
        "num_hidden_layers": c.depth,
        "num_attention_heads": c.num_heads,
        "intermediate_size": c.mlp_dim,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "initializer_range": 0.02,
        "layer_norm_eps": c.layer_norm_eps,
        "patch_size": c.patch_size,
        "qkv_bias": c.qkv_bias,
        "frequency_stride": c.fstride,
        "time_stride": c.tstride,
        "max_length": c.input_frames,
        "num_mel_bins": c.num_mel_bins,
        "id2label": {str(i): name for i, name in enumerate(names)},
        "label2id": {name: i for i, name in enumerate(names)},
        "dtype": "float32",
    }
    problem = _PROBLEM_TYPES.get(str((extra or {}).get("task")))
    if problem:
        cfg["problem_type"] = problem
    cfg[FASTAST_ENTRY] = fastast_entry(model.tome, c, extra)
    return cfg


def preprocessor_dict(features: FeatureConfig) -> dict[str, Any]:
    """The ``ASTFeatureExtractor`` settings (preprocessor_config.json) of ``features``: transformers computes the
    same Kaldi fbank and normalises it as (x - mean) / (2 std), padded or cut to max_length frames."""
    return {
        "feature_extractor_type": HF_FEATURE_EXTRACTOR,
        "feature_size": 1,
        "sampling_rate": features.sample_rate,
        "num_mel_bins": features.num_mel_bins,
        "max_length": features.frames,
        "padding_side": "right",
        "padding_value": 0.0,
        "do_normalize": True,
        "mean": features.mean,
        "std": features.std,
        "return_attention_mask": False,
    }


def model_features(model: FastAST) -> FeatureConfig:
    """The model's feature settings; AudioSet statistics at its input size where it records none."""
    c = model.config
    return model.feature_config or FeatureConfig(sample_rate=AUDIOSET.sample_rate, num_mel_bins=c.num_mel_bins,
                                                 frames=c.input_frames, mean=AUDIOSET.mean, std=AUDIOSET.std)


def _json_file(obj: Any) -> Callable[[Path], None]:
    return lambda path: path.write_text(json_text(obj) + "\n", encoding="utf-8")


def write_hf_dir(model: FastAST, folder: Path, extra: Mapping[str, Any] | None = None,
                 source: str = "") -> list[Path]:
    """Write ``model`` as a Hugging Face AST directory (`HF_FILES`), whole or not at all: every file goes into a
    temp folder beside ``folder`` first, which then becomes ``folder`` (or, where ``folder`` exists, each file is
    renamed into it). ``extra`` is what training recorded; ``source`` names the checkpoint in the model card."""
    state = {k: v.detach().cpu().contiguous() for k, v in hf_state_dict(model.state_dict()).items()}
    card = model_card(model, model_features(model), label_names(model), extra, folder.resolve().name, source)
    writers: dict[str, Callable[[Path], None]] = {
        "config.json": _json_file(hf_config_dict(model, extra)),
        "preprocessor_config.json": _json_file(preprocessor_dict(model_features(model))),
        "model.safetensors": lambda path: save_file(state, path, metadata={"format": "pt"}),
        "README.md": lambda path: path.write_text(card, encoding="utf-8"),
    }
    tmp = temp_dir_beside(folder)
    try:
        for name, write in writers.items():
            write(tmp / name)
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
        if folder.exists():
            for name in writers:
                os.replace(tmp / name, folder / name)
        else:
            os.rename(tmp, folder)
    except OSError as err:
        raise FastASTError(f"cannot write {folder}: {error_summary(err)}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return [folder / name for name in writers]


def original_format_notes(model: FastAST, name: str) -> list[str]:
    """What the original AST ``.pth`` (written as file ``name``) loses of ``model``, as notes; a UsageError when
    its reader would build another model (the format records neither mel bins, heads, norm eps nor strides, which
    the reader takes from AST's recipe and from the file name)."""
    fstride, tstride = original_strides(name)
    c = model.config
    read = original_config(model.state_dict(), fstride, tstride) if c.num_mel_bins == 128 else None
    if read is None or read.grid != c.grid:
        raise UsageError(f"the original AST format assumes 128 mel bins; this model takes {c.num_mel_bins}: use "
                         "--to hf or --to safetensors")
    differ = [f"{f} {getattr(c, f)} (its reader assumes {getattr(read, f)})" for f in ModelConfig.__dataclass_fields__
              if f != "input_frames" and getattr(c, f) != getattr(read, f)]
    if differ:
        hint = f"; name the file with the model's strides, such as model_{c.fstride}_{c.tstride}_.pth" if any(
            "stride" in d for d in differ) else ""
        raise UsageError(f"the original AST format cannot record {', '.join(differ)}{hint}; use --to hf or "
                         "--to safetensors")
    notes = []
    if read.input_frames != c.input_frames:
        notes.append(f"its reader takes {read.input_frames} frames for this patch grid, not {c.input_frames}")
    stats, features = STATS_BY_LABEL_COUNT.get(c.num_labels, AUDIOSET), model_features(model)
    if (stats.mean, stats.std) != (features.mean, features.std):
        notes.append(f"feature statistics (mean {features.mean:g}, std {features.std:g}) are not kept: its reader "
                     f"assumes {stats.mean:g}, {stats.std:g}")
    if model.label_names:
        notes.append("label names are not kept: give a label CSV (--labels) where the model is read")
    if any(model.schedule):
        notes.append(f"the ToMe schedule {list(model.tome.schedule)} is not kept: give --tome-r where it is read")
    return notes


def write_original_pth(model: FastAST, path: Path) -> Path:
    """``model`` as the original AST repository's state dict (`foreign.original_state_dict`), written atomically."""
    state = {k: v.detach().cpu().contiguous() for k, v in original_state_dict(model.state_dict()).items()}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path
