"""TensorRT engines through Polygraphy's loaders (polygraphy >= 0.49, TensorRT 10.x and 11.x): build a plan from
an exported model, run one with ``TrtRunner``. tensorrt and polygraphy's TensorRT backend are imported inside the
functions that need them; everything decided before the build lives in trt_policy / profiles / sidecar."""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from fastast_deploy.contract import INPUT_NAME, sidecar_path
from fastast_deploy.files import atomic_path, prepare_output, sha256_file, write_json_atomic

from .base import BATCH, BackendUnavailableError, BuildResult, Engine, EngineError, EngineMismatchError
from .gpu import GpuInfo, query_gpu
from .onnx_model import read_onnx_model
from .profiles import ProfileShapes, profile_shapes, resolve_batch_range
from .sidecar import check_engine_file, engine_sidecar
from .trt_policy import (
    INSTALL_HINT,
    PRECISIONS,
    PrecisionPlan,
    TrtVersion,
    check_plan_compatible,
    import_tensorrt,
    parse_trt_version,
    precision_plan,
)


class EngineWarning(UserWarning):
    """An engine loads, but not quite as built (e.g. another GPU model of the same compute capability)."""


@dataclass(frozen=True)
class TrtBuildOptions:
    """``precision=None`` builds at the graph's precision. ``workspace_mib=None`` leaves TensorRT's default
    workspace limit (the GPU's memory). Builder optimisation level 3 is TensorRT's default (0-5). The timing
    cache file is read when it exists and updated after the build (``trtexec --timingCacheFile``)."""

    precision: str | None = None
    tf32: bool = False
    workspace_mib: int | None = None
    builder_optimization_level: int = 3
    timing_cache: Path | None = None
    min_batch: int | None = None
    opt_batch: int | None = None
    max_batch: int | None = None
    verbose: bool = False

    def __post_init__(self) -> None:
        if self.precision is not None and self.precision not in PRECISIONS:
            raise EngineError(f"unknown precision {self.precision!r}; available: {list(PRECISIONS)}")
        if not 0 <= self.builder_optimization_level <= 5:
            raise EngineError(f"builder optimisation level must be 0 to 5, got {self.builder_optimization_level}")
        if self.workspace_mib is not None and self.workspace_mib < 1:
            raise EngineError(f"workspace must be >= 1 MiB, got {self.workspace_mib}")


def tensorrt_details(version: TrtVersion, gpu: GpuInfo, plan: PrecisionPlan, options: TrtBuildOptions,
                     shapes: ProfileShapes | None, input_name: str = INPUT_NAME) -> dict[str, Any]:
    """The sidecar's "tensorrt" entry: what a loader checks (version, GPU) and how the plan was built."""
    return {
        "version": version.text, "major": version.major, "minor": version.minor, "gpu": gpu.to_dict(),
        "strongly_typed": plan.strongly_typed, "fp16_flag": plan.fp16_flag, "tf32": options.tf32,
        "builder_optimization_level": options.builder_optimization_level, "workspace_mib": options.workspace_mib,
        "timing_cache": str(options.timing_cache) if options.timing_cache else None,
        "profile": None if shapes is None else
        {input_name: {"min": list(shapes[0]), "opt": list(shapes[1]), "max": list(shapes[2])}},
    }


def polygraphy_loaders(backend: ModuleType, model: Path, plan: PrecisionPlan, options: TrtBuildOptions,
                       shapes: ProfileShapes | None, workspace_pool: Any,
                       input_name: str = INPUT_NAME) -> tuple[Any, Any]:
    """Polygraphy's network and config loaders for a build. They are lazy: nothing is parsed or built, and
    TensorRT is not touched, until the engine loader calls them. ``workspace_pool`` is
    ``tensorrt.MemoryPoolType.WORKSPACE``."""
    # NetworkFromOnnxPath initialises TensorRT's plugin library before parsing (Polygraphy BaseNetworkFromOnnx).
    network = backend.NetworkFromOnnxPath(str(model), strongly_typed=plan.network_flag or None)
    config = backend.CreateConfig(
        tf32=options.tf32, fp16=plan.fp16_flag or None,  # None: never touch the flag (gone in TensorRT 11)
        profiles=None if shapes is None else [backend.Profile().add(input_name, *shapes)],
        memory_pool_limits={workspace_pool: options.workspace_mib << 20} if options.workspace_mib else None,
        builder_optimization_level=options.builder_optimization_level,
        load_timing_cache=str(options.timing_cache) if options.timing_cache else None,
    )
    return network, config


def _polygraphy() -> tuple[ModuleType, type[Exception], str]:
    """polygraphy.backend.trt, PolygraphyException and polygraphy's version; an install hint if missing."""
    try:
        import polygraphy
        import polygraphy.backend.trt as backend
        from polygraphy.exception import PolygraphyException
    except ImportError as err:
        raise BackendUnavailableError(f"Polygraphy is not available here ({err}); install it with "
                                      f"{INSTALL_HINT}") from None
    return backend, PolygraphyException, polygraphy.__version__


