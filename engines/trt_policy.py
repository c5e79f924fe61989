"""What to ask TensorRT for, and whether a plan may run here: plain functions on version strings, precisions
and GPU descriptions, so they are tested without TensorRT.

Facts (NVIDIA/TensorRT include/NvInfer.h): TensorRT 10 still has BuilderFlag::kFP16, deprecated since 10.12
("superseded by strong typing"); TensorRT 11 removed the FP16/BF16/INT8 flags and always builds strongly typed
networks, so precision comes from the ONNX graph (Polygraphy's ``CreateConfig(fp16=True)`` fails there).
Plans only run on the TensorRT version and GPU compute capability that built them (unless built version- or
hardware-compatible, which fastast-deploy does not do).

PyPI (checked with pip): ``tensorrt`` 11.4.0.106 is a metapackage requiring ``tensorrt_cu13==11.4.0.106``, so
``pip install tensorrt`` brings the CUDA 13 build; ``tensorrt-cu12`` (10.0.1 to 11.4) is the CUDA 12 build and
``tensorrt-cu13`` starts at 10.13.2.6. All three install the ``tensorrt`` module.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from types import ModuleType
from typing import Any

from fastast_deploy.contract import PRECISIONS
from fastast_deploy.errors import error_summary

from .base import BackendUnavailableError, EngineError, EngineMismatchError
from .gpu import GpuInfo

INSTALL_HINT = 'pip install "fastast-deploy[tensorrt]" (CUDA 13; "fastast-deploy[tensorrt-cu12]" for a CUDA 12 driver)'
MIN_MAJOR = 10  # strongly typed networks, INT64 tensors and the opset-18+ parser fixes this exporter relies on
# The first TensorRT 10 minor whose ONNX parser leaves LayerNorm's compute precision alone in a strongly typed
# network. onnx-tensorrt's LayerNormalization importer: in 10.1 GA (onnx-tensorrt@96e7811, the parsers/onnx of
# NVIDIA/TensorRT release/10.1) `layer->setComputePrecision(computeType)` unconditionally; in 10.11
# (onnx-tensorrt@745bde2, release/10.11's parsers/onnx) only `if (!ctx->isStronglyTyped())`. NvInfer.h: "Strongly
# typed network rejects calls to this method". The parsers of 10.2 to 10.10 could not be read, so 10.11 is the
# first minor this project relies on; before it, fp32 graphs build weakly typed (the same fp32 engine) and fp16
# graphs are refused.
STRONGLY_TYPED_LAYERNORM = (10, 11)
# Polygraphy 0.49.x's CreateConfig reads `layer.precision_is_set` on every layer; TensorRT 11's bindings dropped it
# (in NVIDIA/TensorRT release/10.16 python/src/infer/pyGraph.cpp, not in release/11.0 or 11.1), so 0.49.x ends in an
# AttributeError. 0.50.3, 0.53.4 and 0.53.6 (the PyPI wheels) wrap that read in `except AttributeError`; 0.49.27
# (tools/Polygraphy in NVIDIA/TensorRT main) does not. pyproject.toml pins the same bound.
MIN_POLYGRAPHY_FOR_11 = (0, 50, 3)
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
        raise BackendUnavailableError(f"TensorRT is not available here ({error_summary(err, with_type=True)}); "
                                      f"install it with {INSTALL_HINT} on a machine with an NVIDIA GPU") from None
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


def parser_precision_plan(version: TrtVersion, plan: PrecisionPlan) -> PrecisionPlan:
    """``plan`` adjusted to what TensorRT ``version``'s ONNX parser can build from a FastAST graph (which always
    holds LayerNormalization): before 10.11 a strongly typed network rejects the parser's setComputePrecision call
    (STRONGLY_TYPED_LAYERNORM), so an fp32 graph builds weakly typed without precision flags (every layer stays
    fp32) and an fp16 graph is refused with the versions that work."""
    if not plan.strongly_typed or version.major != 10 or (version.major, version.minor) >= STRONGLY_TYPED_LAYERNORM:
        return plan
    low = ".".join(str(n) for n in STRONGLY_TYPED_LAYERNORM)
    if plan.precision != "fp32":
        raise EngineError(f"TensorRT {version}'s ONNX parser sets LayerNorm's compute precision, which strongly typed "
                          f"networks reject, and an fp16 graph needs strong typing; use TensorRT >= {low} "
                          f'(pip install "tensorrt-cu12>={low}") or build the fp32 export')
    note = (f"TensorRT {version}'s ONNX parser cannot build LayerNorm in a strongly typed network (fixed by {low}): "
            "built weakly typed without precision flags, so every layer is fp32 as in the graph")
    return replace(plan, strongly_typed=False, network_flag=False, notes=(*plan.notes, note))


def check_polygraphy(polygraphy_version: str, version: TrtVersion) -> None:
    """Refuse a Polygraphy too old for TensorRT ``version`` (MIN_POLYGRAPHY_FOR_11) before it fails mid-build."""
    numbers = tuple(int(n) for n in re.findall(r"\d+", str(polygraphy_version))[:3])
    if version.major >= STRONGLY_TYPED_ONLY_MAJOR and numbers < MIN_POLYGRAPHY_FOR_11:
        low = ".".join(str(n) for n in MIN_POLYGRAPHY_FOR_11)
        raise BackendUnavailableError(f"Polygraphy {polygraphy_version} cannot build with TensorRT {version} (it reads "
                                      f"layer.precision_is_set, which TensorRT 11 removed); upgrade it: "
                                      f'pip install "polygraphy>={low}"')


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
