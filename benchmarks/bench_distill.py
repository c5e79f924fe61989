"""Does distillation pay, on data it was not tuned on? The protocol, on several sets, seeds and two regimes.

Sets (`SETS`; each 10 classes, 42 / 9 / 9 clips per class for train / val / held-out test, 1 s, 64 mel bins):
``words`` and ``digits``, two spoken-word sets that differ in words, voices, rates and noise
(benchmarks/speech_words.py, espeak-ng), and ``synthetic``, the built-in sound-event set (`make-dataset
synthetic`, its validation clips split per class into val and test). Per set a CNN teacher is trained once
(`--arch cnn`, seed 0). Then, per seed, with train's defaults except --epochs (and the model's geometry):

  from scratch:
    ast          a new tiny AST (r = 0), no teacher
    fastast      the same with Token Merging (--tome-r R), no teacher
    fastast_kd   the same FastAST, distilled from the CNN teacher (train's default distillation)
  the paper's regime (a pretrained AST, stood in for by an AST trained at r = 0 first):
    pretrained   the stand-in: the ast run above, or with --pretrain-epochs N a longer r = 0 run of its own
                 (`PRETRAIN`, the recipe the built-in model was made with)
    tome_shelf   that AST exported at --tome-r R, no fine-tuning (ToMe off the shelf)
    tome_ft      that AST fine-tuned --ft-epochs with merging on, no teacher
    tome_ft_kd   the same, distilled from the CNN teacher

The choices are made on validation data only (`choose`): each candidate of `CANDIDATES` (distillation mode,
temperature, weight, length) is trained on every set for the --choice-seeds, and the candidate with the best mean
best-validation metric wins, per set and over all sets. Training commands get the train and val splits only; the
test split is read once every choice is made, to score the runs (`score_runs`): per clip whether the model's top-1
is right, the mean over seeds, and a 95 % bootstrap interval resampling seeds and test clips (`interval`). The
claims are read at train's defaults (what a user gets with only --epochs set); the chosen candidate's figures are
printed beside them, to show whether the defaults are what the protocol picks.

The commands are the CLI's own, run as subprocesses with --threads 1 (several at once with --jobs); finished runs
in --workdir are reused:

    python benchmarks/bench_distill.py --workdir /tmp/bench-distill --jobs 2           # 3 seeds, every set
    python benchmarks/bench_distill.py --workdir /tmp/smoke --sets words --seeds 0 --epochs 2 --ft-epochs 1 \\
        --teacher-epochs 2 --candidates default --rounds 3                               # end to end in minutes

Everything printed is also written to WORKDIR/summary.json (every run's per-seed figures included). The throughput
of r = 0 against r = R is measured on the first set's seed-0 runs at --batch, one thread, rounds interleaved,
medians, in PyTorch eager and on the ONNX Runtime engines `fastast-deploy export` writes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fastast_deploy.evaluation.timing import cpu_name  # noqa: E402

CLI = [sys.executable, "-c", "from fastast_deploy.cli.main import main; main()"]
SETS = ("words", "digits", "synthetic")
# Candidates of the choice on val: name -> train options on top of the defaults ("default": none).
CANDIDATES = {
    "default": (),
    "soft_t1_l05": ("--kd-mode", "soft", "--kd-tau", "1", "--kd-lambda", "0.5", "--no-kd-standardize"),  # CMKD's
    "soft_t4_l01": ("--kd-mode", "soft", "--kd-tau", "4", "--kd-lambda", "0.1", "--no-kd-standardize"),
    "std_t2_l01": ("--kd-mode", "soft", "--kd-tau", "2", "--kd-lambda", "0.1", "--kd-standardize"),
    "std_t1_l05": ("--kd-mode", "soft", "--kd-tau", "1", "--kd-lambda", "0.5", "--kd-standardize"),
    "soft_mixup": ("--kd-mode", "soft", "--mixup", "1", "--no-kd-standardize"),  # teacher on the mixed clips
    "hard_l05": ("--kd-mode", "hard", "--kd-lambda", "0.5"),
    "deit_hard_l05": ("--kd-mode", "deit-hard", "--kd-lambda", "0.5"),
}
KINDS = ("ast", "fastast", "fastast_kd", "pretrained", "tome_shelf", "tome_ft", "tome_ft_kd")
# The stand-in for a pretrained AST with --pretrain-epochs: the recipe of the built-in model (its assets README).
PRETRAIN = ("--lr", "1e-3", "--batch-size", "16")
DRAWS = 2000  # bootstrap draws


def cli(*args: str, log: Path | None = None) -> str:
    """Run one fastast-deploy command; its output (also written to ``log``) or a SystemExit with its tail."""
    start = time.perf_counter()
    result = subprocess.run([*CLI, *args], capture_output=True, text=True)
    out = result.stdout + result.stderr
    if log is not None:
        log.write_text(f"$ fastast-deploy {' '.join(args)}\n{out}\n[{time.perf_counter() - start:.0f} s]\n")
    if result.returncode != 0:
        raise SystemExit(f"fastast-deploy {' '.join(args[:3])} ... failed:\n{out[-2000:]}")
    return out


@dataclass(frozen=True)
class Splits:
    """A set's files. Training and the choice see ``train`` and ``val`` only (`fit_args`); ``test`` is read by
    `score_runs` alone."""

    root: Path

    def fit_args(self) -> list[str]:
        return ["--train", str(self.root / "train.json"), "--val", str(self.root / "val.json"), "--labels",
                str(self.labels)]

    @property
    def labels(self) -> Path:
        return self.root / "labels.csv"

    @property
    def test(self) -> Path:
        return self.root / "test.json"


def make_set(name: str, root: Path) -> Splits:
    """Write set ``name`` into ``root`` unless it is there."""
    if (root / "test.json").is_file():
        return Splits(root)
    if name == "synthetic":
        _make_synthetic(root)
    else:
        from speech_words import make_speech_words

        make_speech_words(root, kind=name)
    return Splits(root)


def _make_synthetic(root: Path, clips_per_class: int = 60, held: int = 9) -> None:
    """`make-dataset synthetic` at 1 s with 2 * ``held`` of each class's clips held out, split into val and test."""
    cli("make-dataset", "synthetic", "-o", str(root), "--seconds", "1", "--clips-per-class", str(clips_per_class),
        "--val-fraction", f"{2 * held / clips_per_class:.6f}")
    rows = json.loads((root / "val.json").read_text(encoding="utf-8"))["data"]
    seen: dict[str, int] = {}
    val, test = [], []
    for row in rows:  # per class: the first `held` clips to test, the rest to val
        count = seen.get(row["labels"], 0)
        seen[row["labels"]] = count + 1
        (test if count < held else val).append(row)
    (root / "test.json").write_text(json.dumps({"data": test}, indent=1) + "\n", encoding="utf-8")
    (root / "val.json").write_text(json.dumps({"data": val}, indent=1) + "\n", encoding="utf-8")


