"""Label scores for audio files, from a checkpoint (run in PyTorch), an exported .onnx or a built engine.

Engines take the normalised fbank (``fbank`` input) or the waveform (``waveform`` input: the fbank is computed
inside the graph); `Classifier.file_inputs` turns an audio file into whichever the model takes, resampled on the
host. A file longer than the model's input of T frames is cut into windows of T frames that start every ``hop``
frames (default T: no overlap); the last window is zero-padded as `features.pad_or_cut` pads. Windows of
consecutive files share inference batches of a size the engine accepts, and each file's per-window scores
(softmax for a single-label model, else sigmoid) are pooled by mean or max.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fastast_deploy.contract import INPUT_NAME, OUTPUT_NAME, WAVEFORM_NAME
from fastast_deploy.engines.base import BatchRange, batch_chunks
from fastast_deploy.errors import AudioError, ConfigError, FastASTError

if TYPE_CHECKING:  # torch and the feature code load with the first prediction, not with the CLI

    from fastast_deploy.model.config import FeatureConfig

POOLS = ("mean", "max")
ACTIVATIONS = {"singlelabel": "softmax", "multilabel": "sigmoid"}
ENGINE_SUFFIXES = (".onnx", ".plan", ".engine", ".trt")
DEFAULT_BATCH = 8  # windows per call where the engine sets no upper bound


@dataclass(frozen=True)
class PredictOptions:
    """``hop_s=None``: windows do not overlap. ``batch=None``: the engine's largest batch, or DEFAULT_BATCH where
    it has none."""

    top_k: int = 5
    hop_s: float | None = None
    pool: str = "mean"
    batch: int | None = None

    def __post_init__(self) -> None:
        if self.pool not in POOLS:
            raise ConfigError(f"unknown pooling {self.pool!r}; available: {list(POOLS)}")
        if self.top_k < 1:
            raise ConfigError(f"top-k must be >= 1, got {self.top_k}")
        if self.hop_s is not None and not (math.isfinite(self.hop_s) and self.hop_s > 0):
            raise ConfigError(f"hop must be a positive number of seconds, got {self.hop_s}")
        if self.batch is not None and self.batch < 1:
            raise ConfigError(f"batch must be >= 1, got {self.batch}")


@dataclass
class Classifier:
    """A model behind one call: ``infer((n, T, F) float32) -> (n, labels) float32 logits`` for n in ``batch``;
    with ``input_name == "waveform"``, ``infer((n, samples) float32)``."""

    source: str
    backend: str  # "pytorch", "onnxruntime" or "tensorrt"
    features: FeatureConfig
    labels: list[str]
    task: str | None  # "singlelabel", "multilabel", or None where the model does not say
    batch: BatchRange
    infer: Callable[[np.ndarray], np.ndarray]
    close: Callable[[], None] = lambda: None
    notes: list[str] = field(default_factory=list)
    input_name: str = INPUT_NAME  # INPUT_NAME or WAVEFORM_NAME: what `infer` takes
    samples: int | None = None  # waveform inputs: samples per window

    def file_inputs(self, path: str | os.PathLike, hop: int | None = None) -> Iterator[np.ndarray]:
        """What ``infer`` takes for an audio file, window by window every ``hop`` frames (default: no overlap),
        streamed from the file in constant memory (``audio.streaming``): (T, F) normalised fbank, or (samples,)
        waveform windows at the model's rate (NaN past the clip's end), which give the same fbank inside the
        graph."""
        from fastast_deploy.audio.streaming import stream_waveform_windows, stream_windows

        hop = self.features.frames if hop is None else hop
        if self.input_name == WAVEFORM_NAME:
            assert self.samples is not None, "a waveform-in classifier knows its window length"
            return stream_waveform_windows(path, self.features, hop, self.samples)
        return stream_windows(path, self.features, hop)

    @property
    def activation(self) -> str:
        return ACTIVATIONS.get(self.task or "multilabel", "sigmoid")

    @property
    def window_s(self) -> float:
        """The model's input length in seconds."""
        from fastast_deploy.audio.frames import FRAME_SHIFT_MS

        return self.features.frames * FRAME_SHIFT_MS / 1000

    @property
    def scoring(self) -> str:
        """How scores are made, in words."""
        if self.task is None:
            return "sigmoid (the model records no task; multi-label assumed)"
        return f"{self.activation} ({self.task.replace('label', '-label')})"


