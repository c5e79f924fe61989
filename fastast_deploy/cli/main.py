"""The ``fastast-deploy`` command line. Heavy and optional packages are imported inside commands, so that
``--help`` of every command works with only the core dependencies installed."""

from __future__ import annotations

import os
from typing import Any

import click

from fastast_deploy.contract import PACKAGE_VERSION
from fastast_deploy.errors import FastASTError


class _Group(click.Group):
    """Prints project errors on one line (``Error: ...``, their exit code) and Ctrl-C as one line with exit 130;
    anything else is a bug and keeps its traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except FastASTError as err:
            failure = click.ClickException(str(err))
            failure.exit_code = err.exit_code
            raise failure from None
        except KeyboardInterrupt:  # one line and the shell's code for SIGINT, not click's "Aborted!" with exit 1
            click.echo("Interrupted (Ctrl-C): the command stopped before it finished", err=True)
            raise SystemExit(130) from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(PACKAGE_VERSION, prog_name="fastast-deploy")
@click.option("--offline", is_flag=True, help="Read Hugging Face Hub ids from the local cache only (sets "
              "HF_HUB_OFFLINE=1 for this process).")
def cli(offline: bool) -> None:
    """FastAST (AST + Token Merging) from a PyTorch checkpoint to verified TensorRT and ONNX Runtime engines.

    SOURCE, wherever a command takes one, is an original AST .pth, a Hugging Face AST directory, this
    project's .safetensors checkpoint, or a Hugging Face Hub model id ORG/NAME[@REVISION] (fetched into the
    huggingface_hub cache, HF_HOME / HF_HUB_CACHE; a local path of the same name wins); `info` also takes
    tiny / small / base for an untrained model.
    """
    if offline:  # before huggingface_hub is first imported, which reads it then; the Hub reader checks it again
        os.environ["HF_HUB_OFFLINE"] = "1"


from fastast_deploy.cli.commands.analyze import analyze  # noqa: E402
from fastast_deploy.cli.commands.bench import bench  # noqa: E402
from fastast_deploy.cli.commands.convert import convert  # noqa: E402
from fastast_deploy.cli.commands.engine import build_engine, inspect  # noqa: E402
from fastast_deploy.cli.commands.evaluate import evaluate  # noqa: E402
from fastast_deploy.cli.commands.model import export, info, lint  # noqa: E402
from fastast_deploy.cli.commands.quickstart import quickstart  # noqa: E402
from fastast_deploy.cli.commands.serve import predict, triton  # noqa: E402
from fastast_deploy.cli.commands.train import make_dataset, train  # noqa: E402
from fastast_deploy.cli.commands.tune import tune  # noqa: E402
from fastast_deploy.cli.commands.verify import verify  # noqa: E402

for _command in (info, export, convert, lint, build_engine, inspect, verify, evaluate, bench, quickstart, predict,
                 analyze, triton, make_dataset, train, tune):
    cli.add_command(_command)


def main() -> None:
    cli(prog_name="fastast-deploy")
