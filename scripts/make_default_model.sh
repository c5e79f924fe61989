#!/usr/bin/env bash
# Makes fastast_deploy/assets/default.safetensors, the model `default` names: this project's own train command,
# CMKD from a compact CNN teacher into a tiny FastAST that trains with Token Merging (r = 8), on the built-in
# synthetic dataset. Run from the repository root with fastast-deploy installed; WORK holds the intermediate runs.
set -euo pipefail
cd "$(dirname "$0")/.."
work="${WORK:-$(mktemp -d)}"
fastast-deploy make-dataset synthetic -o "$work/data" --classes 10 --clips-per-class 50 --seconds 1.3 --seed 0
fastast-deploy train --train "$work/data/train.json" --val "$work/data/val.json" --labels "$work/data/labels.csv" \
    -o "$work/teacher" --arch compact-cnn --cnn-width 16 --frames 128 --epochs 15 --lr 1e-3 --seed 0 --quiet
fastast-deploy train --train "$work/data/train.json" --val "$work/data/val.json" --labels "$work/data/labels.csv" \
    -o "$work/student" --model tiny --depth 6 --tome-r 8 --frames 128 --mel-bins 64 --epochs 40 \
    --batch-size 16 --lr 1e-3 --seed 0 --quiet --teacher "$work/teacher"
# Ship the best student with fp16 weights (under 10 MB; they load into a float32 model) and a record of the
# dataset it was trained on, which quickstart uses to make clips of the same classes.
python3 - "$work" <<'PY'
import json, sys
from pathlib import Path

import torch

from fastast_deploy.checkpoints.native import load_model, read_checkpoint_metadata, save_checkpoint

work = Path(sys.argv[1])
best = work / "student" / "best"
model = load_model(best)
meta = read_checkpoint_metadata(best)
summary = json.loads((work / "data" / "dataset.json").read_text())
cfg = summary["config"]
extra = {**meta["extra"], "dataset": {"kind": "synthetic", "classes": cfg["classes"], "seed": cfg["seed"],
                                      "seconds": cfg["seconds"], "clips_per_class": cfg["clips_per_class"]},
         "made_by": "scripts/make_default_model.sh"}
save_checkpoint(model.to(torch.float16), "fastast_deploy/assets/default.safetensors", label_names=model.label_names,
                feature_config=model.feature_config, extra=extra)
print(json.dumps({k: extra[k] for k in ("dataset", "metrics") if k in extra}, indent=2))
PY
ls -l fastast_deploy/assets/default.safetensors
