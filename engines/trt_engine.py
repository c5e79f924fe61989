"""TensorRT engines through Polygraphy's loaders (polygraphy >= 0.50.3, TensorRT 10.11+ and 11.x): build a plan from
an exported model, run one with ``TrtRunner``. tensorrt and polygraphy's TensorRT backend are imported inside the
functions that need them; everything decided before the build lives in trt_policy / profiles / sidecar."""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from fastast_deploy.contract import BATCH, INPUT_NAME, sidecar_path
from fastast_deploy.errors import error_summary
from fastast_deploy.files import prepare_output, sha256_file
from fastast_deploy.pairs import atomic_pair
from fastast_deploy.scoped import polygraphy_verbosity

from .base import (
    BackendUnavailableError,
    BuildResult,
    Engine,
    EngineError,
    EngineMismatchError,
    check_feed,
)
from .gpu import DeviceTiming, GpuInfo, query_gpu, summarize_device_times
from .onnx_model import prepare_engine_output, read_build_source
from .profiles import ProfileShapes, profile_shapes, resolve_batch_range
from .sidecar import check_engine_file, engine_sidecar
from .trt_policy import (
    INSTALL_HINT,
    PRECISIONS,
    PrecisionPlan,
    TrtVersion,
    check_plan_compatible,
    check_polygraphy,
    import_tensorrt,
    parse_trt_version,
    parser_precision_plan,
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


def _polygraphy_logging(verbose: bool) -> contextlib.AbstractContextManager[None]:
    """Polygraphy's TensorRT logger sends TensorRT's VERBOSE messages to EXTRA_VERBOSE, INFO to VERBOSE and
    WARNING to warning (polygraphy 0.53.6 backend/trt/util.py get_trt_logger): ``verbose`` shows all of it, the
    default shows TensorRT's warnings and errors; the caller's verbosity returns afterwards."""
    return polygraphy_verbosity("EXTRA_VERBOSE" if verbose else "WARNING")


def checked_timing_cache(config_loader: Any, cache: Path | None, engine_loader: Callable[[], Any],
                         notes: list[str]) -> Any:
    """Wrap Polygraphy's config loader (built without ``load_timing_cache``, so it attaches an empty cache): attach
    the timing cache file here and read TensorRT's answer, which Polygraphy's own loading ignores (CreateConfig calls
    ``config.set_timing_cache(cache, ignore_mismatch=False)`` and drops the bool, and lets a corrupt file raise;
    polygraphy 0.53.6 backend/trt/config.py). TensorRT refuses a cache whose CUDA device properties differ ("A
    failure will be reported if the CUDA device property in the provided cache is different",
    IBuilderConfig::setTimingCache, NvInfer.h 11.1). A refused cache is then neither used nor rewritten:
    ``engine_loader().timing_cache_path`` (EngineBytesFromNetwork's save path) is cleared."""

    def load(builder: Any, network: Any) -> Any:
        config = config_loader(builder, network)
        if cache is None or not cache.is_file() or cache.stat().st_size == 0:
            return config
        try:
            timing = config.create_timing_cache(cache.read_bytes())
            accepted = bool(timing) and bool(config.set_timing_cache(timing, ignore_mismatch=False))
        except Exception:  # noqa: BLE001 - the bindings raise RuntimeError/TypeError on a corrupt cache
            accepted = False
        if not accepted:
            engine_loader().timing_cache_path = None
            notes.append(f"TensorRT refused the timing cache {cache} (made on another GPU or by another TensorRT "
                         "version): tactics were timed afresh and the file was left as it was; keep one cache per "
                         "GPU model and TensorRT version")
        return config

    return load


def build_tensorrt_engine(model: str | os.PathLike, output: str | os.PathLike,
                          options: TrtBuildOptions = TrtBuildOptions()) -> BuildResult:
    """Build a plan from an exported model and write it with its sidecar, atomically: a failed build writes
    neither. Everything that can be checked without TensorRT is checked before it is imported."""
    info = read_build_source(model)
    batch = resolve_batch_range(info.batch_dim, options.min_batch, options.opt_batch, options.max_batch)
    shapes = profile_shapes(info.input_shape, batch)

    trt = import_tensorrt()
    version = parse_trt_version(trt.__version__)
    plan = parser_precision_plan(version, precision_plan(version, info.precision, options.precision))
    gpu = query_gpu()
    backend, PolygraphyException, polygraphy_version = _polygraphy()
    check_polygraphy(polygraphy_version, version)
    output = prepare_engine_output(output, info)  # creates missing directories: only once the build can start
    if options.timing_cache:
        prepare_output(options.timing_cache)

    dynamic = info.batch_dim == BATCH  # a static graph needs no profile
    notes = list(plan.notes)
    lock = Path(f"{options.timing_cache}.lock") if options.timing_cache else None  # polygraphy util.LockFile's name
    stale_lock = lock is not None and lock.exists()
    try:
        with _polygraphy_logging(options.verbose):
            network, config = polygraphy_loaders(backend, info.path, plan, replace(options, timing_cache=None),
                                                 shapes if dynamic else None, trt.MemoryPoolType.WORKSPACE,
                                                 info.input_name)
            # EngineBytesFromNetwork is EngineFromNetwork without the deserialisation: the plan's bytes are what
            # gets written. It merges this build's timings into the cache file under a lock.
            cache = str(options.timing_cache) if options.timing_cache else None
            checked = checked_timing_cache(config, options.timing_cache, lambda: loader, notes)
            loader = backend.EngineBytesFromNetwork(network, config=checked, save_timing_cache=cache)
            serialized = loader()
    except PolygraphyException as err:
        raise EngineError(f"TensorRT {version} could not build {info.path}: {error_summary(err)} "
                          "(--verbose shows TensorRT's log)") from None
    finally:
        if lock is not None and not stale_lock:  # Polygraphy's LockFile leaves CACHE.lock behind
            with contextlib.suppress(OSError):
                lock.unlink()
    with atomic_pair(output) as pair:
        tmp = pair.tmp
        tmp.write_bytes(serialized)
        details = tensorrt_details(version, gpu, plan, options, shapes if dynamic else None, info.input_name)
        metadata = engine_sidecar(backend="tensorrt", engine=output, engine_sha256=sha256_file(tmp), source=info,
                                  batch=batch, precision=plan.precision, details=details,
                                  versions={"tensorrt": version.text, "polygraphy": polygraphy_version})
        pair.sidecar = metadata
    return BuildResult(output, sidecar_path(output), metadata, tuple(notes))


class TensorRTEngine(Engine):
    """A deserialised plan run by Polygraphy's TrtRunner (one CUDA stream, host arrays in and out). Note:
    TrtRunner.infer asks whether inputs are torch tensors, which imports torch where it is installed
    (polygraphy 0.53 util.array.is_torch); this module itself never imports it."""

    backend = "tensorrt"

    def __init__(self, path: Path, metadata: dict[str, Any], verbose: bool = False) -> None:
        super().__init__(path, metadata)
        backend, self._polygraphy_error, _ = _polygraphy()
        self._runner: Any = None
        self._engine: Any = None
        self._verbose = verbose
        try:
            with _polygraphy_logging(verbose):
                self._engine = backend.engine_from_bytes(self.path.read_bytes())
                runner = backend.TrtRunner(self._engine, name=self.path.name)
                runner.activate()
        except self._polygraphy_error as err:
            self._engine = None
            raise EngineError(f"TensorRT cannot load {path}: {error_summary(err)}; the plan is corrupt or was not "
                              "built by this TensorRT; rebuild it") from None
        self._runner = runner
        names = {self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)}
        if names != set(self._inputs) | set(self._outputs):
            self.close()
            raise EngineMismatchError(f"{path} has tensors {sorted(names)}; its sidecar says "
                                      f"{sorted(set(self._inputs) | set(self._outputs))}; rebuild it")

    def _active_runner(self) -> Any:
        if self._runner is None:
            raise EngineError(f"{self.path.name} is closed")
        return self._runner

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        runner = self._active_runner()
        try:
            with _polygraphy_logging(self._verbose):
                outputs = runner.infer(feed)
        except self._polygraphy_error as err:  # e.g. execute_async_v3() failed: one line, not a traceback
            raise EngineError(f"TensorRT could not run {self.path.name}: {error_summary(err)}") from None
        # TrtRunner reuses its host output buffers between calls: hand out copies.
        return {name: np.array(outputs[name], copy=True) for name in self._outputs}

    def time_device(self, feed: dict[str, Any], warmup: int = 3, iterations: int = 20) -> DeviceTiming:
        """Time one batch as trtexec reports it: host-to-device copies, GPU compute, device-to-host copies apart.
        Compute is TrtRunner's own inference time with inputs already on the GPU and outputs left there
        (``copy_outputs_to_host=False``): its ``_infer_impl`` then makes no copy and ends with a stream
        synchronise (polygraphy 0.53.6 backend/trt/runner.py), so it is enqueue + execution. Copies are synchronous
        cudaMemcpy calls timed on the host."""
        from polygraphy import cuda
        from polygraphy.datatype import DataType

        runner = self._active_runner()
        arrays = check_feed(feed, self._inputs, self._batch, self.path.name)
        device = {name: cuda.DeviceArray(shape=a.shape, dtype=DataType.from_dtype(a.dtype))
                  for name, a in arrays.items()}
        h2d, compute, d2h = [], [], []
        try:
            for step in range(warmup + iterations):
                start = time.perf_counter()
                for name, array in arrays.items():
                    device[name].copy_from(array)
                copied = time.perf_counter()
                try:
                    outputs = runner.infer(device, copy_outputs_to_host=False)
                except self._polygraphy_error as err:
                    raise EngineError(f"TensorRT could not run {self.path.name}: {error_summary(err)}") from None
                ran = runner.last_inference_time()
                back = time.perf_counter()
                for name in self._outputs:
                    outputs[name].numpy()
                done = time.perf_counter()
                if step >= warmup:
                    h2d.append(copied - start)
                    compute.append(ran)
                    d2h.append(done - back)
        finally:
            for array in device.values():
                array.free()
        return summarize_device_times(h2d, compute, d2h, source="TrtRunner inference time, inputs on the GPU")

    def close(self) -> None:
        """Deactivate the runner (which frees its buffers, stream and execution context) and drop this object's
        reference to the deserialised engine, so TensorRT frees the engine's GPU memory now rather than when this
        object is collected (TrtRunner.deactivate_impl deletes its own engine and context references)."""
        runner, self._runner = self._runner, None
        try:
            if runner is not None and runner.is_active:
                runner.deactivate()
        finally:
            self._engine = None


def open_tensorrt_engine(path: Path, data: dict[str, Any], verbose: bool = False) -> TensorRTEngine:
    """A plan written by ``build_tensorrt_engine``; its sidecar ``data`` is already format-checked. File, version
    and GPU are checked before TensorRT deserialises anything."""
    check_engine_file(path, data)
    trt = import_tensorrt()
    gpu = query_gpu()
    for note in check_plan_compatible(data["tensorrt"], trt.__version__, gpu, path.name):
        warnings.warn(note, EngineWarning, stacklevel=3)
    return TensorRTEngine(path, data, verbose)
