"""A Triton Inference Server model repository for an engine or an exported model:
``REPO/NAME/config.pbtxt``, ``REPO/NAME/1/model_ccX.Y.plan`` (platform ``tensorrt_plan``, named by the compute
capability it was built for) or ``REPO/NAME/1/model.onnx`` (``onnxruntime_onnx``) with its JSON sidecar beside it,
and, where the model has label names, ``REPO/NAME/labels.txt`` for Triton's classification extension.
config.pbtxt is written as protobuf text by hand: tritonclient is not needed. Its parameter ``fastast_deploy.metadata``
(JSON: tensors, batch range, export metadata) is what a remote engine (``grpc://HOST:PORT/NAME``) reads back.

Facts (triton-inference-server/server docs/user_guide/model_configuration.md, model_repository.md): with
``max_batch_size > 0`` the dims leave out the batch, which Triton adds and fills from 1 to max_batch_size;
``max_batch_size: 0`` serves a model whose dims include a fixed batch, and such a model cannot use the dynamic
batcher. A TensorRT plan runs only with the TensorRT version and on GPUs of the compute capability that built it.
model_configuration.md, "Instance Groups": "By default, a single execution instance of the model is created for each
GPU available in the system", and `gpus: [ ... ]` places instances on the GPUs listed; "CUDA Compute Capability":
`cc_model_filenames` maps a GPU's compute capability to the model file loaded on it, else `default_model_filename`
("model.plan" for TensorRT). So a plan is written as model_ccX.Y.plan with a cc_model_filenames entry and no
model.plan: an instance on a GPU of another compute capability fails to load by name instead of deserialising a plan
that cannot run there, and more plans (one per compute capability) can be added beside it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastast_deploy.contract import BATCH, OUTPUT_NAME, PACKAGE_VERSION, sidecar_path
from fastast_deploy.engines.base import BatchRange, EngineError
from fastast_deploy.errors import ConfigError, FastASTError, UsageError
from fastast_deploy.serving.pbtxt import pb_list, pb_string, pb_tensor

PLATFORMS = {"tensorrt": ("tensorrt_plan", "model.plan"), "onnxruntime": ("onnxruntime_onnx", "model.onnx")}
KINDS = {"gpu": "KIND_GPU", "cpu": "KIND_CPU"}
CONFIG_FILE = "config.pbtxt"
VERSION = "1"
DEFAULT_MAX_BATCH = 32  # for an engine without an upper batch bound (ONNX Runtime)
NAME_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
SERVE_BACKENDS = ("platform", "python")  # the model file's own Triton backend, or the Python backend (triton_python)


@dataclass(frozen=True)
class TritonOptions:
    """``max_batch=None``: the engine's largest batch (DEFAULT_MAX_BATCH where it has none).
    ``dynamic_batching=None``: on where the model batches. ``kind=None``: gpu for TensorRT plans and ONNX Runtime
    engines built for a GPU provider, else cpu."""

    name: str | None = None
    max_batch: int | None = None
    instances: int = 1
    dynamic_batching: bool | None = None
    preferred_batch: tuple[int, ...] = ()
    max_queue_delay_us: int = 100
    kind: str | None = None
    gpus: tuple[int, ...] = ()  # GPU indices for the instances; () = every GPU Triton sees
    backend: str = "platform"  # "python": Triton's Python backend running fastast_deploy.engines
    site_packages: tuple[str, ...] | None = None  # python backend: dirs model.py adds; None: this interpreter's

    def __post_init__(self) -> None:
        if self.backend not in SERVE_BACKENDS:
            raise ConfigError(f"unknown Triton backend {self.backend!r}; available: {list(SERVE_BACKENDS)}")
        if self.kind is not None and self.kind not in KINDS:
            raise ConfigError(f"unknown instance kind {self.kind!r}; available: {list(KINDS)}")
        if self.instances < 1:
            raise ConfigError(f"--instances must be >= 1, got {self.instances}")
        if self.max_batch is not None and self.max_batch < 1:
            raise ConfigError(f"--max-batch must be >= 1, got {self.max_batch}")
        if self.max_queue_delay_us < 0:
            raise ConfigError(f"--max-queue-delay-us must be >= 0, got {self.max_queue_delay_us}")
        if any(g < 0 for g in self.gpus) or len(set(self.gpus)) != len(self.gpus):
            raise ConfigError(f"--gpus must be distinct GPU indices >= 0, got {list(self.gpus)}")
        if self.gpus and self.kind == "cpu":
            raise ConfigError("--gpus places GPU instances; it does not apply with --kind cpu")
        if self.site_packages is not None and self.backend != "python":
            raise UsageError("--site-packages applies to --backend python only (the platform backends import no "
                              "Python); add --backend python or drop it")
        missing = [p for p in self.site_packages or () if not Path(p).is_dir()]
        if missing:
            raise UsageError(f"--site-packages {missing[0]}: no such folder; give the site-packages of the Python "
                              "that Triton's stub runs (as folders that exist here), or 'none'")
        if self.name is not None and not NAME_PATTERN.fullmatch(self.name):
            raise ConfigError(f"model name {self.name!r} is not a plain directory name; use letters, digits, "
                              "'_', '-' and '.', not starting with '.' or '-'")


@dataclass(frozen=True)
class ServedModel:
    """What a repository serves: the model file, its sidecar (if any) and the tensors Triton sees. Tensors are
    ``{name: {"shape": [BATCH or int, ...], "dtype": "float32"}}`` in graph order."""

    path: Path
    backend: str  # "tensorrt" or "onnxruntime"
    inputs: dict[str, dict[str, Any]]
    outputs: dict[str, dict[str, Any]]
    batch: BatchRange
    labels: list[str]
    sidecar: Path | None = None
    details: dict[str, Any] | None = None  # the sidecar's backend entry (TensorRT version and GPU; ORT provider)
    record: dict[str, Any] | None = None  # what remote clients read back (engines.triton_remote.remote_record)

    @property
    def platform(self) -> str:
        return PLATFORMS[self.backend][0]

    @property
    def compute_capability(self) -> str | None:
        """The compute capability a TensorRT plan was built for (from its sidecar), else None."""
        if self.backend != "tensorrt":
            return None
        cc = (self.details or {}).get("gpu", {}).get("compute_capability")
        return str(cc) if cc and re.fullmatch(r"\d+\.\d+", str(cc)) else None

    @property
    def filename(self) -> str:
        cc = self.compute_capability
        return f"model_cc{cc}.plan" if cc else PLATFORMS[self.backend][1]

    @property
    def static_batch(self) -> int | None:
        first = next(iter(self.inputs.values()))["shape"][0]  # the one input: fbank or waveform
        return None if first == BATCH else int(first)


def _labels(export: dict[str, Any], outputs: dict[str, dict[str, Any]]) -> list[str]:
    """The model's label names, one line each; [] when it has none (or not one per logit): then no labels file,
    and Triton's classification answers carry indices only."""
    count = int(outputs[OUTPUT_NAME]["shape"][-1])
    names = export.get("labels")
    if names and len(names) == count:
        return [" ".join(str(n).split()) for n in names]
    return []


