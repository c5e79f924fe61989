"""Engines on the CPU: the ONNX Runtime engine against PyTorch and the exported model, the TensorRT policy and
sidecar checks as plain functions, bad inputs, and the clean failure where TensorRT is missing."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

from fastast_deploy.cli.main import cli
from fastast_deploy.contract import merge_output_names
from fastast_deploy.engines import (
    BackendUnavailableError,
    BatchRange,
    EngineError,
    EngineMismatchError,
    load_engine,
)
from fastast_deploy.engines.description import describe
from fastast_deploy.engines.gpu import GpuInfo, query_gpu
from fastast_deploy.engines.onnx_model import read_onnx_model
from fastast_deploy.engines.ort_engine import OnnxRuntimeEngine, provider_chain
from fastast_deploy.engines.profiles import profile_shapes, resolve_batch_range
from fastast_deploy.engines.sidecar import engine_sidecar
from fastast_deploy.engines.trt_engine import TrtBuildOptions, tensorrt_details
from fastast_deploy.engines.trt_policy import check_plan_compatible, parse_trt_version, precision_plan
from fastast_deploy.exporters.onnx_export import ExportOptions, export_onnx
from fastast_deploy.exporters.parity import torch_outputs
from fastast_deploy.files import sha256_file
from fastast_deploy.metrics import fbank_like
from fastast_deploy.model.config import ModelConfig, TomeConfig
from fastast_deploy.model.fastast import FastAST, build_model
from fastast_deploy.model.schedule import make_schedule

TINY = ModelConfig.from_size("tiny", depth=2, input_frames=128, num_labels=10)
LABELS = tuple(f"class {i}" for i in range(10))
HAS_TRT = importlib.util.find_spec("tensorrt") is not None
TRT_HINT = 'pip install "fastast-deploy[tensorrt]"'
L4 = GpuInfo("NVIDIA L4", "8.9")


@pytest.fixture(scope="module")
def model() -> FastAST:
    torch.manual_seed(0)
    net = build_model(TINY, TomeConfig(make_schedule(8, TINY.depth)))
    net.label_names = LABELS
    return net


@pytest.fixture(scope="module")
def exported(model: FastAST, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny exports, made once: dynamic batch with merge outputs, and a static batch of 2."""
    out = tmp_path_factory.mktemp("exports")
    return {
        "dynamic": export_onnx(model, out / "dyn.onnx", ExportOptions(debug_merges=True), check=False).path,
        "static": export_onnx(model, out / "static.onnx", ExportOptions(batch=2), check=False).path,
    }


def run(*args: Any) -> tuple[int, str]:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


def assert_one_line_failure(code: int, output: str, *fragments: str) -> None:
    lines = [line for line in output.splitlines() if line.strip()]
    assert code != 0 and len(lines) == 1 and lines[0].startswith("Error:"), output
    for fragment in fragments:
        assert fragment in lines[0], output


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# --- import hygiene and help ---------------------------------------------------------------------------------

def test_engines_import_without_torch_tensorrt_or_polygraphy(tmp_path: Path) -> None:
    modules = ["base", "description", "gpu", "loading", "onnx_model", "ort_engine", "profiles", "sidecar",
               "trt_engine", "trt_policy"]
    script = ("import sys\nimport fastast_deploy.engines\nimport fastast_deploy.cli.commands.engine\n"
              + "".join(f"import fastast_deploy.engines.{m}\n" for m in modules)
              + "print(sorted(m for m in ('torch', 'tensorrt', 'polygraphy') if m in sys.modules))")
    # cwd outside the source tree: `python -c` puts cwd first on sys.path, where it would shadow the install.
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_engine_commands_have_help() -> None:
    for command in ("build-engine", "inspect"):
        code, out = run(command, "--help")
        assert code == 0 and "Usage:" in out


# --- TensorRT policy as plain functions ----------------------------------------------------------------------

@pytest.mark.parametrize(("text", "major", "minor"), [("10.13.0.35", 10, 13), ("11.4.0.106", 11, 4),
                                                       ("10.0.1", 10, 0), ("10.8.0.43.post1", 10, 8)])
