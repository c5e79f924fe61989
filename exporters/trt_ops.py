"""What TensorRT's ONNX parser runs natively, as data: ops and types per TensorRT major version, restrictions that
can be checked statically, plugin names per major, and this project's static-shape contract. Sources are cited
beside each table; ``lint`` and the exporter's own checks (exporters/onnx_export.check_graph) both apply them.

Sources, by the version each fact comes from:
- TensorRT 10: onnx/onnx-tensorrt docs/operators.md, TensorRT 10.15 version ("TensorRT 10.15 supports operators in
  the inclusive range of opset 9 to opset 24"), column "Supported Types"; ops added during 10.x carry the 10.x
  release that added them (onnx-tensorrt docs/Changelog.md, 10.1 to 10.15 GA).
- TensorRT 11: onnx/onnx-tensorrt@7c51a63 docs/operators.md, the parser NVIDIA/TensorRT release/11.1 pins in
  parsers/onnx ("TensorRT 11.1 supports operators in the inclusive range of opset 9 to opset 24"): the 10.15 rows
  plus Swish, same types and restrictions.
- Plugins: NVIDIA/TensorRT plugin/README.md on release/10.16 and on release/11.1 (the plugin/ trees).
"""

from __future__ import annotations

from typing import Literal, TypedDict

_F = ("FP32", "FP16", "BF16")
_F16 = ("FP32", "FP16")
_FI = (*_F, "INT32", "INT64")
_FIB = (*_FI, "BOOL")
_BOOL = ("BOOL",)
_CONST = (*_F, "FP8", "FP4", "INT4", "INT32", "INT64", "BOOL")

NATIVE_OPS_TRT10: dict[str, tuple[str, ...]] = {
    "Abs": _FI, "Acos": _F, "Acosh": _F, "Add": _FI, "And": _BOOL, "ArgMax": _FI, "ArgMin": _FI, "Asin": _F,
    "Asinh": _F, "Atan": _F, "Atanh": _F, "Attention": (*_F, "INT8", "FP8"), "AveragePool": _F,
    "BatchNormalization": _F, "BlackmanWindow": _F16, "Cast": (*_FI, "UINT8", "BOOL"),
    "CastLike": (*_FI, "UINT8", "BOOL"), "Ceil": _F, "Celu": _F, "Clip": _F, "Concat": _FIB,
    "Constant": _CONST, "ConstantOfShape": _CONST, "Conv": _F, "ConvTranspose": _F, "Cos": _F, "Cosh": _F,
    "CumSum": _F, "DeformConv": _F16, "DepthToSpace": _FI, "DequantizeLinear": ("INT8", "FP8", "FP4", "INT4"),
    "Div": _FI, "Dropout": _F, "Einsum": _F, "Elu": _F, "Equal": _FI, "Erf": _F, "Exp": _F, "Expand": _FIB,
    "EyeLike": _FIB, "Flatten": _FIB, "Floor": _F, "Gather": _FIB, "GatherElements": _FIB, "GatherND": _FIB,
    "Gelu": (*_F, "INT8", "INT32", "INT64"), "Gemm": _F, "GlobalAveragePool": _F, "GlobalLpPool": _F,
    "GlobalMaxPool": _F, "Greater": _FI, "GreaterOrEqual": _FI, "GridSample": _F16, "GroupNormalization": _F,
    "GRU": _F, "HammingWindow": _F16, "HannWindow": _F16, "HardSigmoid": _F, "HardSwish": _F, "Hardmax": _F,
    "Identity": _FIB, "If": _FIB, "ImageScaler": _F, "InstanceNormalization": _F, "IsInf": _F, "IsNaN": _FI,
    "LayerNormalization": _F, "LeakyRelu": _F, "Less": _FI, "LessOrEqual": _FI, "Log": _F, "LogSoftmax": _F,
    "Loop": _FIB, "LRN": _F, "LSTM": _F, "LpNormalization": _F, "LpPool": _F, "MatMul": _F, "Max": _FI,
    "MaxPool": _F, "Mean": (*_F, "FP8", "INT32", "INT64"), "MeanVarianceNormalization": _F, "Min": _FI,
    "Mish": _F16, "Mod": _FI, "Mul": _FI, "Neg": _FI, "NonMaxSuppression": _F16, "NonZero": _F16, "Not": _BOOL,
    "OneHot": _FIB, "Or": _BOOL, "Pad": _FI, "ParametricSoftplus": _F, "Pow": _FI, "PRelu": _F,
    "QuantizeLinear": _F, "RandomNormal": _F, "RandomNormalLike": _F, "RandomUniform": _F, "RandomUniformLike": _F,
    "Range": _FI, "Reciprocal": _F, "ReduceL1": _FI, "ReduceL2": _FI, "ReduceLogSum": _FI, "ReduceLogSumExp": _FI,
    "ReduceMax": _FI, "ReduceMean": _FI, "ReduceMin": _FI, "ReduceProd": _FI, "ReduceSum": _FI,
    "ReduceSumSquare": _FI, "Relu": _FI, "Reshape": _FIB, "Resize": _F, "ReverseSequence": _FIB,
    "RMSNormalization": _F, "RNN": _F, "RoiAlign": _F16, "RotaryEmbedding": _F, "Round": _F, "STFT": ("FP32",),
    "ScaledTanh": _F, "Scan": _F, "Scatter": _FI, "ScatterElements": _FI, "ScatterND": _FI, "Selu": _F,
    "Shape": _FIB, "Shrink": _FI, "Sigmoid": _F, "Sign": _FI, "Sin": _F, "Sinh": _F, "Size": _FIB, "Slice": _FIB,
    "Softmax": _F, "Softplus": _F, "Softsign": _F, "SpaceToDepth": _FI, "Split": _FIB, "Sqrt": _F,
    "Squeeze": _FIB, "Sub": _FI, "Sum": _FI, "Tan": _F, "Tanh": _F, "TensorScatter": (*_F, "INT32"),
    "ThresholdedRelu": _F, "Tile": _FIB, "TopK": _FI, "Transpose": _FIB, "Trilu": _FIB, "Unsqueeze": _FIB,
    "Upsample": _F, "Where": _FIB, "Xor": _BOOL,
}
# Rows marked "N" (not supported) in the same table.
NOT_SUPPORTED_TRT10: frozenset[str] = frozenset({
    "AffineGrid", "Bernoulli", "BitShift", "BitwiseAnd", "BitwiseNot", "BitwiseOr", "BitwiseXor", "Col2Im",
    "CenterCropPad", "Compress", "ConcatFromSequence", "ConvInteger", "DFT", "Det", "DynamicQuantizeLinear",
    "ImageDecoder", "MatMulInteger", "MaxRoiPool", "MaxUnpool", "MelWeightMatrix", "Multinomial",
    "NegativeLogLikelihoodLoss", "Optional", "OptionalGetElement", "OptionalHasElement", "QLinearConv",
    "QLinearMatMul", "RegexFullMatch", "SequenceAt", "SequenceConstruct", "SequenceEmpty", "SequenceErase",
    "SequenceInsert", "SequenceLength", "SequenceMap", "SoftmaxCrossEntropyLoss", "SplitToSequence",
    "StringConcat", "StringNormalizer", "StringSplit", "TfIdfVectorizer", "Unique",
})

