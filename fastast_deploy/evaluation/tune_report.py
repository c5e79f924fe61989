"""What `fastast-deploy tune` shows and what other commands read of it: the table, the Pareto plot, and the chosen
schedule of a tune.json (`tuned_schedule`, behind ``--tome-r @DIR/tune.json``). Plain Python: no torch."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from fastast_deploy.errors import UsageError
from fastast_deploy.files import read_json_object

TUNE_FILE = "tune.json"
SCHEMA = "fastast-deploy/tune"


def tuned_schedule(path: str | os.PathLike[str]) -> list[int]:
    """The per-block r chosen by `tune`, from its tune.json (or the folder holding one); a UsageError naming the
    file when it is not one or chose nothing."""
    path = Path(path)
    if path.is_dir():
        path = path / TUNE_FILE
    if not path.is_file():
        raise UsageError(f"--tome-r @{path}: no such file; give the tune.json that `fastast-deploy tune` wrote")
    report = read_json_object(path, UsageError, "tune report")
    if report.get("schema") != SCHEMA:
        raise UsageError(f"--tome-r @{path}: not a tune report (no schema {SCHEMA!r})")
    chosen = report.get("chosen")
    if not isinstance(chosen, dict):
        raise UsageError(f"--tome-r @{path}: the tune run chose no schedule (none met its target); see its "
                         "'closest' entry, or tune again with a looser target")
    schedule = chosen.get("schedule")
    if not isinstance(schedule, list) or not schedule or not all(isinstance(r, int) and not isinstance(r, bool)
                                                                 and r >= 0 for r in schedule):
        raise UsageError(f"--tome-r @{path}: its chosen schedule is not a list of ints >= 0")
    return schedule


def _num(value: Any, fmt: str, suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{round(value, 9) + 0.0:{fmt}}{suffix}"  # no "-0.00" for a bootstrap bound of -1e-15


def format_table(report: dict[str, Any]) -> str:
    """Every candidate, in the order scored: schedule, FLOP ratio, measured speed-up, metric, drop and its
    interval (search clips); then the choice on the held-out clips."""
    metric = report["metric"]
    chosen = (report.get("chosen") or {}).get("schedule")
    width = max(len(c["label"]) for c in report["candidates"])
    width_s = max(len(",".join(map(str, c["schedule"]))) for c in report["candidates"])
    head = (f"{'':2}{'candidate':<{width}}  {'r per block':<{width_s}}  {'FLOPs':>6}  {'speed-up':>8}  "
            f"{metric:>8}  {'drop':>6}  {'95% interval':>15}")
    lines = [head]
    for c in report["candidates"]:
        mark = "* " if c["schedule"] == chosen else ("t " if c.get("timed") else "  ")
        interval = "-" if not c["interval"] else f"{_num(c['interval'][0], '+.1f')}..{_num(c['interval'][1], '+.1f')}"
        lines.append(f"{mark}{c['label']:<{width}}  {','.join(map(str, c['schedule'])):<{width_s}}  "
                     f"{_num(c['flop_ratio'], '.2f', 'x'):>6}  {_num(c['speedup'], '.2f', 'x'):>8}  "
                     f"{_num(c['metric'], '.2f'):>8}  {_num(c['drop'], '+.2f'):>6}  {interval:>15}")
    clips = report["clips"]
    lines.append(f"(* chosen, t timed on {report['settings']['backend']}; {metric} in points on the {clips['search']} "
                 f"search clips, drop against r=0 with a paired bootstrap interval over clips)")
    target = report["target"]
    wanted = (f"drop <= {target['max_drop']:g} points" if target["max_drop"] is not None else
              f"measured speed-up >= {target['speedup']:g}x")
    pick = report.get("chosen")
    if pick is None:
        closest = report.get("closest")
        lines.append(f"\nno schedule met the target ({wanted})" + (
            f"; closest: {closest['label']} (r per block {closest['schedule']}, drop {closest['drop']:+.2f}, "
            f"speed-up {_num(closest['speedup'], '.2f', 'x')})" if closest else ""))
    else:
        lines.append(f"\nchosen ({wanted}): {pick['label']}, r per block {pick['schedule']}, measured speed-up "
                     f"{pick['speedup']:.2f}x (FLOP ratio {pick['flop_ratio']:.2f}x)")
    for name in ("chosen", "best_constant", "closest"):
        c = report.get(name)
        if c and c.get("held_out") and not (name == "best_constant" and pick and c["schedule"] == pick["schedule"]):
            h = c["held_out"]
            lines.append(f"  held out ({h['clips']} clips the search never saw), {c['label']}: {metric} "
                         f"{h['metric']:.2f}, drop {h['drop']:+.2f} (95% interval {_num(h['interval'][0], '+.2f')} "
                         f"to {_num(h['interval'][1], '+.2f')})")
    lines += [f"note: {n}" for n in report.get("notes", [])]
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> Path | None:
    """Speed-up against metric: every candidate at its FLOP ratio (hollow), the timed ones at their measured
    speed-up (filled), the measured front joined, constant r labelled; None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    cands = report["candidates"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter([c["flop_ratio"] for c in cands], [c["metric"] for c in cands], facecolors="none",
               edgecolors="grey", label="FLOP ratio (every candidate)")
    timed = sorted((c for c in cands if c.get("speedup") is not None), key=lambda c: c["speedup"])
    ax.scatter([c["speedup"] for c in timed], [c["metric"] for c in timed], color="tab:blue",
               label=f"measured speed-up ({report['settings']['backend']})")
    front, best = [], -math.inf
    for c in sorted(timed, key=lambda c: -c["speedup"]):
        if c["metric"] > best:
            front.append(c)
            best = c["metric"]
    ax.plot([c["speedup"] for c in front], [c["metric"] for c in front], "-", color="tab:blue", alpha=0.6,
            label="measured front")
    for c in cands:
        if c["kind"] in ("constant", "baseline"):
            x = c["speedup"] if c.get("speedup") is not None else c["flop_ratio"]
            ax.annotate(c["label"], (x, c["metric"]), textcoords="offset points", xytext=(4, 3), fontsize=7)
    pick = report.get("chosen")
    if pick:
        ax.scatter([pick["speedup"]], [pick["metric"]], marker="*", s=200, color="tab:red", zorder=5,
                   label="chosen")
    if report["target"]["max_drop"] is not None:
        base = next(c for c in cands if c["kind"] == "baseline")["metric"]
        ax.axhline(base - report["target"]["max_drop"], color="tab:red", ls=":", lw=1, label="max drop")
    else:
        ax.axvline(report["target"]["speedup"], color="tab:red", ls=":", lw=1, label="target speed-up")
    ax.set_xlabel("speed-up over r=0")
    ax.set_ylabel(f"{report['metric']} (points, search clips)")
    ax.set_title(f"tune: {Path(str(report['source'])).name}, batch {report['settings']['batch']}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
