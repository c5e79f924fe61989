"""`fastast-deploy verify`: does an engine answer like its reference, and how much faster is it than the
unmerged model built the same way? The result is a report (``REPORT_SCHEMA``, documented in
docs/verify-report.md) whose ``passed`` decides the exit code."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from fastast_deploy.contract import (
    OUTPUT_NAME,
    PACKAGE_VERSION,
    WAVEFORM_NAME,
    Tolerance,
    merge_output_names,
    tolerance,
)
from fastast_deploy.engines import Engine, load_engine
from fastast_deploy.engines.base import batch_chunks
from fastast_deploy.errors import FastASTError, UnreadableClipsError, UsageError, VerifyUsageError
from fastast_deploy.evaluation.inputs import (
    FAIL_ON_UNREADABLE,
    InputSet,
    Reference,
    Unreadable,
    load_inputs,
    load_reference,
    load_waveform_inputs,
)
from fastast_deploy.evaluation.timing import time_interleaved
from fastast_deploy.metrics import (
    accuracy,
    check_row,
    dummy_inputs,
    fbank_like,
    mean_average_precision,
    merge_agreement,
    parity_checks,
)
from fastast_deploy.model.config import ModelConfig

REPORT_SCHEMA = "fastast-deploy/verify"
REPORT_VERSION = 1


def default_thresholds(precision: str) -> Tolerance:
    """verify's pass conditions for an engine of ``precision``: contract.TOLERANCES["verify"] (fp32's for an
    unknown precision). Every logit within atol + rtol * |reference|, every clip's cosine >= min_cosine, the top-1
    labels agreeing on at least min_top1 of the clips, and no NaN or inf anywhere."""
    return tolerance("verify", precision)


@dataclass(frozen=True)
class SpeedOptions:
    batches: tuple[int, ...] = (1, 8)
    warmup: int = 3
    iterations: int = 20
    baseline: str | None = "auto"  # a path, "auto" (r = 0 built the same way on the fly) or None (no baseline)


def input_name(engine: Engine) -> str:
    """The engine's one input: ``fbank`` or ``waveform``."""
    return next(iter(engine.input_specs))


def engine_feed(engine: Engine, batch: int, seed: int) -> dict[str, np.ndarray]:
    """A timing input of ``batch`` rows: fbank-like arrays, or waveforms for a waveform-in engine."""
    name = input_name(engine)
    rate = int((engine.metadata["export"].get("features") or {}).get("sample_rate", 16000))
    return {name: dummy_inputs(name, engine.input_specs[name][0][1:], batch, seed, rate)}


def run_engine(engine: Engine, x: np.ndarray, batch: int) -> dict[str, np.ndarray]:
    """All outputs for (N, T, F) inputs (or (N, samples) waveforms for a waveform-in engine) in batches the
    engine accepts (a static batch is padded with zeros)."""
    rng = engine.batch_range
    size = batch if batch in rng else (rng.max if rng.max is not None and batch > rng.max else rng.min)
    outputs: dict[str, list[np.ndarray]] = {}
    feed_name = input_name(engine)
    for chunk, real in batch_chunks(x, size, rng):
        for name, value in engine.infer({feed_name: chunk}).items():
            outputs.setdefault(name, []).append(value[:real])
    return {name: np.concatenate(parts) for name, parts in outputs.items()}


def merge_outputs(export: dict[str, Any], outputs: dict[str, np.ndarray]) -> list[np.ndarray] | None:
    """The engine's merge positions in block order (src, dst per merging block), when it exposes them."""
    names = merge_output_names(export["tome"]["effective_schedule"])
    if not names or not all(n in outputs for n in names):
        return None
    return [outputs[n] for n in names]