# First TensorRT 10.x release whose parser imports the op (onnx-tensorrt docs/Changelog.md).
SINCE_TRT10: dict[str, str] = {
    "DeformConv": "10.1", "BlackmanWindow": "10.4", "HammingWindow": "10.4", "HannWindow": "10.4", "STFT": "10.5",
    "Attention": "10.14", "RotaryEmbedding": "10.15", "RMSNormalization": "10.15", "TensorScatter": "10.15",
}



class Restriction(TypedDict, total=False):
    """Statically checkable rules for one op; the quotes beside each entry are the 10.15 "Restrictions" column."""

    attrs: dict[str, int]  # attribute values TensorRT requires (the ONNX default is the required value)
    build_time: dict[int, str]  # input index -> label: must be a build-time constant (folding it is enough)
    initializer: dict[int, str]  # input index -> label: must be written as a constant (folding must happen first)
    unsupported_inputs: tuple[int, str]  # inputs from this index on, and how to name them
    unsupported_outputs: tuple[int, str]  # outputs from this index on, and how to name them
    unsupported_attrs: tuple[str, ...]
    reduction: Literal["plugin", "unsupported"]  # what a `reduction` other than "none" needs


_AXES: Restriction = {"initializer": {1: "axes"}}  # Reduce*: "`axes` must be an initializer"
RESTRICTIONS: dict[str, Restriction] = {
    # "`sorted` must be 1. `K` input must be less than 3840." K may be a run-time tensor: since 10.x the importer
    # hands K to the layer as a tensor (onnx-tensorrt@96e7811, 10.1 GA, onnxOpImporters.cpp TopK:
    # `layer->setInput(1, *kPtr)`); 8.4 required an initializer. lint checks K's value where it is known.
    "TopK": {"attrs": {"sorted": 1}},
    "OneHot": {"build_time": {1: "depth"}},  # "`depth` must be a build-time constant"
    "CumSum": {"build_time": {1: "axis"}},  # "`axis` must be a build-time constant"
    "Squeeze": {"build_time": {1: "axes"}},  # "`axes` must be resolvable to a constant."
    "Unsqueeze": {"build_time": {1: "axes"}},
    "STFT": {"initializer": {1: "frame_step", 2: "window"}},  # "`frame_step` and `window` must be an initializer."
    **dict.fromkeys(("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean",
                     "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare"), _AXES),
    # Not in the table: onnx-tensorrt@96e7811 onnxOpImporters.cpp sends reduction != "none" to the
    # "ScatterElements" plugin (scatterPluginHelper); "none" is a native IScatterLayer(kELEMENT).
    "ScatterElements": {"reduction": "plugin"},
    "ScatterND": {"reduction": "unsupported"},  # "`reduction` other than `none` is not supported"
    "LayerNormalization": {"unsupported_outputs": (1, "Mean/InvStdDev")},  # "Only the first output `Y` is supported."
    "MaxPool": {"unsupported_outputs": (1, "Indices")},  # "`Indices` output tensor unsupported."
    # "`sparse_value`, `value_string`, and `value_strings` attributes are unsupported."
    "Constant": {"unsupported_attrs": ("sparse_value", "value_string", "value_strings")},
    "Attention": {  # "`past_key`, `past_value` and `nonpad_kv_seqlen` inputs are unsupported. `present_key`,
        # `present_value` and `qk_matmul_output` outputs are unsupported. `qk_matmul_output_mode` and `softcap`
        # attributes are unsupported."
        "unsupported_inputs": (4, "past_key/past_value/nonpad_kv_seqlen"),
        "unsupported_outputs": (1, "present_key/present_value/qk_matmul_output"),
        "unsupported_attrs": ("qk_matmul_output_mode", "softcap"),
    },
}
# K < 3840: operators.md (10.15 and 11.1) and ITopKLayer in NvInfer.h ("values of K up to 3840"; a larger run-time
# K is "a runtime error"). The exporter's own check and lint both read this one constant.
TOPK_MAX_K = 3840