def model_from_sidecar(path: Path, data: dict[str, Any]) -> ServedModel:
    """A built engine described by its (format-checked) sidecar ``data``; reads no file."""
    backend = data["backend"]
    side = sidecar_path(path)
    return ServedModel(Path(path), backend, data["inputs"], data["outputs"], BatchRange.from_dict(data["batch"]),
                       _labels(data["export"], data["outputs"]), side if side.is_file() else None, data[backend])


def read_served_model(path: str | os.PathLike) -> ServedModel:
    """An engine from ``build-engine`` (checked against its sidecar) or an exported .onnx."""
    from fastast_deploy.engines.onnx_model import read_onnx_model
    from fastast_deploy.engines.profiles import resolve_batch_range
    from fastast_deploy.engines.sidecar import check_engine_file, check_sidecar, read_sidecar, tensor_specs
    from fastast_deploy.engines.triton_remote import remote_record

    path = Path(path)
    if not path.is_file():
        raise FastASTError(f"{path} does not exist or is not a file; expected an engine from `fastast-deploy "
                           "build-engine` or an exported .onnx model")
    data = read_sidecar(path)
    if data is not None:
        check_sidecar(data, path)
        check_engine_file(path, data)
        record = remote_record(backend=data["backend"], precision=data["precision"], inputs=data["inputs"],
                               outputs=data["outputs"], batch=BatchRange.from_dict(data["batch"]),
                               export=data["export"], file=path.name, sha256=data["engine"].get("sha256"))
        return dataclasses.replace(model_from_sidecar(path, data), record=record)
    try:
        info = read_onnx_model(path)
    except EngineError as err:
        raise FastASTError(f"{path} is neither an engine with a sidecar nor an exported model ({err})") from None
    inputs, outputs = tensor_specs(info)
    side = sidecar_path(path)
    batch = resolve_batch_range(info.batch_dim, bounded=False)
    record = remote_record(backend="onnxruntime", precision=info.precision, inputs=inputs, outputs=outputs,
                           batch=batch, export=info.metadata, file=path.name, sha256=info.sha256)
    return ServedModel(path, "onnxruntime", inputs, outputs, batch, _labels(info.metadata, outputs),
                       side if side.is_file() else None, record=record)


