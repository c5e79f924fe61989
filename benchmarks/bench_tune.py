"""The shape of the FastAST paper's result table on real speech: what `tune`'s schedule costs in accuracy off the
shelf, against a constant r of equal FLOPs, and what fine-tuning with merging on (and distillation) wins back.

On the ten-word espeak-ng set of bench_distill.py (benchmarks/speech_words.py; 420 train / 90 val / 90 test clips),
for each seed, every row the same model family (the base model, --base-model, fine-tuned on the set) and data:

    ast            the base model fine-tuned on the training split with merging off (r = 0)
    tome_tuned     that same checkpoint, no retraining, at the schedule `tune --max-drop D` picks for it: the search
                   on the val split, its held-out report on the test split
    tome_const     that same checkpoint, no retraining, at the constant r whose FLOP ratio is nearest the tuned
                   schedule's (the FLOP-equal baseline)
    tome_ft        ast fine-tuned further with merging on, at the tuned schedule
    tome_kd_T      the same, distilled (--kd-mode, default auto) from teacher T of --teachers: ast, the seed's
                   own ast run (r = 0); cnn, a compact CNN trained on the same clips (as CMKD distils a CNN)

Every row is exported by `fastast-deploy export`, scored by `fastast-deploy evaluate` on the held-out test split
(the ONNX Runtime engine, i.e. what is deployed), and every seed's engines are timed side by side on ONNX Runtime
(one thread, batch --batch, interleaved rounds, medians; bench's machinery): the speed-up is over that seed's ast
engine. The commands are the CLI's own, run as subprocesses with --threads 1; finished runs, tune reports and
exports in --workdir are reused.

    python benchmarks/bench_tune.py --workdir /tmp/bench-tune                       # the full run (2 seeds)
    python benchmarks/bench_tune.py --workdir /tmp/bench-tune-smoke --seeds 0 \\
        --base-epochs 1 --ft-epochs 1 --tune-budget 6 --rounds 3                     # end to end in minutes

The table is printed and written, with every per-seed figure and tune's own report, to WORKDIR/bench_tune.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_distill import cli, test_accuracy, train_run  # noqa: E402
from speech_words import make_speech_words  # noqa: E402

from fastast_deploy.evaluation.timing import cpu_name  # noqa: E402

T = TypeVar("T")
ROWS = {
    "ast": "AST, r = 0",
    "tome_tuned": "ToMe off the shelf, tune's schedule",
    "tome_const": "ToMe off the shelf, constant r, equal FLOPs",
    "tome_ft": "ToMe fine-tuned, tune's schedule",
}
TEACHERS = {"ast": "the r = 0 AST", "cnn": "a CNN"}


def csv(schedule: list[int] | tuple[int, ...]) -> str:
    return ",".join(map(str, schedule))


def run_tune(work: Path, data: Path, base: Path, name: str, max_drop: float, budget: str) -> dict:
    """`fastast-deploy tune` of ``base``: search on the val split, report on the test split; its tune.json with
    the wall time of the command added (``wall_s``; None when the report was reused)."""
    out = work / name
    report_path = out / "tune.json"
    wall = None
    if not report_path.is_file():
        start = time.perf_counter()
        cli("tune", str(base / "best"), "--data", str(data / "val.json"), "--test", str(data / "test.json"), "--labels",
            str(data / "labels.csv"), "--max-drop", f"{max_drop:g}", "--budget", budget, "-o", str(out),
            "--threads", "1", log=work / f"{name}.log")
        wall = time.perf_counter() - start
    report = json.loads(report_path.read_text())
    if report.get("chosen") is None:
        raise SystemExit(f"tune chose no schedule for {base} within --max-drop {max_drop:g}; see {report_path}")
    return {**report, "wall_s": wall}


def equal_flops_constant(run: Path, schedule: list[int]) -> tuple[int, float, float]:
    """The constant r whose FLOP ratio is nearest that of ``schedule`` on ``run``'s model: (r, its FLOP ratio,
    the schedule's)."""
    from fastast_deploy.checkpoints.native import load_model
    from fastast_deploy.evaluation.tune import full_r
    from fastast_deploy.model.flops import flop_ratio
    from fastast_deploy.model.schedule import clip_schedule

    config = load_model(str(run / "best")).config
    target = flop_ratio(config, schedule)
    ratios = {r: flop_ratio(config, clip_schedule(config.num_tokens, (r,) * config.depth))
              for r in range(1, full_r(config.num_tokens, config.depth) + 1)}
    r = min(ratios, key=lambda k: (abs(ratios[k] - target), k))
    return r, ratios[r], target


def flops(run: Path, schedule: list[int] | tuple[int, ...]) -> float:
    from fastast_deploy.checkpoints.native import load_model
    from fastast_deploy.model.flops import flop_ratio

    return flop_ratio(load_model(str(run / "best")).config, schedule)


