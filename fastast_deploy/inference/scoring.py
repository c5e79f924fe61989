"""Label scores of audio files through a `Runner`: the one windowing policy of predict, evaluate and bench.

Each file is cut into windows of the model's input length (T frames) starting every ``hop`` frames (default T:
every window of the file, no overlap); the last is zero-padded as `features.pad_or_cut` pads. Windows stream from
the file (``audio.streaming``) into batches shared across files, and each file's per-window scores (softmax for a
single-label model, else sigmoid) are pooled by mean (default) or max as they come back: memory is bounded by a
batch of windows, not by a file's length or the number of files. `WindowBatches` is that batching on its own, for
callers that keep each window's scores (`analyze`, live input).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fastast_deploy.engines.base import BatchRange, batch_chunks
from fastast_deploy.errors import AudioError, ConfigError, FastASTError
from fastast_deploy.files import shown_path
from fastast_deploy.inference.runner import Runner

POOLS = ("mean", "max")
DEFAULT_BATCH = 8  # windows per call where the engine sets no upper bound


@dataclass(frozen=True)
class FileScores:
    """One file's pooled scores (labels,) and how many windows they pool, or why it could not be read. ``path``
    is printable (`files.shown_path`: a file name that is not UTF-8 has ``\\xNN`` escapes)."""

    path: str
    windows: int = 0
    scores: np.ndarray | None = None
    error: str | None = None


def activate(logits: np.ndarray, activation: str) -> np.ndarray:
    """Scores from logits (n, labels): row-wise softmax, or elementwise sigmoid; computed in float64."""
    x = logits.astype(np.float64)
    if activation == "softmax":
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)
    return np.exp(-np.logaddexp(0.0, -x))  # sigmoid without overflow


def batch_size(batch: BatchRange, requested: int | None, fit: bool = False) -> int:
    """Windows per inference call: ``requested`` if the model takes it, else its largest (or DEFAULT_BATCH where
    it has none); a ``requested`` size outside the range is a ConfigError, or with ``fit`` the nearest it takes."""
    if requested is not None:
        if requested in batch:
            return requested
        if not fit:
            raise ConfigError(f"--batch {requested} is outside the model's batch range {batch}")
        return batch.max if batch.max is not None and requested > batch.max else batch.min
    return batch.max if batch.max is not None else max(DEFAULT_BATCH, batch.min)


def run_windows(runner: Runner, windows: np.ndarray, size: int) -> np.ndarray:
    """Logits (N, labels) for windows (N, T, F) or (N, samples), ``size`` at a time; a short last batch below the
    model's smallest (e.g. a static batch) is padded with zero windows whose outputs are dropped."""
    outputs = [runner.infer(chunk)[:real] for chunk, real in batch_chunks(windows, size, runner.batch)]
    return np.concatenate(outputs)


def failure_reason(err: AudioError, path: str) -> str:
    """The error without the path it names (the caller prints the path first)."""
    return " ".join(str(err).replace(f"audio file {path}", "audio file").replace(f"{path}: ", "").split())


def file_windows(runner: Runner, raw: str | os.PathLike, hop: int | None = None) -> Iterator[np.ndarray]:
    """``runner.file_inputs`` of one file, with an empty (0-byte) file refused as an AudioError first."""
    if Path(raw).is_file() and Path(raw).stat().st_size == 0:
        raise AudioError("the file is empty (0 bytes); expected an audio file (WAV, FLAC, OGG)")
    return runner.file_inputs(raw, hop)


def score_files(runner: Runner, paths: Iterable[str | os.PathLike], *, hop: int | None = None, pool: str = "mean",
                size: int | None = None) -> Iterator[FileScores]:
    """One FileScores per path, in order: every window every ``hop`` frames (None: no overlap) scored in batches
    of ``size`` windows (None: `batch_size`'s default) and pooled; files that cannot be read carry an error and
    the rest go on."""
    size = batch_size(runner.batch, None) if size is None else size
    pooled = _Pooled(runner, pool, size)
    for raw in paths:
        path = shown_path(raw)
        pooled.open(path)
        try:
            for window in file_windows(runner, raw, hop):
                pooled.add(window)
        except AudioError as err:
            pooled.fail(failure_reason(err, path))
        yield from pooled.finished()
    yield from pooled.finished(flush=True)