def default_kind(model: ServedModel) -> str:
    if model.backend == "tensorrt":
        return "gpu"
    provider = (model.details or {}).get("provider", "cpu")
    return "cpu" if provider == "cpu" else "gpu"


def resolve_batching(model: ServedModel, options: TritonOptions) -> tuple[int, bool, list[str]]:
    """(max_batch_size, dynamic batching on, notes); a ConfigError for settings the model cannot serve."""
    static = model.static_batch
    if static is not None:
        if options.max_batch is not None and options.max_batch != static:
            raise ConfigError(f"{model.path.name} has a static batch of {static}: Triton serves it with "
                              "max_batch_size 0, requests of exactly that batch; leave --max-batch out or export "
                              "with a dynamic batch")
        if options.dynamic_batching or options.preferred_batch:
            raise ConfigError(f"{model.path.name} has a static batch of {static}; Triton's dynamic batcher needs "
                              "max_batch_size > 0: export with a dynamic batch")
        return 0, False, [f"static batch of {static}: max_batch_size 0, requests carry the whole batch of {static}"]
    batch = model.batch
    if batch.min > 1:
        raise ConfigError(f"{model.path.name} accepts batches {batch}; Triton sends any batch from 1: rebuild it "
                          "with --min-batch 1")
    largest = options.max_batch or (batch.max if batch.max is not None else DEFAULT_MAX_BATCH)
    if batch.max is not None and largest > batch.max:
        raise ConfigError(f"--max-batch {largest} exceeds the engine's batch range {batch}; rebuild it with "
                          f"--max-batch {largest} or ask for at most {batch.max}")
    bad = [b for b in options.preferred_batch if not 1 <= b <= largest]
    if bad:
        raise ConfigError(f"--preferred-batch {bad} outside 1..{largest} (max_batch_size)")
    dynamic = options.dynamic_batching is not False
    if options.preferred_batch and not dynamic:
        raise ConfigError("--preferred-batch applies with dynamic batching; drop --no-dynamic-batching")
    return largest, dynamic, []


def _backend_comments(model: ServedModel) -> tuple[list[str], dict[str, str], list[str]]:
    """(comment lines, config parameters, notes) about where the model file runs."""
    details = model.details or {}
    if model.backend == "tensorrt":
        gpu = details.get("gpu", {})
        version, cc, name = details.get("version", "?"), gpu.get("compute_capability", "?"), gpu.get("name", "?")
        comment = [f"TensorRT {version} plan built on {name} (compute capability {cc}): it runs only with TensorRT "
                   f"{version} on GPUs of compute capability {cc}; use a Triton release that bundles that TensorRT."]
        params = {"fastast_deploy.tensorrt_version": version, "fastast_deploy.compute_capability": cc,
                  "fastast_deploy.gpu": name}
        return comment, params, []
    if details.get("offline"):
        version = details.get("version", "?")
        note = (f"{model.path.name} was optimised offline by ONNX Runtime {version} (level "
                f"{details.get('optimization_level')}, provider {details.get('provider')}); Triton's onnxruntime "
                "backend must run the same ONNX Runtime version, or serve the exported .onnx instead")
        return [f"ONNX Runtime {version} engine, provider {details.get('provider')}."], {}, [note]
    return [], {}, []


