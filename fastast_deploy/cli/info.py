"""What `fastast-deploy info` reports about a model: geometry, size, ToMe schedule, tokens, FLOPs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fastast_deploy.errors import ConfigError
from fastast_deploy.model.config import SIZES, ModelConfig, TomeConfig
from fastast_deploy.model.fastast import FastAST, build_model
from fastast_deploy.model.flops import model_flops
from fastast_deploy.model.schedule import make_schedule, pad_schedule


def model_for_info(source: str, tome_r: int | list[int] | None, inflection: float, frames: int | None,
                   labels: str | None, mel_bins: int | None = None) -> FastAST:
    """A checkpoint through ``load_model``, or an untrained model of a DeiT size when SOURCE is tiny/small/base
    (of ``frames`` x ``mel_bins`` inputs where given)."""
    if source in SIZES and not Path(source).exists():
        sizes = {"input_frames": frames, "num_mel_bins": mel_bins}
        config = ModelConfig.from_size(source, **{k: v for k, v in sizes.items() if v is not None})
        schedule = make_schedule(tome_r if tome_r is not None else 0, config.depth, inflection)
        return build_model(config, TomeConfig(schedule))
    from fastast_deploy.checkpoints.native import load_model

    if mel_bins is not None:
        raise ConfigError(f"--mel-bins applies to a new model (tiny / small / base); {source} is a checkpoint, "
                          f"whose mel bins are fixed")
    return load_model(source, tome_r=tome_r, tome_inflection=inflection, input_frames=frames, labels=labels)


def describe_model(model: FastAST) -> dict[str, Any]:
    """Plain-JSON description of a model."""
    config = model.config
    flops_full = model_flops(config)
    flops_merged = model_flops(config, model.schedule)
    labels = getattr(model, "label_names", None)
    features = getattr(model, "feature_config", None)
    source = getattr(model, "source_info", None)
    return {
        "source": {k: str(v) if isinstance(v, os.PathLike) else v for k, v in (source or {}).items()},
        "config": config.to_dict(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "tome": {**model.tome.to_dict(), "effective_schedule": list(model.schedule)},
        "token_counts": list(model.token_counts),
        "gflops": {"no_merging": flops_full / 1e9, "with_merging": flops_merged / 1e9,
                   "ratio": flops_full / flops_merged},
        "labels": list(labels) if labels else None,
        "features": features.to_dict() if features is not None else None,
    }


def format_description(report: dict[str, Any]) -> str:
    """The text form of ``describe_model``."""
    c, tome, g = report["config"], report["tome"], report["gflops"]
    padded = pad_schedule(tome["schedule"], len(tome["effective_schedule"]))
    requested = "" if list(padded) == tome["effective_schedule"] else f" (requested {tome['schedule']}, clipped)"
    lines = []
    if report["source"]:
        lines.append(f"source      {report['source'].get('path', '')} ({report['source'].get('format', '')})")
    lines += [
        f"model       dim {c['embed_dim']}, depth {c['depth']}, heads {c['num_heads']}, mlp {c['mlp_dim']}, "
        f"patch {c['patch_size']}, stride f{c['fstride']}/t{c['tstride']}",
        f"input       {c['input_frames']} frames x {c['num_mel_bins']} mel bins -> {c['num_labels']} labels",
        f"parameters  {report['parameters'] / 1e6:.2f} M",
        f"ToMe        r per block {tome['effective_schedule']}{requested}, "
        f"proportional attention {'on' if tome['prop_attn'] else 'off'}, merge {tome['merge_impl']}",
        f"tokens      {' -> '.join(str(n) for n in report['token_counts'])}",
        f"GFLOPs      {g['no_merging']:.2f} without merging, {g['with_merging']:.2f} with ({g['ratio']:.2f}x fewer)",
    ]
    if report["features"]:
        f = report["features"]
        lines.append(f"features    {f['sample_rate']} Hz, {f['num_mel_bins']} mel, {f['frames']} frames, "
                     f"mean {f['mean']}, std {f['std']}")
    if report["labels"]:
        shown = ", ".join(report["labels"][:5]) + (", ..." if len(report["labels"]) > 5 else "")
        lines.append(f"labels      {len(report['labels'])}: {shown}")
    return "\n".join(lines)
