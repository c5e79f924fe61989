"""ONNX Runtime engines: an offline-optimised model for one execution provider plus its sidecar, and the
session that runs it (or a plain exported model on the CPU).

Facts (onnxruntime docs, graph-optimizations.md and the execution-provider pages, ORT 1.2x-1.3x): basic
optimisations are semantics-preserving and apply to every provider; extended and all add fusions into
``com.microsoft`` contrib ops assigned to CPU/CUDA kernels, and "all" adds CPU layout transforms (NCHWc) that tie
the file to the machine's CPU. An offline-optimised model is for ONNX Runtime only, never for TensorRT.
"""

from __future__ import annotations

import os
import platform
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fastast_deploy.contract import PROVIDERS, sidecar_path, tolerance
from fastast_deploy.errors import error_summary
from fastast_deploy.files import sha256_file
from fastast_deploy.metrics import dummy_inputs, parity_checks, parity_failure
from fastast_deploy.pairs import atomic_pair

from .base import CPU_REWARM_S, BackendUnavailableError, BuildResult, Engine, EngineError, EngineMismatchError
from .onnx_model import OnnxModelInfo, prepare_engine_output, read_build_source, read_onnx_model
from .profiles import resolve_batch_range
from .sidecar import engine_sidecar

LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
          "all": "ORT_ENABLE_ALL"}
GPU_HINT = 'install onnxruntime-gpu in place of onnxruntime (pip install "fastast-deploy[gpu]") on a GPU machine'


@dataclass(frozen=True)
class OrtBuildOptions:
    """``optimization=None``: "all" for cpu / cuda, "basic" for tensorrt (its EP fuses on its own and cannot
    parse contrib ops). ``threads=0``: ONNX Runtime's default intra-op thread count.

    ``optimize``: first apply ONNX Runtime's transformer fusions (engines.ort_fusion: SkipLayerNormalization,
    BiasGelu) and, with ``fuse_attention``, fused Attention with the proportional-attention bias; the fused engine
    must match the plain model (contract.TOLERANCES["optimize"], parity recorded in the sidecar). Opt-in, because
    it is not faster everywhere; fused attention stays off (``fuse_attention``, not a CLI option). Measurements:
    docs/benchmarks.md (benchmarks/bench_optimum.py --optimize)."""

    provider: str = "cpu"
    optimization: str | None = None
    threads: int = 0
    min_batch: int | None = None
    opt_batch: int | None = None
    max_batch: int | None = None
    optimize: bool = False
    fuse_attention: bool = False

    def __post_init__(self) -> None:
        if self.provider not in PROVIDERS:
            raise EngineError(f"unknown provider {self.provider!r}; available: {list(PROVIDERS)}")
        if self.optimization is not None and self.optimization not in LEVELS:
            raise EngineError(f"unknown optimisation level {self.optimization!r}; available: {list(LEVELS)}")
        if self.threads < 0:
            raise EngineError(f"threads must be >= 0 (0: ONNX Runtime's default), got {self.threads}")
        if self.optimize and self.provider == "tensorrt":
            raise EngineError("--optimize writes ONNX Runtime contrib ops that the TensorRT provider cannot take; "
                              "build a TensorRT engine with --backend tensorrt instead")
        if self.fuse_attention and not self.optimize:
            raise EngineError("fused attention is part of --optimize; set both")

    @property
    def level(self) -> str:
        level = self.optimization or ("basic" if self.provider == "tensorrt" else "all")
        if self.provider == "tensorrt" and level in ("extended", "all"):
            raise EngineError(f"optimisation {level!r} writes ONNX Runtime contrib ops that the TensorRT provider "
                              "cannot take; use --optimization basic or disable with --provider tensorrt")
        return level


def provider_chain(requested: str, available: Sequence[str]) -> list[str]:
    """The providers to open a session with; BackendUnavailableError naming requested vs available."""
    if requested not in PROVIDERS:
        raise EngineError(f"unknown provider {requested!r}; available: {list(PROVIDERS)}")
    primary, *fallbacks = PROVIDERS[requested]
    if primary not in available:
        hint = f"; {GPU_HINT}" if requested != "cpu" else ""
        raise BackendUnavailableError(f"requested provider {requested!r} ({primary}), available: "
                                      f"{list(available)}{hint}")
    return [primary, *(p for p in fallbacks if p in available)]


def check_ort_sidecar(data: dict[str, Any], version: str, available: Sequence[str], engine: str) -> list[str]:
    """Refuse an engine optimised by another ONNX Runtime version or for a provider not installed here; returns
    the provider chain to open it with."""
    recorded = data["onnxruntime"]
    if recorded["version"] != version:
        raise EngineMismatchError(f"{engine} was optimised by ONNX Runtime {recorded['version']}, this is "
                                  f"{version}: optimised models hold version-specific contrib ops and layouts; "
                                  "rebuild it with `fastast-deploy build-engine --backend onnxruntime`")
    try:
        return provider_chain(recorded["provider"], available)
    except BackendUnavailableError as err:
        raise BackendUnavailableError(f"{engine} was optimised for provider {recorded['provider']!r}, which is not "
                                      f"installed here ({err}); rebuild it for an available provider") from None


