#!/usr/bin/env bash
# Fresh virtual environment -> CPU torch -> the project with its test extra -> ruff -> pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${FASTAST_TEST_VENV:-.venv-test}"
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
# A small CPU build; a bare "torch" would pull a multi-GB CUDA build. GPU users keep their own torch.
"$venv/bin/python" -m pip install --quiet "torch==2.13.0"
"$venv/bin/python" -m pip install --quiet ".[test]"
"$venv/bin/ruff" check .
"$venv/bin/pytest" -p no:cacheprovider "$@"