def parity_section(reference: Reference, outputs: dict[str, np.ndarray], export: dict[str, Any],
                   inputs: InputSet, thresholds: Tolerance) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    logits = outputs[OUTPUT_NAME]
    figures, parity = parity_checks(reference.logits, logits, thresholds)  # the one parity check
    engine_merges = merge_outputs(export, outputs)
    if engine_merges is not None and reference.merges:
        per_block = merge_agreement(reference.merges, engine_merges)
        blocks = [i for i, r in enumerate(export["tome"]["effective_schedule"]) if r > 0]
        figures["merge_agreement"] = dict(zip((f"block{i}" for i in blocks), per_block, strict=True))
    if inputs.labels is not None:
        figures["accuracy"] = {"reference": accuracy(reference.logits, inputs.labels),
                               "engine": accuracy(logits, inputs.labels)}
        if inputs.labels.ndim == 2 and (inputs.labels.sum(axis=1) > 1).any():  # multi-label: mAP too
            figures["mAP"] = {"reference": mean_average_precision(reference.logits, inputs.labels),
                              "engine": mean_average_precision(logits, inputs.labels)}
    non_finite_inputs = int((~np.isfinite(inputs.fbank)).any(axis=(1, 2)).sum())
    checks = [check_row("finite inputs", non_finite_inputs, "== 0", non_finite_inputs == 0), *parity]
    return figures, checks


def time_side_by_side(engines: dict[str, Engine], batch: int, warmup: int, rounds: int) -> dict[str, dict[str, float]]:
    """Wall-clock latency of ``infer`` (which returns host arrays, so device work is complete) per batch, the
    engines alternating round by round (``time_interleaved``)."""
    feed = engine_feed(next(iter(engines.values())), batch, seed=7)
    timed = time_interleaved({name: partial(e.infer, feed) for name, e in engines.items()}, batch=batch,
                             warmup=warmup, rounds=rounds, rewarm_s=max(e.rewarm_s for e in engines.values()))
    rows: dict[str, dict[str, Any]] = {name: t.as_dict() for name, t in timed.items()}
    if all(callable(getattr(e, "time_device", None)) for e in engines.values()):  # TensorRT: device time too
        for name, device in device_side_by_side(engines, feed, warmup, rounds).items():
            rows[name]["device"] = device
    return rows


def device_side_by_side(engines: dict[str, Engine], feed: dict[str, np.ndarray], warmup: int,
                        rounds: int) -> dict[str, dict[str, Any]]:
    """GPU compute with host copies apart (``TensorRTEngine.time_device``, as trtexec reports them), the engines
    alternating one timed run per round like ``time_interleaved``; medians over rounds in ms."""
    from fastast_deploy.engines.gpu import summarize_device_times

    runs: dict[str, list[Any]] = {name: [] for name in engines}
    for index in range(rounds):
        for name, engine in engines.items():
            runs[name].append(engine.time_device(feed, warmup=warmup if index == 0 else 0, iterations=1))
    return {name: summarize_device_times([t.h2d_ms / 1e3 for t in timed], [t.compute_ms / 1e3 for t in timed],
                                         [t.d2h_ms / 1e3 for t in timed], timed[0].source).to_dict()
            for name, timed in runs.items()}


def build_baseline(engine: Engine, source: str, workdir: Path) -> Engine:
    """The same model with r = 0, exported and built the way ``engine`` was (same backend, precision, options)."""
    from fastast_deploy.checkpoints.native import load_model
    from fastast_deploy.engines.build import build_engine, engine_path, options_like
    from fastast_deploy.exporters.onnx_export import ExportOptions, export_onnx

    meta, export = engine.metadata, engine.metadata["export"]
    model = load_model(source, tome_r=0, input_frames=export["model"]["input_frames"])
    options = ExportOptions(opset=export["opset"], batch=export["batch"], precision=export["precision"],
                            input=input_name(engine))
    # int8: calibrated on fbank-like clips; the scales set the baseline's accuracy, not its speed (all it is for)
    calibration = fbank_like(8, model.config.input_frames, model.config.num_mel_bins) if options.precision == "int8" \
        else None
    onnx_path = export_onnx(model, workdir / "baseline.onnx", options, check=False, calibration=calibration).path
    if meta["backend"] == "onnxruntime" and not meta["onnxruntime"].get("offline", True):
        ort = meta["onnxruntime"]  # a plain exported model opened directly: open the baseline the same way
        return load_engine(onnx_path, provider=ort["provider"], threads=ort.get("intra_op_threads") or None)
    built = build_engine(onnx_path, engine_path(workdir, "baseline", meta["backend"]), meta["backend"],
                         options_like(meta))
    return load_engine(built.path)


