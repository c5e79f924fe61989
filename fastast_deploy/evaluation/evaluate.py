"""`fastast-deploy evaluate`: how well a model classifies a labelled data list, without an export.

The model is any checkpoint the project reads (FastAST, AST ``.pth`` / Hugging Face directory, a CNN from `train
--arch cnn`, or a run directory: its ``best``), run in PyTorch, or an engine / exported ``.onnx``, all through the
one runner (`inference.runner.open_runner`) with the model's own feature settings. Each clip is scored as
`predict` scores a file (`inference.scoring`): every window of the model's input length, no overlap, the window
scores (softmax for a single-label model, else sigmoid) pooled by mean, streamed in constant memory; a clip no
longer than the window is one window. Single-label data: accuracy, and per class the share of its clips labelled
right. Multi-label data: mAP, and per class its AP.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fastast_deploy.audio.datasets import Dataset, detect_task, load_dataset
from fastast_deploy.audio.labels import LabelSet, read_label_csv
from fastast_deploy.errors import ConfigError, DatasetError, unreadable_clips
from fastast_deploy.files import shown_path
from fastast_deploy.inference.runner import Runner, open_runner
from fastast_deploy.inference.scoring import batch_size, score_files
from fastast_deploy.metrics import accuracy, average_precision, mean_average_precision

REPORT_SCHEMA = "fastast-deploy/evaluate"
REPORT_VERSION = 1
POOL = "mean"  # how a clip's window scores are pooled, as predict's default


@dataclass(frozen=True)
class EvaluateOptions:
    """``batch``: windows per inference call (within an engine's batch range); ``threads``: torch threads for a
    checkpoint, ONNX Runtime intra-op threads for an engine (None: default); ``skip_unreadable``: score the
    readable clips when some cannot be read (else that is an error, after every clip is tried)."""

    batch: int = 16
    threads: int | None = None
    provider: str | None = None
    skip_unreadable: bool = False

    def __post_init__(self) -> None:
        if self.batch < 1:
            raise ConfigError(f"--batch must be >= 1, got {self.batch}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {self.threads}")


def placeholder_names(names: Sequence[str] | None) -> bool:
    """Whether ``names`` are transformers' default id2label names, LABEL_0, LABEL_1, ... (no class names)."""
    return bool(names) and all(n == f"LABEL_{i}" for i, n in enumerate(names))


def label_columns(dataset: Dataset, runner: Runner, from_csv: bool = False) -> list[int]:
    """For each dataset label, the model output that scores it: by name where the model names its outputs, else
    by index (the counts must agree). A model named only by placeholders (LABEL_0..) is matched by index when the
    labels come from a label CSV (``from_csv``: --labels, read in the model's output order), else refused."""
    names = dataset.labels.names
    if placeholder_names(runner.label_names):
        count = runner.num_labels
        if not from_csv or len(names) != count:
            given = (f"the label CSV has {len(names)} labels" if from_csv else "no label CSV was given")
            raise DatasetError(f"{runner.source} names its {count} outputs LABEL_0..LABEL_{count - 1}, Hugging "
                               f"Face's placeholders, not classes ({given}); give a label CSV of its {count} classes "
                               "in output order with --labels (index,mid,display_name); the data must name the "
                               "same classes")
        return list(range(count))
    if runner.label_names is None:
        if len(names) != runner.num_labels:
            raise DatasetError(f"{runner.source} has {runner.num_labels} unnamed outputs but the data has "
                               f"{len(names)} labels; give the label CSV the model was trained with")
        return list(range(len(names)))
    index = {n: i for i, n in enumerate(runner.label_names)}
    unknown = [n for n in names if n not in index]
    if unknown:
        shown = ", ".join(repr(n) for n in unknown[:3]) + (", ..." if len(unknown) > 3 else "")
        raise DatasetError(f"{len(unknown)} labels of the data are not among the {len(runner.label_names)} outputs "
                           f"of {runner.source} ({shown}); evaluate with the label CSV the model was trained with")
    return [index[n] for n in names]


def clip_scores(runner: Runner, files: Sequence[str | os.PathLike[str]], batch: int, *,
                skip_unreadable: bool = False,
                report: Callable[[str, str], None] | None = None) -> tuple[np.ndarray, int, list[int]]:
    """Pooled scores (N, labels) of the clips scored, as `predict` scores a file (every window, no overlap, mean),
    with ``batch`` windows per call (the nearest size the model takes), the number of windows, and the indices
    of the clips scored. Every clip is tried; each that cannot be read goes to ``report(path, reason)``. Then
    an UnreadableClipsError naming how many (and the first) could not be read, unless ``skip_unreadable`` (and some
    were read)."""
    rows, kept, failed, windows = [], [], [], 0
    size = batch_size(runner.batch, batch, fit=True)
    for index, result in enumerate(score_files(runner, files, pool=POOL, size=size)):
        if result.error is not None or result.scores is None:
            failed.append(f"{result.path}: {result.error}")
            if report is not None:
                report(result.path, str(result.error))
            continue
        rows.append(result.scores)
        kept.append(index)
        windows += result.windows
    if failed and (not skip_unreadable or not rows):
        raise unreadable_clips(failed, len(files), len(rows))
    return np.stack(rows), windows, kept


def evaluate(target: str | os.PathLike[str], data: str | os.PathLike[str], labels_csv: str | None = None,
             options: EvaluateOptions = EvaluateOptions(),
             report_unreadable: Callable[[str, str], None] | None = None) -> dict[str, Any]:
    """The report: metric of the whole set and per class (JSON-ready). Each clip that cannot be read goes to
    ``report_unreadable(path, reason)``; then the run fails unless ``options.skip_unreadable``, when the metric
    is of the readable clips and the report lists the others under ``unreadable``."""
    labels: LabelSet | None = read_label_csv(labels_csv) if labels_csv else None
    dataset = load_dataset(data, labels)
    missing = dataset.missing()
    if missing:
        raise DatasetError(f"{len(missing)} of {len(dataset)} audio files listed in {dataset.source} are missing "
                           f"(e.g. {missing[0].path})")
    if not len(dataset):
        raise DatasetError(f"{dataset.source} lists no clips")
    with open_runner(target, options.provider, options.threads) as runner:
        columns = label_columns(dataset, runner, from_csv=labels is not None)
        paths = [e.path for e in dataset.examples]
        scores, windows, kept = clip_scores(runner, paths, options.batch, skip_unreadable=options.skip_unreadable,
                                            report=report_unreadable)
    features = runner.features
    task = detect_task(dataset)
    unreadable = sorted(set(range(len(paths))) - set(kept))
    targets = dataset.targets().numpy()[kept]
    report: dict[str, Any] = {
        "schema": REPORT_SCHEMA, "version": REPORT_VERSION, "model": runner.source, "backend": runner.backend,
        "data": str(dataset.source), "clips": len(kept), "task": task, "model_task": runner.task,
        "unreadable": [shown_path(paths[i]) for i in unreadable],
        "input": {"frames": features.frames, "mel_bins": features.num_mel_bins},
        "windows": windows, "pool": POOL, "activation": runner.activation,
    }
    report.update(score(scores[:, columns], targets, dataset.labels.names, task))
    return report


def score(logits: np.ndarray, targets: np.ndarray, names: tuple[str, ...], task: str) -> dict[str, Any]:
    """Accuracy (single-label) or mAP (multi-label) of scores or logits (N, labels) against multi-hot targets
    (N, labels), overall and per class."""
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
    if report.get("unreadable"):
        lines.append(f"  ({len(report['unreadable'])} unreadable clips skipped)")
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
