"""`fastast-deploy tune`'s measurements on a real model: features cached once, candidates scored in PyTorch, the
front built on the target backend and timed side by side, every measurement kept in DIR/candidates.jsonl (and
DIR/cache/) so that a rerun resumes.

Scores: every clip is cut into windows of the model's input length (no overlap) as `evaluate` cuts it, the fbank
of every window computed once; each candidate schedule is set on the one PyTorch model (`set_schedule`) and its
window scores (softmax or sigmoid) pooled by mean per clip. Timing: `bench.time_round_robin` (interleaved,
steady state) over engines exported and built as bench builds them, or over PyTorch models (``pytorch``)."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from fastast_deploy.contract import INPUT_NAME
from fastast_deploy.errors import ConfigError, DatasetError, unreadable_clips
from fastast_deploy.files import shown_path, write_bytes_atomic
from fastast_deploy.metrics import mean_average_precision
from fastast_deploy.model.schedule import pad_schedule

JOURNAL = "candidates.jsonl"
CACHE = "cache"  # DIR/cache/<key>.npy: a candidate's per-clip scores
JOURNAL_SCHEMA = "fastast-deploy/tune-candidate"


@dataclass(frozen=True)
class TuneOptions:
    backend: str = "onnxruntime"  # or "tensorrt", "pytorch"
    provider: str = "cpu"
    batch: int = 8  # clips per timed call, windows per scoring call
    threads: int | None = None
    precision: str = "fp32"
    input: str = INPUT_NAME
    frames: int | None = None
    timed: int = 5  # front schedules timed at most (r = 0 and the best constant r besides)
    rounds: int = 10
    warmup: int = 2
    holdout: float = 0.3
    seed: int = 0

    def __post_init__(self) -> None:
        if self.backend == "pytorch" and self.input != INPUT_NAME:
            raise ConfigError("--input waveform needs an exported backend (onnxruntime or tensorrt); the PyTorch "
                              "model takes the fbank")
        if self.precision not in ("fp32", "fp16"):
            raise ConfigError(f"--precision must be fp32 or fp16, got {self.precision!r}")


def set_schedule(model: Any, schedule: Sequence[int]) -> tuple[int, ...]:
    """Give a FastAST a new per-block r in place (no rebuild: merging has no weights); the clipped schedule."""
    from fastast_deploy.model.config import TomeConfig

    model.set_tome(TomeConfig(pad_schedule(schedule, model.config.depth), model.tome.prop_attn,
                              model.tome.merge_impl))
    return model.schedule


class Journal:
    """DIR/candidates.jsonl: one JSON object a line, appended whole (one write, then fsync); a line cut short by
    an interruption is ignored when read. Per-clip scores go to DIR/cache/<key>.npy, written atomically first."""

    def __init__(self, folder: Path, restart: bool = False) -> None:
        self.path, self.cache = folder / JOURNAL, folder / CACHE
        if restart:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        self.entries: dict[str, dict[str, Any]] = {}
        if self.path.is_file():
            for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if not isinstance(entry, dict) or entry.get("schema") != JOURNAL_SCHEMA:
                    raise DatasetError(f"{shown_path(self.path)} is not a tune candidates file; pass --restart to "
                                       "start afresh or choose another -o")
                self.entries[str(entry.get("key"))] = entry

    def get(self, key: str) -> dict[str, Any] | None:
        return self.entries.get(key)

    def scores(self, key: str) -> np.ndarray | None:
        if key not in self.entries:
            return None
        try:
            return np.load(self.cache / f"{key}.npy", allow_pickle=False)
        except (OSError, ValueError):
            return None

    def add(self, key: str, entry: dict[str, Any], scores: np.ndarray | None = None) -> None:
        if scores is not None:
            buffer = io.BytesIO()
            np.save(buffer, scores, allow_pickle=False)
            write_bytes_atomic(self.cache / f"{key}.npy", buffer.getvalue())
        entry = {"schema": JOURNAL_SCHEMA, "key": key, **entry}
        line = (json.dumps(entry, sort_keys=True) + "\n").encode()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            if os.fstat(fd).st_size and not self.path.read_bytes().endswith(b"\n"):
                line = b"\n" + line  # after a line cut short
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        self.entries[key] = entry


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:24]


def data_digest(files: Sequence[Path], targets: np.ndarray) -> str:
    """Names, sizes, modification times and labels of the clips: what scores depend on."""
    stats = []
    for f in files:
        st = Path(f).stat()
        stats.append([shown_path(f), st.st_size, st.st_mtime_ns])
    return digest([stats, targets.astype(np.uint8).tobytes().hex()])


class Windows:
    """The normalised fbank of every window of every clip (each clip cut as `evaluate` cuts it), computed once."""

    def __init__(self, files: Sequence[Path], features: Any,
                 progress: Callable[[int, int], None] | None = None) -> None:
        from fastast_deploy.audio.streaming import stream_windows
        from fastast_deploy.errors import AudioError

        rows, owners, failed = [], [], []
        for i, path in enumerate(files):
            try:
                for window in stream_windows(path, features, features.frames):
                    rows.append(window)
                    owners.append(i)
            except AudioError as err:
                failed.append(f"{shown_path(path)}: {err}")
            if progress is not None:
                progress(i + 1, len(files))
        if failed:
            raise unreadable_clips(failed, len(files), len(files) - len(failed))
        self.x = np.stack(rows) if rows else np.zeros((0, features.frames, features.num_mel_bins), np.float32)
        self.owners = np.asarray(owners, dtype=int)
        self.clips = len(files)


class TorchScorer:
    """Per-clip pooled scores (clips, labels) of one model under any schedule, on cached windows."""

    def __init__(self, model: Any, activation: str, batch: int, device: str = "cpu") -> None:
        # at least SCORE_BATCH windows a call: scoring is throughput, not the latency --batch times
        self.model, self.activation, self.batch, self.device = model.to(device), activation, max(batch, 32), device

    def __call__(self, schedule: Sequence[int], windows: Windows) -> np.ndarray:
        import torch

        from fastast_deploy.inference.scoring import activate

        set_schedule(self.model, schedule)
        out = []
        with torch.inference_mode():
            for start in range(0, len(windows.x), self.batch):
                chunk = torch.from_numpy(windows.x[start : start + self.batch]).to(self.device)
                out.append(self.model(chunk).float().cpu().numpy())
        logits = np.concatenate(out)
        if not np.isfinite(logits).all():
            raise ConfigError(f"the model gave NaN or inf logits under r per block {list(schedule)}")
        scores = activate(logits, self.activation)
        pooled = np.zeros((windows.clips, scores.shape[1]))
        np.add.at(pooled, windows.owners, scores)
        counts = np.bincount(windows.owners, minlength=windows.clips)[:, None]
        return pooled / np.maximum(counts, 1)


def metric_function(task: str) -> Callable[[np.ndarray, np.ndarray], float]:
    """accuracy (share of clips whose top score is one of its labels) or mAP, of scores against multi-hot targets."""
    from fastast_deploy.metrics import accuracy

    return accuracy if task == "singlelabel" else mean_average_precision


def time_schedules(source: str, schedules: dict[str, tuple[int, ...]], options: TuneOptions,
                   model: Any, workdir: Path) -> dict[str, dict[str, float]]:
    """Clips/s of every schedule (keys: labels), timed side by side: engines built as bench builds them, or the
    PyTorch model (``pytorch``: one copy per schedule)."""
    from fastast_deploy.engines.base import CPU_REWARM_S
    from fastast_deploy.evaluation.timing import time_interleaved

    if options.backend == "pytorch":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
        if options.precision == "fp16" and device == "cpu":
            raise ConfigError("--precision fp16 with --backend pytorch needs a CUDA GPU")
        dtype = torch.float16 if options.precision == "fp16" else torch.float32
        config = model.config
        x = torch.from_numpy(np.random.default_rng(3).standard_normal(
            (options.batch, config.input_frames, config.num_mel_bins)).astype(np.float32) * 0.5).to(device, dtype)
        models = {}
        for key, schedule in schedules.items():
            copy_ = copy.deepcopy(model).to(device, dtype)
            set_schedule(copy_, schedule)
            models[key] = copy_

        def run(m: Any) -> None:
            with torch.inference_mode():
                m(x)
            if device == "cuda":
                torch.cuda.synchronize()

        timed = time_interleaved({k: partial(run, m) for k, m in models.items()}, batch=options.batch,
                                 warmup=options.warmup, rounds=options.rounds,
                                 rewarm_s=CPU_REWARM_S if device == "cpu" else 0.0)
        return {k: t.as_dict() for k, t in timed.items()}
    return _time_engines(source, schedules, options, workdir)


def _time_engines(source: str, schedules: dict[str, tuple[int, ...]], options: TuneOptions,
                  workdir: Path) -> dict[str, dict[str, float]]:
    from fastast_deploy.checkpoints.native import load_model
    from fastast_deploy.engines import load_engine
    from fastast_deploy.engines.build import BuildOptions, OrtBuildOptions, TrtBuildOptions, build_engine, engine_path
    from fastast_deploy.evaluation.bench import BenchOptions, time_round_robin
    from fastast_deploy.exporters.onnx_export import ExportOptions, export_onnx

    build_options: BuildOptions
    if options.backend == "tensorrt":
        build_options = TrtBuildOptions(opt_batch=options.batch, max_batch=max(options.batch, 32))
    else:
        build_options = OrtBuildOptions(provider=options.provider, threads=options.threads or 0)
    engines: dict[Any, Any] = {}
    try:
        with tempfile.TemporaryDirectory(prefix=".tune-engines-", dir=workdir) as tmp:
            for i, (key, schedule) in enumerate(schedules.items()):
                m = load_model(source, tome_r=list(schedule), input_frames=options.frames)
                onnx = export_onnx(m, Path(tmp) / f"s{i}.onnx",
                                   ExportOptions(input=options.input, precision=options.precision), check=False).path
                built = build_engine(onnx, engine_path(Path(tmp), f"s{i}", options.backend), options.backend,
                                     build_options)
                engines[key] = load_engine(built.path)
            bench = BenchOptions(rs=(0,), backend=options.backend, provider=options.provider, batch=options.batch,
                                 warmup=options.warmup, rounds=options.rounds, input=options.input)
            return time_round_robin(engines, bench)
    finally:
        for engine in engines.values():
            engine.close()