def _provider(meta: dict[str, Any]) -> str | None:
    return (meta.get("onnxruntime") or {}).get("provider")


def baseline_differences(engine: Engine, base: dict[str, Any]) -> list[str]:
    """How the engine metadata ``base`` of a --baseline ENGINE differs from an r = 0 twin of ``engine``: r per
    block (all zeros), model geometry and input, precision, backend (and ONNX Runtime provider)."""
    meta, export = engine.metadata, engine.metadata["export"]
    diffs = []
    schedule = list(base["export"]["tome"]["effective_schedule"])
    if any(schedule):
        diffs.append(f"its r per block is {schedule}, a baseline's is 0 in every block")
    model, base_model = export["model"], base["export"]["model"]
    for key in [*model, *(k for k in base_model if k not in model)]:
        if model.get(key) != base_model.get(key):
            diffs.append(f"its model {key} is {base_model.get(key)}, the engine's {model.get(key)}")
    if list(base["export"].get("inputs", {})) != list(export.get("inputs", {})):
        diffs.append(f"it takes {list(base['export'].get('inputs', {}))}, the engine {list(export.get('inputs', {}))}")
    for key in ("precision", "backend"):
        if base[key] != meta[key]:
            diffs.append(f"its {key} is {base[key]}, the engine's {meta[key]}")
    if base["backend"] == meta["backend"] and _provider(base) != _provider(meta):
        diffs.append(f"its ONNX Runtime provider is {_provider(base)}, the engine's {_provider(meta)}")
    return diffs


def check_baseline(engine: Engine, path: str) -> dict[str, Any]:
    """The engine metadata of a --baseline ENGINE, read without opening it (its sidecar, or a plain export's own
    metadata, opened like ``engine``), checked to be ``engine`` with r = 0: VerifyUsageError naming what differs."""
    from fastast_deploy.engines.onnx_model import read_onnx_model
    from fastast_deploy.engines.sidecar import check_sidecar, read_sidecar

    fix = ("give an r = 0 export of the same model with the same precision, built with the same backend, or "
           "--baseline auto (builds that one from the checkpoint)")
    if not Path(path).is_file():
        raise VerifyUsageError(f"--baseline {path} does not exist or is not a file; {fix}")
    try:
        data = read_sidecar(path)
        if data is not None:
            check_sidecar(data, path)
        else:  # a plain exported model: opened in ONNX Runtime like the engine (build_baseline does the same)
            info = read_onnx_model(path)
            ort = {"provider": _provider(engine.metadata), "offline": False}
            data = {"backend": "onnxruntime", "precision": info.precision, "export": info.metadata, "onnxruntime": ort}
    except FastASTError as err:
        raise VerifyUsageError(f"--baseline {path}: {err} (or use --baseline auto)") from None
    diffs = baseline_differences(engine, data)
    if diffs:
        raise VerifyUsageError(f"--baseline {path} is not {engine.path.name} with r = 0: {'; '.join(diffs)}; {fix}")
    return data


def open_baseline(engine: Engine, path: str, data: dict[str, Any]) -> Engine:
    """Open a checked --baseline ENGINE (``data``: ``check_baseline``'s), a plain export with the engine's provider
    and threads."""
    if data["backend"] == "onnxruntime" and not data["onnxruntime"].get("offline", True):
        ort = engine.metadata["onnxruntime"]
        return load_engine(path, provider=ort["provider"], threads=ort.get("intra_op_threads") or None)
    return load_engine(path)