def test_trt_version_parsing(text: str, major: int, minor: int) -> None:
    version = parse_trt_version(text)
    assert (version.major, version.minor) == (major, minor) and str(version) == text


def test_trt_version_parsing_rejects_garbage() -> None:
    with pytest.raises(EngineError, match="cannot read the TensorRT version"):
        parse_trt_version("latest")


def test_precision_policy_fp32_graph() -> None:
    for text in ("10.5.0", "10.13.0.35", "11.4.0.106"):
        plan = precision_plan(parse_trt_version(text), "fp32")
        assert plan.precision == "fp32" and plan.strongly_typed and not plan.fp16_flag and not plan.notes
        assert plan.network_flag == text.startswith("10.")  # the creation flag is ignored on 11
    # TensorRT 10 before 10.12: the flag, with a note on merge decisions only
    old = precision_plan(parse_trt_version("10.11.0.33"), "fp32", "fp16")
    assert old.fp16_flag and not old.strongly_typed and old.precision == "fp16"
    assert len(old.notes) == 1 and "merge decisions" in old.notes[0]
    # 10.12+: deprecated, still allowed
    new = precision_plan(parse_trt_version("10.13.0.35"), "fp32", "fp16")
    assert new.fp16_flag and "deprecated since TensorRT 10.12" in new.notes[0]
    # 11: strongly typed only, precision from the graph
    with pytest.raises(EngineError, match=r"export --precision fp16") as err:
        precision_plan(parse_trt_version("11.4.0.106"), "fp32", "fp16")
    assert "\n" not in str(err.value)


def test_precision_policy_fp16_graph_builds_fp16_on_10_and_11() -> None:
    for text in ("10.13.0.35", "11.4.0.106"):
        for requested in (None, "fp16"):
            plan = precision_plan(parse_trt_version(text), "fp16", requested)
            assert plan.precision == "fp16" and plan.strongly_typed and not plan.fp16_flag
    with pytest.raises(EngineError, match="fp32 engine needs an fp32 export"):
        precision_plan(parse_trt_version("10.13.0.35"), "fp16", "fp32")
    with pytest.raises(EngineError, match="too old"):
        precision_plan(parse_trt_version("8.6.1"), "fp32")


def test_batch_ranges_and_profiles() -> None:
    assert resolve_batch_range("batch") == BatchRange(1, 8, 32)
    assert resolve_batch_range("batch", max_batch=4) == BatchRange(1, 4, 4)
    assert resolve_batch_range("batch", min_batch=64) == BatchRange(64, 64, 64)
    assert resolve_batch_range("batch", bounded=False) == BatchRange(1, 1, None)
    assert resolve_batch_range(2) == BatchRange(2, 2, 2)
    assert resolve_batch_range(2, 2, 2, 2) == BatchRange(2, 2, 2)
    with pytest.raises(EngineError, match="static batch of 2"):
        resolve_batch_range(2, min_batch=1)
    for low, opt, high in ((8, None, 2), (1, 16, 4), (4, 2, 8)):
        with pytest.raises(EngineError, match="min <= opt <= max") as err:
            resolve_batch_range("batch", low, opt, high)
        assert "\n" not in str(err.value)
    shapes = profile_shapes(("batch", 1024, 128), BatchRange(1, 4, 16))
    assert shapes == ((1, 1024, 128), (4, 1024, 128), (16, 1024, 128))
    assert profile_shapes((2, 128, 128), BatchRange(2, 2, 2)) == ((2, 128, 128),) * 3
    with pytest.raises(EngineError, match="static T and F"):
        profile_shapes(("batch", "time", 128), BatchRange(1, 1, 4))
    with pytest.raises(EngineError, match="bounded batch range"):
        profile_shapes(("batch", 128, 128), BatchRange(1, 1, None))