# DOUBLE: "There is limited support for DOUBLE type. TensorRT will attempt to cast DOUBLE down to FLOAT, clamping
# values to `+-FLT_MAX` if necessary." (operators.md, 11.1 and 10.15); added in onnx-tensorrt 21.05 ("support for
# DOUBLE-typed inputs and weights through downcast to float", PR #674). So a DOUBLE tensor builds: a warning.
DOUBLE_NOTE = "the parser casts DOUBLE down to FLOAT (clamped to +-FLT_MAX): cast to float32 in the model"

# TensorRT 11.1 (onnx-tensorrt@7c51a63 operators.md): the 10.15 rows plus Swish. The trt-domain ops TRT_Attention,
# TRT_MoE and TRT_KVCacheUpdate come from the 11.0 release notes (NVIDIA/TensorRT CHANGELOG.md, 11.0 GA).
NATIVE_OPS_TRT11: dict[str, tuple[str, ...]] = {**NATIVE_OPS_TRT10, "Swish": _F}
TRT_DOMAIN_OPS: dict[int, frozenset[str]] = {10: frozenset(), 11: frozenset({"TRT_Attention", "TRT_MoE",
                                                                              "TRT_KVCacheUpdate"})}

TENSORRT_OPS: dict[int, dict[str, tuple[str, ...]]] = {10: NATIVE_OPS_TRT10, 11: NATIVE_OPS_TRT11}
# Inclusive opset range of the default domain. 10.15 and 11.1: 9-24; 10.0 and 10.1 GA: 9-20 (onnx-tensorrt@96e7811).
OPSET_RANGE: dict[int, tuple[int, int]] = {10: (9, 24), 11: (9, 24)}
OPSET_OLD_TRT10_MAX = 20

# Ops an fp16 graph computes in float32 between explicit Casts. Under strong typing (always on in TensorRT 11) a
# layer computes in its input type: INormalizationLayer::setComputePrecision is deprecated since 10.16 ("Superseded
# by strong typing") and "Strongly typed network rejects calls to this method since the compute precision is
# typically controlled by casting the input tensors to the desired type" (NvInfer.h, release/10.1 and 10.16); the
# parser sets it only for weakly typed networks (onnx-tensorrt@745bde2, TensorRT 10.11, LayerNormalization
# importer). ONNX Runtime and PyTorch accumulate LayerNorm statistics in float32 (stash_type=1), so fp16 inputs
# would make TensorRT the odd one out: x**2 overflows fp16 above |x| = 256. Softmax gets the same treatment: its sum
# runs over every key token (up to 1214 for AST at 1024 frames).
FP32_COMPUTE_OPS: frozenset[str] = frozenset({"LayerNormalization", "Softmax"})