def speed_section(engine: Engine, options: SpeedOptions, source: str | None,
                  given: dict[str, Any] | None = None) -> dict[str, Any]:
    """Throughput and latency per batch size of the engine and its baseline, side by side. ``given``: the checked
    metadata of a --baseline ENGINE (``check_baseline``)."""
    from fastast_deploy.model.flops import model_flops

    export = engine.metadata["export"]
    batches = [b for b in options.batches if b in engine.batch_range] or [engine.batch_range.min]
    section: dict[str, Any] = {"batches": {}, "baseline": None, "timing": "wall clock"
                               + ("; TensorRT device time under 'device'" if engine.backend == "tensorrt" else "")
                               + (f"; each timed call after {engine.rewarm_s:g} s of untimed calls of the same "
                                  "engine (CPU steady state)" if engine.rewarm_s else "")}
    with tempfile.TemporaryDirectory(prefix="fastast-verify-") as tmp:
        baseline = None
        if options.baseline == "auto":
            if source is None or not Path(source).exists():
                section["baseline_note"] = ("no baseline: the checkpoint the engine came from is not available; "
                                            "give --reference CHECKPOINT or --baseline ENGINE")
            else:
                baseline = build_baseline(engine, source, Path(tmp))
                section["baseline"] = "r = 0, exported and built the same way"
        elif options.baseline:
            baseline = open_baseline(engine, options.baseline, given or check_baseline(engine, options.baseline))
            section["baseline"] = options.baseline
        # FLOPs of the baseline's own effective schedule (r = 0 without one) over the engine's: the ideal speed-up
        config = ModelConfig.from_dict(export["model"])
        base_schedule = baseline.metadata["export"]["tome"]["effective_schedule"] if baseline is not None else ()
        section["flop_ratio"] = (model_flops(config, base_schedule)
                                 / model_flops(config, export["tome"]["effective_schedule"]))
        try:
            for b in batches:
                # Engine and baseline alternate round by round, so that drifting machine load touches both alike.
                timed = {"engine": engine} if baseline is None else {"engine": engine, "baseline": baseline}
                row: dict[str, Any] = time_side_by_side(timed, b, options.warmup, options.iterations)
                if baseline is not None:
                    row["speedup"] = row["engine"]["clips_per_s"] / row["baseline"]["clips_per_s"]
                section["batches"][str(b)] = row
        finally:
            if baseline is not None:
                baseline.close()
    return section


def engine_summary(engine: Engine) -> dict[str, Any]:
    meta, export = engine.metadata, engine.metadata["export"]
    return {"path": str(engine.path), "backend": meta["backend"], "precision": meta["precision"],
            "batch": meta["batch"], "tome": export["tome"], "labels": export.get("labels"),
            "input": {"frames": export["model"]["input_frames"], "mel_bins": export["model"]["num_mel_bins"],
                      "name": input_name(engine)}}


def verify(engine_path: str | os.PathLike, reference_spec: str, *, inputs_spec: str = "random", num: int = 64,
           batch: int = 8, seed: int = 0, thresholds: Tolerance | None = None, speed: SpeedOptions | None = None,
           provider: str | None = None, labels_csv: str | None = None, unreadable: Unreadable = FAIL_ON_UNREADABLE,
           ) -> tuple[dict[str, Any], InputSet, Reference, dict[str, np.ndarray]]:
    """Run the comparison (and the speed section unless ``speed`` is None); returns the report and what it used.
    Input clips that cannot be read are handled as ``unreadable`` says (by default the run fails)."""
    with load_engine(engine_path, provider=provider) as engine:
        export = engine.metadata["export"]
        waveform = input_name(engine) == WAVEFORM_NAME
        given = None  # a --baseline ENGINE is checked before any work: usage errors first
        if speed is not None and speed.baseline not in (None, "auto"):
            given = check_baseline(engine, speed.baseline)
        try:
            inputs, reference = load_comparison(engine, reference_spec, inputs_spec, num, seed, labels_csv,
                                                unreadable)
        except (UsageError, UnreadableClipsError):  # the second is the input files, not the arguments: exit 1
            raise
        except FastASTError as err:  # a reference or inputs that cannot be read: the arguments, not the engine
            raise VerifyUsageError(str(err)) from None
        check_compatible(reference, inputs, export)
        thresholds = thresholds or default_thresholds(engine.metadata["precision"])
        outputs = run_engine(engine, inputs.waveform if waveform else inputs.fbank, batch)
        figures, checks = parity_section(reference, outputs, export, inputs, thresholds)
        report: dict[str, Any] = {
            "schema": REPORT_SCHEMA, "version": REPORT_VERSION, "fastast_deploy": PACKAGE_VERSION,
            "engine": engine_summary(engine),
            "reference": {"kind": reference.kind, "source": reference.source},
            "inputs": {"source": inputs.source, "clips": int(len(inputs.fbank)), "skipped": inputs.skipped,
                       "labelled": inputs.labels is not None},
            "thresholds": thresholds.to_dict(), "parity": figures, "checks": checks,
        }
        if speed is not None:
            source = reference.source if reference.kind == "checkpoint" else export.get("source", {}).get("path")
            report["speed"] = speed_section(engine, speed, source, given)
        report["passed"] = all(c["passed"] for c in checks)
    return report, inputs, reference, outputs


