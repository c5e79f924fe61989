"""A model behind one call: `open_runner` opens a checkpoint SOURCE (FastAST, AST, a CNN from `train --arch cnn`
or a training run, run in PyTorch), a built engine or an exported .onnx (`engines.load_engine`) as a `Runner`.

A Runner knows its batch range, the feature settings its input is made with, its labels and task, and whether it
takes the normalised fbank (B, T, F) or the waveform (B, samples) (the fbank is then computed inside the graph); it
cuts audio files into its windows (`audio.streaming`). What runs the model is a `Backend`: ``infer(batch) ->
logits`` and ``close``; a model on a Triton server (``grpc://HOST:PORT/MODEL``) is an engine like the others.
Use it as a context manager: closing it closes the backend and, for a checkpoint, puts torch's thread count back.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from fastast_deploy.audio.frames import waveform_samples
from fastast_deploy.contract import INPUT_NAME, OUTPUT_NAME, WAVEFORM_NAME
from fastast_deploy.engines.base import BatchRange
from fastast_deploy.engines.triton_remote import EngineURL, is_remote
from fastast_deploy.errors import ConfigError
from fastast_deploy.model.config import FeatureConfig
from fastast_deploy.scoped import torch_threads

if TYPE_CHECKING:  # torch and the feature code load with the first model, not with the CLI
    from fastast_deploy.engines import Engine
    from fastast_deploy.model.config import FeatureConfig

ENGINE_SUFFIXES = (".onnx", ".plan", ".engine", ".trt")
ACTIVATIONS = {"singlelabel": "softmax", "multilabel": "sigmoid"}


class Backend(Protocol):
    """What runs the model: ``infer((n, T, F) or (n, samples) float32) -> (n, labels) float32 logits`` for n in
    the runner's batch range, and ``close``."""

    def infer(self, batch: np.ndarray) -> np.ndarray: ...

    def close(self) -> None: ...


@dataclass
class Runner:
    """One model behind ``infer``; ``labels`` names every output (``label_i`` where the model names none, and then
    ``label_names`` is None)."""

    source: str
    backend: str  # "pytorch", "pytorch (CNN)", "onnxruntime" or "tensorrt"
    features: FeatureConfig
    labels: list[str]
    label_names: tuple[str, ...] | None
    task: str | None  # "singlelabel", "multilabel", or None where the model does not say
    batch: BatchRange
    runtime: Backend
    notes: list[str] = field(default_factory=list)
    input_name: str = INPUT_NAME  # INPUT_NAME or WAVEFORM_NAME: what `infer` takes
    samples: int | None = None  # waveform inputs: samples per window
    model: Any = None  # the torch module of a checkpoint (e.g. for merge positions), None for an engine

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """(n, labels) float32 logits of (n, T, F) fbank or (n, samples) waveform windows, n in ``batch``."""
        return self.runtime.infer(batch)

    def close(self) -> None:
        self.runtime.close()

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @property
    def activation(self) -> str:
        return ACTIVATIONS.get(self.task or "multilabel", "sigmoid")

    @property
    def scoring(self) -> str:
        """How scores are made, in words."""
        if self.task is None:
            return "sigmoid (the model records no task; multi-label assumed)"
        return f"{self.activation} ({self.task.replace('label', '-label')})"

    def file_inputs(self, path: str | os.PathLike, hop: int | None = None) -> Iterator[np.ndarray]:
        """What ``infer`` takes for an audio file, window by window every ``hop`` frames (default: no overlap),
        streamed from the file in constant memory (``audio.streaming``): (T, F) normalised fbank, or (samples,)
        waveform windows at the model's rate (NaN past the clip's end), which give the same fbank inside the
        graph."""
        from fastast_deploy.audio.streaming import stream_waveform_windows, stream_windows

        hop = self.features.frames if hop is None else hop
        if self.input_name == WAVEFORM_NAME:
            assert self.samples is not None, "a waveform-in runner knows its window length"
            return stream_waveform_windows(path, self.features, hop, self.samples)
        return stream_windows(path, self.features, hop)


def _task(extra: Any) -> str | None:
    task = extra.get("task") if isinstance(extra, dict) else None
    return task if task in ACTIVATIONS else None


def _names(labels: Sequence[str] | None, count: int) -> tuple[list[str], tuple[str, ...] | None]:
    if labels and len(labels) == count:
        return [str(n) for n in labels], tuple(str(n) for n in labels)
    return [f"label_{i}" for i in range(count)], None


