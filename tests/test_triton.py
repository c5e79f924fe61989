"""`triton`: repositories whose config.pbtxt parses with Triton's own ModelConfig protobuf and matches the model
(names and dims read from the ONNX graph by ONNX Runtime), the TensorRT-plan config from a sidecar, refusals."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from google.protobuf import text_format

from fastast_deploy.checkpoints.native import load_model, save_checkpoint
from fastast_deploy.cli.main import cli
from fastast_deploy.engines.base import BatchRange
from fastast_deploy.engines.gpu import GpuInfo
from fastast_deploy.engines.onnx_model import read_onnx_model
from fastast_deploy.engines.ort_engine import OrtBuildOptions, build_onnxruntime_engine
from fastast_deploy.engines.profiles import profile_shapes
from fastast_deploy.engines.sidecar import engine_sidecar
from fastast_deploy.engines.trt_engine import TrtBuildOptions, tensorrt_details
from fastast_deploy.engines.trt_policy import parse_trt_version, precision_plan
from fastast_deploy.errors import ConfigError, FastASTError
from fastast_deploy.exporters.onnx_export import ExportOptions, export_onnx
from fastast_deploy.model.config import FeatureConfig, ModelConfig, TomeConfig
from fastast_deploy.model.fastast import build_model
from fastast_deploy.model.schedule import make_schedule
from fastast_deploy.serving.triton import TritonOptions, model_config, model_from_sidecar, read_served_model
from fastast_deploy.serving.triton_repo import write_repository

TINY = ModelConfig.from_size("tiny", depth=2, input_frames=128, num_labels=4)
LABELS = ("dog", "rain", "siren", "wind")


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Exports of one tiny model: dynamic batch with merge outputs, static batch of 2; an ORT engine (batch
    1..16) of the dynamic one."""
    root = tmp_path_factory.mktemp("triton")
    torch.manual_seed(0)
    model = build_model(TINY, TomeConfig(make_schedule(8, TINY.depth)))
    ckpt = save_checkpoint(model, root / "tiny.safetensors", label_names=LABELS,
                           feature_config=FeatureConfig(frames=128))
    loaded = load_model(ckpt)
    dynamic = export_onnx(loaded, root / "fast.onnx", ExportOptions(debug_merges=True), check=False).path
    static = export_onnx(loaded, root / "static.onnx", ExportOptions(batch=2), check=False).path
    engine = build_onnxruntime_engine(dynamic, root / "fast.ort.onnx", OrtBuildOptions(max_batch=16)).path
    return {"dynamic": dynamic, "static": static, "engine": engine, "root": root}


def run(*args: Any) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def pb2() -> Any:
    """Triton's own model-config protobuf module (tritonclient's copy of model_config.proto)."""
    return pytest.importorskip("tritonclient.grpc.model_config_pb2")


