"""Label scores of audio files through a `Runner`: the one windowing policy of predict, evaluate and bench.

Each file is cut into windows of the model's input length (T frames) starting every ``hop`` frames (default T:
every window of the file, no overlap); the last is zero-padded as `features.pad_or_cut` pads. Windows stream from
the file (``audio.streaming``) into batches shared across files, and each file's per-window scores (softmax for a
single-label model, else sigmoid) are pooled by mean (default) or max as they come back: memory is bounded by a
batch of windows, not by a file's length or the number of files.
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


def _reason(err: AudioError, path: str) -> str:
    """The error without the path it names (the caller prints the path first)."""
    return " ".join(str(err).replace(f"audio file {path}", "audio file").replace(f"{path}: ", "").split())


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
            if Path(raw).is_file() and Path(raw).stat().st_size == 0:
                raise AudioError("the file is empty (0 bytes); expected an audio file (WAV, FLAC, OGG)")
            for window in runner.file_inputs(raw, hop):
                pooled.add(window)
        except AudioError as err:
            pooled.fail(_reason(err, path))
        yield from pooled.finished()
    yield from pooled.finished(flush=True)


class _Pooled:
    """Windows queued for batched inference, and each file's running pooled scores (sum or max, and count)."""

    def __init__(self, runner: Runner, pool: str, size: int) -> None:
        if pool not in POOLS:
            raise ConfigError(f"unknown pooling {pool!r}; available: {list(POOLS)}")
        self.runner, self.pool, self.size = runner, pool, size
        self.files: dict[int, list[Any]] = {}  # index -> [path, pooled scores or None, windows, error]
        self.opened = self.yielded = 0
        self.queue: list[tuple[int, np.ndarray]] = []  # (file index, window (T, F) or (samples,))

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
        logits = run_windows(self.runner, np.stack([w for _, w in self.queue]), self.size)  # (N, labels)
        self.queue = []
        if not np.isfinite(logits).all():
            raise FastASTError(f"{self.runner.source} gave NaN or inf logits for finite inputs "
                               f"({int((~np.isfinite(logits)).any(axis=1).sum())} of {len(logits)} windows); the "
                               "model or engine is broken: rebuild it")
        for owner, row in zip(owners, activate(logits, self.runner.activation), strict=True):
            entry = self.files[owner]
            entry[1] = row if entry[1] is None else (entry[1] + row if self.pool == "mean"
                                                     else np.maximum(entry[1], row))
            entry[2] += 1

    def finished(self, flush: bool = False) -> Iterator[FileScores]:
        """Files, in input order, whose windows are all scored; the newest may still be reading unless ``flush``."""
        if flush:
            self._run()
        waiting = {i for i, _ in self.queue}
        newest = self.opened - 1
        while self.yielded < self.opened and self.yielded not in waiting and (flush or self.yielded < newest):
            path, scores, count, error = self.files.pop(self.yielded)
            self.yielded += 1
            if error is not None:
                yield FileScores(path, error=error)
            else:
                yield FileScores(path, count, scores / count if self.pool == "mean" else scores)