def test_polygraphy_loaders_follow_the_precision_plan() -> None:
    # Polygraphy's loaders are lazy: composing them needs no TensorRT; only calling them would.
    backend = pytest.importorskip("polygraphy.backend.trt")
    from fastast_deploy.engines.trt_engine import polygraphy_loaders

    shapes = profile_shapes(("batch", 128, 128), BatchRange(1, 2, 4))
    options = TrtBuildOptions(workspace_mib=512, builder_optimization_level=5, timing_cache=Path("t.cache"))
    for version, graph, requested, strongly_typed, fp16 in (("11.4.0.106", "fp16", None, None, False),
                                                           ("11.4.0.106", "fp32", None, None, False),
                                                           ("10.13.0.35", "fp32", None, True, False),
                                                           ("10.13.0.35", "fp32", "fp16", False, True)):
        plan = precision_plan(parse_trt_version(version), graph, requested)
        network, config = polygraphy_loaders(backend, Path("m.onnx"), plan, options, shapes, "WORKSPACE")
        assert bool(network.strongly_typed) == bool(strongly_typed) and config.fp16 is fp16 and config.tf32 is False
        assert config.builder_optimization_level == 5 and config.memory_pool_limits == {"WORKSPACE": 512 << 20}
        assert config.timing_cache_path == "t.cache"
        assert tuple(config.profiles[0]["fbank"]) == shapes
    _, static = polygraphy_loaders(backend, Path("m.onnx"), plan, TrtBuildOptions(), None, "WORKSPACE")
    assert static.memory_pool_limits is None and not list(static.profiles[0])  # no profile for a static graph


def fake_plan(folder: Path, model_path: Path, version: str = "10.13.0.35",
              gpu: GpuInfo = L4) -> tuple[Path, dict[str, Any]]:
    """Bytes that are not a plan, with the sidecar a build would write: for checks that must fail before
    TensorRT is touched (file and sidecar checks), never to pretend a build happened."""
    info = read_onnx_model(model_path)
    plan_path = folder / "fake.plan"
    plan_path.write_bytes(b"not a TensorRT plan" * 64)
    trt_version = parse_trt_version(version)
    batch = resolve_batch_range(info.batch_dim, max_batch=4)
    details = tensorrt_details(trt_version, gpu, precision_plan(trt_version, info.precision), TrtBuildOptions(),
                               profile_shapes(info.input_shape, batch))
    data = engine_sidecar(backend="tensorrt", engine=plan_path, engine_sha256=sha256_file(plan_path), source=info,
                          batch=batch, precision="fp32", details=details, versions={"tensorrt": version})
    Path(f"{plan_path}.json").write_text(json.dumps(data))
    return plan_path, data


def test_plan_compatibility_checks(exported: dict[str, Path], tmp_path: Path) -> None:
    _, data = fake_plan(tmp_path, exported["dynamic"])
    recorded = data["tensorrt"]
    assert recorded["profile"]["fbank"] == {"min": [1, 128, 128], "opt": [4, 128, 128], "max": [4, 128, 128]}
    assert check_plan_compatible(recorded, "10.13.0.35", GpuInfo("NVIDIA L4", "8.9"), "m.plan") == []
    notes = check_plan_compatible(recorded, "10.13.0.35", GpuInfo("NVIDIA L40S", "8.9"), "m.plan")
    assert len(notes) == 1 and "NVIDIA L40S" in notes[0]
    with pytest.raises(EngineMismatchError, match=r"built with TensorRT 10.13.0.35, this is TensorRT 10.14.1.48"):
        check_plan_compatible(recorded, "10.14.1.48", GpuInfo("NVIDIA L4", "8.9"), "m.plan")
    with pytest.raises(EngineMismatchError, match=r"compute capability 8.9 \(NVIDIA L4\), this GPU is 9.0"):
        check_plan_compatible(recorded, "10.13.0.35", GpuInfo("NVIDIA H100 80GB HBM3", "9.0"), "m.plan")
    assert data["source"]["sha256"] == sha256_file(exported["dynamic"])
    assert data["export"]["tome"]["token_counts"] == [146, 138, 130] and data["export"]["labels"] == list(LABELS)