class WindowBatches:
    """Windows of any number of files queued for batched inference: ``add`` queues one window (T, F) or
    (samples,) under its owner (a file's key) and scores the queue once ``size`` windows wait; ``flush`` scores
    what waits. Both return the windows scored, as (owner, scores (labels,)) in the order added: `activate` of
    the logits; a NaN or inf logit is a FastASTError (the model is broken)."""

    def __init__(self, runner: Runner, size: int) -> None:
        self.runner, self.size = runner, size
        self.queue: list[tuple[Any, np.ndarray]] = []

    def add(self, owner: Any, window: np.ndarray) -> list[tuple[Any, np.ndarray]]:
        self.queue.append((owner, window))
        return self.flush() if len(self.queue) >= self.size else []

    def drop(self, owner: Any) -> None:
        """Forget the windows of ``owner`` that wait (its file failed)."""
        self.queue = [(o, w) for o, w in self.queue if o != owner]

    def waiting(self) -> set[Any]:
        """The owners with windows not yet scored."""
        return {o for o, _ in self.queue}

    def flush(self) -> list[tuple[Any, np.ndarray]]:
        if not self.queue:
            return []
        owners = [o for o, _ in self.queue]
        logits = run_windows(self.runner, np.stack([w for _, w in self.queue]), self.size)  # (N, labels)
        self.queue = []
        if not np.isfinite(logits).all():
            raise FastASTError(f"{self.runner.source} gave NaN or inf logits for finite inputs "
                               f"({int((~np.isfinite(logits)).any(axis=1).sum())} of {len(logits)} windows); the "
                               "model or engine is broken: rebuild it")
        return list(zip(owners, activate(logits, self.runner.activation), strict=True))


class _Pooled:
    """Each file's running pooled scores (sum or max, and count) of its windows scored in `WindowBatches`."""

    def __init__(self, runner: Runner, pool: str, size: int) -> None:
        if pool not in POOLS:
            raise ConfigError(f"unknown pooling {pool!r}; available: {list(POOLS)}")
        self.pool, self.batches = pool, WindowBatches(runner, size)
        self.files: dict[int, list[Any]] = {}  # index -> [path, pooled scores or None, windows, error]
        self.opened = self.yielded = 0

    def open(self, path: str) -> None:
        self.files[self.opened] = [path, None, 0, None]
        self.opened += 1

    def add(self, window: np.ndarray) -> None:
        self._pool(self.batches.add(self.opened - 1, window))

    def fail(self, reason: str) -> None:
        self.files[self.opened - 1][3] = reason
        self.batches.drop(self.opened - 1)

    def _pool(self, scored: list[tuple[Any, np.ndarray]]) -> None:
        for owner, row in scored:
            entry = self.files[owner]
            entry[1] = row if entry[1] is None else (entry[1] + row if self.pool == "mean"
                                                     else np.maximum(entry[1], row))
            entry[2] += 1

    def finished(self, flush: bool = False) -> Iterator[FileScores]:
        """Files, in input order, whose windows are all scored; the newest may still be reading unless ``flush``."""
        if flush:
            self._pool(self.batches.flush())
        waiting = self.batches.waiting()
        newest = self.opened - 1
        while self.yielded < self.opened and self.yielded not in waiting and (flush or self.yielded < newest):
            path, scores, count, error = self.files.pop(self.yielded)
            self.yielded += 1
            if error is not None:
                yield FileScores(path, error=error)
            else:
                yield FileScores(path, count, scores / count if self.pool == "mean" else scores)


def window_hits(scores: np.ndarray, min_score: float, top_k: int | None) -> list[tuple[int, float]]:
    """(label index, score) of a window's scores (labels,): its ``top_k`` best (None: all) scoring at least
    ``min_score``, best first."""
    order = np.argsort(-scores, kind="stable")[:top_k]
    return [(int(i), float(scores[i])) for i in order if scores[i] >= min_score]
