"""`fastast-deploy verify`: parity and speed of an engine against a reference; exit 0 pass, 1 a failed check or a
runtime failure (engine load or run, baseline build, an I/O error), 2 usage, 130 Ctrl-C."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import numpy as np

from fastast_deploy.cli.commands.options import BATCH, CLIPS, FiniteFloat, given_options, parse_sizes
from fastast_deploy.contract import PRECISIONS, PROVIDERS, TOLERANCES, sidecar_path
from fastast_deploy.errors import FastASTError, VerifyUsageError, error_summary
from fastast_deploy.files import atomic_path, check_outputs_apart, prepare_output
from fastast_deploy.scoped import polygraphy_verbosity

INT8_HINT = ("note: int8 engines are calibrated on real audio and checked on it; random fbank-like inputs lie outside "
             "their calibration range: verify int8 with --inputs DIR (clips like the calibration set)")
SAVE_SUFFIXES = (".npz", ".json")  # --save-inputs / --save-outputs: the suffix picks the format


def _defaults(name: str) -> str:
    """``[default: 0.0001 fp32, 0.05 fp16, 0.5 int8]``: a threshold's defaults by engine precision, from the one
    table (contract.TOLERANCES["verify"])."""
    return "[default: " + ", ".join(f"{getattr(TOLERANCES['verify'][p], name):g} {p}" for p in PRECISIONS) + "]"



@click.command()
@click.argument("engine", type=click.Path(dir_okay=False))
@click.option("--reference", "reference", required=True, metavar="REF",
              help="A checkpoint SOURCE (run in PyTorch with the engine's r schedule and input length), an .npz "
              "with fbank and logits arrays, or a Polygraphy RunResults .json.")
@click.option("--inputs", "inputs", default="random", show_default=True, metavar="random|DIR|FILE",
              help="Seeded fbank-like arrays, a folder of audio (sub-folders named like labels give labels), an AST "
              "data .json (labelled clips), an .npz with an fbank array, or a Polygraphy inputs .json.")
@click.option("--labels", "labels_csv", type=click.Path(dir_okay=False), default=None,
              help="Label CSV (index,mid,display_name) for an AST data .json given as --inputs.")
@click.option("--skip-unreadable", is_flag=True,
              help="Compare the input clips that can be read when some cannot (they are listed in the report); "
              "without it an unreadable clip fails the run (exit 1), as in evaluate.")
@click.option("--num", type=CLIPS, default=64, show_default=True, help="Clips for --inputs random.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for --inputs random.")
@click.option("--batch", type=BATCH, default=8, show_default=True, help="Batch for the parity run.")
@click.option("--atol", type=FiniteFloat(min=0), default=None, help=_defaults("atol"))
@click.option("--rtol", type=FiniteFloat(min=0), default=None, help=_defaults("rtol"))
@click.option("--min-cosine", type=FiniteFloat(-1, 1), default=None, help=_defaults("min_cosine"))
@click.option("--min-top1", type=FiniteFloat(0, 1), default=None, help=_defaults("min_top1"))
@click.option("--baseline", default="auto", show_default=True, metavar="auto|none|ENGINE",
              help="Speed baseline: auto builds the same model with r = 0 the same way; none skips it; an ENGINE "
              "must be that one (r = 0 in every block, the same model, precision and backend), else exit 2.")
@click.option("--no-speed", is_flag=True, help="Skip the speed section.")
@click.option("--speed-batches", default="1,8", show_default=True, help="Batch sizes timed in the speed section.")
@click.option("--warmup", type=click.IntRange(min=0), default=3, show_default=True)
@click.option("--iterations", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--provider", type=click.Choice(list(PROVIDERS)), default=None,
              help="ONNX Runtime provider for a plain .onnx ENGINE [default: cpu].")
@click.option("--report", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the JSON report here (schema: docs/verify-report.md).")
@click.option("--save-inputs", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Save the inputs: .npz (fbank) or .json (Polygraphy inputs); another suffix is an error.")
@click.option("--save-outputs", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Save the engine's outputs: .npz (fbank + logits, usable as --reference) or .json (Polygraphy "
              "RunResults); another suffix is an error.")
def verify(engine: str, reference: str, inputs: str, labels_csv: str | None, skip_unreadable: bool, num: int,
           seed: int, batch: int,
           atol: float | None,
           rtol: float | None, min_cosine: float | None, min_top1: float | None, baseline: str, no_speed: bool,
           speed_batches: str, warmup: int, iterations: int, provider: str | None, report: Path | None,
           save_inputs: Path | None, save_outputs: Path | None) -> None:
    """Check ENGINE (a built engine or an exported .onnx) against REF: parity figures, thresholds, and speed
    against the unmerged baseline. Exit 0 when every threshold holds; 1 when one fails, or when the engine cannot
    be loaded or run or the baseline cannot be built (the cause in one line), or on an I/O error (said so); 2 for
    usage errors; 130 on Ctrl-C. Verify an int8 engine on real clips (--inputs DIR): the default random inputs lie
    outside its calibration range.

    An input clip that cannot be read gets one `error: PATH: reason` line on stderr (`warning:` with
    --skip-unreadable); then the run fails with exit code 1 unless --skip-unreadable is given."""
    import dataclasses

    from fastast_deploy.evaluation.inputs import Unreadable
    from fastast_deploy.evaluation.verify import SpeedOptions, default_thresholds
    from fastast_deploy.evaluation.verify import verify as run_verify

    given = {"atol": atol, "rtol": rtol, "min_cosine": min_cosine, "min_top1": min_top1}
    if no_speed:
        ignored = given_options(click.get_current_context(), ("baseline", "speed_batches", "warmup", "iterations"))
        if ignored:
            raise VerifyUsageError(f"{', '.join(ignored)} {'sets' if len(ignored) == 1 else 'set'} the speed section, "
                                   "which --no-speed skips; drop one or the other")
    kind = "warning" if skip_unreadable else "error"
    unreadable = Unreadable(skip_unreadable, lambda path, reason: click.echo(f"{kind}: {path}: {reason}", err=True))
    sizes = parse_sizes(speed_batches, "--speed-batches", VerifyUsageError)
    speed = None if no_speed else SpeedOptions(sizes, warmup, iterations, None if baseline == "none" else baseline)

    for option, path in (("--save-inputs", save_inputs), ("--save-outputs", save_outputs)):
        if path is not None and path.suffix not in SAVE_SUFFIXES:
            raise VerifyUsageError(f"{option} {path}: name an .npz or a .json file (the suffix picks the format); "
                                   f"got {path.suffix or 'no suffix'}")
    try:
        check_outputs_apart({"--report": report, "--save-inputs": save_inputs, "--save-outputs": save_outputs},
                            {"ENGINE": engine, "ENGINE's sidecar": sidecar_path(engine), "--reference": reference,
                             "--inputs": inputs if inputs != "random" else None, "--labels": labels_csv,
                             "--baseline": baseline if baseline not in ("auto", "none") else None})
        for path in (report, save_inputs, save_outputs):
            if path is not None:
                prepare_output(path)
    except FastASTError as err:
        raise VerifyUsageError(str(err)) from None
    from fastast_deploy.engines.triton_remote import is_remote

    if is_remote(engine):  # a model on a Triton server: no local build to time an r = 0 baseline beside
        if speed is not None and speed.baseline == "auto":
            raise VerifyUsageError(f"ENGINE {engine} runs on a Triton server: --baseline auto builds a local r = 0 "
                                   "baseline, which is no comparison; add --baseline none or --no-speed")
    elif not Path(engine).is_file():
        raise VerifyUsageError(f"ENGINE {engine} does not exist or is not a file; give a built engine or an "
                               "exported .onnx")
    # Usage errors (VerifyUsageError) exit 2; engine, runtime and baseline failures keep their exit code 1.
    # I/O errors and Ctrl-C end apart from a failed check: exit 1 with "I/O error", exit 130 (outputs are written
    # last and atomically, so neither leaves one half written).
    try:
        precision = _engine_precision(engine)
        base = default_thresholds(precision)
        thresholds = dataclasses.replace(base, **{k: v for k, v in given.items() if v is not None})
        result, used_inputs, _, outputs = run_verify(engine, reference, inputs_spec=inputs, num=num, batch=batch,
                                                     seed=seed, thresholds=thresholds, speed=speed,
                                                     provider=provider, labels_csv=labels_csv,
                                                     unreadable=unreadable)
        if report is not None:
            from fastast_deploy.files import write_json_atomic

            write_json_atomic(report, result)
        if save_inputs is not None:
            _save_inputs(save_inputs, used_inputs.fbank, batch)
        if save_outputs is not None:
            _save_outputs(save_outputs, used_inputs.fbank, outputs, batch, Path(engine).name)
    except KeyboardInterrupt:
        click.echo("Interrupted: verify stopped before its verdict; nothing was written", err=True)
        raise SystemExit(130) from None
    except OSError as err:
        where = f" on {err.filename}" if err.filename else ""
        raise FastASTError(f"verify stopped on an I/O error{where} ({error_summary(err, with_type=True)}), not on a "
                           "failed check; free space or fix the file and run it again") from None
    click.echo(format_report(result))
    if not result["passed"]:
        if precision == "int8" and inputs == "random" and Path(reference).suffix not in (".npz", ".json"):
            click.echo(INT8_HINT, err=True)
        raise SystemExit(1)


def _engine_precision(engine: str) -> str:
    from fastast_deploy.engines import load_engine
    from fastast_deploy.engines.onnx_model import read_onnx_model
    from fastast_deploy.engines.sidecar import read_sidecar
    from fastast_deploy.engines.triton_remote import is_remote

    if is_remote(engine):  # its server's model config holds the record
        with load_engine(engine) as remote:
            return remote.metadata["precision"]
    data = read_sidecar(engine)
    return data["precision"] if data else read_onnx_model(engine).precision


def _save_inputs(path: Path, fbank: np.ndarray, batch: int) -> None:
    from fastast_deploy.engines.feeds import write_npz

    with atomic_path(path) as tmp, polygraphy_verbosity("ERROR"):
        if path.suffix == ".json":
            from polygraphy.json import save_json

            save_json([{"fbank": fbank[i : i + batch]} for i in range(0, len(fbank), batch)], str(tmp))
        else:
            with open(tmp, "wb") as f:
                write_npz(f, {"fbank": fbank})


def _save_outputs(path: Path, fbank: np.ndarray, outputs: dict[str, np.ndarray], batch: int, runner: str) -> None:
    from fastast_deploy.engines.feeds import write_npz

    with atomic_path(path) as tmp, polygraphy_verbosity("ERROR"):
        if path.suffix == ".json":
            from polygraphy.comparator import RunResults
            from polygraphy.comparator.struct import IterationResult

            iterations = [IterationResult({k: v[i : i + batch] for k, v in outputs.items()}, runner_name=runner)
                          for i in range(0, len(fbank), batch)]
            results = RunResults()
            results.append((runner, iterations))
            results.save(str(tmp))
        else:
            with open(tmp, "wb") as f:
                write_npz(f, {"fbank": fbank, **outputs})


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


SHOWN_SKIPPED = 3  # files named in the terminal report; --report lists every one with its reason


def _skipped_lines(skipped: list[dict[str, str]]) -> list[str]:
    """``skipped    a.wav, b.wav, c.wav and 2 more (a.wav: why)``: which input files were left out, and the first
    one's reason."""
    if not skipped:
        return []
    names = ", ".join(s["file"] for s in skipped[:SHOWN_SKIPPED])
    more = f" and {len(skipped) - SHOWN_SKIPPED} more (all in --report)" if len(skipped) > SHOWN_SKIPPED else ""
    return [f"skipped    {names}{more}; first: {skipped[0]['error']}"]


