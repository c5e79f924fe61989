"""`fastast-deploy evaluate`: how well a model classifies a labelled data list, without an export.

The model is any checkpoint the project reads (FastAST, AST ``.pth`` / Hugging Face directory, a CNN from `train
--arch cnn`, or a run directory: its ``best``), run in PyTorch, or an engine / exported ``.onnx`` (run through
`verify.run_engine`). Clips are featurised as training does (`datasets.fbank_cache` with the model's own feature
settings). Single-label data: accuracy, and per class the share of its clips labelled right. Multi-label data:
mAP, and per class its AP.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fastast_deploy.audio.datasets import Dataset, detect_task, load_dataset
from fastast_deploy.audio.labels import LabelSet, read_label_csv
from fastast_deploy.errors import ConfigError, DatasetError
from fastast_deploy.metrics import accuracy, average_precision, mean_average_precision

REPORT_SCHEMA = "fastast-deploy/evaluate"
REPORT_VERSION = 1
ENGINE_SUFFIXES = (".onnx", ".plan", ".engine", ".trt")


@dataclass(frozen=True)
class EvaluateOptions:
    """``threads``: torch threads for a checkpoint, ONNX Runtime intra-op threads for an engine (None: default)."""

    batch: int = 16
    threads: int | None = None
    provider: str | None = None

    def __post_init__(self) -> None:
        if self.batch < 1:
            raise ConfigError(f"--batch must be >= 1, got {self.batch}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {self.threads}")


@dataclass
class Scorer:
    """A model behind one call: ``logits((N, T, F) normalised fbank float32) -> (N, labels) float32``."""

    source: str
    backend: str
    features: Any  # FeatureConfig
    labels: tuple[str, ...] | None
    num_labels: int
    task: str | None  # as the model records it, None where it does not
    logits: Callable[[np.ndarray], np.ndarray]
    close: Callable[[], None] = lambda: None
    waveform_samples: int | None = None  # a waveform-in engine: ``logits`` takes (N, samples) waveforms instead


def open_scorer(target: str | os.PathLike[str], options: EvaluateOptions = EvaluateOptions()) -> Scorer:
    """An engine or exported .onnx when ``target`` is one, else a checkpoint SOURCE (CNN, FastAST, AST) or run."""
    from fastast_deploy.engines.sidecar import read_sidecar

    path = Path(target)
    if path.suffix in ENGINE_SUFFIXES or (path.is_file() and read_sidecar(path) is not None):
        return _engine_scorer(path, options)
    if options.provider is not None:
        raise ConfigError(f"--provider applies to an engine or exported .onnx; {target} is run in PyTorch")
    return _torch_scorer(target, options)


def _engine_scorer(path: Path, options: EvaluateOptions) -> Scorer:
    from fastast_deploy.engines import load_engine
    from fastast_deploy.evaluation.verify import run_engine
    from fastast_deploy.serving.predict import engine_features

    engine = load_engine(path, provider=options.provider, threads=options.threads)
    export = engine.metadata["export"]
    # A waveform-in graph computes the features itself (samples not None): it takes each clip's audio.
    features, samples, _ = engine_features(path, engine)
    extra = (export.get("source") or {}).get("extra") or {}
    labels = tuple(engine.labels) if engine.labels else None

    def logits(fbank: np.ndarray) -> np.ndarray:
        return np.asarray(run_engine(engine, fbank, options.batch)["logits"], dtype=np.float32)

    return Scorer(str(path), engine.backend, features, labels, int(export["model"]["num_labels"]),
                  extra.get("task") if isinstance(extra, dict) else None, logits, engine.close, samples)


def _torch_scorer(source: str | os.PathLike[str], options: EvaluateOptions) -> Scorer:
    import torch

    from fastast_deploy.checkpoints.loading import load_any, model_extra
    from fastast_deploy.model.cnn import CNNClassifier
    from fastast_deploy.model.config import FeatureConfig

    if options.threads is not None:
        torch.set_num_threads(options.threads)
    model = load_any(source)  # CNN checkpoints and runs, and everything load_model reads
    config = model.config
    features = model.feature_config or FeatureConfig(num_mel_bins=config.num_mel_bins, frames=config.input_frames)
    backend = "pytorch (CNN)" if isinstance(model, CNNClassifier) else "pytorch"

    def logits(fbank: np.ndarray) -> np.ndarray:
        outs = []
        with torch.inference_mode():
            for i in range(0, len(fbank), options.batch):
                outs.append(model(torch.from_numpy(fbank[i : i + options.batch])).float().numpy())
        return np.concatenate(outs) if outs else np.zeros((0, config.num_labels), np.float32)

    labels = tuple(model.label_names) if model.label_names else None
    return Scorer(str(source), backend, features, labels, config.num_labels, model_extra(model).get("task"), logits)


def label_columns(dataset: Dataset, scorer: Scorer) -> list[int]:
    """For each dataset label, the model output that scores it: by name where the model names its outputs, else
    by index (the counts must agree)."""
    names = dataset.labels.names
    if scorer.labels is None:
        if len(names) != scorer.num_labels:
            raise DatasetError(f"{scorer.source} has {scorer.num_labels} unnamed outputs but the data has "
                               f"{len(names)} labels; give the label CSV the model was trained with")
        return list(range(len(names)))
    index = {n: i for i, n in enumerate(scorer.labels)}
    unknown = [n for n in names if n not in index]
    if unknown:
        shown = ", ".join(repr(n) for n in unknown[:3]) + (", ..." if len(unknown) > 3 else "")
        raise DatasetError(f"{len(unknown)} labels of the data are not among the {len(scorer.labels)} outputs of "
                           f"{scorer.source} ({shown}); evaluate with the label CSV the model was trained with")
    return [index[n] for n in names]


def evaluate(target: str | os.PathLike[str], data: str | os.PathLike[str], labels_csv: str | None = None,
             options: EvaluateOptions = EvaluateOptions()) -> dict[str, Any]:
    """The report: metric of the whole set and per class (JSON-ready)."""
    from fastast_deploy.audio.datasets import fbank_cache, normalize_cache

    labels: LabelSet | None = read_label_csv(labels_csv) if labels_csv else None
    dataset = load_dataset(data, labels)
    missing = dataset.missing()
    if missing:
        raise DatasetError(f"{len(missing)} of {len(dataset)} audio files listed in {dataset.source} are missing "
                           f"(e.g. {missing[0].path})")
    if not len(dataset):
        raise DatasetError(f"{dataset.source} lists no clips")
    scorer = open_scorer(target, options)
    try:
        columns = label_columns(dataset, scorer)
        features = scorer.features
        files = [e.path for e in dataset.examples]
        if scorer.waveform_samples is not None:
            logits = _waveform_logits(scorer, files, scorer.waveform_samples, options.batch)
        else:
            fbank = normalize_cache(fbank_cache(files, features), features).numpy()
            logits = scorer.logits(fbank.astype(np.float32, copy=False))
    finally:
        scorer.close()
    if not np.isfinite(logits).all():
        bad = int((~np.isfinite(logits)).any(axis=1).sum())
        raise ConfigError(f"{scorer.source} gave non-finite logits for {bad} of {len(logits)} clips; no score")
    task = detect_task(dataset)
    targets = dataset.targets().numpy()
    report: dict[str, Any] = {
        "schema": REPORT_SCHEMA, "version": REPORT_VERSION, "model": scorer.source, "backend": scorer.backend,
        "data": str(dataset.source), "clips": len(dataset), "task": task, "model_task": scorer.task,
        "input": {"frames": features.frames, "mel_bins": features.num_mel_bins},
    }
    report.update(score(logits[:, columns], targets, dataset.labels.names, task))
    return report


def _waveform_logits(scorer: Scorer, files: list[Any], samples: int, batch: int) -> np.ndarray:
    """Logits of a waveform-in engine, ``batch`` files at a time: each file's first window at the model's rate, NaN
    past its end (the graph's padding), as training's fbank of a clip takes its first frames."""
    from fastast_deploy.evaluation.inputs import first_window

    outs = []
    for start in range(0, len(files), batch):
        waves = np.stack([first_window(f, scorer.features, samples) for f in files[start : start + batch]])
        outs.append(scorer.logits(waves))
    return np.concatenate(outs)


def score(logits: np.ndarray, targets: np.ndarray, names: tuple[str, ...], task: str) -> dict[str, Any]:
    """Accuracy (single-label) or mAP (multi-label) of logits (N, labels) against multi-hot targets (N, labels),
    overall and per class."""
    if task == "singlelabel":
        truth, top = targets.argmax(axis=1), logits.argmax(axis=1)
        per_class = []
        for k, name in enumerate(names):
            mine = truth == k
            per_class.append({"label": name, "clips": int(mine.sum()), "correct": int((top[mine] == k).sum()),
                              "accuracy": float((top[mine] == k).mean()) if mine.any() else None,
                              "predicted": int((top == k).sum())})
        return {"metric": "accuracy", "value": accuracy(logits, truth), "correct": int((top == truth).sum()),
                "per_class": per_class}
    per_class = []
    for k, name in enumerate(names):
        positives = int(targets[:, k].sum())
        ap = average_precision(logits[:, k], targets[:, k]) if positives else None
        per_class.append({"label": name, "positives": positives, "ap": ap})
    return {"metric": "mAP", "value": mean_average_precision(logits, targets), "per_class": per_class}


def format_report(report: dict[str, Any], per_class: bool = True) -> str:
    """The report as text lines."""
    value = report["value"]
    head = f"{report['model']} ({report['backend']}) on {report['data']}: {report['metric']} {value:.4f}"
    if report["metric"] == "accuracy":
        head += f" ({report['correct']}/{report['clips']} clips)"
    else:
        head += f" over {sum(1 for c in report['per_class'] if c['ap'] is not None)} labels, {report['clips']} clips"
    lines = [head]
    if per_class:
        width = max(len(c["label"]) for c in report["per_class"])
        for c in report["per_class"]:
            if report["metric"] == "accuracy":
                acc = "-" if c["accuracy"] is None else f"{c['accuracy']:.4f}"
                lines.append(f"  {c['label']:<{width}}  {acc:>6}  {c['correct']}/{c['clips']}")
            else:
                ap = "-" if c["ap"] is None else f"{c['ap']:.4f}"
                lines.append(f"  {c['label']:<{width}}  AP {ap:>6}  ({c['positives']} positives)")
    return "\n".join(lines)