# Valid ONNX that breaks the static-shape contract (every dim but the batch fixed at export: outputs whose shape
# depends on the data, control flow, sequences), even where TensorRT has some support.
# The one table: exporters/onnx_export.check_graph refuses these at export, lint reports them.
STATIC_CONTRACT: dict[str, str] = {
    "NonZero": "output shape depends on the data",
    "Unique": "output shape depends on the data",
    "Compress": "output shape depends on the data",
    "NonMaxSuppression": "output shape depends on the data",
    "If": "control flow",
    "Loop": "control flow",
    "Scan": "control flow",
    **{op: "sequence type (data-dependent length)" for op in (
        "SequenceAt", "SequenceConstruct", "SequenceEmpty", "SequenceErase", "SequenceInsert", "SequenceLength",
        "SequenceMap", "SplitToSequence", "ConcatFromSequence")},
}
# Inputs the static contract wants written as constants in an exported graph (so their values are checked before
# any build): TopK's K. TensorRT itself would take a run-time K (see RESTRICTIONS["TopK"]).
CONTRACT_CONSTANT_INPUTS: dict[str, tuple[int, str]] = {"TopK": (1, "K")}

# Plugins in libnvinfer_plugin that the parser's plugin fallback can resolve by op name; a custom-domain node with
# one of these names runs as that plugin, not natively. Per major, from the "Name" column of plugin/README.md.
TRT_PLUGINS_10: frozenset[str] = frozenset({  # NVIDIA/TensorRT release/10.16 plugin/README.md
    "BatchTilePlugin_TRT", "BatchedNMSDynamic_TRT", "BatchedNMS_TRT", "Clip_TRT", "CoordConvAC", "CropAndResize",
    "CropAndResizeDynamic", "CustomEmbLayerNormPluginDynamic", "CustomFCPluginDynamic", "CustomGeluPluginDynamic",
    "CustomQKVToContextPluginDynamic", "CustomSkipLayerNormPluginDynamic", "DecodeBbox3DPlugin",
    "DetectionLayer_TRT", "DisentangledAttention_TRT", "EfficientNMS_ONNX_TRT", "EfficientNMS_TRT",
    "FlattenConcat_TRT", "GenerateDetection_TRT", "GridAnchorRect_TRT", "GridAnchor_TRT", "GroupNormalizationPlugin",
    "InstanceNormalization_TRT", "LReLU_TRT", "ModulatedDeformConv2d", "MultilevelCropAndResize_TRT",
    "MultilevelProposeROI_TRT", "MultiscaleDeformableAttnPlugin_TRT", "NMSDynamic_TRT", "NMS_TRT", "Normalize_TRT",
    "PillarScatterPlugin", "PriorBox_TRT", "Proposal", "ProposalDynamic", "ProposalLayer_TRT", "PyramidROIAlign_TRT",
    "ROIAlign_TRT", "RPROI_TRT", "Region_TRT", "Reorg_TRT", "ResizeNearest_TRT", "ScatterElements", "ScatterND",
    "SpecialSlice_TRT", "Split", "VoxelGeneratorPlugin",
})
TRT_PLUGINS_11: frozenset[str] = frozenset({  # NVIDIA/TensorRT release/11.1 plugin/README.md
    "CropAndResizeDynamic", "CustomEmbLayerNormPluginDynamic", "CustomFCPluginDynamic",
    "CustomQKVToContextPluginDynamic", "CustomSkipLayerNormPluginDynamic", "DecodeBbox3DPlugin",
    "DetectionLayer_TRT", "DisentangledAttention_TRT", "EfficientNMS_Explicit_TF_TRT", "EfficientNMS_Implicit_TF_TRT",
    "EfficientNMS_TRT", "FlattenConcat_TRT", "GenerateDetection_TRT", "GridAnchorRect_TRT", "GridAnchor_TRT",
    "GroupNormalizationPlugin", "InstanceNormalization_TRT", "ModulatedDeformConv2d", "MultilevelCropAndResize_TRT",
    "MultilevelProposeROI_TRT", "MultiscaleDeformableAttnPlugin_TRT", "PillarScatterPlugin", "PriorBox_TRT",
    "ProposalLayer_TRT", "PyramidROIAlign_TRT", "ROIAlign_TRT", "RPROI_TRT", "Region_TRT", "Reorg_TRT",
    "ResizeNearest_TRT", "ScatterElements", "ScatterND", "TopkLastDim", "VoxelGeneratorPlugin",
})
TRT_PLUGINS: dict[int, frozenset[str]] = {10: TRT_PLUGINS_10, 11: TRT_PLUGINS_11}
PLUGIN_SOURCES: dict[int, str] = {10: "NVIDIA/TensorRT release/10.16 plugin/README.md",
                                  11: "NVIDIA/TensorRT release/11.1 plugin/README.md"}
