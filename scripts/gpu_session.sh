#!/bin/bash
# One short GPU session: the default model (time-budgeted) and the ablation rows, side by side on
# one GPU, from a data pack (the GPU machine needs no data root, SimpleITK or pydicom). This is
# what produced chestctmtl-fast-v2 and the GPU ablation table.
#
# Here:           .venv/bin/python -m ChestCTMTLTraining pack --config default --output default.pack.npz
# On the GPU box: PACK=default.pack.npz OUT=gpu-out bash scripts/gpu_session.sh
#
# Env: PACK (required), OUT (results folder), DCFG (default-model config, gpu), ACFG (ablation
# config, ablation_gpu), ROWS (ablation rows, "" = none), SEEDS (e.g. "0 1 2"; empty = the
# config's seed), TL (seconds each job may run, 450), PY (python3), WHEELS (folder of wheels to
# install first, e.g. MONAI's, when the machine lacks them).
# Leaves at most 4 files in OUT: results.tgz (runs; ablation rows without weights), logs.tgz,
# default-last.pt (checkpoint to continue from), env.txt.
set -u
T0=$(date +%s)
: "${PACK:?set PACK to a data pack made with ChestCTMTLTraining pack}"
OUT=${OUT:-gpu-out}; DCFG=${DCFG:-gpu}; ACFG=${ACFG:-ablation_gpu}; TL=${TL:-450}; PY=${PY:-python3}
ROWS=${ROWS-joint-fast joint-vgg13 joint-resnet50 seg-only-fast cls-only-fast}; SEEDS=${SEEDS:-}
R=$(mktemp -d); L=$R/logs; mkdir -p "$OUT" "$L"
if [ -n "${WHEELS:-}" ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --target "$R/site" "$WHEELS"/*.whl || exit 3
  export PYTHONPATH=$R/site
fi
export PYTHONPATH=$PWD/ChestCTMTL:$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 MPLBACKEND=Agg
(nvidia-smi --query-gpu=name,memory.total --format=csv 2>&1
 $PY -c "import torch, numpy, monai; print(torch.__version__, numpy.__version__, monai.__version__, torch.cuda.is_available())") \
  > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
OMP_NUM_THREADS=4 timeout "$TL" $PY -m ChestCTMTLTraining train --config "$DCFG" --pack "$PACK" \
  --output "$R/default" --quiet > "$L/default.log" 2>&1 &
PIDS=$!
for row in $ROWS; do
  OMP_NUM_THREADS=2 timeout "$TL" $PY -m ChestCTMTLTraining ablation --config "$ACFG" --pack "$PACK" \
    --output "$R/ablation" --rows "$row" ${SEEDS:+--seeds $SEEDS} > "$L/ablation-$row.log" 2>&1 &
  PIDS="$PIDS $!"
done
(while sleep 30; do echo "t=$(( $(date +%s) - T0 ))s $(nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader 2>/dev/null)"; done) &
MON=$!
wait $PIDS
kill $MON 2>/dev/null
if [ -n "$ROWS" ]; then  # one table from the rows that finished (nothing is retrained)
  done_rows=$(for row in $ROWS; do ls "$R"/ablation/"$row"*/eval/metrics.json >/dev/null 2>&1 && echo "$row"; done)
  [ -n "$done_rows" ] && timeout 60 $PY -m ChestCTMTLTraining ablation --config "$ACFG" --pack "$PACK" \
    --output "$R/ablation" --rows $done_rows ${SEEDS:+--seeds $SEEDS} --resume > "$L/ablation-table.log" 2>&1
fi
if [ -f "$R/default/model/model.json" ]; then
  timeout 90 $PY -m ChestCTMTLTraining evaluate --model "$R/default/model" --data "$DCFG" --pack "$PACK" \
    --output "$R/default/eval-pack" --device auto > "$L/default-eval.log" 2>&1
  cp "$R/default/checkpoints/last.pt" "$OUT/default-last.pt"
fi
tar -C "$R" -czf "$OUT/results.tgz" --exclude='*.tmp*' --exclude='logs' --exclude='*/checkpoints' \
  --exclude='ablation/*/model' .
tar -C "$R" -czf "$OUT/logs.tgz" logs
ls -la "$OUT"; echo "total $(( $(date +%s) - T0 ))s"
