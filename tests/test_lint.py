"""The TensorRT lint on small hand-built graphs, plus one graph written by torch.onnx's dynamo exporter."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fastast_deploy.errors import FastASTError
from fastast_deploy.exporters.lint import Finding, LintReport, format_report, lint_model

F, I64 = TensorProto.FLOAT, TensorProto.INT64


def make_model(nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto],
               initializers: dict[str, np.ndarray] | None = None, opset: int = 18) -> onnx.ModelProto:
    inits = [numpy_helper.from_array(value, name) for name, value in (initializers or {}).items()]
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def vi(name: str, elem: int, shape: list[int | str] | None) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def topk_model(k: int = 5, width: int = 8, sorted_: int = 1) -> onnx.ModelProto:
    node = helper.make_node("TopK", ["x", "k"], ["v", "i"], name="topk", axis=-1, sorted=sorted_)
    return make_model([node], [vi("x", F, ["batch", width])], [vi("v", F, ["batch", k]), vi("i", I64, ["batch", k])],
                      {"k": np.array([k], dtype=np.int64)})


def messages(findings: list[Finding]) -> str:
    return "\n".join(f"{f.op}: {f.message} {f.detail}" for f in findings)


def errors_of(report: LintReport, op: str) -> list[Finding]:
    return [f for f in report.errors if f.op == op]


def clean_model() -> onnx.ModelProto:
    """x (batch, 8, 4) -> scores -> softmax -> max -> top-5 -> gather/equal/where -> layer norm: all native."""
    nodes = [
        helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["x", "xt"], ["scores"]),
        helper.make_node("Softmax", ["scores"], ["probs"], axis=-1),
        helper.make_node("ReduceMax", ["probs", "axes"], ["node_max"], keepdims=0),
        helper.make_node("TopK", ["node_max", "k"], ["top_v", "top_i"], axis=-1, sorted=1),
        helper.make_node("GatherElements", ["node_max", "top_i"], ["picked"], axis=1),
        helper.make_node("Equal", ["picked", "top_v"], ["same"]),
        helper.make_node("Where", ["same", "picked", "top_v"], ["chosen"]),
        helper.make_node("LayerNormalization", ["chosen", "scale", "bias"], ["y"], axis=-1),
    ]
    inits = {"axes": np.array([-1], dtype=np.int64), "k": np.array([5], dtype=np.int64),
             "scale": np.ones(5, dtype=np.float32), "bias": np.zeros(5, dtype=np.float32)}
    return make_model(nodes, [vi("x", F, ["batch", 8, 4])], [vi("y", F, ["batch", 5])], inits)


@pytest.mark.parametrize("tensorrt", [10, 11])
def test_clean_static_graph_with_dynamic_batch_passes(tensorrt: int) -> None:
    report = lint_model(clean_model(), tensorrt=tensorrt)
    assert not report.failed, messages(report.errors)
    assert report.errors == [] and report.plugin_nodes == []
    assert not [f for f in report.warnings if f.kind != "note"], messages(report.warnings)


def test_scatter_elements_add_needs_plugin_and_none_is_native() -> None:
    def scatter(reduction: str) -> onnx.ModelProto:
        node = helper.make_node("ScatterElements", ["data", "idx", "upd"], ["y"], name="merge", axis=1,
                                reduction=reduction)
        return make_model([node], [vi("data", F, [2, 8, 4]), vi("idx", I64, [2, 3, 4]), vi("upd", F, [2, 3, 4])],
                          [vi("y", F, [2, 8, 4])])

    add = lint_model(scatter("add"))
    assert add.failed
    assert [f.node for f in add.plugin_nodes] == ["merge"]
    assert "needs the ScatterElements plugin" in add.plugin_nodes[0].message

    allowed = lint_model(scatter("add"), allow_plugins=True)
    assert not allowed.failed and len(allowed.plugin_nodes) == 1

    none = lint_model(scatter("none"))
    assert not none.failed and none.plugin_nodes == []


def test_topk_k_at_or_above_3840_fails() -> None:
    report = lint_model(topk_model(k=4000, width=5000))
    assert report.failed
    assert any("K=4000" in f.message for f in errors_of(report, "TopK"))
    assert not lint_model(topk_model(k=3839, width=5000)).failed


def test_topk_with_runtime_k_is_a_warning() -> None:
    # onnx-tensorrt 10.1's TopK importer takes K as a tensor (layer->setInput(1, k)); only its value is unchecked.
    node = helper.make_node("TopK", ["x", "k"], ["v", "i"], axis=-1)
    model = make_model([node], [vi("x", F, [1, 8]), vi("k", I64, [1])], [vi("v", F, [1, 3]), vi("i", I64, [1, 3])])
    for major in (10, 11):
        report = lint_model(model, tensorrt=major)
        assert not report.failed, messages(report.errors)
        assert any("K is computed at run time" in f.message for f in report.warnings if f.op == "TopK")


def test_topk_unsorted_fails() -> None:
    report = lint_model(topk_model(sorted_=0))
    assert any("sorted=1" in f.message for f in errors_of(report, "TopK"))


def test_topk_k_folded_from_constants_is_resolved_and_checked() -> None:
    nodes = [helper.make_node("Add", ["k_half", "k_half"], ["k"]),
             helper.make_node("TopK", ["x", "k"], ["v", "i"], axis=-1)]
    model = make_model(nodes, [vi("x", F, [1, 9000])], [vi("v", F, [1, 4000]), vi("i", I64, [1, 4000])],
                       {"k_half": np.array([2000], dtype=np.int64)})
    topk = [f for f in lint_model(model).findings if f.op == "TopK"]
    assert [f.severity for f in topk] == ["error"] and "K=4000" in topk[0].message


def test_symbolic_non_batch_dim_on_an_input_fails_and_symbolic_batch_passes() -> None:
    relu = helper.make_node("Relu", ["x"], ["y"])
    dynamic_tokens = make_model([relu], [vi("x", F, ["batch", "tokens"])], [vi("y", F, ["batch", "tokens"])])
    report = lint_model(dynamic_tokens)
    assert report.failed
    assert any(f.message == "non-batch dynamic dim" and "tokens" in f.detail for f in report.errors)

    dynamic_batch = make_model([relu], [vi("x", F, ["batch", 16])], [vi("y", F, ["batch", 16])])
    assert not lint_model(dynamic_batch).failed


def test_batch_expression_on_an_output_passes() -> None:
    reshape = helper.make_node("Reshape", ["x", "shape"], ["y"])
    model = make_model([reshape], [vi("x", F, ["batch", 2, 4])], [vi("y", F, ["2*batch", 4])],
                       {"shape": np.array([-1, 4], dtype=np.int64)})
    assert not lint_model(model).failed


def test_if_loop_and_nonzero_fail() -> None:
    branch = helper.make_graph([helper.make_node("Identity", ["x"], ["out"])], "b", [], [vi("out", F, [4])])
    if_node = helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=branch)
    if_model = make_model([if_node], [vi("cond", TensorProto.BOOL, []), vi("x", F, [4])], [vi("y", F, [4])])

    body = helper.make_graph([helper.make_node("Identity", ["c_in"], ["c_out"]),
                              helper.make_node("Relu", ["s_in"], ["s_out"])], "body",
                             [vi("i", I64, []), vi("c_in", TensorProto.BOOL, []), vi("s_in", F, [4])],
                             [vi("c_out", TensorProto.BOOL, []), vi("s_out", F, [4])])
    loop = helper.make_node("Loop", ["n", "cond", "x"], ["y"], body=body)
    loop_model = make_model([loop], [vi("n", I64, []), vi("cond", TensorProto.BOOL, []), vi("x", F, [4])],
                            [vi("y", F, [4])])

    nonzero = make_model([helper.make_node("NonZero", ["x"], ["y"])], [vi("x", F, [4])], [vi("y", I64, [1, "n"])])

    for model, op in ((if_model, "If"), (loop_model, "Loop"), (nonzero, "NonZero")):
        report = lint_model(model)
        assert report.failed, op
        assert any("static-shape contract" in f.message for f in errors_of(report, op)), messages(report.errors)


def test_double_tensor_is_cast_down_with_a_warning() -> None:
    # operators.md (10.15, 11.1): "TensorRT will attempt to cast DOUBLE down to FLOAT" (onnx-tensorrt 21.05, #674).
    nodes = [helper.make_node("Cast", ["x"], ["x64"], to=TensorProto.DOUBLE),
             helper.make_node("Cast", ["x64"], ["y"], to=F)]
    report = lint_model(make_model(nodes, [vi("x", F, [4])], [vi("y", F, [4])]))
    assert not report.failed, messages(report.errors)
    assert any("DOUBLE" in f.message and "cast" in f.message and "x64" in f.detail for f in report.warnings)


def test_op_missing_from_the_table_is_unsupported() -> None:
    det = make_model([helper.make_node("Det", ["x"], ["y"])], [vi("x", F, [3, 3])], [vi("y", F, [])])
    report = lint_model(det)
    assert report.failed and errors_of(report, "Det")[0].kind == "unsupported"

    custom = helper.make_node("Mystery", ["x"], ["y"], domain="com.example")
    model = make_model([custom], [vi("x", F, [4])], [vi("y", F, [4])])
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    assert errors_of(lint_model(model), "Mystery")[0].kind == "unsupported"


def test_custom_domain_node_named_like_a_trt_plugin_is_a_plugin_node() -> None:
    node = helper.make_node("EfficientNMS_TRT", ["x"], ["y"], domain="trt.plugins")
    model = make_model([node], [vi("x", F, [4])], [vi("y", F, [4])])
    model.opset_import.append(helper.make_opsetid("trt.plugins", 1))
    report = lint_model(model)
    assert report.failed and [f.op for f in report.plugin_nodes] == ["EfficientNMS_TRT"]


def test_onnx_runtime_contrib_op_is_unsupported() -> None:
    node = helper.make_node("FastGelu", ["x"], ["y"], domain="com.microsoft")
    model = make_model([node], [vi("x", F, [4])], [vi("y", F, [4])])
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    found = errors_of(lint_model(model), "FastGelu")
    assert found and "ONNX Runtime contrib op" in found[0].message


def test_tensorrt_11_differs_where_known() -> None:
    swish = make_model([helper.make_node("Swish", ["x"], ["y"])], [vi("x", F, [4])], [vi("y", F, [4])], opset=24)
    assert errors_of(lint_model(swish, tensorrt=10), "Swish")[0].kind == "unsupported"
    assert not lint_model(swish, tensorrt=11).failed

    rms = make_model([helper.make_node("RMSNormalization", ["x", "scale"], ["y"])], [vi("x", F, [2, 4])],
                     [vi("y", F, [2, 4])], {"scale": np.ones(4, dtype=np.float32)}, opset=23)
    assert any("10.15 or later" in f.message for f in lint_model(rms, tensorrt=10).warnings)
    notes = [f.message for f in lint_model(rms, tensorrt=11).findings if f.kind == "note"]
    assert any("strongly typed" in m and "all fp32" in m for m in notes)


def test_layer_norm_mean_output_in_use_fails() -> None:
    node = helper.make_node("LayerNormalization", ["x", "scale", "bias"], ["y", "mean"], axis=-1)
    model = make_model([node], [vi("x", F, [2, 4])], [vi("y", F, [2, 4]), vi("mean", F, [2, 1])],
                       {"scale": np.ones(4, dtype=np.float32), "bias": np.zeros(4, dtype=np.float32)})
    found = errors_of(lint_model(model), "LayerNormalization")
    assert found and "Mean/InvStdDev" in found[0].message


def test_reduce_axes_must_be_a_written_constant() -> None:
    runtime = make_model([helper.make_node("ReduceMax", ["x", "axes"], ["y"], keepdims=0)],
                         [vi("x", F, [2, 8]), vi("axes", I64, [1])], [vi("y", F, [2])])
    report = lint_model(runtime)
    assert any("axes is computed at run time" in f.message for f in errors_of(report, "ReduceMax"))

    computed = make_model([helper.make_node("Cast", ["axes_f"], ["axes"], to=I64),
                           helper.make_node("ReduceMax", ["x", "axes"], ["y"], keepdims=0)],
                          [vi("x", F, [2, 8])], [vi("y", F, [2])], {"axes_f": np.array([1.0], dtype=np.float32)})
    report = lint_model(computed)
    assert any("fold constants" in f.message for f in errors_of(report, "ReduceMax"))


def test_integer_matmul_breaks_the_type_table() -> None:
    model = make_model([helper.make_node("MatMul", ["a", "b"], ["y"])], [vi("a", I64, [2, 3]), vi("b", I64, [3, 2])],
                       [vi("y", I64, [2, 2])])
    assert any(f.kind == "dtype" and "INT64" in f.message for f in errors_of(lint_model(model), "MatMul"))


def test_fp16_matching_subgraph_warns() -> None:
    nodes = [helper.make_node("ReduceMax", ["scores", "axes"], ["node_max"], keepdims=0),
             helper.make_node("Cast", ["node_max"], ["node_max32"], to=F),
             helper.make_node("TopK", ["node_max32", "k"], ["v", "i"], axis=-1)]
    model = make_model(nodes, [vi("scores", TensorProto.FLOAT16, [1, 8, 8])], [vi("v", F, [1, 4]),
                                                                               vi("i", I64, [1, 4])],
                       {"axes": np.array([-1], dtype=np.int64), "k": np.array([4], dtype=np.int64)})
    report = lint_model(model)
    flagged = {f.op for f in report.warnings if "may flip near-ties" in f.message}
    assert flagged == {"ReduceMax", "TopK"}
    assert not report.failed


def test_opset_limits() -> None:
    relu = helper.make_node("Relu", ["x"], ["y"])
    new = lint_model(make_model([relu], [vi("x", F, [4])], [vi("y", F, [4])], opset=21))
    assert not new.failed and any(f.kind == "opset" for f in new.warnings)
    old = lint_model(make_model([relu], [vi("x", F, [4])], [vi("y", F, [4])], opset=8))
    assert old.failed and any("outside" in f.message for f in old.errors)


def test_format_report_counts_and_verdict() -> None:
    node = helper.make_node("ScatterElements", ["data", "idx", "upd"], ["y"], axis=0, reduction="add")
    model = make_model([node, helper.make_node("NonZero", ["y"], ["nz"])],
                       [vi("data", F, [8]), vi("idx", I64, [3]), vi("upd", F, [3])], [vi("nz", I64, [1, 8])])
    text = format_report(lint_model(model))
    assert "errors by op: " in text and "ScatterElements 1" in text and "NonZero" in text
    verdict = text.splitlines()[-1]
    assert verdict.startswith("TensorRT 10: ") and "1 plugin node" in verdict
    assert "would fail: 1 ScatterElements node needs a plugin" in verdict

    clean = format_report(lint_model(clean_model(), tensorrt=11)).splitlines()[-1]
    assert clean == "TensorRT 11: 0 errors, 0 warnings, 0 plugin nodes — builds natively"


def test_path_input_with_external_data(tmp_path: Path) -> None:
    path = tmp_path / "topk.onnx"
    onnx.save(topk_model(k=4000, width=5000), path, save_as_external_data=True, location="topk.data",
              size_threshold=0)
    assert any("K=4000" in f.message for f in lint_model(path).errors)
    (tmp_path / "topk.data").unlink()
    report = lint_model(str(path))
    assert any("external data" in f.message for f in report.warnings)


def test_unreadable_or_non_onnx_file_raises(tmp_path: Path) -> None:
    with pytest.raises(FastASTError, match="cannot read"):
        lint_model(tmp_path / "missing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_text("not a model\n")
    with pytest.raises(FastASTError):
        lint_model(junk)
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(FastASTError, match="not an ONNX model"):
        lint_model(empty)
    with pytest.raises(FastASTError, match="TensorRT major"):
        lint_model(clean_model(), tensorrt=9)


@pytest.mark.slow
def test_dynamo_export_of_topk_scatter_add_gather(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")

    class Merge(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:  # x (B, N, C)
            scores = x @ x.transpose(-1, -2)  # (B, N, N)
            node_max = scores.max(dim=-1).values  # (B, N)
            idx = torch.topk(node_max, k=3, dim=-1).indices[..., None].expand(-1, -1, x.shape[-1])  # (B, 3, C)
            src = torch.gather(x, 1, idx)
            return torch.zeros_like(x).scatter_add(1, idx, src)

    path = tmp_path / "merge.onnx"
    torch.onnx.export(Merge().eval(), (torch.randn(2, 8, 4),), str(path), dynamo=True, external_data=False,
                      opset_version=18)
    report = lint_model(path)
    ops = {node.op_type for node in onnx.load(path).graph.node}
    assert {"TopK", "GatherElements", "ScatterElements"} <= ops
    assert [f.op for f in report.plugin_nodes] == ["ScatterElements"]
    assert [f for f in report.errors if f.kind != "plugin"] == [], messages(report.errors)
    assert [f for f in report.findings if f.op in ("TopK", "GatherElements")] == []  # K written as a constant


def plugin_model(op: str) -> onnx.ModelProto:
    model = make_model([helper.make_node(op, ["x"], ["y"], domain="trt.plugins")], [vi("x", F, [4])],
                       [vi("y", F, [4])])
    model.opset_import.append(helper.make_opsetid("trt.plugins", 1))
    return model


@pytest.mark.parametrize("plugin", ["BatchedNMS_TRT", "NMS_TRT", "ProposalDynamic", "CustomGeluPluginDynamic"])
def test_plugins_removed_in_tensorrt_11_are_not_buildable_there(plugin: str) -> None:
    # In NVIDIA/TensorRT release/10.16 plugin/README.md, absent from release/11.1's.
    on10 = lint_model(plugin_model(plugin), tensorrt=10, allow_plugins=True)
    assert not on10.failed and [f.op for f in on10.plugin_nodes] == [plugin]
    on11 = lint_model(plugin_model(plugin), tensorrt=11, allow_plugins=True)
    assert on11.failed and on11.plugin_nodes == []
    assert errors_of(on11, plugin)[0].kind == "unsupported"
    assert "not shipped with TensorRT 11" in errors_of(on11, plugin)[0].message
    assert "would fail" in format_report(on11).splitlines()[-1]


def test_plugin_tables_are_per_major() -> None:
    new = lint_model(plugin_model("TopkLastDim"), tensorrt=10, allow_plugins=True)  # added in 11.1
    assert new.failed and "only with 11" in errors_of(new, "TopkLastDim")[0].message
    assert not lint_model(plugin_model("TopkLastDim"), tensorrt=11, allow_plugins=True).failed
    for major in (10, 11):  # in both trees
        report = lint_model(plugin_model("EfficientNMS_TRT"), tensorrt=major, allow_plugins=True)
        assert not report.failed and len(report.plugin_nodes) == 1


def fp16_norm_model(cast_up: bool) -> onnx.ModelProto:
    """x fp16 -> LayerNorm -> Softmax, either directly in fp16 or between Casts to and from fp32."""
    half, full = TensorProto.FLOAT16, F
    if cast_up:
        nodes = [helper.make_node("Cast", ["x"], ["x32"], to=full),
                 helper.make_node("LayerNormalization", ["x32", "scale", "bias"], ["n32"], axis=-1),
                 helper.make_node("Softmax", ["n32"], ["p32"], axis=-1),
                 helper.make_node("Cast", ["p32"], ["y"], to=half)]
        dtype = np.float32
    else:
        nodes = [helper.make_node("LayerNormalization", ["x", "scale", "bias"], ["n"], axis=-1),
                 helper.make_node("Softmax", ["n"], ["y"], axis=-1)]
        dtype = np.float16
    inits = {"scale": np.ones(4, dtype=dtype), "bias": np.zeros(4, dtype=dtype)}
    return make_model(nodes, [vi("x", half, [2, 4])], [vi("y", half, [2, 4])], inits)


@pytest.mark.parametrize("tensorrt", [10, 11])
def test_fp16_layer_norm_and_softmax_inputs_must_be_fp32(tensorrt: int) -> None:
    # Strongly typed TensorRT computes in the input type (INormalizationLayer::setComputePrecision is rejected).
    report = lint_model(fp16_norm_model(cast_up=False), tensorrt=tensorrt)
    flagged = {f.op for f in report.warnings if f.kind == "precision" and "computes in fp16" in f.message}
    assert flagged == {"LayerNormalization", "Softmax"}
    casted = lint_model(fp16_norm_model(cast_up=True), tensorrt=tensorrt)
    assert not [f for f in casted.warnings if f.kind == "precision"], messages(casted.warnings)
