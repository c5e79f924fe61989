"""Label scores for audio files, from a checkpoint (run in PyTorch), an exported .onnx or a built engine, through
the one runner (`inference.runner.open_runner`).

The windowing policy is the one `evaluate` scores by (`inference.scoring`): every window of the model's input
length in the file, no overlap by default (``hop_s`` sets another hop), each window's scores (softmax for a
single-label model, else sigmoid) pooled by mean (or max), streamed in constant memory.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fastast_deploy.audio.frames import hop_frames
from fastast_deploy.errors import ConfigError
from fastast_deploy.inference.runner import Runner
from fastast_deploy.inference.scoring import POOLS, FileScores, batch_size, score_files


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


def predict_files(runner: Runner, paths: Iterable[str | os.PathLike],
                  options: PredictOptions = PredictOptions()) -> Iterator[FileScores]:
    """One FileScores per path, in order (`inference.scoring.score_files` with the options' hop, pooling and
    batch); files that cannot be read carry an error and the rest go on."""
    size = batch_size(runner.batch, options.batch)
    hop = hop_frames(options.hop_s, runner.features.frames)
    return score_files(runner, paths, hop=hop, pool=options.pool, size=size)


def top_k(scores: np.ndarray, labels: Sequence[str], k: int) -> list[dict[str, Any]]:
    """The k best labels, highest score first: ``[{"index", "label", "score"}]``."""
    order = np.argsort(-scores, kind="stable")[:k]
    return [{"index": int(i), "label": labels[i], "score": float(scores[i])} for i in order]


def prediction_dict(result: FileScores, labels: Sequence[str], k: int, all_scores: bool) -> dict[str, Any]:
    """One file as JSON: path, windows, top_k (and every score with ``all_scores``), or path and error."""
    if result.error is not None or result.scores is None:
        return {"path": result.path, "error": result.error}
    entry: dict[str, Any] = {"path": result.path, "windows": result.windows,
                             "top_k": top_k(result.scores, labels, k)}
    if all_scores:
        entry["scores"] = [float(s) for s in result.scores]
    return entry


def format_prediction(result: FileScores, labels: Sequence[str], k: int) -> str:
    """A text block: the file and its window count, then one line per top label with its score."""
    assert result.scores is not None, "format_prediction takes a file that was predicted"
    plural = "s" if result.windows != 1 else ""
    lines = [f"{result.path} ({result.windows} window{plural})"]
    lines += [f"  {t['score']:.4f}  {t['label']}" for t in top_k(result.scores, labels, k)]
    return "\n".join(lines)
