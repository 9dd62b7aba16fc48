#!/usr/bin/env bash
# The one command of a device call (benchmarks/gpu/README.md): install what the device
# image lacks from the carried wheels, then train and check (train_and_check.py), all
# output teed to $OUT/log.txt. Arguments are passed on to train_and_check.py.
set -o pipefail
OUT=${OUT:-out-gpu}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,clocks.sm,driver_version --format=csv 2>&1 | tee "$OUT/log.txt"
python3 benchmarks/gpu/train_and_check.py --out "$OUT" "$@" 2>&1 | tee -a "$OUT/log.txt"