def train_run(work: Path, data: Path | Splits, name: str, extra: Sequence[str]) -> Path:
    """`fastast-deploy train` into WORK/NAME on the train and val splits (reused when finished)."""
    splits = data if isinstance(data, Splits) else Splits(data)
    run = work / name
    if not (run / "best").is_file():
        cli("train", *splits.fit_args(), "-o", str(run), "--threads", "1", "--quiet", *extra,
            log=work / f"{name}.log")
    return run


def val_score(run: Path) -> float:
    """The run's best validation metric (what its best checkpoint was kept for), from RUN/metrics.jsonl."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    values = [row.get("val_acc", row.get("val_map")) for row in rows]
    return max(float(v) for v in values if v is not None)


def choose(scores: dict[str, list[float]]) -> str:
    """The candidate with the highest mean validation score; ties go to the earlier one (the defaults first)."""
    return max(scores, key=lambda name: (statistics.mean(scores[name]), -list(scores).index(name)))


def test_accuracy(work: Path, data: Path, run: Path) -> float:
    """Held-out accuracy of a run's best checkpoint by `fastast-deploy evaluate` (its report kept in WORK)."""
    out = cli("evaluate", str(run), "--data", str(data / "test.json"), "--labels", str(data / "labels.csv"),
              "--threads", "1", "--json")
    report = json.loads(out)
    (work / f"{run.name}.test.json").write_text(json.dumps(report, indent=1))
    return float(report["value"])


