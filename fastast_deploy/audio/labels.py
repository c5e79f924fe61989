"""Label sets and AST's label CSV (``class_labels_indices.csv``: ``index,mid,display_name``). Plain Python, no
torch: checkpoints, datasets, verify and the synthetic dataset writer share it."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

from fastast_deploy.errors import DatasetError
from fastast_deploy.files import atomic_path, read_csv_rows


@dataclass(frozen=True)
class LabelSet:
    """Labels in index order: AST ``mid`` identifiers and display names."""

    mids: tuple[str, ...]
    names: tuple[str, ...]
    # a label CSV read without a mid column (its path and columns): its mids are the display names
    no_mid_column: str | None = field(default=None, compare=False, repr=False)

    def __len__(self) -> int:
        return len(self.names)

    def lookup(self) -> dict[str, int]:
        """Label token -> index; a token may be a mid or a display name (mids win on a clash)."""
        return {**{n: i for i, n in enumerate(self.names)}, **{m: i for i, m in enumerate(self.mids)}}


def label_folder(label: str) -> str:
    """The folder name that stands for a label in a folder-per-class layout ("/" cannot appear in a name)."""
    return label.replace("/", "_").replace("\\", "_")


def read_label_csv(path: str | os.PathLike[str]) -> LabelSet:
    """An AST ``class_labels_indices.csv`` (header ``index,mid,display_name``; ``mid`` optional)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"label file {path} does not exist; expected a CSV with header index,mid,display_name")
    rows = read_csv_rows(path, DatasetError)
    if not rows or not {"index", "display_name"} <= set(rows[0]):
        raise DatasetError(f"label file {path} has no rows with columns index and display_name; "
                           f"expected a CSV with header index,mid,display_name")
    for line, row in enumerate(rows, start=2):
        values = [row.get("index"), row.get("display_name"), row.get("mid") or ""]
        if not all(isinstance(v, str) for v in values) or not row["display_name"].strip():
            raise DatasetError(f"label file {path} line {line}: expected index,mid,display_name with a non-empty "
                               "display_name")
        if any(ch in v for v in values for ch in "\x00\r\n"):
            raise DatasetError(f"label file {path} line {line}: a NUL byte or line break inside a field")
    try:
        by_index = {int(row["index"]): (row.get("mid") or row["display_name"], row["display_name"]) for row in rows}
    except (TypeError, ValueError):
        raise DatasetError(f"label file {path} has a non-integer index") from None
    if sorted(by_index) != list(range(len(rows))):
        raise DatasetError(f"label file {path}: indices must be 0..{len(rows) - 1}, each once")
    pairs = [by_index[i] for i in range(len(rows))]
    columns = ", ".join(str(c) for c in rows[0] if isinstance(c, str))
    return LabelSet(tuple(m for m, _ in pairs), tuple(n for _, n in pairs),
                    None if "mid" in rows[0] else f"{path} (columns {columns})")


def write_label_csv(path: str | os.PathLike[str], labels: LabelSet) -> None:
    """``index,mid,display_name`` rows, as AST's class_labels_indices.csv and ``read_label_csv`` read them."""
    with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["index", "mid", "display_name"])
        writer.writerows([i, m, n] for i, (m, n) in enumerate(zip(labels.mids, labels.names, strict=True)))
