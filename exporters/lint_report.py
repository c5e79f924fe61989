"""A lint's findings and their one-screen summary: what ``fastast-deploy lint`` and ``export`` print."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

Severity = Literal["error", "warning", "info"]
Kind = Literal["unsupported", "plugin", "restriction", "static", "dtype", "precision", "opset", "note"]


@dataclass(frozen=True)
class Finding:
    """One problem (or note). ``node`` is the node's name (a tensor's producer; the tensor itself for inputs and
    initializers; "(graph)" for the model), ``op`` its op type ("input"/"output" for graph I/O dims, "" for the
    model); ``detail`` holds what differs between repeats of the same message."""

    severity: Severity
    node: str
    op: str
    message: str
    detail: str = ""
    kind: Kind = "restriction"


@dataclass
class LintReport:
    """All findings for one graph and one TensorRT major version."""

    tensorrt: int
    source: str
    opset: int | None
    node_count: int
    findings: list[Finding] = field(default_factory=list)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    @property
    def plugin_nodes(self) -> list[Finding]:
        """One finding per node that runs only as a TensorRT plugin."""
        return [f for f in self.findings if f.kind == "plugin"]

    @property
    def failed(self) -> bool:
        return any(f.severity == "error" for f in self.findings)


def format_report(report: LintReport) -> str:
    """Counts by op type per severity, each error/warning once per (op, message), then a one-line verdict."""
    lines = [f"TensorRT {report.tensorrt} lint of {report.source} (opset {report.opset}, {report.node_count} nodes)"]
    for severity in ("error", "warning", "info"):
        counts = Counter(f.op or "(graph)" for f in report.findings if f.severity == severity)
        if counts:
            lines.append(f"  {severity}s by op: " + ", ".join(f"{op} {n}" for op, n in counts.most_common()))
    groups: dict[tuple[str, str, str], list[Finding]] = {}
    for f in report.findings:
        if f.severity != "info":
            groups.setdefault((f.severity, f.op or "(graph)", f.message), []).append(f)
    for (severity, op, message), found in sorted(groups.items(), key=lambda kv: kv[0][0] != "error"):
        first = found[0]
        example = f"{first.node}: {first.detail}" if first.detail else first.node
        lines.append(f"  {severity.upper():<7} {op} x{len(found)}: {message} (e.g. {example})")
    lines.append(verdict(report))
    return "\n".join(lines)


def verdict(report: LintReport) -> str:
    head = (f"TensorRT {report.tensorrt}: {_count(len(report.errors), 'error')}, "
            f"{_count(len(report.warnings), 'warning')}, {_count(len(report.plugin_nodes), 'plugin node')}")
    plugins = Counter(f.op for f in report.plugin_nodes)
    plugin_text = [f"{_count(n, op + ' node')} need{'' if n > 1 else 's'} a plugin" for op, n in plugins.most_common()]
    if not report.failed:
        return f"{head} — " + ("builds with plugins: " + ", ".join(plugin_text) if plugins else "builds natively")
    others = Counter(f.op or "(graph)" for f in report.errors if f.kind != "plugin")
    reasons = (plugin_text if any(f.severity == "error" for f in report.plugin_nodes) else []) + [
        _count(n, f"{op} error") for op, n in others.most_common()]
    shown = ", ".join(reasons[:4]) + (f" and {len(reasons) - 4} more" if len(reasons) > 4 else "")
    return f"{head} — would fail: {shown}"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"