@dataclass(frozen=True)
class FilePrediction:
    """One file's pooled scores (labels,), or why it could not be read."""

    path: str
    windows: int = 0
    scores: np.ndarray | None = None
    error: str | None = None


def _task(extra: Any) -> str | None:
    task = extra.get("task") if isinstance(extra, dict) else None
    return task if task in ACTIVATIONS else None


def _names(labels: Sequence[str] | None, count: int) -> list[str]:
    if labels and len(labels) == count:
        return [str(n) for n in labels]
    return [f"label_{i}" for i in range(count)]


def open_classifier(target: str | os.PathLike, provider: str | None = None, threads: int | None = None) -> Classifier:
    """An engine or exported .onnx (through `load_engine`) when ``target`` is one, else a checkpoint SOURCE (a CNN
    from `train --arch cnn` too). ``threads``: ONNX Runtime intra-op threads, or torch threads (None: default)."""
    from fastast_deploy.engines.sidecar import read_sidecar

    if threads is not None and threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {threads}")
    path = Path(target)
    if path.suffix in ENGINE_SUFFIXES or (path.is_file() and read_sidecar(path) is not None):
        return _engine_classifier(path, provider, threads)
    if provider is not None:
        raise ConfigError(f"--provider applies to an engine or exported .onnx; {target} is run in PyTorch")
    return _torch_classifier(target, threads)


def _engine_classifier(path: Path, provider: str | None, threads: int | None = None) -> Classifier:
    from fastast_deploy.engines import load_engine

    engine = load_engine(path, provider=provider, threads=threads)
    export = engine.metadata["export"]
    num_labels = int(engine.output_specs[OUTPUT_NAME][0][-1])
    task = _task((export.get("source") or {}).get("extra"))
    features, samples, notes = engine_features(path, engine)
    name = INPUT_NAME if samples is None else WAVEFORM_NAME

    def infer(x: np.ndarray) -> np.ndarray:
        return np.asarray(engine.infer({name: x})[OUTPUT_NAME], dtype=np.float32)

    return Classifier(str(path), engine.backend, features, _names(engine.labels, num_labels), task,
                      engine.batch_range, infer, engine.close, notes, name, samples)


def engine_features(path: Path, engine: Any) -> tuple[FeatureConfig, int | None, list[str]]:
    """The feature settings an engine's input is made with, its window in samples where it takes waveforms (the
    graph computes the fbank) else None, and notes; ConfigError, the engine closed, where the settings recorded
    at export do not give the graph's input."""
    from fastast_deploy.audio.frames import waveform_samples
    from fastast_deploy.model.config import FeatureConfig

    export = engine.metadata["export"]
    if WAVEFORM_NAME in engine.input_specs:
        samples = int(engine.input_specs[WAVEFORM_NAME][0][1])
        if not export.get("features"):
            engine.close()
            raise ConfigError(f"{path} takes waveforms but records no feature settings; re-export the model")
        features = FeatureConfig.from_dict(export["features"])
        if samples != waveform_samples(features):
            engine.close()
            raise ConfigError(f"{path}: its feature settings give windows of {waveform_samples(features)} samples, "
                              f"the graph takes {samples}; re-export the model")
        return features, samples, []
    _, frames, mels = engine.input_specs[INPUT_NAME][0]
    notes = []
    if export.get("features"):
        features = FeatureConfig.from_dict(export["features"])
    else:
        features = FeatureConfig(num_mel_bins=int(mels), frames=int(frames))
        notes.append(f"{path.name} records no feature settings: AudioSet statistics assumed")
    if (features.frames, features.num_mel_bins) != (frames, mels):
        engine.close()
        raise ConfigError(f"{path}: its feature settings give {features.frames} x {features.num_mel_bins} inputs, "
                          f"the graph takes {frames} x {mels}; re-export the model")
    return features, None, notes


