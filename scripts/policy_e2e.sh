#!/usr/bin/env bash
# End to end in the twin: collect expert demos -> train ACT and Diffusion -> export fp32 and INT8
# -> rehearse each through the full ROS 2 graph -> one summary table.
#
#   bash scripts/policy_e2e.sh [OUT] [EPISODES_PER_EVAL]
#
# Every step skips itself when its output exists, so a run can be resumed after Ctrl-C.
# Step sizes are env vars: DEMOS (80), ACT_STEPS (7000), DIFFUSION_STEPS (3000), CORRECTIONS (15),
# DAGGER_STEPS (3000), SEED.
# On the 2-core machine: collect ~10 min, ACT ~30 min, Diffusion ~30 min, each 50-episode rehearsal ~12 min.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/e2e}
EVAL=${2:-50}
DEMOS=${DEMOS:-80}
ACT_STEPS=${ACT_STEPS:-7000}
DIFFUSION_STEPS=${DIFFUSION_STEPS:-3000}
CORRECTIONS=${CORRECTIONS:-15}  # corrected episodes per takeover time (4 times)
DAGGER_STEPS=${DAGGER_STEPS:-3000}
SEED=${SEED:-100}
T=.venv/bin/tether
make install
mkdir -p "$OUT"

# 1. Demonstrations at the policies' camera size, through the collect graph.
[ -f "$OUT/demos/meta/info.json" ] || \
  $T collect --robot so101 --task pick_place --device expert --episodes "$DEMOS" --seed "$SEED" \
    --camera-size 96 96 --linger 1.0 --out "$OUT/demos"
$T dataset validate "$OUT/demos"

# 2. Train (CPU configs), 3. export fp32 and INT8 (mode chosen by measurement).
for policy in act diffusion; do
  steps_var="$(echo "$policy" | tr a-z A-Z)_STEPS"
  [ -f "$OUT/$policy/checkpoints/latest" ] || \
    OMP_WAIT_POLICY=PASSIVE $T train --policy "$policy" --dataset "$OUT/demos" --out "$OUT/$policy" --steps "${!steps_var}" --seed 0 --threads 1
  [ -f "$OUT/${policy}_fp32/manifest.json" ] || $T export "$OUT/$policy" --out "$OUT/${policy}_fp32"
  [ -f "$OUT/${policy}_int8/manifest.json" ] || $T export "$OUT/$policy" --out "$OUT/${policy}_int8" --quantize int8
done

# 3b. Corrections (HG-DAgger): the ACT INT8 policy drives and the scripted expert corrects it,
#     3/5/7/9 s into each episode; then ACT is fine-tuned on the demos plus the corrections.
[ -d "$OUT/dagger" ] || cp -r "$OUT/demos" "$OUT/dagger"
for t in 3 5 7 9; do
  [ -f "$OUT/dagger_report_$t/report.json" ] || \
    $T collect --robot so101 --task pick_place --autonomous policy --policy "$OUT/act_int8" --device replay \
      --takeover-after "$t" --episodes "$CORRECTIONS" --seed $((7000 + t * 100)) --linger 1.0 --episode-timeout 24 \
      --out "$OUT/dagger" --report "$OUT/dagger_report_$t"
done
$T dataset validate "$OUT/dagger"
[ -f "$OUT/act_dagger/checkpoints/latest" ] || \
  OMP_WAIT_POLICY=PASSIVE $T train --policy act --dataset "$OUT/dagger" --out "$OUT/act_dagger" --init-from "$OUT/act" \
    --steps "$DAGGER_STEPS" --seed 0 --threads 1
[ -f "$OUT/act_dagger_fp32/manifest.json" ] || $T export "$OUT/act_dagger" --out "$OUT/act_dagger_fp32"
[ -f "$OUT/act_dagger_int8/manifest.json" ] || $T export "$OUT/act_dagger" --out "$OUT/act_dagger_int8" --quantize int8

# 4. Rehearse every model through the gate, on seeds no demonstration used.
for model in act_fp32 act_int8 act_dagger_fp32 act_dagger_int8 diffusion_fp32 diffusion_int8; do
  [ -f "$OUT/eval_$model/report.json" ] || \
    $T rehearse --robot so101 --task pick_place --source policy --policy "$OUT/$model" \
      --episodes "$EVAL" --seed 5000 --episode-timeout 15 --report "$OUT/eval_$model" --video-episodes 2
done

# 5. Inference benchmark (eager vs ONNX fp32 vs INT8) plus the rehearsal figures above.
$T bench policy --act "$OUT/act" --diffusion "$OUT/diffusion" --json "$OUT/bench_policy.json"
