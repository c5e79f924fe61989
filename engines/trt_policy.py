"""What to ask TensorRT for, and whether a plan may run here: plain functions on version strings, precisions
and GPU descriptions, so they are tested without TensorRT.

Facts (NVIDIA/TensorRT include/NvInfer.h): TensorRT 10 still has BuilderFlag::kFP16, deprecated since 10.12
("superseded by strong typing"); TensorRT 11 removed the FP16/BF16/INT8 flags and always builds strongly typed
networks, so precision comes from the ONNX graph (Polygraphy's ``CreateConfig(fp16=True)`` fails there).
Plans only run on the TensorRT version and GPU compute capability that built them (unless built version- or
hardware-compatible, which fastast-deploy does not do).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from fastast_deploy.contract import PRECISIONS

from .base import BackendUnavailableError, EngineError, EngineMismatchError
from .gpu import GpuInfo

INSTALL_HINT = 'pip install "fastast-deploy[tensorrt]"'
MIN_MAJOR = 10  # strongly typed networks, INT64 tensors and the opset-18+ parser fixes this exporter relies on
FP16_FLAG_DEPRECATED = (10, 12)
STRONGLY_TYPED_ONLY_MAJOR = 11


@dataclass(frozen=True)
class TrtVersion:
    """``tensorrt.__version__`` split up: "10.13.0.35" -> major 10, minor 13, numbers (10, 13, 0, 35)."""

    text: str
    numbers: tuple[int, ...]

    @property
    def major(self) -> int:
        return self.numbers[0]

    @property
    def minor(self) -> int:
        return self.numbers[1]

    def __str__(self) -> str:
        return self.text


def parse_trt_version(text: str) -> TrtVersion:
    """Parse a TensorRT version string; a one-line error for anything without MAJOR.MINOR."""
    match = re.match(r"^\s*(\d+)\.(\d+)((?:\.\d+)*)", str(text))
    if not match:
        raise EngineError(f"cannot read the TensorRT version {text!r}; expected MAJOR.MINOR[.PATCH[.BUILD]]")
    numbers = (int(match.group(1)), int(match.group(2))) + tuple(int(n) for n in match.group(3).split(".") if n)
    return TrtVersion(str(text).strip(), numbers)


def import_tensorrt() -> ModuleType:
    """``import tensorrt`` with a one-line error naming the pip extra (tensorrt is optional)."""
    try:
        import tensorrt
    except (ImportError, OSError) as err:  # OSError: the wheel is there but libnvinfer cannot be loaded
        raise BackendUnavailableError(f"TensorRT is not available here ({type(err).__name__}: "
                                      f"{str(err).splitlines()[0] if str(err) else 'no detail'}); install it with "
                                      f"{INSTALL_HINT} on a machine with an NVIDIA GPU") from None
    return tensorrt


@dataclass(frozen=True)
class PrecisionPlan:
    """How to build: ``strongly_typed`` networks take every type from the graph; ``fp16_flag`` is TensorRT 10's
    weakly typed mode, where the builder may pick fp16 for any layer."""

    precision: str
    strongly_typed: bool
    fp16_flag: bool
    notes: tuple[str, ...] = ()
    # NetworkDefinitionCreationFlag.STRONGLY_TYPED: needed on 10.x, deprecated and ignored on 11.x (always on)
    network_flag: bool = False


def precision_plan(version: TrtVersion, graph_precision: str, requested: str | None = None) -> PrecisionPlan:
    """Decide the build mode for a graph exported at ``graph_precision`` when ``requested`` (None: the
    graph's own) is asked for."""
    if version.major < MIN_MAJOR:
        raise EngineError(f"TensorRT {version} is too old; fastast-deploy needs TensorRT >= {MIN_MAJOR} "
                          f"({INSTALL_HINT})")
    for name, value in (("graph precision", graph_precision), ("--precision", requested)):
        if value is not None and value not in PRECISIONS:
            raise EngineError(f"unknown {name} {value!r}; available: {list(PRECISIONS)}")
    wanted = requested or graph_precision
    if wanted == graph_precision:
        return PrecisionPlan(wanted, strongly_typed=True, fp16_flag=False,
                             network_flag=version.major < STRONGLY_TYPED_ONLY_MAJOR)
    # int8 comes only from a Q/DQ graph, built strongly typed on 10.x and 11.x alike ("Use explicit quantization
    # with Strong Typing. Precision-control build flags are not required", TensorRT docs, explicit quantization).
    if "int8" in (wanted, graph_precision):
        raise EngineError(f"the model is an {graph_precision} export and {wanted} was asked for: int8 engines come "
                          "only from a Q/DQ export (`fastast-deploy export --precision int8 --calib DATA`), built "
                          "at the graph's own precision")
    if graph_precision == "fp16":  # fp32 wanted: a strongly typed build cannot widen an fp16 graph
        raise EngineError("the model is an fp16 export; an fp32 engine needs an fp32 export "
                          "(`fastast-deploy export --precision fp32`)")
    if version.major >= STRONGLY_TYPED_ONLY_MAJOR:
        raise EngineError(f"TensorRT {version} builds strongly typed networks only: precision comes from the ONNX "
                          "graph, and this model is fp32; export an fp16 graph with `fastast-deploy export "
                          "--precision fp16` and build that")
    notes = ["TensorRT's fp16 builder flag lets it choose fp16 for any layer, the ToMe matching included, so merge "
             "decisions may differ from the fp32 model; an fp16 export keeps matching in fp32 "
             "(`fastast-deploy export --precision fp16`)"]
    if (version.major, version.minor) >= FP16_FLAG_DEPRECATED:
        notes.insert(0, f"the fp16 builder flag is deprecated since TensorRT 10.12 and removed in 11 "
                        f"(this is {version})")
    return PrecisionPlan("fp16", strongly_typed=False, fp16_flag=True, notes=tuple(notes))


def check_plan_compatible(recorded: dict[str, Any], installed: str, gpu: GpuInfo, engine: str) -> list[str]:
    """Refuse a plan built by another TensorRT version or for another compute capability; a note (returned)
    when only the GPU model differs."""
    built = parse_trt_version(recorded["version"])
    here = parse_trt_version(installed)
    if built.numbers != here.numbers:
        raise EngineMismatchError(f"{engine} was built with TensorRT {built}, this is TensorRT {here}: plans only "
                                  "run on the version that built them; rebuild it here with `fastast-deploy "
                                  "build-engine`")
    built_gpu = recorded["gpu"]
    if built_gpu["compute_capability"] != gpu.compute_capability:
        raise EngineMismatchError(f"{engine} was built for compute capability {built_gpu['compute_capability']} "
                                  f"({built_gpu['name']}), this GPU is {gpu.compute_capability} ({gpu.name}): plans "
                                  "are not portable across compute capabilities; rebuild it on this GPU")
    if built_gpu["name"] != gpu.name:
        return [f"{engine} was built on {built_gpu['name']} and runs on {gpu.name} (same compute capability "
                f"{gpu.compute_capability}): it works, but its tactics were timed on the other GPU"]
    return []
