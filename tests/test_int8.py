"""INT8 Q/DQ export: the merge decisions stay float, the Q/DQ lint rules, verify's int8 thresholds, calibration
data errors, and what TensorRT is asked for."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from fastast_deploy.checkpoints.native import save_checkpoint
from fastast_deploy.cli.main import cli
from fastast_deploy.contract import PART_KEY, TOLERANCES, Tolerance
from fastast_deploy.engines.base import EngineError
from fastast_deploy.engines.onnx_model import read_onnx_model
from fastast_deploy.engines.trt_policy import parse_trt_version, precision_plan
from fastast_deploy.errors import FastASTError
from fastast_deploy.evaluation.verify import default_thresholds, verify
from fastast_deploy.exporters import parity
from fastast_deploy.exporters.calibration import CalibrationError, load_calibration
from fastast_deploy.exporters.lint import lint_model
from fastast_deploy.exporters.onnx_export import ExportOptions, export_onnx
from fastast_deploy.exporters.quantize import QuantizeOptions, drop_outputs
from fastast_deploy.metrics import cosine_rows, fbank_like
from fastast_deploy.model.config import ModelConfig, TomeConfig
from fastast_deploy.model.fastast import FastAST, build_model
from fastast_deploy.model.schedule import make_schedule

TINY = ModelConfig(embed_dim=64, depth=2, num_heads=2, mlp_dim=128, input_frames=64, num_mel_bins=32, num_labels=5)
QUICK = QuantizeOptions(clips=4, parity_clips=4)


def tiny_model() -> FastAST:
    torch.manual_seed(0)
    return build_model(TINY, TomeConfig(make_schedule(3, TINY.depth)))


@pytest.fixture(scope="module")
def int8_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[FastAST, Path, dict]:
    """One int8 export with its parity check (floor lowered: a random tiny model has near-tied logits) and the
    debug merge outputs kept."""
    model = tiny_model()
    out = tmp_path_factory.mktemp("int8") / "tiny.int8.onnx"
    calibration = fbank_like(8, TINY.input_frames, TINY.num_mel_bins, seed=1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(TOLERANCES["export"], "int8", Tolerance(min_top1=0.0))
        result = export_onnx(model, out, ExportOptions(precision="int8", debug_merges=True),
                             calibration=calibration, quantize=QUICK)
    return model, out, result.parity


def _tagged(node: onnx.NodeProto) -> bool:
    return any(p.key == PART_KEY and p.value == "merge" for p in node.metadata_props)


def test_int8_export_quantises_layers_and_keeps_merging_float(int8_export: tuple[FastAST, Path, dict]) -> None:
    model, path, _ = int8_export
    proto = onnx.load(str(path))
    producer = {out: n for n in proto.graph.node for out in n.output}
    consts = {t.name for t in proto.graph.initializer}
    merge = [n for n in proto.graph.node if _tagged(n)]
    assert merge and any(n.op_type in ("TopK", "ArgMax") for n in merge)
    for node in merge:  # no merge node reads a dequantised value, and none is a Q/DQ node
        assert node.op_type not in ("QuantizeLinear", "DequantizeLinear")
        assert all(producer.get(x) is None or producer[x].op_type != "DequantizeLinear" for x in node.input), node
    for node in proto.graph.node:
        if node.op_type in ("LayerNormalization", "Softmax"):
            assert producer[node.input[0]].op_type != "DequantizeLinear", node.name
    layers = [n for n in proto.graph.node if n.op_type in ("MatMul", "Gemm", "Conv") and not _tagged(n)]
    # The layers (qkv, proj, fc1, fc2 per block, the head, the patch embedding): int8 weights behind a DQ
    weighted = [n for n in layers if producer.get(n.input[1]) is not None
                and producer[n.input[1]].op_type == "DequantizeLinear" and producer[n.input[1]].input[0] in consts]
    assert len(weighted) == 4 * TINY.depth + 2
    for node in weighted:
        dq = producer[node.input[1]]
        weight = numpy_helper.to_array(next(t for t in proto.graph.initializer if t.name == dq.input[0]))
        assert weight.dtype == np.int8
        assert producer[node.input[0]].op_type == "DequantizeLinear"  # the activation is quantised too
    meta = read_onnx_model(path).metadata
    assert meta["precision"] == "int8" and meta["quantization"]["calibration_clips"] == 4
    assert len(proto.graph.output) == 1 + 2 * TINY.depth  # debug merge outputs kept when asked for
    drop_outputs(proto, {o.name for o in proto.graph.output[1:]})  # what an export without them does
    assert [o.name for o in proto.graph.output] == ["logits"]
    x = fbank_like(3, TINY.input_frames, TINY.num_mel_bins, seed=9)
    got = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None,
                                                                                                 {"fbank": x})[0]
    want = parity.torch_outputs(model, x)[0]
    assert got.shape == want.shape and np.isfinite(got).all()
    assert cosine_rows(got, want).min() > 0.98  # int8 rounding, not another function


def test_int8_parity_reports_agreement_and_fails_below_the_floor(int8_export: tuple[FastAST, Path, dict],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    model, path, figures = int8_export
    assert figures["inputs"] == 4 and "held-out" in figures["source"] and figures["reference"].startswith("fp32")
    assert set(figures["merge_agreement_per_block"]) == {"block0", "block1"}
    assert all(0.0 <= v <= 1.0 for v in figures["merge_agreement_per_block"].values())
    pairs = figures["merge_pair_agreement_per_block"]
    assert all(pairs[k] >= figures["merge_agreement_per_block"][k] for k in pairs)  # softer than whole-clip identity
    assert 0.0 <= figures["top1_agreement"] <= 1.0 and figures["cosine_min"] > 0.98
    # unreachable: the check must fail, in one line
    monkeypatch.setitem(TOLERANCES["export"], "int8", Tolerance(min_top1=1.01))
    x = fbank_like(3, TINY.input_frames, TINY.num_mel_bins, seed=4)
    with pytest.raises(FastASTError, match="top-1 agreement") as err:
        parity.check_parity_int8(model, onnx.load(str(path)), x, "3 clips", None)
    assert "\n" not in str(err.value)


def test_int8_export_passes_lint_on_tensorrt_10_and_11(int8_export: tuple[FastAST, Path, dict]) -> None:
    for trt in (10, 11):
        report = lint_model(int8_export[1], tensorrt=trt)
        assert not report.errors, report.errors
        assert any("Q/DQ nodes feed" in f.message for f in report.findings)


def test_lint_catches_a_dq_feeding_the_matching(int8_export: tuple[FastAST, Path], tmp_path: Path) -> None:
    proto = onnx.load(str(int8_export[1]))
    scores = next(n for n in proto.graph.node if _tagged(n) and n.op_type in ("MatMul", "Einsum"))  # A.B^T scores
    source = scores.input[0]
    proto.graph.initializer.extend([numpy_helper.from_array(np.array(0.01, np.float32), "probe_s"),
                                    numpy_helper.from_array(np.array(0, np.int8), "probe_zp")])
    at = list(proto.graph.node).index(scores)
    proto.graph.node.insert(at, helper.make_node("DequantizeLinear", ["probe_q", "probe_s", "probe_zp"],
                                                 ["probe_dq"], name="probe_dq"))
    proto.graph.node.insert(at, helper.make_node("QuantizeLinear", [source, "probe_s", "probe_zp"], ["probe_q"],
                                                 name="probe_q"))
    scores.input[0] = "probe_dq"
    path = tmp_path / "bad.onnx"
    onnx.save(proto, str(path))
    errors = [f for f in lint_model(path, tensorrt=10).errors if "matching subgraph" in f.message]
    assert [f.node for f in errors] == ["probe_dq"]


def _qdq_graph(*, zero: int = 0, zero_type: int = TensorProto.INT8, act_scales: int = 1, axis: int = 1,
               scale: float = 0.1, q_reader: str = "DequantizeLinear") -> onnx.ModelProto:
    """x (2, 4) -> Q/DQ -> MatMul with a per-channel int8 weight (4, 3) behind a DQ -> y."""
    act_scale = numpy_helper.from_array(np.full(act_scales, scale, np.float32).reshape(() if act_scales == 1
                                                                                          else (act_scales,)), "s")
    zp_value = np.full(act_scale.dims or (), zero, np.int8 if zero_type == TensorProto.INT8 else np.uint8)
    inits = [act_scale, numpy_helper.from_array(zp_value, "zp"),
             numpy_helper.from_array(np.ones((4, 3), np.int8), "w"),
             numpy_helper.from_array(np.full(3 if axis == 1 else 4, 0.05, np.float32), "ws")]
    q_attrs = {"axis": 1} if act_scales > 1 else {}
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["xq"], name="q", **q_attrs),
             helper.make_node(q_reader, ["xq", "s", "zp"], ["xd"], name="dq", **q_attrs),
             helper.make_node("DequantizeLinear", ["w", "ws"], ["wd"], name="wdq", axis=axis),
             helper.make_node("MatMul", ["xd" if q_reader == "DequantizeLinear" else "x", "wd"], ["y"], name="mm")]
    if q_reader != "DequantizeLinear":
        nodes[1] = helper.make_node("Cast", ["xq"], ["xd"], name="cast", to=TensorProto.FLOAT)
        nodes.append(helper.make_node("Add", ["xd", "xd"], ["z"], name="add"))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])]
                              + ([helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 4])]
                                 if q_reader != "DequantizeLinear" else []), inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _qdq_errors(proto: onnx.ModelProto) -> list[str]:
    return [f.message for f in lint_model(proto, tensorrt=11).errors]


def test_lint_qdq_rules_positive_and_negative() -> None:
    assert _qdq_errors(_qdq_graph()) == []
    assert any("zero point is not 0" in m for m in _qdq_errors(_qdq_graph(zero=3)))
    assert any("UINT8" in m for m in _qdq_errors(_qdq_graph(zero_type=TensorProto.UINT8)))
    assert any("per-channel scale on an activation" in m for m in _qdq_errors(_qdq_graph(act_scales=4)))
    assert any("per output channel (axis 1)" in m for m in _qdq_errors(_qdq_graph(axis=0)))
    assert any("positive finite scales" in m for m in _qdq_errors(_qdq_graph(scale=-0.1)))
    assert any("read by non-DQ nodes" in m for m in _qdq_errors(_qdq_graph(q_reader="Cast")))


def test_verify_uses_int8_thresholds(int8_export: tuple[FastAST, Path], tmp_path: Path) -> None:
    model, path, _ = int8_export
    x = fbank_like(6, TINY.input_frames, TINY.num_mel_bins, seed=5)
    np.savez(tmp_path / "ref.npz", fbank=x, logits=parity.torch_outputs(model, x)[0])
    report, *_ = verify(path, str(tmp_path / "ref.npz"), batch=4)
    assert report["engine"]["precision"] == "int8"
    assert report["thresholds"] == default_thresholds("int8").to_dict()
    assert default_thresholds("int8").min_top1 >= 0.97  # the int8 target; an int8 engine is judged by its labels
    assert default_thresholds("int8").atol > default_thresholds("fp16").atol
    names = {c["name"]: c for c in report["checks"]}
    assert names["finite outputs"]["passed"] and names["cosine (worst clip)"]["value"] > 0.98


def test_build_onnxruntime_engine_from_an_int8_export(int8_export: tuple[FastAST, Path], tmp_path: Path) -> None:
    from fastast_deploy.engines import load_engine
    from fastast_deploy.engines.build import build_engine

    built = build_engine(int8_export[1], tmp_path / "e.onnx", "onnxruntime", None)
    assert built.metadata["precision"] == "int8"
    with load_engine(built.path) as engine:
        out = engine.infer({"fbank": fbank_like(2, TINY.input_frames, TINY.num_mel_bins)})
    assert out["logits"].shape == (2, TINY.num_labels)


def test_tensorrt_builds_int8_graphs_strongly_typed_only() -> None:
    for version, flag in (("10.13.0.35", True), ("11.4.0.106", False)):
        plan = precision_plan(parse_trt_version(version), "int8")
        assert plan.precision == "int8" and plan.strongly_typed and not plan.fp16_flag
        assert plan.network_flag is flag
    with pytest.raises(EngineError, match="Q/DQ export"):
        precision_plan(parse_trt_version("10.13"), "fp32", "int8")
    with pytest.raises(EngineError, match="Q/DQ export"):
        precision_plan(parse_trt_version("10.13"), "int8", "fp16")


def test_calibration_data_errors_are_one_line(tmp_path: Path) -> None:
    export = {"features": None, "labels": None}
    frames, mel = TINY.input_frames, TINY.num_mel_bins
    np.savez(tmp_path / "other.npz", x=np.zeros((2, frames, mel), np.float32))
    np.savez(tmp_path / "shape.npz", fbank=np.zeros((2, 10, mel), np.float32))
    bad = np.zeros((2, frames, mel), np.float32)
    bad[1, 0, 0] = np.nan
    np.savez(tmp_path / "nan.npz", fbank=bad)
    (tmp_path / "clips.txt").write_text("x")
    cases = {str(tmp_path / "missing"): "no such file", str(tmp_path / "other.npz"): "'fbank'",
             str(tmp_path / "shape.npz"): "shape", str(tmp_path / "nan.npz"): "NaN",
             str(tmp_path / "clips.txt"): "expected an .npz"}
    for spec, fragment in cases.items():
        with pytest.raises(CalibrationError, match=fragment) as err:
            load_calibration(spec, frames, mel, export)
        assert "\n" not in str(err.value) and str(err.value).startswith(f"--calib {spec}")
    np.savez(tmp_path / "ok.npz", fbank=np.ones((5, frames, mel), np.float32))
    assert load_calibration(tmp_path / "ok.npz", frames, mel, export, limit=3).shape == (3, frames, mel)


def test_cli_int8_export_needs_calib_and_reports_errors_in_one_line(tmp_path: Path) -> None:
    checkpoint = save_checkpoint(tiny_model(), tmp_path / "tiny.safetensors", label_names=tuple("abcde"))
    runner = CliRunner()
    for args, fragment in ((["--precision", "int8"], "--calib"),
                           (["--calib", str(tmp_path / "x.npz")], "int8 exports only"),
                           (["--precision", "int8", "--calib", str(tmp_path / "none.npz")], "no such file")):
        result = runner.invoke(cli, ["export", str(checkpoint), "-o", str(tmp_path / "m.onnx"), *args])
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code != 0 and len(lines) == 1 and lines[0].startswith("Error:"), result.output
        assert fragment in lines[0]
        assert not (tmp_path / "m.onnx").exists()


def test_merge_pair_agreement_by_hand() -> None:
    ref = [np.array([[0, 2], [4, 6]]), np.array([[1, 3], [5, 7]])]  # block 0: src, dst of two clips
    got = [np.array([[2, 0], [4, 8]]), np.array([[3, 1], [9, 7]])]  # clip 0: same pairs reordered; clip 1: none
    assert parity.merge_pair_agreement(ref, got) == [0.5]


def test_an_int8_export_leaves_the_callers_logging_as_it_was(tmp_path: Path) -> None:
    """ORT's quantisation tool is silenced through scoped.logging_disabled: the caller's threshold and logger
    levels come back (the export used to reset the threshold to NOTSET)."""
    import logging

    mine = logging.getLogger("fastast-test-caller")
    exporter = logging.getLogger("torch.onnx._internal.exporter._registration")  # the export quiets it inside
    before_disable, before_root, before_exporter = logging.root.manager.disable, logging.root.level, exporter.level
    logging.disable(logging.INFO)
    mine.setLevel(logging.ERROR)
    exporter.setLevel(logging.DEBUG)
    try:
        export_onnx(tiny_model(), tmp_path / "q.onnx", ExportOptions(precision="int8"), check=False,
                    calibration=fbank_like(4, TINY.input_frames, TINY.num_mel_bins, seed=1), quantize=QUICK)
        assert logging.root.manager.disable == logging.INFO
        assert mine.level == logging.ERROR and logging.root.level == before_root
        assert exporter.level == logging.DEBUG
    finally:
        logging.disable(before_disable)
        mine.setLevel(logging.NOTSET)
        exporter.setLevel(before_exporter)


def test_unreadable_calibration_audio_fails_naming_how_many_and_the_first(tmp_path: Path) -> None:
    import soundfile as sf

    from fastast_deploy.model.config import FeatureConfig

    config = FeatureConfig(frames=TINY.input_frames, num_mel_bins=TINY.num_mel_bins)
    export = {"features": config.to_dict(), "labels": None}
    folder = tmp_path / "clips"
    folder.mkdir()
    rng = np.random.default_rng(0)
    sf.write(folder / "a.wav", (0.1 * rng.standard_normal(16000)).astype(np.float32), 16000)
    (folder / "b.wav").write_bytes(b"RIFF not audio")
    (folder / "c.wav").write_bytes(b"")
    with pytest.raises(CalibrationError, match=r"2 of 3 audio files could not be read \(first: .*b\.wav") as err:
        load_calibration(folder, TINY.input_frames, TINY.num_mel_bins, export)
    assert "\n" not in str(err.value)
    (folder / "b.wav").unlink()
    (folder / "c.wav").unlink()
    assert load_calibration(folder, TINY.input_frames, TINY.num_mel_bins, export).shape == \
        (1, TINY.input_frames, TINY.num_mel_bins)
