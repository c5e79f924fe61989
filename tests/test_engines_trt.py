"""TensorRT plans built from tiny exports on a real GPU and compared with ONNX Runtime on the CPU.

Every test here needs tensorrt (``pytest.mark.tensorrt``) and a CUDA GPU that the driver sees (checked through
the driver, not torch, so a CPU build of torch does not hide the GPU); elsewhere they skip themselves.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

from fastast_deploy.cli.main import cli
from fastast_deploy.engines import EngineError, EngineMismatchError, load_engine
from fastast_deploy.engines.base import BackendUnavailableError
from fastast_deploy.engines.gpu import query_gpu
from fastast_deploy.engines.trt_engine import EngineWarning, TensorRTEngine
from fastast_deploy.engines.trt_policy import parse_trt_version
from fastast_deploy.evaluation.metrics import cosine_rows, fbank_like
from fastast_deploy.exporters.metadata import METADATA_KEY
from fastast_deploy.exporters.onnx_export import ExportOptions, export_onnx
from fastast_deploy.files import sha256_file
from fastast_deploy.model.config import ModelConfig, TomeConfig
from fastast_deploy.model.fastast import build_model
from fastast_deploy.model.schedule import make_schedule


def _gpu_visible() -> bool:
    try:
        query_gpu()
    except BackendUnavailableError:
        return False
    return True


pytestmark = [pytest.mark.tensorrt, pytest.mark.skipif(not _gpu_visible(), reason="needs a CUDA GPU; the driver "
                                                       "sees none")]

TINY = ModelConfig.from_size("tiny", depth=2, input_frames=128, num_labels=10)
MERGES = ["merge0_src", "merge0_dst", "merge1_src", "merge1_dst"]
FP32_ATOL = 1e-3  # TF32 off: fp32 kernels with another summation order than ONNX Runtime's


def run(*args: Any) -> tuple[int, str]:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    torch.manual_seed(0)
    model = build_model(TINY, TomeConfig(make_schedule(8, TINY.depth)))
    out = tmp_path_factory.mktemp("exports")
    return {
        "dynamic": export_onnx(model, out / "dyn.onnx", ExportOptions(debug_merges=True), check=False).path,
        "fp16": export_onnx(model, out / "half.onnx", ExportOptions(precision="fp16"), check=False).path,
        "static": export_onnx(model, out / "static.onnx", ExportOptions(batch=2), check=False).path,
    }


@pytest.fixture(scope="module")
def fp32_plan(exported: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("plans")
    plan = folder / "m.plan"
    code, text = run("build-engine", exported["dynamic"], "-o", plan, "--min-batch", 1, "--opt-batch", 2,
                     "--max-batch", 4, "--workspace", 1024, "--timing-cache", folder / "timing.cache")
    assert code == 0, text
    return plan


def ort_outputs(model: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {"fbank": x}), strict=True))


def test_fp32_plan_sidecar(fp32_plan: Path, exported: dict[str, Path]) -> None:
    import tensorrt

    side = json.loads(Path(f"{fp32_plan}.json").read_text())
    trt = side["tensorrt"]
    assert side["backend"] == "tensorrt" and side["precision"] == "fp32"
    assert trt["version"] == tensorrt.__version__ and trt["gpu"] == query_gpu().to_dict()
    assert trt["strongly_typed"] and not trt["fp16_flag"] and not trt["tf32"]
    assert trt["profile"]["fbank"] == {"min": [1, 128, 128], "opt": [2, 128, 128], "max": [4, 128, 128]}
    assert side["batch"] == {"min": 1, "opt": 2, "max": 4}
    assert side["source"]["sha256"] == sha256_file(exported["dynamic"])
    assert side["engine"]["sha256"] == sha256_file(fp32_plan)
    assert (fp32_plan.parent / "timing.cache").stat().st_size > 0


def test_fp32_plan_matches_onnxruntime(fp32_plan: Path, exported: dict[str, Path]) -> None:
    agree = total = 0
    figures = {}
    with load_engine(fp32_plan, source=exported["dynamic"]) as engine:
        assert isinstance(engine, TensorRTEngine)
        for batch in (1, 2, 3, 4):
            x = fbank_like(batch, 128, 128, seed=20 + batch)
            got, want = engine.infer({"fbank": x}), ort_outputs(exported["dynamic"], x)
            same = np.all([np.all(got[m] == want[m], axis=-1) for m in MERGES], axis=0)  # (batch,) clip agrees
            agree, total = agree + int(same.sum()), total + batch
            diff = np.abs(got["logits"] - want["logits"]).max(axis=-1)
            figures[batch] = float(diff.max())
            assert np.all(diff[same] <= FP32_ATOL), (batch, diff)
        with pytest.raises(EngineError, match="batch 5 is outside"):
            engine.infer({"fbank": fbank_like(5, 128, 128)})
        first = engine.infer({"fbank": fbank_like(2, 128, 128, seed=1)})["logits"]
        kept = first.copy()
        engine.infer({"fbank": fbank_like(2, 128, 128, seed=2)})
        np.testing.assert_array_equal(first, kept)  # results are not overwritten by the next call
    print(f"TensorRT fp32 vs ONNX Runtime CPU, max |diff| per batch: {figures}; merge agreement {agree}/{total}")
    assert agree >= 0.8 * total


def test_fp16_export_builds_an_fp16_plan(exported: dict[str, Path], tmp_path: Path) -> None:
    plan = tmp_path / "half.plan"
    code, text = run("build-engine", exported["fp16"], "-o", plan, "--max-batch", 4)
    assert code == 0, text
    side = json.loads(Path(f"{plan}.json").read_text())
    assert side["precision"] == "fp16" and side["tensorrt"]["strongly_typed"] and not side["tensorrt"]["fp16_flag"]
    x = fbank_like(4, 128, 128, seed=7)
    with load_engine(plan) as engine:
        got = engine.infer({"fbank": x})["logits"]
    want = ort_outputs(exported["dynamic"], x)["logits"]  # the fp32 graph as reference
    assert cosine_rows(want, got).min() >= 0.99


def test_precision_fp16_on_an_fp32_graph(exported: dict[str, Path], tmp_path: Path) -> None:
    import tensorrt

    version = parse_trt_version(tensorrt.__version__)
    plan = tmp_path / "flag.plan"
    code, text = run("build-engine", exported["dynamic"], "-o", plan, "--precision", "fp16", "--max-batch", 2)
    if version.major >= 11:  # strongly typed only: refused, nothing written
        assert code != 0 and "export --precision fp16" in text and "\n" not in text.strip(), text
        assert list(tmp_path.iterdir()) == []
        return
    assert code == 0, text
    assert ("deprecated since TensorRT 10.12" in text) == ((version.major, version.minor) >= (10, 12))
    side = json.loads(Path(f"{plan}.json").read_text())
    assert side["precision"] == "fp16" and side["tensorrt"]["fp16_flag"] and not side["tensorrt"]["strongly_typed"]
    with load_engine(plan) as engine:
        logits = engine.infer({"fbank": fbank_like(2, 128, 128)})["logits"]
    assert logits.shape == (2, 10) and np.isfinite(logits).all()


def test_static_batch_plan(exported: dict[str, Path], tmp_path: Path) -> None:
    plan = tmp_path / "static.plan"
    code, text = run("build-engine", exported["static"], "-o", plan)
    assert code == 0, text
    assert json.loads(Path(f"{plan}.json").read_text())["tensorrt"]["profile"] is None
    x = fbank_like(2, 128, 128, seed=5)
    with load_engine(plan) as engine:
        got = engine.infer({"fbank": x})["logits"]
    assert cosine_rows(ort_outputs(exported["static"], x)["logits"], got).min() >= 0.999


def copy_plan(plan: Path, folder: Path) -> tuple[Path, dict[str, Any]]:
    target = folder / plan.name
    shutil.copy(plan, target)
    shutil.copy(f"{plan}.json", f"{target}.json")
    return target, json.loads(Path(f"{target}.json").read_text())


def test_corrupt_plan_is_refused(fp32_plan: Path, tmp_path: Path) -> None:
    plan, side = copy_plan(fp32_plan, tmp_path)
    data = bytearray(plan.read_bytes())
    data[len(data) // 2:] = bytes(len(data) - len(data) // 2)  # zero the second half
    plan.write_bytes(bytes(data))
    side["engine"]["sha256"] = sha256_file(plan)  # past the file check: TensorRT itself must refuse it
    Path(f"{plan}.json").write_text(json.dumps(side))
    with pytest.raises(EngineError, match="TensorRT cannot load"):
        load_engine(plan)


def test_plans_from_another_gpu_or_version_are_refused(fp32_plan: Path, tmp_path: Path) -> None:
    plan, side = copy_plan(fp32_plan, tmp_path)
    sidecar = Path(f"{plan}.json")
    other_cc = json.loads(json.dumps(side))
    other_cc["tensorrt"]["gpu"]["compute_capability"] = "1.0"
    sidecar.write_text(json.dumps(other_cc))
    with pytest.raises(EngineMismatchError, match="compute capability 1.0"):
        load_engine(plan)
    other_version = json.loads(json.dumps(side))
    other_version["tensorrt"]["version"] = "9.0.0.1"
    sidecar.write_text(json.dumps(other_version))
    with pytest.raises(EngineMismatchError, match="built with TensorRT 9.0.0.1"):
        load_engine(plan)
    other_name = json.loads(json.dumps(side))
    other_name["tensorrt"]["gpu"]["name"] = "Another GPU"
    sidecar.write_text(json.dumps(other_name))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with load_engine(plan) as engine:
            assert engine.infer({"fbank": fbank_like(1, 128, 128)})["logits"].shape == (1, 10)
    assert any(issubclass(w.category, EngineWarning) and "Another GPU" in str(w.message) for w in caught)


def test_unparsable_model_fails_and_writes_nothing(exported: dict[str, Path], tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    # fbank in, logits out, valid metadata, but an op no TensorRT parser or plugin knows
    meta = {"inputs": {"fbank": {"shape": ["batch", 128, 128], "dtype": "float32"}},
            "outputs": {"logits": {"shape": ["batch", 128, 128], "dtype": "float32"}}, "precision": "fp32"}
    graph = helper.make_graph([helper.make_node("NoSuchOperator", ["fbank"], ["logits"])], "g",
                              [helper.make_tensor_value_info("fbank", TensorProto.FLOAT, ["batch", 128, 128])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 128, 128])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    helper.set_model_props(proto, {METADATA_KEY: json.dumps(meta)})
    model = tmp_path / "bad.onnx"
    onnx.save(proto, str(model))
    code, text = run("build-engine", model, "-o", tmp_path / "out" / "bad.plan", "--max-batch", 2)
    assert code != 0 and "could not build" in text, text
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []
