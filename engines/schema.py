"""Types of the fields engines and commands read from export metadata and sidecars, checked once on load: a file
edited by hand or damaged gets one error naming the file and the field, not an AttributeError later."""

from __future__ import annotations

from typing import Any

from .base import EngineError

INT, STR, NUM = "int", "str", "number"

TENSORS = {"*": {"shape": [(INT, STR)], "dtype": STR}}
EXPORT = {
    "inputs": TENSORS,
    "outputs": TENSORS,
    "model": {"input_frames": INT, "num_mel_bins": INT, "num_labels": INT, "depth": INT, "embed_dim": INT},
    "tome": {"effective_schedule": [INT], "token_counts": [INT], "schedule": [INT]},
    "precision": STR,
    "opset": INT,
    "batch?": INT,
    "labels?": [STR],
    "features?": {"*": (NUM, STR)},
}
SIDECAR = {
    "engine": {"file": STR, "sha256": STR},
    "source": {"sha256": STR},
    "batch": {"min": INT, "opt": INT, "max?": INT},
    "inputs": TENSORS,
    "outputs": TENSORS,
    "precision": STR,
    "versions": {"*": STR},
    "export": EXPORT,
}


def _kind(value: Any, kind: str) -> bool:
    if kind == INT:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == NUM:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, str)


def _check(value: Any, spec: Any, where: str) -> str | None:
    """The dotted name of the first field that does not fit ``spec`` (None: all fit)."""
    if isinstance(spec, str):
        return None if _kind(value, spec) else where
    if isinstance(spec, tuple):
        return None if any(_kind(value, s) for s in spec) else where
    if isinstance(spec, list):
        if not isinstance(value, list):
            return where
        return next((bad for i, item in enumerate(value) if (bad := _check(item, spec[0], f"{where}[{i}]"))), None)
    if not isinstance(value, dict):
        return where
    for key, sub in spec.items():
        name, optional = key.rstrip("?"), key.endswith("?")
        if name == "*":
            bad = next((b for k, v in value.items() if (b := _check(v, sub, f"{where}.{k}"))), None)
        elif name not in value or value[name] is None:
            bad = None if optional else f"{where}.{name}".lstrip(".")
        else:
            bad = _check(value[name], sub, f"{where}.{name}")
        if bad:
            return bad.lstrip(".")
    return None


def check_fields(data: Any, spec: dict[str, Any], source: str, hint: str) -> dict[str, Any]:
    """``data`` when every field in ``spec`` has its type; else an EngineError naming the field."""
    bad = _check(data, spec, "")
    if bad is not None:
        raise EngineError(f"{source}: field {bad or '(top level)'} is missing or of the wrong type; {hint}")
    return data