def _session_options(level: str, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, LEVELS[level])
    options.intra_op_num_threads = threads
    options.log_severity_level = 3  # errors only; what matters is reported by fastast-deploy itself
    return options


def _open_session(path: Path, options: Any, chain: list[str]) -> Any:
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(path), options, providers=chain)
    except Exception as err:  # ORT raises its own Fail / InvalidGraph / RuntimeError types
        raise EngineError(f"ONNX Runtime cannot open {path} with {chain}: {error_summary(err)}") from None
    if session.get_providers()[0] != chain[0]:  # installed, but did not start (no GPU, missing CUDA libraries)
        raise BackendUnavailableError(f"{chain[0]} is installed but did not start for {path} (running on "
                                      f"{session.get_providers()}); check the GPU and its CUDA / cuDNN libraries")
    return session


def build_onnxruntime_engine(model: str | os.PathLike, output: str | os.PathLike,
                             options: OrtBuildOptions = OrtBuildOptions()) -> BuildResult:
    """Optimise ``model`` offline for one provider and write it with its sidecar, atomically: a failure writes
    neither file."""
    import onnxruntime as ort

    info = read_build_source(model)
    batch = resolve_batch_range(info.batch_dim, options.min_batch, options.opt_batch, options.max_batch,
                                bounded=False)
    level = options.level
    chain = provider_chain(options.provider, ort.get_available_providers())
    output = prepare_engine_output(output, info)
    notes = []
    if level == "all" and options.provider == "cpu":
        notes.append(f"optimisation 'all' adds CPU-specific layouts: run {output.name} on this kind of CPU "
                     f"({platform.machine()}) only")
    # The TensorRT EP compiles its subgraphs at session creation and such a session cannot be saved; basic
    # optimisations are provider-independent, so that model is written from a CPU session.
    save_chain = ["CPUExecutionProvider"] if options.provider == "tensorrt" else chain
    with atomic_pair(output) as pair:
        tmp = pair.tmp
        source, fusion = info.path, None
        session_options = _session_options(level, options.threads)
        session_options.optimized_model_filepath = str(tmp)
        session_options.add_session_config_entry("session.save_model_format", "ONNX")  # whatever the suffix
        try:
            if options.optimize:  # a fused copy beside the output, removed below however the build ends
                source = tmp.with_name(tmp.name + ".fused.onnx")
                fusion = _write_fused(info, source, options)
            _open_session(source, session_options, save_chain)  # writes the optimised model while it opens
        except EngineError as err:
            raise _write_failure(err, output) or err from None
        finally:
            if source != info.path:
                source.unlink(missing_ok=True)
        if not tmp.is_file() or tmp.stat().st_size == 0:
            raise EngineError(f"ONNX Runtime wrote no optimised model for {info.path}")
        details = {"version": ort.__version__, "provider": options.provider, "providers": chain,
                   "optimization_level": level, "intra_op_threads": options.threads, "offline": True,
                   "machine": platform.machine()}
        if fusion is not None:
            fusion["parity"] = check_fused_parity(info, tmp, chain, options.threads)
            details["optimize"] = fusion
        metadata = engine_sidecar(backend="onnxruntime", engine=output, engine_sha256=sha256_file(tmp), source=info,
                                  batch=batch, precision=info.precision, details=details,
                                  versions={"onnxruntime": ort.__version__})
        pair.sidecar = metadata
    return BuildResult(output, sidecar_path(output), metadata, tuple(notes))


def _write_failure(err: EngineError, output: Path) -> EngineError | None:
    """The error of a session that read its model but could not write the optimised one (ONNX Runtime reports a
    full disk as "INVALID_PROTOBUF: Protobuf serialization failed"): it names the output, not the input."""
    if "serializ" not in str(err).lower():
        return None
    free = shutil.disk_usage(output.parent).free / 2**20
    return EngineError(f"cannot write the optimised model {output}: the write failed ({free:.0f} MiB free on "
                       f"{output.parent}; a full disk?); free some space or write it elsewhere")


def _write_fused(info: OnnxModelInfo, path: Path, options: OrtBuildOptions) -> dict[str, Any]:
    import onnx

    from .ort_fusion import fuse_for_onnxruntime

    proto, report = fuse_for_onnxruntime(onnx.load(str(info.path)), info.metadata, options.provider != "cpu",
                                         options.fuse_attention)
    onnx.save_model(proto, str(path))
    return report