def export(work: Path, run: Path, name: str, schedule: list[int] | tuple[int, ...]) -> Path:
    path = work / "engines" / f"{name}.onnx"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        cli("export", str(run / "best"), "-o", str(path), "--tome-r", csv(schedule), log=work / f"{name}.export.log")
    return path


def time_engines(paths: dict[str, Path], batch: int, rounds: int) -> dict[str, dict[str, float]]:
    """Every engine of one seed on ONNX Runtime (CPU, one intra-op thread), timed side by side as `bench` times
    its r sweep."""
    from fastast_deploy.engines import load_engine
    from fastast_deploy.evaluation.bench import BenchOptions, time_round_robin

    engines = {}
    try:
        for name, path in paths.items():
            engines[name] = load_engine(path, threads=1)
        return time_round_robin(engines, BenchOptions(rs=(0,), batch=batch, warmup=2, rounds=rounds))
    finally:
        for engine in engines.values():
            engine.close()


def format_table(results: dict[int, dict[str, dict]], rows: dict[str, str]) -> str:
    """One line per row: mean FLOP ratio, test accuracy (points) per seed and mean, speed-up per seed and mean."""
    seeds = list(results)
    lines = [f"{'row':<44} {'FLOPs':>6} " + " ".join(f"{'acc s' + str(s):>8}" for s in seeds) + f" {'mean':>6}  "
             + " ".join(f"{'speed s' + str(s):>8}" for s in seeds) + f" {'mean':>6}"]
    for kind, title in rows.items():
        figures = [results[s][kind] for s in seeds]
        acc = [100 * f["test_accuracy"] for f in figures]
        speed = [f["speedup"] for f in figures]
        lines.append(f"{title:<44} {statistics.mean(f['flop_ratio'] for f in figures):>5.2f}x "
                     + " ".join(f"{a:>8.2f}" for a in acc) + f" {statistics.mean(acc):>6.2f}  "
                     + " ".join(f"{v:>7.2f}x" for v in speed) + f" {statistics.mean(speed):>5.2f}x")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True, help="Data and runs; finished runs are reused.")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--base-model", default="default", help="`train --model` of the ast row.")
    parser.add_argument("--base-epochs", type=int, default=60)
    parser.add_argument("--base-lr", type=float, default=3e-4)
    parser.add_argument("--base-warmup", type=float, default=3.0, help="--warmup-epochs of the ast row.")
    parser.add_argument("--ft-epochs", type=int, default=10, help="Epochs of the tome_ft and tome_kd_T runs.")
    parser.add_argument("--ft-lr", type=float, default=None, help="[default: train's fine-tuning lr]")
    parser.add_argument("--max-drop", type=float, default=1.0, help="tune's --max-drop (points).")
    parser.add_argument("--tune-budget", default="40", help="tune's --budget.")
    parser.add_argument("--teachers", default="ast",
                        help="Comma-separated, one tome_kd_T row each: ast (the seed's r = 0 run), cnn (a compact "
                             "CNN trained on the same clips).")
    parser.add_argument("--teacher-epochs", type=int, default=20)
    parser.add_argument("--teacher-width", type=int, default=32, help="--cnn-width of a CNN teacher.")
    parser.add_argument("--kd-mode", default="auto")
    parser.add_argument("--jobs", type=int, default=1, help="Training runs at once (each on one thread).")
    parser.add_argument("--batch", type=int, default=8, help="Batch of the throughput measurement.")
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    teacher_kinds = [t for t in args.teachers.split(",") if t]
    if not set(teacher_kinds) <= set(TEACHERS):
        parser.error(f"--teachers takes {', '.join(TEACHERS)}; got {args.teachers!r}")
    rows_shown = {**ROWS, **{f"tome_kd_{t}": f"ToMe fine-tuned + KD from {TEACHERS[t]}" for t in teacher_kinds}}

    work, data = args.workdir, args.workdir / "data"
    work.mkdir(parents=True, exist_ok=True)
    if not (data / "test.json").is_file():
        print("data:", make_speech_words(data), flush=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    started = time.perf_counter()

    def pool_map(fn: Callable[[T], Path], items: list[T]) -> list[Path]:
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            return list(pool.map(fn, items))

    base_args = ["--model", args.base_model, "--tome-r", "0", "--epochs", str(args.base_epochs), "--lr",
                 f"{args.base_lr:g}", "--warmup-epochs", f"{args.base_warmup:g}"]
    base = dict(zip(seeds, pool_map(lambda s: train_run(work, data, f"ast_s{s}", [*base_args, "--seed", str(s)]),
                                    seeds), strict=True))
    print(f"ast runs: {[str(p) for p in base.values()]}", flush=True)
    tuned = {s: run_tune(work, data, base[s], f"tune_s{s}", args.max_drop, args.tune_budget) for s in seeds}
    schedules = {s: tuned[s]["chosen"]["schedule"] for s in seeds}
    constant = {s: equal_flops_constant(base[s], schedules[s]) for s in seeds}
    for s in seeds:
        wall = f"{tuned[s]['wall_s']:.0f} s" if tuned[s]["wall_s"] is not None else "reused"
        print(f"seed {s}: tune chose r per block {schedules[s]} (FLOP ratio {constant[s][2]:.2f}x; tune {wall}); "
              f"equal-FLOP constant r = {constant[s][0]} ({constant[s][1]:.2f}x)", flush=True)

    teachers: dict[str, dict[int, Path]] = {"ast": base}
    if "cnn" in teacher_kinds:
        from fastast_deploy.checkpoints.native import load_model

        config = load_model(str(base[seeds[0]] / "best")).config  # the teacher sees the student's input
        teacher_run = train_run(work, data, "teacher", ["--arch", "compact-cnn", "--cnn-width",
                                                        str(args.teacher_width), "--mel-bins",
                                                        str(config.num_mel_bins), "--frames",
                                                        str(config.input_frames), "--epochs",
                                                        str(args.teacher_epochs)])
        teachers["cnn"] = dict.fromkeys(seeds, teacher_run)
    ft_args = ["--epochs", str(args.ft_epochs), *(["--lr", f"{args.ft_lr:g}"] if args.ft_lr else [])]
    jobs = [(kind, s) for s in seeds for kind in ("tome_ft", *(f"tome_kd_{t}" for t in teacher_kinds))]

    def fine_tune(job: tuple[str, int]) -> Path:
        kind, s = job
        teacher = kind.removeprefix("tome_kd_")
        extra = ["--teacher", str(teachers[teacher][s]), "--kd-mode", args.kd_mode] if teacher in teachers else []
        return train_run(work, data, f"{kind}_s{s}", ["--model", str(base[s] / "best"), "--tome-r",
                                                        csv(schedules[s]), *ft_args, *extra, "--seed", str(s)])

    tuned_runs = dict(zip(jobs, pool_map(fine_tune, jobs), strict=True))

    results: dict[int, dict[str, dict]] = {}
    for s in seeds:
        rows = {
            "ast": (base[s], [0] * len(schedules[s])),
            "tome_tuned": (base[s], schedules[s]),
            "tome_const": (base[s], [constant[s][0]] * len(schedules[s])),
            "tome_ft": (tuned_runs[("tome_ft", s)], schedules[s]),
            **{kind: (tuned_runs[(kind, s)], schedules[s]) for kind in rows_shown if kind.startswith("tome_kd_")},
        }
        engines = {kind: export(work, run, f"{kind}_s{s}", schedule) for kind, (run, schedule) in rows.items()}
        speed = time_engines(engines, args.batch, args.rounds)
        results[s] = {}
        for kind, (run, schedule) in rows.items():
            results[s][kind] = {
                "run": str(run), "schedule": list(schedule), "flop_ratio": flops(run, schedule),
                "test_accuracy": test_accuracy(work, data, engines[kind]),
                "clips_per_s": speed[kind]["clips_per_s"], "speedup": speed[kind]["clips_per_s"]
                / speed["ast"]["clips_per_s"]}

    def clips(split: str) -> int:
        return len(json.loads((data / f"{split}.json").read_text())["data"])

    def mean(kind: str, key: str) -> float:
        return statistics.mean(results[s][kind][key] for s in seeds)

    print(f"\nmachine: {cpu_name()}; seeds {seeds}; base {args.base_model} fine-tuned {args.base_epochs} epochs at "
          f"lr {args.base_lr:g}; ToMe fine-tuning {args.ft_epochs} epochs; teachers {args.teachers}; tune --max-drop "
          f"{args.max_drop:g} on val ({clips('val')} clips), accuracies on the held-out test split ({clips('test')} "
          f"clips, chance 10%); "
          f"ONNX Runtime CPU, 1 thread, batch {args.batch}, median of {args.rounds} interleaved rounds")
    print(format_table(results, rows_shown))
    for s in seeds:
        held = tuned[s]["chosen"]["held_out"]
        print(f"seed {s}: tune's schedule {schedules[s]}, its held-out drop {held['drop']:+.2f} points (95% interval "
              f"{held['interval'][0]:+.2f} to {held['interval'][1]:+.2f}); constant r = {constant[s][0]}")
    summary = {
        "machine": cpu_name(), "seeds": seeds, "settings": {k: v if not isinstance(v, Path) else str(v)
                                                            for k, v in vars(args).items()},
        "rows": rows_shown, "results": {str(s): results[s] for s in seeds},
        "mean": {kind: {key: mean(kind, key) for key in ("flop_ratio", "test_accuracy", "speedup")}
                 for kind in rows_shown},
        "tune": {str(s): {"chosen": tuned[s]["chosen"], "best_constant": tuned[s]["best_constant"],
                          "seconds": tuned[s]["seconds"], "wall_s": tuned[s]["wall_s"]} for s in seeds},
        "equal_flops_constant_r": {str(s): constant[s][0] for s in seeds},
        "seconds": time.perf_counter() - started,
    }
    (work / "bench_tune.json").write_text(json.dumps(summary, indent=1))
    print(f"written {work / 'bench_tune.json'}")


if __name__ == "__main__":
    main()
