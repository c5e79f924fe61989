"""What TensorRT's ONNX parser runs natively, as data: ops and types per TensorRT major version, restrictions that
can be checked statically, plugin names. Sources are cited beside each table; ``lint`` applies them."""

from __future__ import annotations

from typing import Literal, TypedDict

# ---------------------------------------------------------------------------------------------------------------
# The table. Source: onnx/onnx-tensorrt docs/operators.md, TensorRT 10.15 version ("TensorRT 10.15 supports
# operators in the inclusive range of opset 9 to opset 24"), column "Supported Types". Ops added during 10.x carry
# the 10.x release that added them (onnx-tensorrt docs/Changelog.md, 10.1 to 10.15 GA).
# ---------------------------------------------------------------------------------------------------------------
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
    "TopK": {"attrs": {"sorted": 1}, "build_time": {1: "K"}},  # "`sorted` must be 1. `K` input must be less than
    # 3840." Known at build time for our static graphs (8.4 required an initializer; 10.x takes a tensor K).
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
TOPK_MAX_K = 3840  # K < 3840: operators.md (10.15) and ITopKLayer in NvInfer.h ("values of K up to 3840").

# TensorRT 11: no operators.md for 11.x was found. Derived from 10.15 with the known differences: the 11.0 release
# notes (NVIDIA/TensorRT CHANGELOG.md, 11.0) add `Swish` and the custom ops TRT_Attention, TRT_MoE and
# TRT_KVCacheUpdate (domain "trt"); 11 is always strongly typed, so precision comes only from the graph.
NATIVE_OPS_TRT11: dict[str, tuple[str, ...]] = {**NATIVE_OPS_TRT10, "Swish": _F}
TRT_DOMAIN_OPS: dict[int, frozenset[str]] = {10: frozenset(), 11: frozenset({"TRT_Attention", "TRT_MoE",
                                                                              "TRT_KVCacheUpdate"})}

TENSORRT_OPS: dict[int, dict[str, tuple[str, ...]]] = {10: NATIVE_OPS_TRT10, 11: NATIVE_OPS_TRT11}
# Inclusive opset range of the default domain. 10.15: 9-24; 10.0 and 10.1 GA: 9-20 (onnx-tensorrt@96e7811).
# 11.x: assumed equal to 10.15 until an 11.x operators.md says otherwise.
OPSET_RANGE: dict[int, tuple[int, int]] = {10: (9, 24), 11: (9, 24)}
OPSET_OLD_TRT10_MAX = 20

# Valid ONNX that breaks the static-shape contract (design.md section 5), even where TensorRT has some support.
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

# Plugins in libnvinfer_plugin that the parser's plugin fallback can resolve by op name (NVIDIA/TensorRT
# plugin/README.md, 10.x); a custom-domain node with one of these names runs as that plugin, not natively.
TRT_PLUGINS: frozenset[str] = frozenset({
    "BatchedNMS_TRT", "BatchedNMSDynamic_TRT", "CustomQKVToContextPluginDynamic", "CropAndResizeDynamic",
    "DecodeBbox3DPlugin", "DetectionLayer_TRT", "DisentangledAttention_TRT", "EfficientNMS_TRT",
    "CustomEmbLayerNormPluginDynamic", "CustomFCPluginDynamic", "FlattenConcat_TRT", "CustomGeluPluginDynamic",
    "GenerateDetection_TRT", "GridAnchor_TRT", "GridAnchorRect_TRT", "GroupNormalizationPlugin",
    "InstanceNormalization_TRT", "ModulatedDeformConv2d", "MultilevelCropAndResize_TRT", "MultilevelProposeROI_TRT",
    "MultiscaleDeformableAttnPlugin_TRT", "NMS_TRT", "NMSDynamic_TRT", "PillarScatterPlugin", "PriorBox_TRT",
    "ProposalLayer_TRT", "ProposalDynamic", "PyramidROIAlign_TRT", "Region_TRT", "Reorg_TRT", "ROIAlign_TRT",
    "ResizeNearest_TRT", "ScatterElements", "ScatterND", "CustomSkipLayerNormPluginDynamic", "VoxelGeneratorPlugin",
})
