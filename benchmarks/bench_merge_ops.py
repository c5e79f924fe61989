"""ONNX Runtime CPU: the op choices inside the merge block (exporters/merge_graph.py), timed side by side.

Each case is a one- or two-node graph at the shapes of AST-small's first merging block (T = 512, r = 50: 602 tokens,
300 B tokens but dist, head dim 64, 384 + 1 channels), run at batch 1 and 8 on 1 and 2 threads, rounds interleaved
(fastast_deploy.evaluation.timing.time_interleaved), medians in microseconds:

    one-hot scatter-add  Einsum "brxj,brc->bjc" (the OneHot layout of a (B, r, 1) index) vs MatMul (B, j, r) @ (B, r, C)
    scores               Einsum "bnd,bmd->bnm" vs Transpose + MatMul
    best partner         TopK(k=1) (values and indices) vs ArgMax + ReduceMax

    python benchmarks/bench_merge_ops.py --rounds 200
"""

from __future__ import annotations

import argparse

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from fastast_deploy.evaluation.timing import cpu_name, time_interleaved

N, J, HD, R, C = 602, 300, 64, 50, 385


def graph(nodes: list, inputs: dict[str, np.ndarray], outputs: list[str], consts: dict[str, np.ndarray]) -> bytes:
    """A model of ``nodes`` over float32 ``inputs``; outputs named "i" are int64 indices, the others float32."""
    g = helper.make_graph(nodes, "case", [helper.make_tensor_value_info(k, TensorProto.FLOAT, v.shape)
                                          for k, v in inputs.items()],
                          [helper.make_tensor_value_info(o, TensorProto.INT64 if o == "i" else TensorProto.FLOAT, None)
                           for o in outputs],
                          [numpy_helper.from_array(v, k) for k, v in consts.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]).SerializeToString()


def cases(batch: int, rng: np.random.Generator) -> dict[str, tuple[bytes, dict[str, np.ndarray]]]:
    dst = rng.integers(0, J, (batch, R))
    onehot = np.zeros((batch, R, 1, J), np.float32)
    onehot[np.arange(batch)[:, None], np.arange(R)[None], 0, dst] = 1
    rows = rng.standard_normal((batch, R, C)).astype(np.float32)
    onehot_t = np.ascontiguousarray(onehot[:, :, 0, :].transpose(0, 2, 1))
    a = rng.standard_normal((batch, N, HD)).astype(np.float32)
    b = rng.standard_normal((batch, J, HD)).astype(np.float32)
    s = rng.standard_normal((batch, N, J)).astype(np.float32)
    k1, axis = {"k": np.array([1], np.int64)}, {"axis": np.array([-1], np.int64)}
    node = helper.make_node
    return {
        "scatter Einsum": (graph([node("Einsum", ["o", "r"], ["y"], equation="brxj,brc->bjc")],
                                 {"o": onehot, "r": rows}, ["y"], {}), {"o": onehot, "r": rows}),
        "scatter MatMul": (graph([node("MatMul", ["o", "r"], ["y"])], {"o": onehot_t, "r": rows}, ["y"], {}),
                           {"o": onehot_t, "r": rows}),
        "scores Einsum": (graph([node("Einsum", ["a", "b"], ["y"], equation="bnd,bmd->bnm")], {"a": a, "b": b},
                                ["y"], {}), {"a": a, "b": b}),
        "scores Transpose+MatMul": (graph([node("Transpose", ["b"], ["bt"], perm=[0, 2, 1]),
                                           node("MatMul", ["a", "bt"], ["y"])], {"a": a, "b": b}, ["y"], {}),
                                    {"a": a, "b": b}),
        "partner TopK(k=1)": (graph([node("TopK", ["s", "k"], ["v", "i"], axis=-1)], {"s": s}, ["v", "i"], k1),
                              {"s": s}),
        "partner ArgMax+ReduceMax": (graph([node("ArgMax", ["s"], ["i"], axis=-1, keepdims=1),
                                            node("ReduceMax", ["s", "axis"], ["v"], keepdims=1)], {"s": s},
                                           ["v", "i"], axis), {"s": s}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--batch", default="1,8")
    args = parser.parse_args()
    print(f"# ONNX Runtime {ort.__version__} CPU ({cpu_name()}), median of {args.rounds} interleaved rounds, us")
    rng = np.random.default_rng(0)
    for batch in (int(b) for b in args.batch.split(",")):
        models = cases(batch, rng)
        for threads in (int(t) for t in args.threads.split(",")):
            options = ort.SessionOptions()
            options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
            # No spinning: the pools of the sessions not running would otherwise spin on the cores the running
            # one needs (the calls here take microseconds, as long as a pool spins).
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            sessions = {k: (ort.InferenceSession(m, options, providers=["CPUExecutionProvider"]), feed)
                        for k, (m, feed) in models.items()}
            timings = time_interleaved({k: (lambda s=s, f=f: s.run(None, f)) for k, (s, f) in sessions.items()},
                                       warmup=20, rounds=args.rounds)
            us = {k: t.latency_ms_p50 * 1e3 for k, t in timings.items()}
            print(f"batch {batch}, {threads} thread(s):")
            for first, second in (("scatter Einsum", "scatter MatMul"), ("scores Einsum", "scores Transpose+MatMul"),
                                  ("partner TopK(k=1)", "partner ArgMax+ReduceMax")):
                print(f"  {first:<26} {us[first]:8.0f}   {second:<26} {us[second]:8.0f}   "
                      f"ratio {us[first] / us[second]:.2f}")


if __name__ == "__main__":
    main()