def check_fused_parity(info: OnnxModelInfo, engine: Path, chain: list[str], threads: int) -> dict[str, Any]:
    """Run the plain model and the fused engine on two seeded batches of 2 (`metrics.dummy_inputs`); EngineError
    unless every float output passes the "optimize" tolerance (`metrics.parity_checks`: NaN or inf on either side
    fails) and every integer output (merge decisions) is identical."""
    plain = _open_session(info.path, _session_options("basic", threads), chain)
    fused = _open_session(engine, _session_options("disable", threads), chain)
    limits = tolerance("optimize", info.precision)
    rate = int((info.metadata.get("features") or {}).get("sample_rate", 16000))
    worst = 0.0
    for seed in (0, 1):
        feed = {spec.name: dummy_inputs(spec.name, spec.shape[1:], spec.shape[0] if isinstance(spec.shape[0], int)
                                        else 2, seed, rate) for spec in plain.get_inputs()}
        names = [o.name for o in plain.get_outputs()]
        for name, want, got in zip(names, plain.run(names, feed), fused.run(names, feed), strict=True):
            if np.issubdtype(want.dtype, np.integer):
                if not np.array_equal(want, got):
                    raise EngineError(f"--optimize changed merge decisions ({name}); not written")
                continue
            figures, checks = parity_checks(want.reshape(len(want), -1), got.reshape(len(got), -1), limits)
            failure = parity_failure(figures, checks)
            if failure is not None:
                raise EngineError(f"--optimize: output {name} of the fused engine differs from the model: {failure}; "
                                  "not written")
            worst = max(worst, figures["max_abs_diff"])
    return {"max_abs_diff": worst, "tolerance": limits.to_dict(), "inputs": "2 seeded batches of 2"}


def model_metadata(info: OnnxModelInfo, version: str, chain: list[str], provider: str, level: str,
                   threads: int) -> dict[str, Any]:
    """The sidecar (`sidecar.engine_sidecar`) of a plain exported model opened directly: the model is its own
    engine, nothing optimised offline."""
    details = {"version": version, "provider": provider, "providers": chain, "optimization_level": level,
               "intra_op_threads": threads, "offline": False}
    return engine_sidecar(backend="onnxruntime", engine=info.path, engine_sha256=info.sha256, source=info,
                          batch=resolve_batch_range(info.batch_dim, bounded=False), precision=info.precision,
                          details=details, versions={"onnxruntime": version})


class OnnxRuntimeEngine(Engine):
    """An ONNX Runtime session behind the Engine interface."""

    backend = "onnxruntime"

    def __init__(self, path: Path, metadata: dict[str, Any], chain: list[str], level: str, threads: int) -> None:
        super().__init__(path, metadata)
        self._session = _open_session(self.path, _session_options(level, threads), chain)
        names = [o.name for o in self._session.get_outputs()]
        inputs = [i.name for i in self._session.get_inputs()]
        if set(inputs) != set(self._inputs) or set(names) != set(self._outputs):
            raise EngineMismatchError(f"{path} has inputs {inputs} and outputs {names}; its metadata says "
                                      f"{sorted(self._inputs)} and {sorted(self._outputs)}; rebuild it")
        self._output_names = names

    @property
    def providers(self) -> list[str]:
        return list(self._session.get_providers()) if self._session is not None else []

    @property
    def rewarm_s(self) -> float:
        """CPU_REWARM_S where the CPU provider runs the graph (a CPU call is slower after a pause or another run's
        call; evaluation.timing says how much)."""
        return CPU_REWARM_S if self.providers[:1] == ["CPUExecutionProvider"] else 0.0

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._session is None:
            raise EngineError(f"{self.path.name} is closed")
        return dict(zip(self._output_names, self._session.run(None, feed), strict=True))

    def close(self) -> None:
        self._session = None


def open_onnx_model(path: str | os.PathLike, provider: str = "cpu", threads: int = 0,
                    optimization: str = "all") -> OnnxRuntimeEngine:
    """A plain exported model in ONNX Runtime (CPU by default); metadata from the model's metadata_props."""
    import onnxruntime as ort

    info = read_onnx_model(path)
    chain = provider_chain(provider, ort.get_available_providers())
    OrtBuildOptions(provider=provider, optimization=optimization, threads=threads)  # validates the values
    metadata = model_metadata(info, ort.__version__, chain, provider, optimization, threads)
    return OnnxRuntimeEngine(info.path, metadata, chain, optimization, threads)


def open_onnxruntime_engine(path: Path, data: dict[str, Any], provider: str | None = None,
                            threads: int | None = None) -> OnnxRuntimeEngine:
    """An engine written by ``build_onnxruntime_engine``; its sidecar ``data`` is already format-checked."""
    import onnxruntime as ort

    recorded = data["onnxruntime"]
    if provider is not None and provider != recorded["provider"]:
        raise EngineMismatchError(f"{path.name} was optimised for provider {recorded['provider']!r}, "
                                  f"{provider!r} was requested; rebuild it with --provider {provider}")
    chain = check_ort_sidecar(data, ort.__version__, ort.get_available_providers(), path.name)
    threads = recorded.get("intra_op_threads", 0) if threads is None else threads
    # Already optimised offline: optimising again at load would only repeat the work.
    return OnnxRuntimeEngine(path, data, chain, "disable", threads)
