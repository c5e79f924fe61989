"""The model card (README.md) of a Hugging Face directory that `export_formats.write_hf_dir` writes: the Hub's YAML
header (library, pipeline tag, tags, labels) and a short body: the model, its labels and features, its ToMe
schedule, how to run it, and the evaluation figures its training recorded."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from fastast_deploy.contract import PACKAGE_VERSION
from fastast_deploy.model.config import FeatureConfig
from fastast_deploy.model.fastast import FastAST
from fastast_deploy.model.flops import flop_ratio

TAGS = ("audio-classification", "audio-spectrogram-transformer", "ast", "fastast", "token-merging", "fastast-deploy")
SHOWN_LABELS = 50  # listed in the body; the header lists every one
_NOT_FIGURES = {"epoch", "step", "lr"}  # in a training record's metrics: where it stood, not how the model does


def _quoted(text: str) -> str:
    """A YAML scalar that reads back as ``text`` whatever it holds (JSON strings are YAML double-quoted ones)."""
    return json.dumps(text, ensure_ascii=False)


def _header(labels: tuple[str, ...]) -> list[str]:
    lines = ["---", "library_name: transformers", "pipeline_tag: audio-classification", "tags:"]
    lines += [f"- {tag}" for tag in TAGS]
    lines += ["labels:"] + [f"- {_quoted(name)}" for name in labels]
    return [*lines, "---"]


def _code(text: str) -> str:
    return "`" + text.replace("`", "'") + "`"


def _figures(extra: Mapping[str, Any]) -> list[str]:
    """The evaluation section: every number training recorded for its best epoch, as a table."""
    metrics = extra.get("metrics")
    rows = [(k, v) for k, v in (metrics.items() if isinstance(metrics, dict) else ())
            if k not in _NOT_FIGURES and isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)]
    if not rows:
        return ["No evaluation figures were recorded with this checkpoint."]
    epoch = metrics.get("epoch")
    when = f" at epoch {epoch}" if isinstance(epoch, int) else ""
    task = f" ({extra['task']})" if isinstance(extra.get("task"), str) else ""
    lines = [f"Recorded by `fastast-deploy train`{when}{task}, with the ToMe schedule above (`seconds`: the "
             "epoch's training time):", "", "| figure | value |", "|---|---|"]
    return lines + [f"| {_code(str(k))} | {v:.4g} |" for k, v in rows]


def _tome(model: FastAST) -> list[str]:
    config, schedule = model.config, list(model.schedule)
    if not any(schedule):
        return ["No ToMe schedule is recorded: the model runs unmerged. fastast-deploy merges tokens when given "
                "`--tome-r` (export, bench)."]
    counts = model.token_counts
    attention = "on" if model.tome.prop_attn else "off"
    return [f"Saved with the ToMe schedule r per block {schedule} (proportional attention {attention}): tokens "
            f"{counts[0]} -> {counts[-1]}; the unmerged model needs {flop_ratio(config, schedule):.2f}x its FLOPs "
            "(computed, not timed). config.json's `fastast` entry keeps the schedule for fastast-deploy; transformers "
            "ignores it and has no token merging, so transformers runs the model at r = 0 (every token kept), whose "
            "scores differ a little from the merged model's."]


def _features(f: FeatureConfig) -> str:
    return (f"Kaldi log-mel fbank of {f.sample_rate} Hz mono audio (25 ms Hann windows every 10 ms, 512-point FFT, "
            f"pre-emphasis 0.97, {f.num_mel_bins} mel bins), padded or cut to {f.frames} frames and normalised as "
            f"(x - mean) / (2 std) with mean {f.mean:g} and std {f.std:g}: preprocessor_config.json gives these "
            "to transformers' ASTFeatureExtractor.")


def model_card(model: FastAST, features: FeatureConfig, labels: tuple[str, ...], extra: Mapping[str, Any] | None,
               name: str, source: str) -> str:
    """README.md for the directory ``name`` written from ``source``."""
    c = model.config
    params = sum(p.numel() for p in model.parameters()) / 1e6
    shown = ", ".join(_code(n) for n in labels[:SHOWN_LABELS])
    more = f", and {len(labels) - SHOWN_LABELS} more" if len(labels) > SHOWN_LABELS else ""
    origin = f" from {_code(source)}" if source else ""
    lines = [
        *_header(labels), "", f"# {name}", "",
        f"An Audio Spectrogram Transformer (AST) audio classifier with FastAST token merging (ToMe), written by "
        f"fastast-deploy {PACKAGE_VERSION}{origin}: {c.embed_dim}-dim x {c.depth} blocks, {c.num_heads} heads, "
        f"{params:.2f} M parameters, on {c.input_frames} frames x {c.num_mel_bins} mel bins.", "",
        "## Labels", "", f"{len(labels)} labels: {shown}{more} (config.json's id2label).", "",
        "## Features", "", _features(features), "",
        "## Token merging", "", *_tome(model), "",
        "## Use", "", "With transformers (r = 0):", "", "```python", "from transformers import pipeline", "",
        f'classifier = pipeline("audio-classification", model="{name}")',
        'classifier("clip.wav")  # ffmpeg reads files; or pass {"raw": waveform, "sampling_rate": '
        f'{features.sample_rate}}}', "```", "",
        "With fastast-deploy (its ToMe schedule, in PyTorch or as an engine):", "", "```bash",
        f"fastast-deploy predict {name} clip.wav", f"fastast-deploy export {name} -o model.onnx",
        "fastast-deploy build-engine model.onnx -o model.plan --backend tensorrt", "```", "",
        "## Evaluation", "", *_figures(extra or {}), "",
    ]
    return "\n".join(lines)
