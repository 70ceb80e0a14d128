#!/usr/bin/env bash
# A session's device plan in three calls, each complete on its own and under the tool's 10 minutes,
# sharing the GPU machine between the demo model's training (docs/demo-model.md, "Training log") and
# the Hopper STA kernel's check and bench (docs/perf-notes.md, "Variants for session 4"):
#
#   call1  demo text + VAE training on the GPU while the CPUs build test_sta / bench_sta; the Hopper
#          tests for every variant (correctness only: they may share the GPU with the training's last
#          minutes); then vae_check.py on the trained VAE.            carry [".deps", ".peer"]
#   call2  the Hopper bench per variant and the peers (cuDNN, FlexAttention) alone on the GPU, with
#          each variant's ratios; then the DiT training.                carry as below if cold
#   call3  STA fine-tuning and eval.py; the demo model's C++ DiT step and VAE decode on the GPU.
#
# Issue the calls back to back (a machine idle for 30 s goes back; a warm one keeps build-gpu/ and the
# run folder, so call2 and call3 then need no carry). On a fresh machine call2 / call3 need the run
# folder: carry tools/demo/runs/main/{text,vae,spec.json,tokenizer,tokenizer_2,logs} (+ dit for call3)
# and, for call2, .deps and .peer (it rebuilds). Minutes per stage: VAE_MIN, DIT_MIN, STA_MIN.
# Unpack here: cat FILES_AT/run.tar.part-* | tar -x -C tools/demo/runs/main
# TOY=1: toy sizes and minute-long budgets, to try the flow on the CPU machine (RUN defaults to a
# scratch folder then; the GPU steps fail fast without a GPU).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-./gpu-out}
mkdir -p "$OUT"
export OUT
build=${STAVID_GPU_BUILD_DIR:-build-gpu}
variants=${HOPPER_VARIANTS:-masked lean skip persist deep}
vae_args="--crop,128,--batch,8,--vae-frames,9,17,--kl-weight,1e-6,--logvar-init,-6,--no-optimizer-state"
toy=""
if [ -n "${TOY:-}" ]; then
  toy=",--toy"
  vae_args="--crop,16,--vae-frames,5,--no-optimizer-state"
  export RUN=${RUN:-/tmp/device-plan-toy}
fi
run=${RUN:-tools/demo/runs/main}

gpu_state() { nvidia-smi --query-gpu=clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv,noheader; }

case "${1:-}" in
call1)
  (scripts/hopper-check.sh build > /tmp/hb.log 2>&1 &&
    HOPPER_VARIANTS="$variants" scripts/hopper-check.sh test > "$OUT/hopper_test.txt" 2>&1) &
  hopper=$!
  PACK="text vae" tools/demo/device_run.sh "text:1:${toy#,} vae:${VAE_MIN:-6.5}:$vae_args$toy" > /dev/null 2>&1
  echo "training rc $?"
  timeout 120 "${PY:-python3}" tools/demo/vae_check.py --run "$run" --n 8 > "$OUT/vae_check.json" 2>&1
  cut -c1-300 "$OUT/vae_check.json"
  wait "$hopper"
  echo "hopper build + test rc $? (log: hopper_test.txt)"
  grep -E "^HGMMA|^\[  (PASSED|FAILED)|failed|rror" "$OUT/hopper_test.txt" | head -20
  grep -E '"vae"' "$OUT/log.txt" | tail -2
  ;;
call2)
  [ -f "$build/bench/bench_sta" ] || scripts/hopper-check.sh build > /tmp/hb.log 2>&1 || { tail -30 /tmp/hb.log; exit 1; }
  gpu_state
  HOPPER_VARIANTS="$variants" timeout 330 scripts/hopper-check.sh bench > "$OUT/hopper_bench.txt" 2>&1
  echo "hopper bench rc $?"
  S="--canvas 30 48 80 --tile 6 8 8 --heads 24 --dim 128"
  timeout 150 "${PY:-python3}" .peer/peer_attention.py $S --windows 3,3,3 5,5,5 > "$OUT/peer.jsonl" 2> /tmp/peer.err
  timeout 90 "${PY:-python3}" .peer/peer_attention.py $S --windows 3,3,3 --text 256 --text-valid 200 --skip-dense \
    >> "$OUT/peer.jsonl" 2>> /tmp/peer.err
  gpu_state
  for v in $variants; do
    grep "\"variant\":\"$v\"" "$OUT/hopper_bench.jsonl" > "/tmp/b_$v.jsonl" 2> /dev/null || continue
    echo "$v $("${PY:-python3}" tools/bench/sta_report.py "/tmp/b_$v.jsonl" "$OUT/peer.jsonl" | tail -1)"
  done | tee "$OUT/hopper_summary.txt"
  PACK="dit" tools/demo/device_run.sh "dit:${DIT_MIN:-5.5}:--native-from,0.3,--reuse,4,--no-optimizer-state$toy" \
    > /dev/null 2>&1
  echo "training rc $?"
  grep -E '"dit"' "$OUT/log.txt" | tail -2
  ;;
call3)
  # The demo model's C++ stage times on this GPU (issue 8's <= 3 s per generation): built beside the
  # training, timed after it (20 steps x the DiT step + the decode; the text encoders take milliseconds).
  (cmake --build "$build" -j"$(nproc)" --target bench_dit bench_vae > /tmp/bb.log 2>&1) &
  benches=$!
  PACK="sta" tools/demo/device_run.sh "sta:${STA_MIN:-2.5}:--reuse,2,--no-optimizer-state$toy eval${toy:+:0:--n,2,--steps,2}" > /dev/null 2>&1
  echo "training rc $?"
  grep -E '"sta"|"dense"|"sta_free"|"sta_tuned"' "$OUT/log.txt" | tail -4 | cut -c1-400
  if wait "$benches"; then
    { timeout 60 "$build/bench/bench_dit" --config demo --modes dense,sta_3_3_2 --reps 5
      timeout 60 "$build/bench/bench_vae" --demo --budgets-gib 4; } | tee "$OUT/demo_cpp_gpu.jsonl" | cut -c1-200
  else
    tail -20 /tmp/bb.log
  fi
  ;;
*)
  echo "usage: scripts/device-plan.sh call1|call2|call3" >&2
  exit 2
  ;;
esac
