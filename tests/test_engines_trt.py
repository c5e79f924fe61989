"""TensorRT plans built from tiny exports on a real GPU and compared with ONNX Runtime on the CPU, and the TensorRT
code paths that can be checked without one (with stand-ins for Polygraphy's runner, config and loaders: they
check what this project does with them, never pretend that an engine ran).

The GPU tests need tensorrt (``pytest.mark.tensorrt``) and a CUDA GPU that the driver sees (checked through the
driver, not torch, so a CPU build of torch does not hide the GPU); elsewhere they skip themselves.
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
from fastast_deploy.contract import METADATA_KEY
from fastast_deploy.engines import EngineError, EngineMismatchError, load_engine
from fastast_deploy.engines.base import BackendUnavailableError
from fastast_deploy.engines.gpu import query_gpu
from fastast_deploy.engines.trt_engine import EngineWarning, TensorRTEngine
from fastast_deploy.engines.trt_policy import parse_trt_version
from fastast_deploy.exporters.onnx_export import ExportOptions, export_onnx
from fastast_deploy.files import sha256_file
from fastast_deploy.metrics import cosine_rows, fbank_like
from fastast_deploy.model.config import ModelConfig, TomeConfig
from fastast_deploy.model.fastast import build_model
from fastast_deploy.model.schedule import make_schedule


def _gpu_visible() -> bool:
    try:
        query_gpu()
    except BackendUnavailableError:
        return False
    return True


_needs_gpu = pytest.mark.skipif(not _gpu_visible(), reason="needs a CUDA GPU; the driver sees none")


def on_gpu(test: Any) -> Any:
    return pytest.mark.tensorrt(_needs_gpu(test))

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


@on_gpu
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


@on_gpu
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


@on_gpu
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


@on_gpu
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


@on_gpu
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


@on_gpu
def test_corrupt_plan_is_refused(fp32_plan: Path, tmp_path: Path) -> None:
    plan, side = copy_plan(fp32_plan, tmp_path)
    data = bytearray(plan.read_bytes())
    data[len(data) // 2:] = bytes(len(data) - len(data) // 2)  # zero the second half
    plan.write_bytes(bytes(data))
    side["engine"]["sha256"] = sha256_file(plan)  # past the file check: TensorRT itself must refuse it
    Path(f"{plan}.json").write_text(json.dumps(side))
    with pytest.raises(EngineError, match="TensorRT cannot load"):
        load_engine(plan)


@on_gpu
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


@on_gpu
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


@on_gpu
def test_device_timing_and_close(fp32_plan: Path) -> None:
    engine = load_engine(fp32_plan)
    assert isinstance(engine, TensorRTEngine)
    timing = engine.time_device({"fbank": fbank_like(4, 128, 128)}, warmup=2, iterations=5)
    print(f"TensorRT fp32 tiny, batch 4: {timing.to_dict()}")
    assert timing.iterations == 5 and 0 < timing.compute_ms <= timing.compute_p90_ms
    assert timing.h2d_ms > 0 and timing.d2h_ms > 0 and timing.latency_ms >= timing.compute_ms
    engine.close()
    assert engine._engine is None and engine._runner is None
    with pytest.raises(EngineError, match="is closed"):
        engine.infer({"fbank": fbank_like(1, 128, 128)})


@on_gpu
def test_timing_cache_is_reused_and_a_foreign_one_is_reported(exported: dict[str, Path], tmp_path: Path) -> None:
    cache = tmp_path / "trt.cache"
    code, text = run("build-engine", exported["dynamic"], "-o", tmp_path / "a.plan", "--max-batch", 2,
                     "--timing-cache", cache)
    assert code == 0 and cache.stat().st_size > 0, text
    assert not Path(f"{cache}.lock").exists()  # Polygraphy's lock file is removed
    code, text = run("build-engine", exported["dynamic"], "-o", tmp_path / "b.plan", "--max-batch", 2,
                     "--timing-cache", cache)
    assert code == 0 and "refused the timing cache" not in text, text
    foreign = tmp_path / "foreign.cache"
    foreign.write_bytes(b"\0" * 4096)  # not a cache of this GPU: TensorRT refuses it
    code, text = run("build-engine", exported["dynamic"], "-o", tmp_path / "c.plan", "--max-batch", 2,
                     "--timing-cache", foreign)
    assert code == 0 and "refused the timing cache" in text, text
    assert foreign.read_bytes() == b"\0" * 4096


# ---------------------------------------------------------------------------------------------------------------
# Without a GPU: the same code with stand-ins for what only TensorRT provides
# ---------------------------------------------------------------------------------------------------------------
from fastast_deploy.engines import trt_engine, trt_policy  # noqa: E402
from fastast_deploy.engines.gpu import GpuInfo, summarize_device_times  # noqa: E402

METADATA = {"inputs": {"fbank": {"shape": ["batch", 128, 128], "dtype": "float32"}},
            "outputs": {"logits": {"shape": ["batch", 10], "dtype": "float32"}},
            "batch": {"min": 1, "opt": 2, "max": 4}, "export": {}}


class FakePolygraphyError(Exception):
    pass


class FakeTrtEngine:
    """Holds nothing; only its lifetime is observed (a weakref to it must die once the engine is closed)."""


class FakeRunner:
    """Like TrtRunner: keeps the engine it was given and drops it in deactivate (deactivate_impl's `del`)."""

    def __init__(self, engine: Any, fail: bool = False, times: tuple[float, ...] = (0.004,)) -> None:
        self.engine, self.is_active, self.fail, self.times, self.calls = engine, True, fail, list(times), 0

    def infer(self, feed: dict[str, Any], copy_outputs_to_host: bool = True) -> dict[str, Any]:
        if self.fail:
            raise FakePolygraphyError("`execute_async_v3()` failed. Please see the logging output above.\nmore")
        self.calls += 1
        batch = len(next(iter(feed.values())))
        out = np.full((batch, 10), 0.5, np.float32)
        return {"logits": out if copy_outputs_to_host else FakeDeviceArray.holding(out)}

    def last_inference_time(self) -> float:
        return self.times[(self.calls - 1) % len(self.times)]

    def deactivate(self) -> None:
        del self.engine
        self.is_active = False


class FakeDeviceArray:
    """polygraphy.cuda.DeviceArray's calls that time_device makes, on host memory."""

    freed: list[FakeDeviceArray] = []

    def __init__(self, shape: tuple[int, ...] = (), dtype: Any = None) -> None:
        self.data = np.zeros(shape, np.float32)

    @classmethod
    def holding(cls, data: np.ndarray) -> FakeDeviceArray:
        array = cls(data.shape)
        array.data = data
        return array

    def __len__(self) -> int:
        return len(self.data)

    def copy_from(self, host: np.ndarray, stream: Any = None) -> FakeDeviceArray:
        self.data = host.copy()
        return self

    def numpy(self) -> np.ndarray:
        return self.data.copy()

    def free(self) -> None:
        FakeDeviceArray.freed.append(self)


def fake_engine(runner_kwargs: dict[str, Any] | None = None) -> tuple[TensorRTEngine, Any]:
    import weakref

    engine = object.__new__(TensorRTEngine)
    super(TensorRTEngine, engine).__init__(Path("fake.plan"), METADATA)
    held = FakeTrtEngine()
    engine._engine, engine._runner = held, FakeRunner(held, **(runner_kwargs or {}))
    engine._polygraphy_error, engine._verbose = FakePolygraphyError, False
    return engine, weakref.ref(held)


def test_close_releases_the_deserialised_engine() -> None:
    import gc

    engine, alive = fake_engine()
    runner = engine._runner
    del runner
    assert engine.infer({"fbank": fbank_like(2, 128, 128)})["logits"].shape == (2, 10)
    engine.close()
    gc.collect()
    assert alive() is None  # nothing in this process refers to the engine any more: TensorRT may free it
    engine.close()  # twice is harmless
    with pytest.raises(EngineError, match="is closed"):
        engine.infer({"fbank": fbank_like(1, 128, 128)})


def test_errors_while_running_are_engine_errors() -> None:
    engine, _ = fake_engine({"fail": True})
    with pytest.raises(EngineError, match=r"TensorRT could not run fake.plan: `execute_async_v3\(\)` failed") as err:
        engine.infer({"fbank": fbank_like(1, 128, 128)})
    assert "\n" not in str(err.value) and err.value.__cause__ is None


def test_device_timing_keeps_transfers_apart(monkeypatch: pytest.MonkeyPatch) -> None:
    import polygraphy.cuda

    monkeypatch.setattr(polygraphy.cuda, "DeviceArray", FakeDeviceArray)
    FakeDeviceArray.freed = []
    engine, _ = fake_engine({"times": (0.004, 0.006, 0.005)})
    timing = engine.time_device({"fbank": fbank_like(2, 128, 128)}, warmup=1, iterations=6)
    assert engine._runner.calls == 7 and timing.iterations == 6
    # compute is the runner's own figure, not host wall clock: the median of what it reported after warm-up
    assert timing.compute_ms == pytest.approx(5.0) and timing.compute_p90_ms == pytest.approx(6.0)
    assert timing.latency_ms >= timing.compute_ms and timing.h2d_ms >= 0 and timing.d2h_ms >= 0
    assert len(FakeDeviceArray.freed) == 1  # the input buffer
    with pytest.raises(EngineError, match="batch 8 is outside"):
        engine.time_device({"fbank": fbank_like(8, 128, 128)})


def test_summarize_device_times() -> None:
    timing = summarize_device_times([0.001] * 3, [0.002, 0.004, 0.003], [0.0005] * 3, source="test")
    assert timing.compute_ms == pytest.approx(3.0) and timing.latency_ms == pytest.approx(4.5)
    assert timing.to_dict()["source"] == "test"
    with pytest.raises(ValueError):
        summarize_device_times([], [], [], source="test")
    with pytest.raises(ValueError):
        summarize_device_times([0.001], [float("nan")], [0.001], source="test")


class FakeConfig:
    def __init__(self, accept: bool | None) -> None:
        self.accept, self.attached = accept, None

    def create_timing_cache(self, data: bytes) -> Any:
        if self.accept is None:
            raise RuntimeError("corrupt cache")
        return ("cache", data)

    def set_timing_cache(self, cache: Any, ignore_mismatch: bool) -> bool:
        assert ignore_mismatch is False
        self.attached = cache
        return bool(self.accept)


@pytest.mark.parametrize("accept", [True, False, None])
def test_refused_timing_cache_is_reported_and_not_rewritten(tmp_path: Path, accept: bool | None) -> None:
    cache = tmp_path / "t.cache"
    cache.write_bytes(b"cache bytes")
    loader, notes = type("Loader", (), {"timing_cache_path": str(cache)})(), []
    load = trt_engine.checked_timing_cache(lambda builder, network: FakeConfig(accept), cache, lambda: loader, notes)
    config = load("builder", "network")
    assert isinstance(config, FakeConfig)
    if accept:
        assert notes == [] and loader.timing_cache_path == str(cache)
    else:
        assert len(notes) == 1 and "refused the timing cache" in notes[0] and loader.timing_cache_path is None
    missing = trt_engine.checked_timing_cache(lambda b, n: FakeConfig(False), tmp_path / "none", lambda: loader, [])
    assert isinstance(missing("b", "n"), FakeConfig)  # no file yet: nothing to check, the build creates it


def test_build_removes_polygraphys_lock_file(exported_cpu: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The build path with Polygraphy's loaders replaced: the lock file it leaves is removed, a refused cache is
    named in the notes. The bytes written are not a plan; nothing here loads them."""
    import types

    cache = tmp_path / "t.cache"
    cache.write_bytes(b"from another GPU")

    class FakeEngineBytes:
        def __init__(self, network: Any, config: Any = None, save_timing_cache: str | None = None) -> None:
            self.config, self.timing_cache_path = config, save_timing_cache

        def __call__(self) -> bytes:
            Path(f"{self.timing_cache_path or cache}.lock").write_bytes(b"")  # util.LockFile leaves it behind
            self.config("builder", "network")
            return b"bytes standing in for a plan"

    created: list[dict[str, Any]] = []

    def create_config(**kwargs: Any) -> Any:
        created.append(kwargs)
        return lambda builder, network: FakeConfig(False)

    backend = types.SimpleNamespace(NetworkFromOnnxPath=lambda path, strongly_typed=None: "network",
                                    CreateConfig=create_config,
                                    Profile=lambda: types.SimpleNamespace(add=lambda *a: {}),
                                    EngineBytesFromNetwork=FakeEngineBytes)
    fake_trt = types.SimpleNamespace(__version__="10.13.0.35", MemoryPoolType=types.SimpleNamespace(WORKSPACE=0))
    monkeypatch.setattr(trt_engine, "import_tensorrt", lambda: fake_trt)
    monkeypatch.setattr(trt_engine, "query_gpu", lambda: GpuInfo("NVIDIA L4", "8.9"))
    monkeypatch.setattr(trt_engine, "_polygraphy", lambda: (backend, FakePolygraphyError, "0.53.6"))
    options = trt_engine.TrtBuildOptions(max_batch=2, timing_cache=cache)
    result = trt_engine.build_tensorrt_engine(exported_cpu, tmp_path / "x.plan", options)
    assert not Path(f"{cache}.lock").exists()
    assert created[0]["load_timing_cache"] is None  # loaded by checked_timing_cache, which reads the answer
    assert any("refused the timing cache" in n for n in result.notes)
    assert cache.read_bytes() == b"from another GPU"


@pytest.fixture(scope="module")
def exported_cpu(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = build_model(TINY, TomeConfig(make_schedule(8, TINY.depth)))
    return export_onnx(model, tmp_path_factory.mktemp("cpu") / "tiny.onnx", check=False).path


def test_old_polygraphy_is_refused_with_tensorrt_11() -> None:
    eleven, ten = parse_trt_version("11.4.0.106"), parse_trt_version("10.13.0.35")
    with pytest.raises(BackendUnavailableError, match=r"Polygraphy 0.49.27 cannot build with TensorRT 11.*>=0.50.3"):
        trt_policy.check_polygraphy("0.49.27", eleven)
    for version in ("0.50.3", "0.53.6"):
        trt_policy.check_polygraphy(version, eleven)
    trt_policy.check_polygraphy("0.49.27", ten)  # TensorRT 10 still has layer.precision_is_set


def test_parsers_before_10_11_build_layer_norm_weakly_typed_or_refuse() -> None:
    old = parse_trt_version("10.5.0.18")
    fp32 = trt_policy.parser_precision_plan(old, trt_policy.precision_plan(old, "fp32"))
    assert not fp32.strongly_typed and not fp32.network_flag and not fp32.fp16_flag and fp32.precision == "fp32"
    assert any("LayerNorm" in n and "10.11" in n for n in fp32.notes)
    with pytest.raises(EngineError, match=r"TensorRT >= 10.11") as err:
        trt_policy.parser_precision_plan(old, trt_policy.precision_plan(old, "fp16"))
    assert "\n" not in str(err.value)
    for text in ("10.11.0.33", "10.13.0.35", "11.4.0.106"):
        version = parse_trt_version(text)
        for graph in ("fp32", "fp16"):
            plan = trt_policy.precision_plan(version, graph)
            assert trt_policy.parser_precision_plan(version, plan) == plan
    flag = trt_policy.precision_plan(old, "fp32", "fp16")  # weakly typed already: unchanged
    assert trt_policy.parser_precision_plan(old, flag) == flag


def test_verbose_shows_tensorrts_verbose_log_and_default_shows_warnings() -> None:
    from polygraphy.logger import G_LOGGER

    with trt_engine._polygraphy_logging(True):
        assert G_LOGGER.module_severity.get() == G_LOGGER.EXTRA_VERBOSE  # where TensorRT's VERBOSE goes
    with trt_engine._polygraphy_logging(False):
        assert G_LOGGER.module_severity.get() == G_LOGGER.WARNING


def test_gpu_check_script_and_its_benchmark_run_on_cpu(tmp_path: Path) -> None:
    """A smoke run of benchmarks/bench_gpu.py on the CPU with a tiny geometry: the code paths and the JSON, not
    GPU figures (scripts/gpu_check.sh runs it with --device cuda on a GPU machine)."""
    import importlib.util
    import subprocess

    root = Path(__file__).resolve().parents[1]
    assert subprocess.run(["bash", "-n", str(root / "scripts" / "gpu_check.sh")]).returncode == 0
    spec = importlib.util.spec_from_file_location("bench_gpu", root / "benchmarks" / "bench_gpu.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "gpu.json"
    args = ["--device", "cpu", "--size", "tiny", "--depth", "2", "--frames", "128", "--batch", "1", "--r", "0,8",
            "--repeats", "1", "--warmup", "0", "--parity-clips", "2", "--parity-batch", "2", "--parity-r", "8",
            "--json", str(out)]
    report = bench.main(args)
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    assert report["machine"]["device"] == "cpu" and report["tests"] is None
    same = report["parity"]["float32"]  # the CPU against itself: identical
    assert same["max_abs_diff"] == 0 and same["merge_agreement_per_block"] == [1.0, 1.0]
    assert report["parity"]["float16"]["cosine_min"] > 0.99
    rows = {row["r"]: row for row in report["speed"]}
    assert rows[0]["speedup"] == 1.0 and rows[0]["flop_ratio"] == 1.0 and rows[8]["flop_ratio"] > 1.0
    assert rows[8]["tokens_out"] < rows[0]["tokens_out"] and rows[0]["timing"] == "wall clock"
    with pytest.raises(SystemExit):
        bench.main([*args, "--modes", "eager,graph"])  # CUDA graphs need CUDA