def format_report(report: dict[str, Any]) -> str:
    """The terminal form of a verify report: what was compared, checks, figures, speed."""
    e, p = report["engine"], report["parity"]
    lines = [
        f"engine     {e['path']} ({e['backend']}, {e['precision']}, r per block {e['tome']['effective_schedule']})",
        f"reference  {report['reference']['source']} ({report['reference']['kind']})",
        f"inputs     {report['inputs']['clips']} clips from {report['inputs']['source']}"
        + (f", {len(report['inputs']['skipped'])} skipped" if report["inputs"]["skipped"] else ""),
        *_skipped_lines(report["inputs"]["skipped"]),
        "",
        f"{'check':<34} {'value':>12}  {'threshold':<22} result",
    ]
    for c in report["checks"]:
        by = f" (by {c['by']:.3g})" if c.get("by") is not None else ""
        lines.append(f"{c['name']:<34} {_fmt(c['value']):>12}  {c['threshold']:<22} "
                     f"{'pass' if c['passed'] else 'FAIL' + by}")
    lines.append("")
    lines.append("abs error  max {} mean {} p99 {}   rel error max {} p99 {}".format(
        *(_fmt(p[k]) for k in ("max_abs_diff", "mean_abs_diff", "p99_abs_diff", "max_rel_diff", "p99_rel_diff"))))
    lines.append(f"cosine     min {_fmt(p['cosine_min'])} mean {_fmt(p['cosine_mean'])}   top-1 agreement "
                 f"{_fmt(p['top1_agreement'])}   top-5 overlap {_fmt(p['top5_agreement'])}")
    if "merge_agreement" in p:
        lines.append("merges     identical decisions per block: " + ", ".join(
            f"{k} {v:.3f}" for k, v in p["merge_agreement"].items()))
    if "accuracy" in p:
        lines.append(f"accuracy   reference {p['accuracy']['reference']:.4f}   engine {p['accuracy']['engine']:.4f}")
    if "mAP" in p:
        lines.append(f"mAP        reference {p['mAP']['reference']:.4f}   engine {p['mAP']['engine']:.4f}")
    speed = report.get("speed")
    if speed:
        lines += ["", f"speed ({speed['timing']}; FLOP ratio {speed['flop_ratio']:.2f}x; baseline: "
                  f"{speed['baseline'] or speed.get('baseline_note', 'none')})",
                  f"{'batch':>5} {'clips/s':>10} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9} {'base clips/s':>13} "
                  f"{'speed-up':>9}"]
        for b, row in speed["batches"].items():
            eng, base = row["engine"], row.get("baseline")
            base_rate = f"{base['clips_per_s']:.2f}" if base else "-"
            speedup = f"{row['speedup']:.2f}x" if base else "-"
            lines.append(f"{b:>5} {eng['clips_per_s']:>10.2f} {eng['latency_ms_p50']:>9.2f} "
                         f"{eng['latency_ms_p90']:>9.2f} {eng['latency_ms_p99']:>9.2f} {base_rate:>13} {speedup:>9}")
    failed = [c["name"] for c in report["checks"] if not c["passed"]]
    lines += ["", "PASSED" if report["passed"] else f"FAILED: {', '.join(failed)}"]
    return "\n".join(lines)