def clip_hits(model: Path, splits: Splits) -> np.ndarray:
    """Per test clip, whether ``model`` (a run, checkpoint or exported .onnx) puts the clip's label first, scored as
    `fastast-deploy evaluate` scores it (its own functions, in this process, on one thread)."""
    from fastast_deploy.audio.datasets import load_dataset
    from fastast_deploy.audio.labels import read_label_csv
    from fastast_deploy.evaluation.evaluate import clip_scores, label_columns
    from fastast_deploy.inference.runner import open_runner

    dataset = load_dataset(splits.test, read_label_csv(str(splits.labels)))
    with open_runner(model, None, 1) as runner:
        columns = label_columns(dataset, runner, from_csv=True)
        scores, _, _ = clip_scores(runner, [e.path for e in dataset.examples], 16)
    return scores[:, columns].argmax(axis=1) == dataset.targets().numpy().argmax(axis=1)


def interval(hits: Sequence[np.ndarray], draws: int = DRAWS, seed: int = 0) -> tuple[float, float, float]:
    """Mean accuracy over seeds (one 0/1 array per seed, the same clips) and its 95 % bootstrap interval: each draw
    resamples the seeds and, for all of them alike, the clips."""
    table = np.stack([np.asarray(h, dtype=float) for h in hits])  # (seeds, clips)
    rng = np.random.default_rng([seed, 24])
    seeds = rng.integers(0, table.shape[0], size=(draws, table.shape[0]))
    clips = rng.integers(0, table.shape[1], size=(draws, table.shape[1]))
    means = np.array([table[s][:, c].mean() for s, c in zip(seeds, clips, strict=True)])
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(table.mean()), float(lo), float(hi)


@dataclass(frozen=True)
class Settings:
    seeds: tuple[int, ...]
    choice_seeds: tuple[int, ...]
    epochs: int
    ft_epochs: int
    teacher_epochs: int
    teacher_width: int
    mel_bins: int
    tome_r: int
    candidates: tuple[str, ...]
    pretrain_epochs: int = 0  # 0: the ast run stands in for the pretrained AST


def teacher_run(work: Path, splits: Splits, s: Settings) -> Path:
    return train_run(work, splits, "teacher", ["--arch", "cnn", "--cnn-width", str(s.teacher_width), "--mel-bins",
                                              str(s.mel_bins), "--epochs", str(s.teacher_epochs)])


def candidate_job(name: str, seed: int, s: Settings, teacher: Path) -> tuple[str, list[str]]:
    """Run name and train options of the distilled FastAST with candidate ``name``'s settings (the defaults' run is
    the claims' fastast_kd), so that every stage reuses the same run."""
    run = f"fastast_kd_s{seed}" if name == "default" else f"cand_{name}_s{seed}"
    return run, ["--mel-bins", str(s.mel_bins), "--epochs", str(s.epochs), "--tome-r", str(s.tome_r), "--teacher",
                 str(teacher), *CANDIDATES[name], "--seed", str(seed)]


def choice_runs(work: Path, splits: Splits, s: Settings, teacher: Path,
                run_all: Callable[[list[tuple[str, list[str]]]], list[Path]]) -> dict[str, list[float]]:
    """Stage 1: every candidate trained on the choice seeds; its best validation metric per seed."""
    runs = run_all([candidate_job(name, seed, s, teacher) for name in s.candidates for seed in s.choice_seeds])
    out: dict[str, list[float]] = {name: [] for name in s.candidates}
    for (name, _), run in zip(((n, seed) for n in s.candidates for seed in s.choice_seeds), runs, strict=True):
        out[name].append(val_score(run))
    return out