def is_engine(target: str | os.PathLike) -> bool:
    """Whether ``target`` is an engine or exported .onnx (by suffix, or a file with an engine sidecar), or a model
    on a Triton server (a ``grpc://`` or ``http://`` URL)."""
    from fastast_deploy.engines.sidecar import read_sidecar

    if is_remote(target):
        return True
    path = Path(target)
    return path.suffix in ENGINE_SUFFIXES or (path.is_file() and read_sidecar(path) is not None)


def open_runner(target: str | os.PathLike, provider: str | None = None, threads: int | None = None, *,
                like: dict[str, Any] | None = None) -> Runner:
    """An engine or exported .onnx (through `load_engine`) when ``target`` is one, else a checkpoint SOURCE (a CNN
    from `train --arch cnn` too). ``threads``: ONNX Runtime intra-op threads, or torch threads while the runner is
    open (None: default). ``like``: an engine's export metadata; ``target`` is then a checkpoint, built with that
    engine's ToMe schedule, proportional attention and input length (the PyTorch reference of that engine)."""
    if threads is not None and threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {threads}")
    if like is None and is_engine(target):
        from fastast_deploy.engines import load_engine

        engine = load_engine(target, provider=provider, threads=threads)
        return engine_runner(engine, engine.path)
    if provider is not None:
        raise ConfigError(f"--provider applies to an engine or exported .onnx; {target} is run in PyTorch")
    return _torch_runner(target, threads, like)


class _EngineBackend:
    def __init__(self, engine: Engine, input_name: str) -> None:
        self.engine, self.input_name = engine, input_name

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self.engine.infer({self.input_name: batch})[OUTPUT_NAME], dtype=np.float32)

    def close(self) -> None:
        self.engine.close()


def engine_runner(engine: Engine, path: str | os.PathLike) -> Runner:
    """A Runner over an engine already loaded (it closes the engine when closed); ``path`` is its file, or for
    a remote engine its ``engine.path`` (the URL)."""
    path = EngineURL(path) if is_remote(path) else Path(path)
    export = engine.metadata["export"]
    count = int(engine.output_specs[OUTPUT_NAME][0][-1])
    task = _task((export.get("source") or {}).get("extra"))
    features, samples, notes = engine_features(path, engine)
    name = INPUT_NAME if samples is None else WAVEFORM_NAME
    labels, named = _names(engine.labels, count)
    return Runner(str(path), engine.backend, features, labels, named, task, engine.batch_range,
                  _EngineBackend(engine, name), notes, name, samples)


def engine_features(path: Path | EngineURL, engine: Engine) -> tuple[FeatureConfig, int | None, list[str]]:
    """The feature settings an engine's input is made with, its window in samples where it takes waveforms (the
    graph computes the fbank) else None, and notes; ConfigError, the engine closed, where the settings recorded
    at export do not give the graph's input."""

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


class _TorchBackend:
    """A torch module in inference mode; torch's thread count is the runner's until ``close`` puts it back."""

    def __init__(self, model: Any, scope: contextlib.ExitStack) -> None:
        self.model, self.scope = model, scope

    def infer(self, batch: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.model(torch.from_numpy(batch)).float().numpy()

    def close(self) -> None:
        self.scope.close()


def _torch_runner(source: str | os.PathLike, threads: int | None, like: dict[str, Any] | None) -> Runner:
    from fastast_deploy.checkpoints.loading import load_any, model_extra, resolve_run
    from fastast_deploy.checkpoints.native import load_model
    from fastast_deploy.model.cnn import CNNClassifier

    scope = contextlib.ExitStack()
    scope.enter_context(torch_threads(threads))
    try:
        if like is None:
            model = load_any(source)  # a CNN checkpoint or run, or anything load_model reads
        else:
            tome = like["tome"]
            model = load_model(resolve_run(source), tome_r=list(tome["effective_schedule"]),
                               prop_attn=tome["prop_attn"], input_frames=like["model"]["input_frames"])
    except BaseException:
        scope.close()
        raise
    config = model.config
    features = model.feature_config or FeatureConfig(num_mel_bins=config.num_mel_bins, frames=config.input_frames)
    backend = "pytorch (CNN)" if isinstance(model, CNNClassifier) else "pytorch"
    labels, named = _names(model.label_names, config.num_labels)
    return Runner(str(source), backend, features, labels, named, _task(model_extra(model)), BatchRange(1, 1, None),
                  _TorchBackend(model, scope), model=model)
