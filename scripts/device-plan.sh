#!/usr/bin/env bash
# A session's device plan for the demo model (issue 8) in three calls, each complete on its own and
# under the tool's 10 minutes (docs/demo-model.md, "Training log"):
#
#   call1  VAE training (resumes from the run folder's vae/, if any) with a held-out PSNR curve in the
#          log, then vae_check.py: reconstructions must pass the checker before the DiT is worth
#          training.                                          carry ["tools/demo/runs/main"]
#   call2  DiT training on the VAE's latents.                carry as below if cold
#   call3  STA fine-tuning and eval.py; the demo model's C++ DiT step and VAE decode on the GPU
#          (built beside the training).                      carry [".deps", "tools/demo/runs/main"] if cold
#
# Issue the calls back to back (a machine idle for 30 s goes back; a warm one keeps the run folder, so
# call2 and call3 then need no carry; carrying is always safe). Minutes per stage: VAE_MIN, DIT_MIN,
# STA_MIN. Unpack here: cat FILES_AT/run.tar.part-* | tar -x -C tools/demo/runs/main
# TOY=1: toy sizes and minute-long budgets, to try the flow on the CPU machine (RUN defaults to a
# scratch folder then; the GPU steps fail fast without a GPU).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-./gpu-out}
mkdir -p "$OUT"
export OUT
build=${STAVID_GPU_BUILD_DIR:-build-gpu}
# --steps: the stage stops at its minute budget, not at the default step count, when it resumes.
vae_args="--crop,128,--batch,8,--vae-frames,9/17,--kl-weight,1e-6,--logvar-init,-6,--steps,1000000,--no-optimizer-state"
toy=""
if [ -n "${TOY:-}" ]; then
  toy=",--toy"
  vae_args="--crop,16,--vae-frames,5,--no-optimizer-state"
  export RUN=${RUN:-/tmp/device-plan-toy}
fi
run=${RUN:-tools/demo/runs/main}

case "${1:-}" in
call1)
  stages="vae:${VAE_MIN:-8.5}:$vae_args$toy"
  [ -d "$run/text" ] || stages="text:1:${toy#,} $stages"
  PACK="vae" tools/demo/device_run.sh "$stages" > /dev/null 2>&1
  echo "training rc $?"
  timeout 120 "${PY:-python3}" tools/demo/vae_check.py --run "$run" --n 8 > "$OUT/vae_check.json" 2>&1
  cut -c1-300 "$OUT/vae_check.json"
  grep -E '"val_psnr"' "$OUT/log.txt" | cut -c1-200 | tail -12
  ;;
call2)
  PACK="dit" tools/demo/device_run.sh "dit:${DIT_MIN:-8.5}:--native-from,0.3,--reuse,4$toy" > /dev/null 2>&1
  echo "training rc $?"
  grep -E '"dit"' "$OUT/log.txt" | tail -3
  ;;
call3)
  # The demo model's C++ stage times on this GPU (issue 8's <= 3 s per generation): built beside the
  # training, timed after it (20 steps x the DiT step + the decode; the text encoders take milliseconds).
  ( [ -f "$build/build.ninja" ] || cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DSTAVID_CUDA=ON \
      -DSTAVID_BUILD_SERVER=OFF -DSTAVID_CUDA_ARCHS=90a > /tmp/bb.log 2>&1
    cmake --build "$build" -j"$(nproc)" --target bench_dit bench_vae >> /tmp/bb.log 2>&1 ) &
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