def load_comparison(engine: Engine, reference_spec: str, inputs_spec: str, num: int, seed: int,
                    labels_csv: str | None, unreadable: Unreadable = FAIL_ON_UNREADABLE) -> tuple[InputSet, Reference]:
    """The inputs and the reference outputs to compare ``engine`` against (VerifyUsageError when they do not fit
    together)."""
    export = engine.metadata["export"]
    frames, mel = export["model"]["input_frames"], export["model"]["num_mel_bins"]
    if input_name(engine) == WAVEFORM_NAME:  # the reference model is fed the project's own fbank of the waveforms
        samples = int(engine.input_specs[WAVEFORM_NAME][0][1])
        if Path(reference_spec).suffix in (".npz", ".json") and Path(reference_spec).is_file():
            raise VerifyUsageError(f"{engine.path.name} takes waveforms: give a checkpoint as --reference "
                                   "(saved outputs hold no waveforms)")
        inputs = load_waveform_inputs(inputs_spec, num, samples, seed, export, labels_csv, unreadable)
        return inputs, load_reference(reference_spec, inputs, export)
    if Path(reference_spec).suffix == ".npz" and Path(reference_spec).is_file():
        if inputs_spec != "random":
            raise VerifyUsageError("an .npz reference brings its own inputs (its fbank array); leave out --inputs")
        reference = load_reference(reference_spec, None, export)
        inputs = InputSet(reference.fbank, [f"ref-{i}" for i in range(len(reference.fbank))], reference_spec)
        if inputs.fbank.ndim != 3 or inputs.fbank.shape[1:] != (frames, mel):
            raise VerifyUsageError(f"reference {reference_spec} has inputs of shape {inputs.fbank.shape}; the "
                                   f"engine takes (N, {frames}, {mel}): another input length")
        return inputs, reference
    inputs = load_inputs(inputs_spec, num, frames, mel, seed, export, labels_csv, unreadable)
    return inputs, load_reference(reference_spec, inputs, export)


def check_compatible(reference: Reference, inputs: InputSet, export: dict[str, Any]) -> None:
    """Engine and reference must describe the same task: label count and names, clip count."""
    labels = export.get("labels")
    width = export["model"]["num_labels"]
    if reference.logits.ndim != 2 or reference.logits.shape[1] != width:
        raise VerifyUsageError(f"reference {reference.source} has logits of shape {reference.logits.shape}; the "
                               f"engine outputs {width} labels")
    if reference.logits.shape[0] != len(inputs.fbank):
        raise VerifyUsageError(f"reference {reference.source} has {reference.logits.shape[0]} clips, the inputs "
                               f"{len(inputs.fbank)}")
    if reference.labels and labels and list(reference.labels) != list(labels):
        diff = next(i for i, (a, b) in enumerate(zip(reference.labels, labels, strict=False)) if a != b)
        raise VerifyUsageError(f"reference and engine name their labels differently (label {diff}: "
                               f"{reference.labels[diff]!r} vs {labels[diff]!r})")