def test_plan_file_and_sidecar_checks_run_without_tensorrt(exported: dict[str, Path], tmp_path: Path) -> None:
    plan, data = fake_plan(tmp_path, exported["dynamic"])
    side = Path(f"{plan}.json")
    with plan.open("ab") as f:  # a changed or truncated plan no longer matches its sidecar
        f.write(b"x")
    with pytest.raises(EngineMismatchError, match="does not match its sidecar"):
        load_engine(plan)
    side.write_text("{not json")
    with pytest.raises(EngineError, match="not valid JSON"):
        load_engine(plan)
    for change, message in (({"format_version": 99}, "format_version 99"), ({"backend": "openvino"}, "openvino"),
                            ({"batch": None}, None), ({"tensorrt": {"version": "10.13.0.35"}}, "tensorrt.gpu.name")):
        broken = {k: v for k, v in {**data, **change}.items() if v is not None}
        side.write_text(json.dumps(broken))
        with pytest.raises(EngineError, match=message or "lacks"):
            load_engine(plan)
    side.write_text(json.dumps(data))
    with pytest.raises(EngineMismatchError, match="built from an ONNX model with sha256"):
        load_engine(plan, source=exported["static"])
    side.unlink()  # no sidecar and not ONNX
    with pytest.raises(EngineError, match="no engine sidecar"):
        load_engine(plan)


@pytest.mark.skipif(HAS_TRT, reason="checks the failure where tensorrt is missing")
def test_loading_a_plan_without_tensorrt_names_the_extra(exported: dict[str, Path], tmp_path: Path) -> None:
    plan, _ = fake_plan(tmp_path, exported["dynamic"])
    with pytest.raises(BackendUnavailableError, match=r"pip install \"fastast-deploy\[tensorrt\]\""):
        load_engine(plan)


def test_query_gpu_fails_cleanly_without_a_gpu() -> None:
    try:
        gpu = query_gpu()
    except BackendUnavailableError as err:
        assert "GPU" in str(err) and "\n" not in str(err)
    else:
        assert gpu.name and gpu.compute_capability.count(".") == 1


# --- build-engine --backend tensorrt where TensorRT is missing ----------------------------------------------