def claim_runs(work: Path, splits: Splits, s: Settings, teacher: Path,
               run_all: Callable[[list[tuple[str, list[str]]]], list[Path]]) -> dict[tuple[str, int], Path]:
    """Stage 2: the runs of the claims (module docstring) for every seed; tome_shelf is an export of the stand-in
    for a pretrained AST (the ast run, or the pretrained one with --pretrain-epochs)."""

    def run_keyed(jobs: dict[tuple[str, int], tuple[str, list[str]]]) -> dict[tuple[str, int], Path]:
        return dict(zip(jobs, run_all(list(jobs.values())), strict=True))

    common = ["--mel-bins", str(s.mel_bins), "--epochs", str(s.epochs)]
    scratch = {"ast": common, "fastast": [*common, "--tome-r", str(s.tome_r)]}
    if s.pretrain_epochs:
        scratch["pretrained"] = ["--mel-bins", str(s.mel_bins), "--epochs", str(s.pretrain_epochs), *PRETRAIN]
    jobs = {(kind, seed): (f"{kind}_s{seed}", [*args, "--seed", str(seed)])
            for seed in s.seeds for kind, args in scratch.items()}
    jobs.update({("fastast_kd", seed): candidate_job("default", seed, s, teacher) for seed in s.seeds})
    runs = run_keyed(jobs)
    for seed in s.seeds:
        runs.setdefault(("pretrained", seed), runs[("ast", seed)])
    tuned = ["--epochs", str(s.ft_epochs), "--tome-r", str(s.tome_r)]
    runs.update(run_keyed({(kind, seed): (f"{kind}_s{seed}", ["--model", str(runs[("pretrained", seed)] / "best"),
                                                               *tuned, *extra, "--seed", str(seed)])
                           for seed in s.seeds
                           for kind, extra in (("tome_ft", []), ("tome_ft_kd", ["--teacher", str(teacher)]))}))
    for seed in s.seeds:
        shelf = work / f"tome_shelf_s{seed}.onnx"
        if not shelf.is_file():
            cli("export", str(runs[("pretrained", seed)] / "best"), "-o", str(shelf), "--tome-r", str(s.tome_r),
                log=work / f"tome_shelf_s{seed}.export.log")
        runs[("tome_shelf", seed)] = shelf
    return runs


def score_runs(splits: Splits, models: dict[tuple[str, int], Path]) -> dict[tuple[str, int], np.ndarray]:
    """Stage 3, the only one that reads the test split: per model its per-clip hits."""
    return {key: clip_hits(model, splits) for key, model in models.items()}


def throughput(work: Path, ast: Path, fastast: Path, batch: int, rounds: int) -> dict[str, float]:
    """Clips per second of both models at batch ``batch``, one thread, interleaved rounds (medians): in PyTorch
    (eager), and as ONNX Runtime engines exported by `fastast-deploy export` (the form a user deploys)."""
    import onnxruntime as ort
    import torch

    from fastast_deploy.checkpoints.native import load_model
    from fastast_deploy.engines.base import CPU_REWARM_S
    from fastast_deploy.evaluation.timing import time_interleaved

    torch.set_num_threads(1)
    models = {"ast": load_model(ast / "best").eval(), "fastast": load_model(fastast / "best").eval()}
    cfg = models["ast"].config
    x = torch.randn(batch, cfg.input_frames, cfg.num_mel_bins) * 0.5
    with torch.inference_mode():
        eager = time_interleaved({k: (lambda m=m: m(x)) for k, m in models.items()}, batch=batch, warmup=3,
                                 rounds=rounds, rewarm_s=CPU_REWARM_S)
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    sessions = {}
    for kind, run in (("ast", ast), ("fastast", fastast)):
        onnx_path = work / f"{kind}.onnx"
        if not onnx_path.is_file():
            cli("export", str(run / "best"), "-o", str(onnx_path), log=work / f"{kind}.export.log")
        sessions[kind] = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    feed = {sessions["ast"].get_inputs()[0].name: x.numpy().astype(np.float32)}
    engine = time_interleaved({k: (lambda s=s: s.run(None, feed)) for k, s in sessions.items()}, batch=batch,
                              warmup=3, rounds=rounds, rewarm_s=CPU_REWARM_S)
    out: dict[str, float] = {}
    for where, timings in (("pytorch", eager), ("onnxruntime", engine)):
        for kind, timing in timings.items():
            out[f"{where}_{kind}_clips_per_s"] = timing.clips_per_s
        out[f"{where}_speedup"] = timings["fastast"].clips_per_s / timings["ast"].clips_per_s
    return out