@contextlib.contextmanager
def _polygraphy_logging(verbose: bool) -> Iterator[None]:
    from polygraphy.logger import G_LOGGER

    with G_LOGGER.verbosity(G_LOGGER.VERBOSE if verbose else G_LOGGER.ERROR):
        yield


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def build_tensorrt_engine(model: str | os.PathLike, output: str | os.PathLike,
                          options: TrtBuildOptions = TrtBuildOptions()) -> BuildResult:
    """Build a plan from an exported model and write it with its sidecar, atomically: a failed build writes
    neither. Everything that can be checked without TensorRT is checked before it is imported."""
    info = read_onnx_model(model)
    if info.ort_only_domains:
        raise EngineError(f"{info.path} holds ONNX Runtime-only ops ({list(info.ort_only_domains)}): it was "
                          "optimised for ONNX Runtime; build from the exported model")
    batch = resolve_batch_range(info.batch_dim, options.min_batch, options.opt_batch, options.max_batch)
    shapes = profile_shapes(info.input_shape, batch)

    trt = import_tensorrt()
    version = parse_trt_version(trt.__version__)
    plan = precision_plan(version, info.precision, options.precision)
    gpu = query_gpu()
    backend, PolygraphyException, polygraphy_version = _polygraphy()
    output = prepare_output(output)  # creates missing directories: only once the build can start
    if output.resolve() == info.path.resolve():
        raise EngineError(f"output {output} is the model itself; write the engine to another file")
    if options.timing_cache:
        prepare_output(options.timing_cache)

    dynamic = info.batch_dim == BATCH  # a static graph needs no profile
    try:
        with _polygraphy_logging(options.verbose):
            network, config = polygraphy_loaders(backend, info.path, plan, options, shapes if dynamic else None,
                                                 trt.MemoryPoolType.WORKSPACE, info.input_name)
            # EngineBytesFromNetwork is EngineFromNetwork without the deserialisation: the plan's bytes are what
            # gets written. It merges this build's timings into the cache file under a lock.
            cache = str(options.timing_cache) if options.timing_cache else None
            serialized = backend.engine_bytes_from_network(network, config=config, save_timing_cache=cache)
    except PolygraphyException as err:
        raise EngineError(f"TensorRT {version} could not build {info.path}: {_first_line(err)} "
                          "(--verbose shows TensorRT's log)") from None
    with atomic_path(output) as tmp:
        tmp.write_bytes(serialized)
        details = tensorrt_details(version, gpu, plan, options, shapes if dynamic else None, info.input_name)
        metadata = engine_sidecar(backend="tensorrt", engine=output, engine_sha256=sha256_file(tmp), source=info,
                                  batch=batch, precision=plan.precision, details=details,
                                  versions={"tensorrt": version.text, "polygraphy": polygraphy_version})
        write_json_atomic(sidecar_path(output), metadata)
    return BuildResult(output, sidecar_path(output), metadata, plan.notes)


class TensorRTEngine(Engine):
    """A deserialised plan run by Polygraphy's TrtRunner (one CUDA stream, host arrays in and out). Note:
    TrtRunner.infer asks whether inputs are torch tensors, which imports torch where it is installed
    (polygraphy 0.53 util.array.is_torch); this module itself never imports it."""

    backend = "tensorrt"

    def __init__(self, path: Path, metadata: dict[str, Any], verbose: bool = False) -> None:
        super().__init__(path, metadata)
        backend, PolygraphyException, _ = _polygraphy()
        self._runner = None
        try:
            with _polygraphy_logging(verbose):
                self._engine = backend.engine_from_bytes(self.path.read_bytes())
                runner = backend.TrtRunner(self._engine, name=self.path.name)
                runner.activate()
        except PolygraphyException as err:
            raise EngineError(f"TensorRT cannot load {path}: {_first_line(err)}; the plan is corrupt or was not "
                              "built by this TensorRT; rebuild it") from None
        self._runner = runner
        names = {self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)}
        if names != set(self._inputs) | set(self._outputs):
            self.close()
            raise EngineMismatchError(f"{path} has tensors {sorted(names)}; its sidecar says "
                                      f"{sorted(set(self._inputs) | set(self._outputs))}; rebuild it")

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._runner is None:
            raise EngineError(f"{self.path.name} is closed")
        outputs = self._runner.infer(feed)
        # TrtRunner reuses its host output buffers between calls: hand out copies.
        return {name: np.array(outputs[name], copy=True) for name in self._outputs}

    def close(self) -> None:
        if self._runner is not None and self._runner.is_active:
            self._runner.deactivate()
        self._runner = None


def open_tensorrt_engine(path: Path, data: dict[str, Any], verbose: bool = False) -> TensorRTEngine:
    """A plan written by ``build_tensorrt_engine``; its sidecar ``data`` is already format-checked. File, version
    and GPU are checked before TensorRT deserialises anything."""
    check_engine_file(path, data)
    trt = import_tensorrt()
    gpu = query_gpu()
    for note in check_plan_compatible(data["tensorrt"], trt.__version__, gpu, path.name):
        warnings.warn(note, EngineWarning, stacklevel=3)
    return TensorRTEngine(path, data, verbose)
