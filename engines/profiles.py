"""Batch ranges and TensorRT optimisation-profile shapes from the graph's (batch, T, F) input. Plain functions."""

from __future__ import annotations

from fastast_deploy.contract import BATCH

from .base import BatchRange, EngineError, Shape

# For a dynamic-batch graph: batches 1..32, tactics timed at 8, unless asked otherwise.
DEFAULT_MIN, DEFAULT_OPT, DEFAULT_MAX = 1, 8, 32

ProfileShapes = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]  # (min, opt, max) input shapes


def resolve_batch_range(batch_dim: int | str, min_batch: int | None = None, opt_batch: int | None = None,
                        max_batch: int | None = None, *, bounded: bool = True) -> BatchRange:
    """The batch range to build for. A static batch b allows only b. A dynamic batch fills what was not given
    from 1 / 8 / 32 (``bounded=False``: no upper bound unless one is given; ONNX Runtime needs none)."""
    given = {"min": min_batch, "opt": opt_batch, "max": max_batch}
    if isinstance(batch_dim, int):
        other = {k: v for k, v in given.items() if v is not None and v != batch_dim}
        if other:
            asked = ", ".join(f"{k} {v}" for k, v in other.items())
            raise EngineError(f"the model has a static batch of {batch_dim}; batch range {asked} is not possible "
                              f"(give {batch_dim} or leave --min/--opt/--max-batch out, or export with a dynamic "
                              "batch)")
        return BatchRange(batch_dim, batch_dim, batch_dim)
    if batch_dim != BATCH:
        raise EngineError(f"the model's batch dimension is {batch_dim!r}; expected an int or {BATCH!r}")
    low = min_batch if min_batch is not None else DEFAULT_MIN
    if max_batch is not None:
        high: int | None = max_batch
    elif bounded:
        high = max(DEFAULT_MAX, low, opt_batch or 0)
    else:
        high = None
    if opt_batch is not None:
        opt = opt_batch
    elif high is None:  # nothing is tuned for a batch size: opt only has to lie in the range
        opt = low
    else:  # DEFAULT_OPT clamped into [low, high]
        opt = max(low, min(DEFAULT_OPT, high))
    return BatchRange(low, opt, high)


def profile_shapes(input_shape: Shape, batch: BatchRange) -> ProfileShapes:
    """(min, opt, max) shapes of the (batch, T, F) or (batch, samples) input for a TensorRT optimisation profile.
    All but the batch must be static: token counts, and with them the merge schedule, are fixed at export."""
    if len(input_shape) not in (2, 3) or not all(isinstance(d, int) for d in input_shape[1:]):
        raise EngineError(f"input shape {list(input_shape)} is not (batch, T, F) with static T and F (or (batch, "
                          "samples) with static samples); re-export with `fastast-deploy export`")
    if batch.max is None:
        raise EngineError(f"TensorRT needs a bounded batch range, got {batch}; give --max-batch")
    if isinstance(input_shape[0], int) and not batch.min == batch.opt == batch.max == input_shape[0]:
        raise EngineError(f"the model has a static batch of {input_shape[0]}, the batch range is {batch}")
    rest = tuple(int(d) for d in input_shape[1:])
    return (batch.min, *rest), (batch.opt, *rest), (batch.max, *rest)