def claims(figures: dict[str, tuple[float, float, float]]) -> dict[str, bool | None]:
    """The targets on one set, from (mean, low, high) of each kind; None where a target does not apply (merging
    cost nothing off the shelf, so there is nothing to recover)."""
    kd, plain, ast = figures["fastast_kd"], figures["fastast"], figures["ast"]
    shelf, ft_kd = figures["tome_shelf"], figures["tome_ft_kd"]
    cost = figures["pretrained"][0] - shelf[0]
    return {
        "fastast_kd - fastast >= 5 points": kd[0] - plain[0] >= 0.05,
        "their intervals do not overlap": kd[1] > plain[2],
        "fastast_kd >= ast": kd[0] >= ast[0],
        f"tome_ft_kd recovers >= half of what merging cost off the shelf ({100 * cost:+.1f} points)":
            None if cost <= 0 else ft_kd[0] - shelf[0] >= 0.5 * cost,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True, help="Data and runs; finished runs are reused.")
    parser.add_argument("--sets", default=",".join(SETS), help=f"Comma-separated, of {', '.join(SETS)}.")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--choice-seeds", default="0", help="Seeds of the candidates' runs (stage 1).")
    parser.add_argument("--candidates", default=",".join(CANDIDATES),
                        help=f"Comma-separated, of {', '.join(CANDIDATES)}.")
    parser.add_argument("--epochs", type=int, default=70, help="Epochs of every run from scratch.")
    parser.add_argument("--ft-epochs", type=int, default=10, help="Epochs of the fine-tuning with merging on.")
    parser.add_argument("--pretrain-epochs", type=int, default=0,
                        help="Epochs of the r = 0 stand-in for a pretrained AST (PRETRAIN); 0: the ast run.")
    parser.add_argument("--teacher-epochs", type=int, default=20)
    parser.add_argument("--teacher-width", type=int, default=32, help="--cnn-width of the teacher.")
    parser.add_argument("--mel-bins", type=int, default=64)
    parser.add_argument("--tome-r", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=1, help="Training runs at once (each on one thread).")
    parser.add_argument("--batch", type=int, default=8, help="Batch of the throughput measurement.")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--only-choice", action="store_true",
                        help="Stop after stage 1 (the candidates on val), writing WORKDIR/choice.json.")
    args = parser.parse_args()

    sets = [name for name in args.sets.split(",") if name]
    unknown = [n for n in sets if n not in SETS] + [c for c in args.candidates.split(",") if c not in CANDIDATES]
    if unknown:
        raise SystemExit(f"unknown set or candidate {unknown[0]!r}")
    s = Settings(tuple(int(x) for x in args.seeds.split(",")), tuple(int(x) for x in args.choice_seeds.split(",")),
                 args.epochs, args.ft_epochs, args.teacher_epochs, args.teacher_width, args.mel_bins, args.tome_r,
                 tuple(args.candidates.split(",")), args.pretrain_epochs)
    pool = ThreadPoolExecutor(max_workers=max(1, args.jobs))
    summary: dict[str, Any] = {"machine": cpu_name(), "settings": s.__dict__, "sets": {}}
    prepared = {}
    data = {name: make_set(name, args.workdir / "data" / name) for name in sets}
    for name in sets:
        (args.workdir / name).mkdir(parents=True, exist_ok=True)
    teachers = dict(zip(sets, pool.map(lambda n: teacher_run(args.workdir / n, data[n], s), sets), strict=True))
    for name in sets:  # stage 1 on every set: the choice, on val only
        work, splits, teacher = args.workdir / name, data[name], teachers[name]

        def run_all(jobs: list[tuple[str, list[str]]], work: Path = work, splits: Splits = splits) -> list[Path]:
            return list(pool.map(lambda job: train_run(work, splits, job[0], job[1]), jobs))

        choice = choice_runs(work, splits, s, teacher, run_all)
        prepared[name] = (work, splits, run_all, teacher, choice)
        summary["sets"][name] = {"choice_val": choice, "chosen": choose(choice)}
        print(f"{name}: val (stage 1, seeds {','.join(map(str, s.choice_seeds))}): "
              + ", ".join(f"{c} {statistics.mean(v):.3f}" for c, v in choice.items()) + f" -> {choose(choice)}",
              flush=True)
    pooled = choose({c: [statistics.mean(prepared[n][4][c]) for n in sets] for c in s.candidates})
    summary["chosen_over_sets"] = pooled
    print(f"over the sets: {pooled}")
    if args.only_choice:
        (args.workdir / "choice.json").write_text(json.dumps(summary, indent=1))
        return
    for name in sets:  # stages 2 and 3
        work, splits, run_all, teacher, choice = prepared[name]
        chosen = choose(choice)
        models = claim_runs(work, splits, s, teacher, run_all)
        if chosen != "default":
            extra = [candidate_job(chosen, seed, s, teacher) for seed in s.seeds]
            for seed, run in zip(s.seeds, run_all(extra), strict=True):
                models[("chosen", seed)] = run
        models[("teacher", 0)] = teacher
        hits = score_runs(splits, models)  # the test split is read here, after every choice
        kinds = [*KINDS, *(["chosen"] if chosen != "default" else [])]
        figures = {kind: interval([hits[(kind, seed)] for seed in s.seeds]) for kind in kinds}
        verdict = claims(figures)
        summary["sets"][name].update({
            "teacher_test": float(hits[("teacher", 0)].mean()),
            "test": {kind: {"mean": m, "interval": [lo, hi],
                            "per_seed": [float(hits[(kind, seed)].mean()) for seed in s.seeds]}
                     for kind, (m, lo, hi) in figures.items()},
            "claims": verdict})
        print(f"\n{name}: teacher (CNN) test accuracy {hits[('teacher', 0)].mean():.3f}; seeds {list(s.seeds)}; "
              f"{s.epochs} epochs (pretrained {s.pretrain_epochs or s.epochs}, fine-tuning {s.ft_epochs}); "
              f"r = {s.tome_r}; chosen on val: {chosen}")
        for kind in kinds:
            m, lo, hi = figures[kind]
            seeds = " ".join(f"{hits[(kind, seed)].mean():.3f}" for seed in s.seeds)
            print(f"  {kind:<12} test {m:.3f} [{lo:.3f}, {hi:.3f}]  seeds {seeds}")
        for claim, ok in verdict.items():
            print(f"  {'n/a   ' if ok is None else 'met   ' if ok else 'MISSED'} {claim}", flush=True)
    first = args.workdir / sets[0]
    speed = throughput(first, first / f"ast_s{s.seeds[0]}", first / f"fastast_s{s.seeds[0]}", args.batch,
                       args.rounds)
    summary["throughput"] = speed
    print(f"\nmachine: {cpu_name()}")
    for where, label in (("onnxruntime", "ONNX Runtime engine"), ("pytorch", "PyTorch eager")):
        print(f"throughput at batch {args.batch} ({label}, 1 thread, median of {args.rounds} interleaved rounds, "
              f"{sets[0]}): ast {speed[f'{where}_ast_clips_per_s']:.1f} clips/s, fastast "
              f"{speed[f'{where}_fastast_clips_per_s']:.1f} clips/s, {speed[f'{where}_speedup']:.2f}x")
    (args.workdir / "summary.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
