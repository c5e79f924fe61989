"""The one Engine interface, its errors, and the batch range every engine is built for. numpy only."""

from __future__ import annotations

import abc
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar

import numpy as np

from fastast_deploy.contract import BATCH
from fastast_deploy.errors import FastASTError

# How long a CPU engine runs untimed before each timed call when timed beside others (`Engine.rewarm_s`): it
# outlasts the time ONNX Runtime's threads spin after a run (docs/benchmarks.md; evaluation.timing uses it).
CPU_REWARM_S = 0.1
Shape = tuple[int | str, ...]  # ints, and BATCH where the batch is dynamic
Spec = tuple[Shape, np.dtype]


class EngineError(FastASTError):
    """An engine could not be built, loaded or run as asked."""


class EngineMismatchError(EngineError):
    """An engine or its sidecar does not fit this machine, its file or its source model."""


class BackendUnavailableError(EngineError):
    """A backend, provider or GPU that was asked for is not installed or not visible here."""


@dataclass(frozen=True)
class BatchRange:
    """Batch sizes an engine accepts: ``min <= opt <= max``; ``max=None`` means unbounded (ONNX Runtime only).
    ``opt`` is the size TensorRT times its tactics for."""

    min: int = 1
    opt: int = 1
    max: int | None = None

    def __post_init__(self) -> None:
        if self.min < 1:
            raise EngineError(f"batch sizes must be >= 1, got min batch {self.min}")
        upper = self.max if self.max is not None else self.opt
        if not self.min <= self.opt <= upper:
            raise EngineError(f"batch range needs min <= opt <= max, got min {self.min}, opt {self.opt}, "
                              f"max {self.max}")

    def __contains__(self, batch: object) -> bool:
        return isinstance(batch, int) and self.min <= batch and (self.max is None or batch <= self.max)

    def __str__(self) -> str:
        return f"{self.min}..{self.max if self.max is not None else 'any'} (opt {self.opt})"

    def to_dict(self) -> dict[str, int | None]:
        return {"min": self.min, "opt": self.opt, "max": self.max}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BatchRange:
        return cls(int(data["min"]), int(data["opt"]), None if data.get("max") is None else int(data["max"]))


def batch_chunks(x: np.ndarray, size: int, batch: BatchRange) -> Iterator[tuple[np.ndarray, int]]:
    """Split (N, ...) inputs into chunks of ``size`` for an engine taking ``batch``; a short last chunk below the
    engine's smallest batch (e.g. a static batch) is padded with zeros. Yields (chunk, how many rows are real):
    the caller keeps ``output[:real]``."""
    for start in range(0, len(x), size):
        chunk = x[start : start + size]
        real = len(chunk)
        if real < batch.min:
            chunk = np.concatenate([chunk, np.zeros((batch.min - real, *chunk.shape[1:]), dtype=chunk.dtype)])
        yield chunk, real


def specs_from(tensors: Mapping[str, Mapping[str, Any]]) -> dict[str, Spec]:
    """``{"fbank": {"shape": ["batch", 1024, 128], "dtype": "float32"}}`` -> ``{"fbank": (("batch", 1024, 128),
    dtype('float32'))}``."""
    return {name: (tuple(t["shape"]), np.dtype(t["dtype"])) for name, t in tensors.items()}


def format_shape(shape: Shape) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


def check_feed(feed: Mapping[str, Any], specs: Mapping[str, Spec], batch: BatchRange,
               engine: str) -> dict[str, np.ndarray]:
    """Inputs as contiguous arrays of the spec's dtype; a one-line EngineError for missing or extra names, wrong
    rank or dims, non-castable dtypes, or a batch outside the engine's range."""
    if set(feed) != set(specs):
        raise EngineError(f"{engine}: got inputs {sorted(feed)}, expected {sorted(specs)}")
    arrays: dict[str, np.ndarray] = {}
    batches = set()
    for name, (shape, dtype) in specs.items():
        array = np.asarray(feed[name])
        fits = array.ndim == len(shape) and all(
            isinstance(d, str) or d == n for d, n in zip(shape, array.shape, strict=True))
        if not fits:
            raise EngineError(f"{engine}: input {name!r} has shape {tuple(array.shape)}, expected "
                              f"{format_shape(shape)}")
        if not np.can_cast(array.dtype, dtype, casting="same_kind"):
            raise EngineError(f"{engine}: input {name!r} is {array.dtype}, expected {dtype}")
        arrays[name] = np.ascontiguousarray(array, dtype=dtype)
        # a static batch was checked with the other dims above
        batches.update(n for d, n in zip(shape, array.shape, strict=True) if d == BATCH)
    if len(batches) > 1:
        raise EngineError(f"{engine}: inputs disagree on the batch size ({sorted(batches)})")
    for size in batches:
        if size not in batch:
            raise EngineError(f"{engine}: batch {size} is outside this engine's batch range {batch}; split the "
                              "input or rebuild with other --min-batch / --max-batch")
    return arrays


@dataclass(frozen=True)
class BuildResult:
    """What a build wrote: the engine, its sidecar, the sidecar's contents, and warnings for the user."""

    path: Path
    sidecar: Path
    metadata: dict[str, Any]
    notes: tuple[str, ...]


class Engine(abc.ABC):
    """A loaded engine: ``infer({"fbank": (B, T, F) float32}) -> {"logits": (B, labels) float32, ...}``.

    ``metadata`` is the engine's sidecar (for a plain exported model, the same layout built from the model's
    own metadata); ``metadata["export"]`` is what the exporter recorded (ToMe schedule, token counts, labels,
    features, precision). Use it as a context manager, or call ``close()``.
    """

    backend: ClassVar[str]

    @property
    def rewarm_s(self) -> float:
        """How long this engine runs untimed before each timed call when timed beside others
        (``time_interleaved(rewarm_s=...)``): the steady state a stream of requests finds. 0 unless a backend
        says otherwise."""
        return 0.0

    def __init__(self, path: Path, metadata: dict[str, Any]) -> None:
        self.path = Path(path)
        self._metadata = metadata
        self._inputs = specs_from(metadata["inputs"])
        self._outputs = specs_from(metadata["outputs"])
        self._batch = BatchRange.from_dict(metadata["batch"])

    @property
    def metadata(self) -> dict[str, Any]:
        return self._metadata

    @property
    def input_specs(self) -> dict[str, Spec]:
        return dict(self._inputs)

    @property
    def output_specs(self) -> dict[str, Spec]:
        return dict(self._outputs)

    @property
    def batch_range(self) -> BatchRange:
        return self._batch

    @property
    def labels(self) -> list[str] | None:
        return self._metadata["export"].get("labels")

    def infer(self, feed: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Run one batch. Returned arrays belong to the caller (never reused by the next call)."""
        return self._infer(check_feed(feed, self._inputs, self._batch, self.path.name))

    @abc.abstractmethod
    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    @abc.abstractmethod
    def close(self) -> None:
        """Release the session or GPU context; the engine cannot run afterwards."""

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, batch {self._batch})"