def _torch_classifier(source: str | os.PathLike, threads: int | None = None) -> Classifier:
    import torch

    from fastast_deploy.checkpoints.loading import load_any, model_extra
    from fastast_deploy.model.config import FeatureConfig

    if threads is not None:
        torch.set_num_threads(threads)
    model = load_any(source)  # a CNN checkpoint or run, or anything load_model reads
    config = model.config
    features = model.feature_config or FeatureConfig(num_mel_bins=config.num_mel_bins, frames=config.input_frames)

    def infer(fbank: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(fbank)).float().numpy()

    task = _task(model_extra(model))
    return Classifier(str(source), "pytorch", features, _names(model.label_names, config.num_labels), task,
                      BatchRange(1, 1, None), infer)


def hop_frames(hop_s: float | None, frames: int) -> int:
    """The window hop in frames (10 ms each); ``None`` gives ``frames`` (no overlap)."""
    from fastast_deploy.audio.frames import FRAME_SHIFT_MS

    if hop_s is None:
        return frames
    hop = round(hop_s * 1000 / FRAME_SHIFT_MS)
    if not 1 <= hop <= frames:
        raise ConfigError(f"hop {hop_s} s is {hop} frames; it must be 1 to {frames} frames (0.01 to "
                          f"{frames * FRAME_SHIFT_MS / 1000:g} s, the model's window)")
    return hop



def activate(logits: np.ndarray, activation: str) -> np.ndarray:
    """Scores from logits (n, labels): row-wise softmax, or elementwise sigmoid; computed in float64."""
    x = logits.astype(np.float64)
    if activation == "softmax":
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)
    return np.exp(-np.logaddexp(0.0, -x))  # sigmoid without overflow


def batch_size(batch: BatchRange, requested: int | None) -> int:
    """Windows per inference call: ``requested`` if the engine takes it, else its largest (or DEFAULT_BATCH)."""
    if requested is not None:
        if requested not in batch:
            raise ConfigError(f"--batch {requested} is outside the model's batch range {batch}")
        return requested
    return batch.max if batch.max is not None else max(DEFAULT_BATCH, batch.min)


def run_windows(classifier: Classifier, windows: np.ndarray, size: int) -> np.ndarray:
    """Logits (N, labels) for windows (N, T, F) or (N, samples), ``size`` at a time; a short last batch below the
    engine's smallest (e.g. a static batch) is padded with zero windows whose outputs are dropped."""
    outputs = [classifier.infer(chunk)[:real] for chunk, real in batch_chunks(windows, size, classifier.batch)]
    return np.concatenate(outputs)


def _reason(err: AudioError, path: str) -> str:
    """The error without the path it names (the caller prints the path first)."""
    return " ".join(str(err).replace(f"audio file {path}", "audio file").replace(f"{path}: ", "").split())


def predict_files(classifier: Classifier, paths: Iterable[str | os.PathLike],
                  options: PredictOptions = PredictOptions()) -> Iterator[FilePrediction]:
    """One FilePrediction per path, in order; files that cannot be read carry an error and the rest go on.

    Windows stream from each file (``audio.streaming``) into batches shared across files, and each file's scores
    are pooled as its windows come back: memory is bounded by a batch of windows, not by any file's length."""

    size = batch_size(classifier.batch, options.batch)
    hop = hop_frames(options.hop_s, classifier.features.frames)
    pooled = _Pooled(classifier, options.pool, size)
    for raw in paths:
        path = str(raw)
        pooled.open(path)
        try:
            if Path(path).is_file() and Path(path).stat().st_size == 0:
                raise AudioError("the file is empty (0 bytes); expected an audio file (WAV, FLAC, OGG)")
            for window in classifier.file_inputs(path, hop):
                pooled.add(window)
        except AudioError as err:
            pooled.fail(_reason(err, path))
        yield from pooled.finished()
    yield from pooled.finished(flush=True)


