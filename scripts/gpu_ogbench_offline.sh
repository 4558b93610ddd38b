#!/usr/bin/env bash
# The reference-size offline phase of `dfp bench ogbench` on a lent GPU machine, in one time-bounded go. That
# machine has torch but not LeRobot or the simulator, so it trains from an arrays file (`dfp pack-dataset`) and
# returns checkpoints; they are evaluated back here with `dfp bench ogbench --offline-from`. See
# docs/gpu_runs.md for the whole recipe.
#
#   ARRAYS=.gpu_kit/cube-double-task2.npz  the packed play dataset (carried: name its folder in `carry`)
#   STEPS="100000 200000 500000 1000000"   offline steps to keep a checkpoint at (QC's published points)
#   BUDGET_S=420                           stop before a stretch that would not end within this many seconds
#   DEVICE=cuda STEP_MODE=graphed          DEVICE=cpu STEPS="20 40" for a dry run on any machine
#
# Writes to $OUT: step_<k>.tar (model.safetensors + config.json) for each step reached, log.csv (the training
# log) and run.txt; the last line printed is one JSON object (steps reached, steps/s, seconds).
set -u
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
OUT=${OUT:-/tmp/gpu_ogbench_offline}; mkdir -p "$OUT"
ARRAYS=${ARRAYS:-.gpu_kit/cube-double-task2.npz}
STEPS=${STEPS:-100000 200000 500000 1000000}
BUDGET_S=${BUDGET_S:-420}
DEVICE=${DEVICE:-cuda}
STEP_MODE=${STEP_MODE:-graphed}
HIDDEN=${HIDDEN:-512,512,512,512}
BATCH=${BATCH:-256}
PY=${PY:-python3}
RUN=${RUN:-/tmp/gpu_ogbench_run}  # kept on a warm machine: a second call continues the run
LOG="$OUT/run.txt"

say() { echo "$*" | tee -a "$LOG"; }
[ -f "$ARRAYS" ] || { say "NOT RUN: no arrays file $ARRAYS (make it with dfp pack-dataset; carry its folder)"; exit 2; }
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version --format=csv,noheader >>"$LOG" 2>&1
say "$($PY -c 'import torch; print("torch", torch.__version__, "cuda available:", torch.cuda.is_available())' 2>&1)"

start=$(date +%s); done_steps=0; reached=""; rate=0
for k in $STEPS; do
    now=$(date +%s); left=$((BUDGET_S - (now - start)))
    # The next stretch must fit, at the rate measured so far (and 60 s for start-up and graph capture).
    if [ "$rate" != 0 ]; then
        need=$(( (k - done_steps) / rate + 60 ))
        if [ "$need" -gt "$left" ]; then say "stop: $k steps would need ~${need} s, ${left} s left"; break; fi
    fi
    [ "$left" -gt 30 ] || { say "stop: ${left} s left"; break; }
    t0=$(date +%s)
    timeout "$left" "$PY" -m dfp_ros.tools.cli train --root "$ARRAYS" --output "$RUN" --critic \
        --hidden "$HIDDEN" --critic-hidden "$HIDDEN" --batch-size "$BATCH" --steps "$k" --resume \
        --device "$DEVICE" --step-mode "$STEP_MODE" --checkpoint-every 50000 --log-every 1000 --no-progress \
        >>"$LOG" 2>&1
    code=$?
    if [ $code -ne 0 ]; then say "dfp train to $k steps exit $code (see run.txt)"; break; fi
    t1=$(date +%s)
    rate=$(( (k - done_steps) / (t1 - t0 > 0 ? t1 - t0 : 1) ))
    tar cf "$OUT/step_$(printf %07d "$k").tar" -C "$RUN/checkpoints/last" model.safetensors config.json
    say "step $k reached in $((t1 - t0)) s (~${rate} steps/s with start-up)"
    done_steps=$k; reached="$reached${reached:+,}$k"
done
cp "$RUN/log.csv" "$OUT/log.csv" 2>/dev/null
echo "{\"device\": \"$DEVICE\", \"step_mode\": \"$STEP_MODE\", \"steps_reached\": [$reached], \"steps_per_s\": $rate, \"seconds\": $(( $(date +%s) - start ))}" | tee -a "$LOG"
