"""Triton's config.pbtxt in protobuf text format: string literals, tensor entries and lists, written by hand
because tritonclient ships no writer for model configurations."""

from __future__ import annotations

from typing import Any

from fastast_deploy.contract import BATCH
from fastast_deploy.engines.triton_remote import DATA_TYPES
from fastast_deploy.errors import FastASTError

LABELS_FILE = "labels.txt"


def pb_string(text: str) -> str:
    """A protobuf text-format string literal: printable ASCII as is, everything else as octal escapes."""
    out = []
    for byte in text.encode():
        char = chr(byte)
        if char in '"\\':
            out.append("\\" + char)
        elif 0x20 <= byte < 0x7F:
            out.append(char)
        else:
            out.append(f"\\{byte:03o}")
    return '"' + "".join(out) + '"'


def pb_dims(name: str, shape: list[Any], batched: bool) -> list[int]:
    if batched:
        if shape[0] != BATCH:
            raise FastASTError(f"tensor {name!r} has shape {shape}; expected a dynamic batch first")
        return [int(d) for d in shape[1:]]
    return [int(d) for d in shape]


def pb_tensor(name: str, spec: dict[str, Any], batched: bool, label_file: bool = False) -> list[str]:
    dtype = DATA_TYPES.get(spec["dtype"])
    if dtype is None:
        raise FastASTError(f"tensor {name!r} has dtype {spec['dtype']}, which this writer does not map; "
                           f"known: {sorted(DATA_TYPES)}")
    dims = ", ".join(str(d) for d in pb_dims(name, spec["shape"], batched))
    lines = ["  {", f"    name: {pb_string(name)}", f"    data_type: {dtype}", f"    dims: [ {dims} ]"]
    if label_file:
        lines.append(f"    label_filename: {pb_string(LABELS_FILE)}")
    return [*lines, "  }"]


def pb_list(field: str, items: list[list[str]]) -> list[str]:
    lines = [f"{field} ["]
    for i, item in enumerate(items):
        lines += item[:-1] + [item[-1] + ("," if i < len(items) - 1 else "")]
    return [*lines, "]"]