@pytest.mark.skipif(HAS_TRT, reason="checks the failure where tensorrt is missing")
def test_build_tensorrt_without_tensorrt_fails_in_one_line(exported: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, text = run("build-engine", exported["dynamic"], "-o", out / "m.plan", "--backend", "tensorrt")
    assert_one_line_failure(code, text, TRT_HINT)
    assert not out.exists()  # not even the output directory


@pytest.mark.skipif(HAS_TRT, reason="checks the failure where tensorrt is missing")
def test_build_tensorrt_without_tensorrt_console_script(exported: dict[str, Path], tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("fastast-deploy")
    script = script if script.exists() else Path(shutil.which("fastast-deploy") or "fastast-deploy")
    out = tmp_path / "out"
    proc = subprocess.run([str(script), "build-engine", str(exported["dynamic"]), "-o", str(out / "m.plan")],
                          capture_output=True, text=True, timeout=120)
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert proc.returncode == 1 and len(lines) == 1 and TRT_HINT in lines[0], proc.stdout + proc.stderr
    assert files_in(out) == []


def gpu_visible() -> bool:
    try:
        query_gpu()
    except BackendUnavailableError:
        return False
    return True


def run_with_stub_tensorrt(folder: Path, version: str, *args: Any) -> tuple[int, list[str]]:
    """The CLI in a subprocess where ``import tensorrt`` finds a module holding only ``__version__``: it reaches
    the checks that follow the import (version policy, GPU), all of which must fail before any build starts."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tensorrt.py").write_text(f"__version__ = {version!r}\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", "from fastast_deploy.cli.main import main; main()",
                           *(str(a) for a in args)], capture_output=True, text=True, timeout=120, env=env,
                          cwd=folder)
    return proc.returncode, [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]


@pytest.mark.skipif(HAS_TRT, reason="uses a stand-in tensorrt module where the real one is missing")
def test_version_policy_and_gpu_checks_follow_the_tensorrt_import(exported: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    build = ("build-engine", exported["dynamic"], "-o", out / "m.plan")
    code, lines = run_with_stub_tensorrt(tmp_path / "trt11", "11.4.0.106", *build, "--precision", "fp16")
    assert code == 1 and len(lines) == 1 and "export --precision fp16" in lines[0], lines
    code, lines = run_with_stub_tensorrt(tmp_path / "trt8", "8.6.1", *build)
    assert code == 1 and len(lines) == 1 and "too old" in lines[0], lines
    if not gpu_visible():  # tensorrt importable, no GPU: the message names the GPU
        code, lines = run_with_stub_tensorrt(tmp_path / "trt10", "10.13.0.35", *build)
        assert code == 1 and len(lines) == 1 and "no CUDA GPU" in lines[0], lines
    assert files_in(out) == []


@pytest.mark.tensorrt
def test_build_tensorrt_without_a_gpu_names_the_gpu(exported: dict[str, Path], tmp_path: Path) -> None:
    if gpu_visible():
        pytest.skip("a CUDA GPU is visible; this checks the failure without one")
    code, text = run("build-engine", exported["dynamic"], "-o", tmp_path / "m.plan")
    assert_one_line_failure(code, text, "GPU")
    assert files_in(tmp_path) == []


# --- bad inputs -----------------------------------------------------------------------------------------------

def onnx_with_input_named_x(path: Path) -> Path:
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["logits"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 128, 128])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 128, 128])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


# ids other than "tensorrt": a parameter id becomes a keyword, and conftest skips the "tensorrt" keyword
@pytest.mark.parametrize("backend", ["tensorrt", "onnxruntime"], ids=["trt-backend", "ort-backend"])
def test_build_rejects_bad_models_in_one_line(backend: str, exported: dict[str, Path], tmp_path: Path) -> None:
    text_file = tmp_path / "notes.onnx"
    text_file.write_text("this is not a model\n")
    wrong_input = onnx_with_input_named_x(tmp_path / "x.onnx")
    out = tmp_path / "out"
    cases = [
        ((text_file,), "not a readable ONNX model"),
        ((wrong_input,), "expected one input 'fbank'"),
        ((tmp_path / "missing.onnx",), "does not exist"),
        ((exported["dynamic"], "--min-batch", 8, "--max-batch", 2), "min <= opt <= max"),
        ((exported["static"], "--max-batch", 4), "static batch of 2"),
    ]
    for args, fragment in cases:
        code, text = run("build-engine", *args, "-o", out / "engine", "--backend", backend)
        assert_one_line_failure(code, text, fragment)
        assert files_in(out) == []


def test_options_of_the_other_backend_are_refused(exported: dict[str, Path], tmp_path: Path) -> None:
    code, text = run("build-engine", exported["dynamic"], "-o", tmp_path / "m.onnx", "--backend", "onnxruntime",
                     "--precision", "fp16")
    assert_one_line_failure(code, text, "--precision applies to --backend tensorrt")
    code, text = run("build-engine", exported["dynamic"], "-o", tmp_path / "m.plan", "--provider", "cuda")
    assert_one_line_failure(code, text, "--provider applies to --backend onnxruntime")
    assert files_in(tmp_path) == []


def test_unavailable_provider_lists_requested_and_available(exported: dict[str, Path], tmp_path: Path) -> None:
    available = ort.get_available_providers()
    if "CUDAExecutionProvider" in available:
        pytest.skip("CUDAExecutionProvider is installed here")
    code, text = run("build-engine", exported["dynamic"], "-o", tmp_path / "m.onnx", "--backend", "onnxruntime",
                     "--provider", "cuda")
    assert_one_line_failure(code, text, "requested provider 'cuda'", str(available))
    assert files_in(tmp_path) == []
    assert provider_chain("cpu", available) == ["CPUExecutionProvider"]
    assert provider_chain("tensorrt", ["TensorrtExecutionProvider", "CUDAExecutionProvider",
                                       "CPUExecutionProvider"])[0] == "TensorrtExecutionProvider"


def test_an_ort_optimised_model_is_refused_for_tensorrt(exported: dict[str, Path], tmp_path: Path) -> None:
    engine = tmp_path / "m.ort.onnx"
    assert run("build-engine", exported["dynamic"], "-o", engine, "--backend", "onnxruntime")[0] == 0
    code, text = run("build-engine", engine, "-o", tmp_path / "out" / "m.plan")
    assert_one_line_failure(code, text, "ONNX Runtime-only ops")
    assert files_in(tmp_path / "out") == []


# --- the ONNX Runtime engine ----------------------------------------------------------------------------------

def test_onnxruntime_engine_matches_pytorch_and_the_model(model: FastAST, exported: dict[str, Path],
                                                          tmp_path: Path, assert_same_merges) -> None:
    path = tmp_path / "m.ort.onnx"
    code, text = run("build-engine", exported["dynamic"], "-o", path, "--backend", "onnxruntime", "--threads", 1)
    assert code == 0, text
    assert files_in(tmp_path) == ["m.ort.onnx", "m.ort.onnx.json"]  # no temporary files left
    side = json.loads(Path(f"{path}.json").read_text())
    assert side["backend"] == "onnxruntime" and side["precision"] == "fp32"
    assert side["onnxruntime"]["version"] == ort.__version__
    assert side["onnxruntime"]["providers"] == ["CPUExecutionProvider"]
    assert side["onnxruntime"]["optimization_level"] == "all" and side["onnxruntime"]["intra_op_threads"] == 1
    assert side["batch"] == {"min": 1, "opt": 1, "max": None}
    assert side["source"]["sha256"] == sha256_file(exported["dynamic"])
    assert side["export"]["tome"]["effective_schedule"] == [8, 8]
    assert side["export"]["tome"]["token_counts"] == [146, 138, 130]
    assert side["export"]["labels"] == list(LABELS) and side["export"]["precision"] == "fp32"
    # the un-optimised graph as an independent ONNX Runtime reference
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    plain = ort.InferenceSession(str(exported["dynamic"]), options, providers=["CPUExecutionProvider"])
    with load_engine(path, source=exported["dynamic"]) as engine:
        assert isinstance(engine, OnnxRuntimeEngine) and engine.labels == list(LABELS)
        assert engine.input_specs == {"fbank": (("batch", 128, 128), np.dtype("float32"))}
        assert engine.output_specs["logits"] == (("batch", 10), np.dtype("float32"))
        figures = {}
        for batch in (1, 2, 5):
            x = fbank_like(batch, 128, 128, seed=10 + batch)
            got = engine.infer({"fbank": x})
            want, merges = torch_outputs(model, x)
            ref = dict(zip([o.name for o in plain.get_outputs()], plain.run(None, {"fbank": x}), strict=True))
            figures[batch] = (float(np.abs(got["logits"] - ref["logits"]).max()),
                              float(np.abs(got["logits"] - want).max()))
            assert got["logits"].shape == (batch, 10)
            assert figures[batch][0] <= 1e-4 and figures[batch][1] <= 1e-4
            names = ["merge0_src", "merge0_dst", "merge1_src", "merge1_dst"]
            assert_same_merges([got[n] for n in names], merges)  # identical merge decisions
        print("ORT engine max |diff| per batch (vs unoptimised ONNX, vs PyTorch):", figures)


def test_onnxruntime_engine_checks_batch_range_and_inputs(exported: dict[str, Path], tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    assert run("build-engine", exported["dynamic"], "-o", path, "--backend", "onnxruntime", "--max-batch", 4,
               "--optimization", "basic")[0] == 0
    with load_engine(path) as engine:
        assert engine.batch_range == BatchRange(1, 4, 4)
        assert engine.infer({"fbank": fbank_like(4, 128, 128)})["logits"].shape == (4, 10)
        for feed, message in (({"fbank": fbank_like(5, 128, 128)}, "batch 5 is outside"),
                              ({"fbank": fbank_like(1, 64, 128)}, "expected (batch, 128, 128)"),
                              ({"x": fbank_like(1, 128, 128)}, "expected ['fbank']")):
            with pytest.raises(EngineError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
                engine.infer(feed)


def test_static_batch_engine(exported: dict[str, Path], tmp_path: Path) -> None:
    path = tmp_path / "s.onnx"
    assert run("build-engine", exported["static"], "-o", path, "--backend", "onnxruntime")[0] == 0
    with load_engine(path) as engine:
        assert engine.batch_range == BatchRange(2, 2, 2)
        assert engine.infer({"fbank": fbank_like(2, 128, 128)})["logits"].shape == (2, 10)
        with pytest.raises(EngineError, match=r"has shape \(3, 128, 128\), expected \(2, 128, 128\)"):
            engine.infer({"fbank": fbank_like(3, 128, 128)})


def test_plain_onnx_model_opens_in_onnxruntime_cpu(model: FastAST, exported: dict[str, Path]) -> None:
    with load_engine(exported["dynamic"]) as engine:
        assert engine.metadata["backend"] == "onnxruntime" and engine.metadata["onnxruntime"]["offline"] is False
        assert engine.metadata["export"]["tome"]["token_counts"] == [146, 138, 130]
        x = fbank_like(3, 128, 128, seed=3)
        assert np.abs(engine.infer({"fbank": x})["logits"] - torch_outputs(model, x)[0]).max() <= 1e-4
        # timed beside others, a CPU engine first runs untimed for a while (evaluation.timing says why)
        assert engine.providers[0] == "CPUExecutionProvider" and engine.rewarm_s >= 0.06
    with pytest.raises(BackendUnavailableError, match="requested provider 'cuda'"):
        if "CUDAExecutionProvider" in ort.get_available_providers():
            pytest.skip("CUDAExecutionProvider is installed here")
        load_engine(exported["dynamic"], provider="cuda")


def test_onnxruntime_sidecar_mismatches_are_refused(exported: dict[str, Path], tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    assert run("build-engine", exported["dynamic"], "-o", path, "--backend", "onnxruntime")[0] == 0
    side = Path(f"{path}.json")
    good = json.loads(side.read_text())
    other_version = {**good, "onnxruntime": {**good["onnxruntime"], "version": "1.0.0"}}
    side.write_text(json.dumps(other_version))
    with pytest.raises(EngineMismatchError, match=f"ONNX Runtime 1.0.0, this is {ort.__version__}") as err:
        load_engine(path)
    assert "\n" not in str(err.value)
    assert describe(path)["runs_here"].startswith("no: ")
    cuda = {**good, "onnxruntime": {**good["onnxruntime"], "provider": "cuda"}}
    side.write_text(json.dumps(cuda))
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(BackendUnavailableError, match=r"optimised for provider 'cuda'.*available: \[") as err:
            load_engine(path)
        assert "\n" not in str(err.value)
    side.write_text(json.dumps(good))
    with pytest.raises(EngineMismatchError, match="was optimised for provider 'cpu', 'cuda' was requested"):
        load_engine(path, provider="cuda")
    path.write_bytes(path.read_bytes()[:-100])  # truncated
    with pytest.raises(EngineMismatchError, match="does not match its sidecar"):
        load_engine(path)


# --- inspect --------------------------------------------------------------------------------------------------

def test_inspect_engine_model_and_plan(exported: dict[str, Path], tmp_path: Path) -> None:
    path = tmp_path / "m.ort.onnx"
    assert run("build-engine", exported["dynamic"], "-o", path, "--backend", "onnxruntime")[0] == 0
    code, text = run("inspect", path)
    assert code == 0
    for fragment in ("ONNX Runtime engine", "fbank (batch, 128, 128) float32", "logits (batch, 10) float32",
                     "r per block [8, 8]", "146 138 130", "class 0, class 1", "runs here", "precision"):
        assert fragment in text, text
    code, text = run("inspect", exported["dynamic"], "--json")
    report = json.loads(text)
    assert code == 0 and report["kind"] == "exported ONNX model" and report["labels"] == list(LABELS)
    assert report["tome"]["token_counts"] == [146, 138, 130] and report["precision"] == "fp32"
    plan, _ = fake_plan(tmp_path, exported["dynamic"])  # a plan's sidecar reads without TensorRT
    code, text = run("inspect", plan, "--json")
    report = json.loads(text)
    assert code == 0 and report["backend"] == "tensorrt" and report["tensorrt"]["gpu"]["name"] == "NVIDIA L4"
    assert report["runs_here"].startswith("no: ")
    code, text = run("inspect", tmp_path / "nothing.plan")
    assert_one_line_failure(code, text, "does not exist")


def test_device_selection_narrows_visible_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    from fastast_deploy.cli.commands.engine import select_device
    from fastast_deploy.errors import ConfigError

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    select_device(2)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "2"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    select_device(1)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "5"
    with pytest.raises(ConfigError, match="leaves 1 visible"):
        select_device(1)


# --- build-engine --backend onnxruntime --optimize -----------------------------------------------------------

def test_optimize_fuses_with_onnxruntime_and_keeps_merge_decisions(model: FastAST, exported: dict[str, Path],
                                                                  tmp_path: Path, assert_same_merges) -> None:
    out = tmp_path / "fused.onnx"
    code, text = run("build-engine", exported["dynamic"], "-o", out, "--backend", "onnxruntime", "--optimize",
                     "--threads", "1")
    assert code == 0, text
    recorded = json.loads(Path(f"{out}.json").read_text())["onnxruntime"]["optimize"]
    assert recorded["fused_ops"].get("BiasGelu") == TINY.depth  # ORT's transformer fusion ran
    assert recorded["parity"]["max_abs_diff"] <= 1e-4
    x = fbank_like(3, TINY.input_frames, TINY.num_mel_bins, seed=7)
    want, merges = torch_outputs(model, x)
    with load_engine(out) as engine:
        got = engine.infer({"fbank": x})
    assert np.abs(got["logits"] - want).max() <= 1e-4
    assert_same_merges([got[n] for n in merge_output_names(model.schedule)], merges)  # unchanged by the fusions


def test_fused_attention_takes_the_size_bias(exported: dict[str, Path], tmp_path: Path) -> None:
    from fastast_deploy.engines.ort_engine import OrtBuildOptions, build_onnxruntime_engine

    result = build_onnxruntime_engine(exported["dynamic"], tmp_path / "attn.onnx",
                                      OrtBuildOptions(threads=1, optimize=True, fuse_attention=True))
    fusion = result.metadata["onnxruntime"]["optimize"]
    assert fusion["attention_fused"] == TINY.depth  # the first block has no sizes yet, the second a bias
    nodes = onnx.load(str(result.path)).graph.node
    assert sum(1 for n in nodes if n.op_type == "Attention") == TINY.depth and not any(
        n.op_type == "Softmax" for n in nodes)
    assert fusion["parity"]["max_abs_diff"] <= 1e-4


def test_optimize_refuses_the_tensorrt_provider_and_the_tensorrt_backend(exported: dict[str, Path],
                                                                         tmp_path: Path) -> None:
    code, text = run("build-engine", exported["dynamic"], "-o", tmp_path / "x.onnx", "--backend", "onnxruntime",
                     "--provider", "tensorrt", "--optimize")
    assert_one_line_failure(code, text, "--optimize", "TensorRT provider")
    code, text = run("build-engine", exported["dynamic"], "-o", tmp_path / "x.plan", "--optimize")
    assert_one_line_failure(code, text, "--optimize", "onnxruntime only")
    assert files_in(tmp_path) == []


@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("side", ["plain", "fused"])
def test_nan_or_inf_on_either_side_fails_the_fused_graph_check(exported: dict[str, Path], tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch, bad: float,
                                                                side: str) -> None:
    """`build-engine --optimize`'s check is the one parity check: a NaN or inf logit from the plain model (the
    reference) fails it as well as one from the fused engine."""
    from fastast_deploy.engines.base import EngineError
    from fastast_deploy.engines.ort_engine import check_fused_parity

    info = read_onnx_model(exported["dynamic"])
    fused = tmp_path / "fused.onnx"
    shutil.copy(info.path, fused)
    spoiled = str(info.path if side == "plain" else fused)
    real_run = ort.InferenceSession.run

    def spoiled_run(self: ort.InferenceSession, *args: object, **kwargs: object) -> list[np.ndarray]:
        outputs = real_run(self, *args, **kwargs)
        if str(self._model_path) == spoiled:
            outputs[0][0, 1] = bad
        return outputs

    assert check_fused_parity(info, fused, ["CPUExecutionProvider"], 1)["max_abs_diff"] == 0.0
    monkeypatch.setattr(ort.InferenceSession, "run", spoiled_run)
    with pytest.raises(EngineError, match="NaN or inf") as err:
        check_fused_parity(info, fused, ["CPUExecutionProvider"], 1)
    assert "\n" not in str(err.value)
