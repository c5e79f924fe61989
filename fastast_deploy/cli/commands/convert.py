"""The convert command: a checkpoint into a Hugging Face AST directory, the original AST .pth layout, or this
project's own safetensors checkpoint."""

from __future__ import annotations

from pathlib import Path

import click

from fastast_deploy.cli.commands.options import parse_r, tome_options
from fastast_deploy.errors import FastASTError, UsageError
from fastast_deploy.files import check_outputs_apart, check_replaceable, prepare_output, record_written, written_by

FORMATS = ("hf", "pth", "safetensors")
COMMAND = "convert"  # the name in an output folder's record of what wrote it


def _check_folder(output: Path, names: tuple[str, ...], force: bool) -> None:
    """Refuse, before any work, -o that is a file, or a folder with content that convert did not write."""
    if output.exists() and not output.is_dir():
        raise UsageError(f"-o {output} is a file; --to hf writes a directory: give a folder path")
    check_replaceable(output, names, COMMAND, force)
    if not force and output.is_dir() and any(output.iterdir()) and not written_by(output, COMMAND):
        entries = sum(1 for _ in output.iterdir())
        raise FastASTError(f"-o {output} is a folder with {entries} entries that convert did not write; pass --force "
                           "to write into it or choose another -o")


@click.command()
@click.argument("source")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path),
              help="hf: the directory to write; pth, safetensors: the file to write.")
@click.option("--to", "to", type=click.Choice(FORMATS), required=True,
              help="hf: a Hugging Face AST directory (config.json, model.safetensors, preprocessor_config.json, "
              "README.md); pth: the original AST repository's state dict; safetensors: this project's checkpoint.")
@tome_options
@click.option("--labels", type=click.Path(dir_okay=False), default=None,
              help="AST class_labels_indices.csv giving label names (for an original .pth).")
@click.option("--force", is_flag=True, help="hf: write into a folder that convert did not write, replacing the "
              "files of the same names.")
def convert(source: str, output: Path, to: str, tome_r: str | None, tome_inflection: float, frames: int | None,
            labels: str | None, force: bool) -> None:
    """Write SOURCE (a checkpoint or a FastAST training run) as a Hugging Face AST directory, an original AST .pth
    or this project's checkpoint.

    hf: transformers' ASTForAudioClassification and pipeline("audio-classification") load the directory (at r = 0:
    transformers has no token merging); the ToMe schedule, kept in config.json's "fastast" entry, and the
    training figures come back when fastast-deploy reads it. The model card (README.md) carries the Hub's header.
    --tome-r / --tome-inflection set the schedule written (default: SOURCE's own), --frames the input length.
    """
    from fastast_deploy.checkpoints.cnn import cnn_metadata
    from fastast_deploy.checkpoints.export_formats import (
        HF_FILES,
        original_format_notes,
        write_hf_dir,
        write_original_pth,
    )
    from fastast_deploy.checkpoints.loading import model_extra, resolve_run
    from fastast_deploy.checkpoints.native import load_model, save_checkpoint

    given = Path(source)
    check_outputs_apart({"-o": output}, {"SOURCE": given if given.exists() else None, "--labels": labels},
                        replaced_folders=("-o",))
    if to == "hf":
        _check_folder(output, HF_FILES, force)
    else:
        if force:
            raise UsageError(f"--force is for --to hf, which writes into a folder; --to {to} replaces its file")
        if to == "pth" and output.suffix == ".safetensors":
            raise UsageError(f"-o {output}: an original AST state dict is a torch file; name it .pth")
        prepare_output(output)
    path = resolve_run(source)
    if path.is_file() and cnn_metadata(path) is not None:
        raise UsageError(f"{source} is a CNN checkpoint (train --arch cnn); convert writes transformer (AST) "
                         "checkpoints, and a CNN cannot become one")
    model = load_model(path, tome_r=parse_r(tome_r), tome_inflection=tome_inflection, input_frames=frames,
                       labels=labels)
    extra = model_extra(model)
    schedule = list(model.schedule) if any(model.schedule) else "none"
    if to == "hf":
        write_hf_dir(model, output, extra, source=source)
        record_written(output, HF_FILES, COMMAND)
        click.echo(f"wrote {output} ({', '.join(HF_FILES)}): {model.config.num_labels} labels, ToMe r per block "
                   f"{schedule} (kept in config.json's 'fastast' entry; transformers runs it at r = 0)")
    elif to == "pth":
        for note in original_format_notes(model, output.name):
            click.echo(f"note: {note}", err=True)
        write_original_pth(model, output)
        click.echo(f"wrote {output}: the original AST state dict layout (module.v.*, module.mlp_head.*)")
    else:
        save_checkpoint(model, output, extra=extra)
        click.echo(f"wrote {output}: a fastast-deploy checkpoint, ToMe r per block {schedule}")