@dataclass(frozen=True)
class TritonConfig:
    """config.pbtxt text and the settings it holds, with notes for the user."""

    text: str
    max_batch_size: int
    dynamic_batching: bool
    kind: str
    notes: tuple[str, ...]


def model_config(model: ServedModel, name: str, options: TritonOptions) -> TritonConfig:
    """config.pbtxt for ``model`` served as ``name``."""
    largest, dynamic, notes = resolve_batching(model, options)
    kind = options.kind or default_kind(model)
    if model.backend == "tensorrt" and kind != "gpu":
        raise ConfigError(f"{model.path.name} is a TensorRT plan: it runs on GPUs only; leave --kind out or use gpu")
    if options.gpus and kind != "gpu":
        raise ConfigError(f"--gpus places GPU instances, and {model.path.name} is served on the CPU; add --kind gpu")
    comments, params, backend_notes = _backend_comments(model)
    if model.record is not None:  # read back by remote clients (grpc://HOST:PORT/NAME engines)
        from fastast_deploy.engines.triton_remote import METADATA_PARAM

        params = {**params, METADATA_PARAM: json.dumps(model.record, separators=(",", ":"))}
    batched = largest > 0
    if options.backend == "python":
        from fastast_deploy.serving.triton_python import default_site_packages, python_config_lines

        site = default_site_packages() if options.site_packages is None else options.site_packages
        provider = "cuda" if kind == "gpu" and model.backend == "onnxruntime" else "cpu"
        lines, inputs, python_params = python_config_lines(model, name, largest, site, provider)
        lines[1:1] = [f"# {c}" for c in comments]
        params = {**params, **python_params}
    else:
        lines = [f"# Triton model configuration written by fastast-deploy {PACKAGE_VERSION} from {model.path.name}"]
        lines += [f"# {c}" for c in comments]
        lines += [f"name: {pb_string(name)}", f"platform: {pb_string(model.platform)}", f"max_batch_size: {largest}"]
        inputs = [pb_tensor(n, s, batched) for n, s in model.inputs.items()]
    lines += pb_list("input", inputs)
    lines += pb_list("output", [pb_tensor(n, s, batched, label_file=n == OUTPUT_NAME and bool(model.labels))
                               for n, s in model.outputs.items()])
    if dynamic:
        lines.append("dynamic_batching {")
        if options.preferred_batch:
            lines.append(f"  preferred_batch_size: [ {', '.join(str(b) for b in options.preferred_batch)} ]")
        lines += [f"  max_queue_delay_microseconds: {options.max_queue_delay_us}", "}"]
    group = ["  {", f"    count: {options.instances}", f"    kind: {KINDS[kind]}"]
    if options.gpus:
        group.append(f"    gpus: [ {', '.join(str(g) for g in options.gpus)} ]")
    lines += pb_list("instance_group", [[*group, "  }"]])
    if model.compute_capability:
        cc = model.compute_capability
        entry = ["  {", f"    key: {pb_string(cc)}", f"    value: {pb_string(model.filename)}", "  }"]
        lines += pb_list("cc_model_filenames", [entry])
        if not options.gpus:
            notes.append(f"{model.path.name} runs only on GPUs of compute capability {cc}: Triton puts an instance "
                         f"on every GPU it sees, and one on a GPU of another compute capability finds no plan "
                         f"(there is no model.plan); on such a host give --gpus with the indices of the {cc} GPUs")
    for key, value in params.items():
        lines += ["parameters {", f"  key: {pb_string(key)}",
                  f"  value: {{ string_value: {pb_string(str(value))} }}", "}"]
    return TritonConfig("\n".join(lines) + "\n", largest, dynamic, kind, tuple(notes + backend_notes))