def parse(text: str) -> Any:
    pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    return text_format.Parse(text, pb2.ModelConfig())


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def graph_tensors(path: Path) -> tuple[dict[str, list[Any]], dict[str, list[Any]]]:
    """Input and output shapes as ONNX Runtime reads them from the graph."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return ({i.name: list(i.shape) for i in session.get_inputs()},
            {o.name: (list(o.shape), o.type) for o in session.get_outputs()})


def assert_one_line_failure(code: int, out: str, err: str, *fragments: str) -> None:
    lines = [line for line in (out + err).splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1 and lines[0].startswith("Error:"), out + err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_onnx_repository_matches_the_model_and_the_options(pb2: Any, files: dict[str, Path], tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    code, out, err = run("triton", files["dynamic"], "-o", repo, "--name", "fast", "--max-batch", "8",
                         "--instances", "2", "--preferred-batch", "2,4", "--max-queue-delay-us", "500")
    assert code == 0, err
    folder = repo / "fast"
    config = parse((folder / "config.pbtxt").read_text())
    assert config.name == "fast" and config.platform == "onnxruntime_onnx" and config.max_batch_size == 8
    inputs, outputs = graph_tensors(folder / "1" / "model.onnx")
    assert [i.name for i in config.input] == list(inputs) == ["fbank"]
    assert list(config.input[0].dims) == inputs["fbank"][1:] == [128, 128]
    assert config.input[0].data_type == pb2.TYPE_FP32
    assert [o.name for o in config.output] == list(outputs)
    for out_cfg in config.output:
        shape, onnx_type = outputs[out_cfg.name]
        assert list(out_cfg.dims) == shape[1:]
        expected = pb2.TYPE_FP32 if onnx_type == "tensor(float)" else pb2.TYPE_INT64
        assert out_cfg.data_type == expected
    logits = config.output[0]
    assert logits.name == "logits" and list(logits.dims) == [4] and logits.label_filename == "labels.txt"
    assert [o.name for o in config.output[1:]] == ["merge0_src", "merge0_dst", "merge1_src", "merge1_dst"]
    assert all(not o.label_filename for o in config.output[1:])
    assert list(config.dynamic_batching.preferred_batch_size) == [2, 4]
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    assert len(config.instance_group) == 1
    assert config.instance_group[0].count == 2
    assert config.instance_group[0].kind == pb2.ModelInstanceGroup.KIND_CPU
    assert (folder / "labels.txt").read_text().splitlines() == list(LABELS)
    assert sha(folder / "1" / "model.onnx") == sha(files["dynamic"])
    assert (folder / "1" / "model.onnx.json").read_bytes() == Path(f"{files['dynamic']}.json").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]  # no staging folder left
    assert "wrote" in out and "tritonserver --model-repository" in out


def test_engine_repository_defaults(pb2: Any, files: dict[str, Path], tmp_path: Path) -> None:
    code, _, err = run("triton", files["engine"], "-o", tmp_path, "--kind", "gpu")
    assert code == 0, err
    assert "optimised offline by ONNX Runtime" in err  # the version it ties the file to
    folder = tmp_path / "fast.ort"
    config = parse((folder / "config.pbtxt").read_text())
    assert config.name == "fast.ort" and config.max_batch_size == 16  # the engine's batch range
    assert config.HasField("dynamic_batching") and not config.dynamic_batching.preferred_batch_size
    assert config.instance_group[0].kind == pb2.ModelInstanceGroup.KIND_GPU
    assert sha(folder / "1" / "model.onnx") == sha(files["engine"])
    copied = read_served_model(folder / "1" / "model.onnx")  # the copied sidecar still describes the file
    assert copied.backend == "onnxruntime" and (copied.batch.min, copied.batch.max) == (1, 16)
    code, out, err = run("triton", files["engine"], "-o", tmp_path / "more", "--max-batch", "32")
    assert_one_line_failure(code, out, err, "--max-batch 32 exceeds the engine's batch range 1..16")
    assert not (tmp_path / "more").exists()


def test_static_batch_keeps_the_batch_in_dims(files: dict[str, Path], tmp_path: Path) -> None:
    code, _, err = run("triton", files["static"], "-o", tmp_path, "--no-dynamic-batching")
    assert code == 0, err
    config = parse((tmp_path / "static" / "config.pbtxt").read_text())
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
    inputs, outputs = graph_tensors(tmp_path / "static" / "1" / "model.onnx")
    assert list(config.input[0].dims) == inputs["fbank"] == [2, 128, 128]
    assert list(config.output[0].dims) == outputs["logits"][0] == [2, 4]
    for args, fragment in ((("--max-batch", "4"), "static batch of 2"),
                           (("--dynamic-batching",), "dynamic batcher needs max_batch_size > 0")):
        code, out, err = run("triton", files["static"], "-o", tmp_path / "other", *args)
        assert_one_line_failure(code, out, err, fragment)
    assert not (tmp_path / "other").exists()


def test_no_dynamic_batching(files: dict[str, Path], tmp_path: Path) -> None:
    code, _, err = run("triton", files["dynamic"], "-o", tmp_path, "--no-dynamic-batching")
    assert code == 0, err
    config = parse((tmp_path / "fast" / "config.pbtxt").read_text())
    assert config.max_batch_size == 32 and not config.HasField("dynamic_batching")


def plan_sidecar(files: dict[str, Path], batch: BatchRange, gpu: GpuInfo) -> dict[str, Any]:
    """The sidecar build-engine would write for a TensorRT plan of the dynamic export (no plan is built)."""
    info = read_onnx_model(files["dynamic"])
    version = parse_trt_version("10.13.0.35")
    details = tensorrt_details(version, gpu, precision_plan(version, "fp32"), TrtBuildOptions(),
                               profile_shapes(info.input_shape, batch))
    return engine_sidecar(backend="tensorrt", engine=Path("fast.plan"), engine_sha256="0" * 64, source=info,
                          batch=batch, precision="fp32", details=details, versions={"tensorrt": version.text})


def test_plan_config_from_a_sidecar(pb2: Any, files: dict[str, Path]) -> None:
    gpu = GpuInfo('NVIDIA "L4" \u00e9dition', "8.9")  # quotes and non-ASCII survive the text format
    model = model_from_sidecar(Path("fast.plan"), plan_sidecar(files, BatchRange(1, 8, 32), gpu))
    assert model.platform == "tensorrt_plan" and model.filename == "model_cc8.9.plan"
    result = model_config(model, "fast", TritonOptions(preferred_batch=(4, 8), instances=3))
    config = parse(result.text)
    assert config.platform == "tensorrt_plan" and config.max_batch_size == 32
    assert list(config.input[0].dims) == [128, 128] and list(config.output[0].dims) == [4]
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]
    assert config.instance_group[0].kind == pb2.ModelInstanceGroup.KIND_GPU
    assert config.instance_group[0].count == 3
    params = {k: v.string_value for k, v in config.parameters.items()}
    assert params == {"fastast_deploy.tensorrt_version": "10.13.0.35", "fastast_deploy.compute_capability": "8.9",
                      "fastast_deploy.gpu": gpu.name}
    comments = [line for line in result.text.splitlines() if line.startswith("#")]
    assert any("TensorRT 10.13.0.35" in c and "compute capability 8.9" in c for c in comments)
    # model_configuration.md "CUDA Compute Capability": the plan is the file for 8.9 GPUs only, no default file
    assert dict(config.cc_model_filenames) == {"8.9": "model_cc8.9.plan"} and not config.default_model_filename
    assert not config.instance_group[0].gpus and any("--gpus" in n for n in result.notes)
    placed = parse(model_config(model, "fast", TritonOptions(gpus=(0, 2))).text)
    assert list(placed.instance_group[0].gpus) == [0, 2]
    with pytest.raises(ConfigError, match="runs on GPUs only"):
        model_config(model, "fast", TritonOptions(kind="cpu"))
    with pytest.raises(ConfigError, match="exceeds the engine's batch range"):
        model_config(model, "fast", TritonOptions(max_batch=64))
    with pytest.raises(ConfigError, match=r"--preferred-batch \[48\] outside 1..32"):
        model_config(model, "fast", TritonOptions(preferred_batch=(8, 48)))
    narrow = model_from_sidecar(Path("fast.plan"), plan_sidecar(files, BatchRange(2, 8, 32), gpu))
    with pytest.raises(ConfigError, match="rebuild it with --min-batch 1"):
        model_config(narrow, "fast", TritonOptions())


def test_existing_model_is_refused_unless_forced(files: dict[str, Path], tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    assert run("triton", files["dynamic"], "-o", repo)[0] == 0
    assert run("triton", files["static"], "-o", repo)[0] == 0  # another model beside it
    before = (repo / "fast" / "config.pbtxt").read_text()
    code, out, err = run("triton", files["dynamic"], "-o", repo, "--instances", "4")
    assert_one_line_failure(code, out, err, "fast already exists; pass --force")
    assert (repo / "fast" / "config.pbtxt").read_text() == before
    code, _, err = run("triton", files["dynamic"], "-o", repo, "--instances", "4", "--force")
    assert code == 0, err
    assert parse((repo / "fast" / "config.pbtxt").read_text()).instance_group[0].count == 4
    assert sorted(p.name for p in repo.iterdir()) == ["fast", "static"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]


@pytest.mark.parametrize("make, fragment", [
    (lambda root: root / "missing.onnx", "does not exist"),
    (lambda root: (root / "notes.txt").write_text("hello") and root / "notes.txt", "neither an engine"),
    (lambda root: (root / "clip.onnx").write_bytes(b"RIFF....WAVE") and root / "clip.onnx", "neither an engine"),
])
def test_non_models_are_refused(tmp_path: Path, make: Any, fragment: str) -> None:
    code, out, err = run("triton", make(tmp_path), "-o", tmp_path / "repo")
    assert_one_line_failure(code, out, err, fragment)
    assert not (tmp_path / "repo").exists()


def test_bad_names_and_repositories(files: dict[str, Path], tmp_path: Path) -> None:
    code, out, err = run("triton", files["dynamic"], "-o", tmp_path / "repo", "--name", "../up")
    assert_one_line_failure(code, out, err, "not a plain directory name")
    (tmp_path / "file").write_text("x")
    code, _, err = run("triton", files["dynamic"], "-o", tmp_path / "file")
    assert code == 2 and "is a file" in err  # click's own check of -o
    with pytest.raises(FastASTError, match="repository .*file is a file"):
        write_repository(read_served_model(files["dynamic"]), tmp_path / "file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_a_failed_copy_leaves_nothing(files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(src: Any, dst: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(shutil, "copyfile", broken)
    with pytest.raises(FastASTError, match="No space left on device"):
        write_repository(read_served_model(files["dynamic"]), tmp_path / "repo")
    assert list(tmp_path.iterdir()) == []


def test_gpu_placement_options_are_checked(files: dict[str, Path]) -> None:
    with pytest.raises(ConfigError, match="distinct GPU indices"):
        TritonOptions(gpus=(0, 0))
    with pytest.raises(ConfigError, match="distinct GPU indices"):
        TritonOptions(gpus=(-1,))
    with pytest.raises(ConfigError, match="does not apply with --kind cpu"):
        TritonOptions(gpus=(0,), kind="cpu")
    onnx_model = read_served_model(files["dynamic"])
    with pytest.raises(ConfigError, match="add --kind gpu"):
        model_config(onnx_model, "fast", TritonOptions(gpus=(1,)))
    placed = parse(model_config(onnx_model, "fast", TritonOptions(gpus=(1,), kind="gpu")).text)
    assert list(placed.instance_group[0].gpus) == [1] and not placed.cc_model_filenames  # ONNX: any GPU


def test_no_label_names_no_labels_file(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model(TINY, TomeConfig(make_schedule(8, TINY.depth)))  # no label names
    onnx_path = export_onnx(model, tmp_path / "plain.onnx", check=False).path
    served = read_served_model(onnx_path)
    assert served.labels == []
    result = write_repository(served, tmp_path / "repo")
    config = parse((result.path / "config.pbtxt").read_text())
    assert not config.output[0].label_filename
    assert not (result.path / "labels.txt").exists() and "labels.txt" not in result.files
