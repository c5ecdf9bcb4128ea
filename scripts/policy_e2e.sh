#!/usr/bin/env bash
# End to end in the twin: collect expert demos -> train ACT and Diffusion -> export fp32 and INT8
# -> rounds of expert corrections of ACT (HG-DAgger), each followed by fine-tuning
# -> rehearse each through the full ROS 2 graph -> one summary table.
#
#   bash scripts/policy_e2e.sh [OUT] [EPISODES_PER_EVAL]
#
# Every step skips itself when its output exists, so a run can be resumed after Ctrl-C.
# Step sizes are env vars: DEMOS (80), ACT_STEPS (7000), DIFFUSION_STEPS (3000), CORRECTIONS (15),
# DAGGER_ROUNDS (7), SEED; each round's fine-tuning steps and EMA are in the ROUNDS table below.
# On the 2-core machine: collect ~10 min, ACT ~30 min, Diffusion ~30 min, each corrections round
# ~30 min (collect ~14, fine-tune ~15), each 50-episode rehearsal ~12 min.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/e2e}
EVAL=${2:-50}
DEMOS=${DEMOS:-80}
ACT_STEPS=${ACT_STEPS:-7000}
DIFFUSION_STEPS=${DIFFUSION_STEPS:-3000}
CORRECTIONS=${CORRECTIONS:-15}  # corrected episodes per takeover time (4 times a round)
DAGGER_ROUNDS=${DAGGER_ROUNDS:-7}
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
#    Diffusion uses BatchNorm (+ ReLU in the UNet), which export folds into its convolutions: with
#    GroupNorm + Mish (the paper's) 10 DDIM steps ran 3620 onnxruntime nodes, only 2x faster than eager.
for policy in act diffusion; do
  steps_var="$(echo "$policy" | tr a-z A-Z)_STEPS"
  extra=() tolerance=0.05
  # 10 DDIM steps amplify INT8 error in a few samples (max 0.32 rad, mean 0.01 rad): hence 0.35 for diffusion.
  [ "$policy" = act ] || extra=(--set unet_block=batch_relu --set norm=batch) tolerance=0.35
  [ -f "$OUT/$policy/checkpoints/latest" ] || \
    OMP_WAIT_POLICY=PASSIVE $T train --policy "$policy" --dataset "$OUT/demos" --out "$OUT/$policy" --steps "${!steps_var}" \
      --seed 0 --threads 1 "${extra[@]}"
  [ -f "$OUT/${policy}_fp32/manifest.json" ] || $T export "$OUT/$policy" --out "$OUT/${policy}_fp32"
  [ -f "$OUT/${policy}_int8/manifest.json" ] || $T export "$OUT/$policy" --out "$OUT/${policy}_int8" --quantize int8 \
    --tolerance "$tolerance"
done

# 3b. Corrections (HG-DAgger), round by round. In each round the latest ACT drives and the scripted
#     expert corrects it (`collect --autonomous policy --device replay`) at four takeover times,
#     CORRECTIONS episodes each. Corrections are appended to one dataset (it starts as a copy of the
#     demos), and ACT is fine-tuned on all of it from the previous round's weights.
#     Each round: the model that drives, takeover times (s; "-": no new corrections, only training),
#     first seed, episode timeout (s), fine-tuning steps, EMA decay of the weights (0: none).
#     Round 6 only trains longer (val loss 0.084 -> 0.075): the policy then reached the disc far more
#     often but hovered there holding the cube, so round 7 takes over late, where it hovers.
#     The shipped model is round 7's INT8 export: 43/50 (fp32 38/50).
ROUNDS=(
  "act_int8 3,5,7,9 7000 24 3000 0"
  "act_dagger_fp32 4,6,8,10 8000 25 3000 0"
  "act_dagger2_fp32 3,5,7,9 10000 25 3000 0"
  "act_dagger3_fp32 4,6,8,10 11000 25 5000 0"
  "act_dagger4_int8 3,5,7,9 13000 25 3000 0"
  "- - - - 12000 0.999"
  "act_dagger6_int8 6,8,10,12 14000 25 3000 0.999"
)
[ -d "$OUT/dagger" ] || cp -r "$OUT/demos" "$OUT/dagger"
prev=act
for r in $(seq 1 "$DAGGER_ROUNDS"); do
  read -r driver takeovers seed timeout steps ema <<< "${ROUNDS[$((r - 1))]}"
  tag=$([ "$r" = 1 ] || echo "$r")
  collected=
  [ "$takeovers" != - ] || takeovers=
  for t in ${takeovers//,/ }; do
    [ -f "$OUT/dagger${tag}_report_$t/report.json" ] && continue
    $T collect --robot so101 --task pick_place --autonomous policy --policy "$OUT/$driver" --device replay \
      --takeover-after "$t" --episodes "$CORRECTIONS" --seed $((seed + t * 100)) --linger 1.0 \
      --episode-timeout "$timeout" --out "$OUT/dagger" --report "$OUT/dagger${tag}_report_$t"
    collected=1
  done
  [ -z "$collected" ] || $T dataset validate --quick "$OUT/dagger"  # packets, not pixels: seconds, not minutes, at 380 episodes
  run="act_dagger$tag"
  [ -f "$OUT/$run/checkpoints/latest" ] || \
    OMP_WAIT_POLICY=PASSIVE $T train --policy act --dataset "$OUT/dagger" --out "$OUT/$run" --init-from "$OUT/$prev" \
      --steps "$steps" --ema-decay "$ema" --seed 0 --threads 1
  [ -f "$OUT/${run}_fp32/manifest.json" ] || $T export "$OUT/$run" --out "$OUT/${run}_fp32"
  [ -f "$OUT/${run}_int8/manifest.json" ] || $T export "$OUT/$run" --out "$OUT/${run}_int8" --quantize int8
  prev=$run
done

# 4. Rehearse every model through the gate, on seeds no demonstration used.
for model in act_fp32 act_int8 "${prev}_fp32" "${prev}_int8" diffusion_fp32 diffusion_int8; do
  [ -f "$OUT/eval_$model/report.json" ] || \
    $T rehearse --robot so101 --task pick_place --source policy --policy "$OUT/$model" \
      --episodes "$EVAL" --seed 5000 --episode-timeout 15 --report "$OUT/eval_$model" --video-episodes 2
done

# 5. Inference benchmark (eager vs ONNX fp32 vs INT8) plus the rehearsal figures above.
$T bench policy --act "$OUT/$prev" --diffusion "$OUT/diffusion" --runs 1000 --json "$OUT/bench_policy.json"  # 1000: ~30 ms machine stalls stay out of p99