class _Pooled:
    """Windows queued for batched inference, and each file's running pooled scores (sum or max, and count)."""

    def __init__(self, classifier: Classifier, pool: str, size: int) -> None:
        if pool not in POOLS:
            raise ConfigError(f"unknown pooling {pool!r}; available: {list(POOLS)}")
        self.classifier, self.pool, self.size = classifier, pool, size
        self.files: dict[int, list[Any]] = {}  # index -> [path, pooled scores or None, windows, error]
        self.opened = self.yielded = 0
        self.queue: list[tuple[int, np.ndarray]] = []  # (file index, window (T, F))

    def open(self, path: str) -> None:
        self.files[self.opened] = [path, None, 0, None]
        self.opened += 1

    def add(self, window: np.ndarray) -> None:
        self.queue.append((self.opened - 1, window))
        if len(self.queue) >= self.size:
            self._run()

    def fail(self, reason: str) -> None:
        self.files[self.opened - 1][3] = reason
        self.queue = [(i, w) for i, w in self.queue if i != self.opened - 1]

    def _run(self) -> None:
        if not self.queue:
            return
        owners = [i for i, _ in self.queue]
        logits = run_windows(self.classifier, np.stack([w for _, w in self.queue]), self.size)  # (N, labels)
        self.queue = []
        if not np.isfinite(logits).all():
            raise FastASTError(f"{self.classifier.source} gave NaN or inf logits for finite inputs "
                               f"({int((~np.isfinite(logits)).any(axis=1).sum())} of {len(logits)} windows); the "
                               "model or engine is broken: rebuild it")
        for owner, row in zip(owners, activate(logits, self.classifier.activation), strict=True):
            entry = self.files[owner]
            entry[1] = row if entry[1] is None else (entry[1] + row if self.pool == "mean"
                                                     else np.maximum(entry[1], row))
            entry[2] += 1

    def finished(self, flush: bool = False) -> Iterator[FilePrediction]:
        """Files, in input order, whose windows are all scored; the newest may still be reading unless ``flush``."""
        if flush:
            self._run()
        waiting = {i for i, _ in self.queue}
        newest = self.opened - 1
        while self.yielded < self.opened and self.yielded not in waiting and (flush or self.yielded < newest):
            path, scores, count, error = self.files.pop(self.yielded)
            self.yielded += 1
            if error is not None:
                yield FilePrediction(path, error=error)
            else:
                yield FilePrediction(path, count, scores / count if self.pool == "mean" else scores)


def top_k(scores: np.ndarray, labels: Sequence[str], k: int) -> list[dict[str, Any]]:
    """The k best labels, highest score first: ``[{"index", "label", "score"}]``."""
    order = np.argsort(-scores, kind="stable")[:k]
    return [{"index": int(i), "label": labels[i], "score": float(scores[i])} for i in order]


def prediction_dict(result: FilePrediction, labels: Sequence[str], k: int, all_scores: bool) -> dict[str, Any]:
    """One file as JSON: path, windows, top_k (and every score with ``all_scores``), or path and error."""
    if result.error is not None or result.scores is None:
        return {"path": result.path, "error": result.error}
    entry: dict[str, Any] = {"path": result.path, "windows": result.windows,
                             "top_k": top_k(result.scores, labels, k)}
    if all_scores:
        entry["scores"] = [float(s) for s in result.scores]
    return entry


def format_prediction(result: FilePrediction, labels: Sequence[str], k: int) -> str:
    """A text block: the file and its window count, then one line per top label with its score."""
    assert result.scores is not None, "format_prediction takes a file that was predicted"
    plural = "s" if result.windows != 1 else ""
    lines = [f"{result.path} ({result.windows} window{plural})"]
    lines += [f"  {t['score']:.4f}  {t['label']}" for t in top_k(result.scores, labels, k)]
    return "\n".join(lines)
