#!/usr/bin/env bash
# Everything this project can check only on a CUDA GPU, in one command, on a machine with a CUDA build of PyTorch
# (and TensorRT where installed: pip install ".[tensorrt-cu12]" or ".[tensorrt-cu13]", see README):
#   1. the tests marked gpu or tensorrt (those needing TensorRT skip, with the reason, where it is absent);
#   2. PyTorch CUDA parity against the CPU at fp32 and fp16, and the ToMe speed-up on the GPU, eager and
#      CUDA-graph-captured, batch 1/8/32, AST-base at T = 1024, r = 0/16/50, speed-up beside the FLOP ratio
#      (benchmarks/bench_gpu.py).
# Writes OUT.json (default out/gpu_check.json, git-ignored) with the figures and the test summary, OUT.pytest.txt with the test log.
#   scripts/gpu_check.sh [OUT.json] [extra bench_gpu.py options, e.g. --repeats 50]
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-out/gpu_check.json}"
shift || true
py="${PYTHON:-python3}"
"$py" - <<'PY'
import sys
import torch
if not torch.cuda.is_available():
    sys.exit(f"gpu_check: torch {torch.__version__} sees no CUDA GPU; run this on a GPU machine with a CUDA build "
             "of torch (pip install torch from the CUDA index, then pip install -e '.[test]')")
print(f"gpu_check: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}")
PY
mkdir -p "$(dirname "$out")"
log="${out%.json}.pytest.txt"
set +e
"$py" -m pytest -p no:cacheprovider -q -rs -s -m "gpu or tensorrt" tests/ 2>&1 | tee "$log"
tests_rc=${PIPESTATUS[0]}
set -e
"$py" benchmarks/bench_gpu.py --device cuda --json "$out" --tests-log "$log" --tests-rc "$tests_rc" "$@"
echo "gpu_check: tests exit code $tests_rc; figures in $out"
exit "$tests_rc"
