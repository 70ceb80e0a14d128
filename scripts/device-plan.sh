#!/usr/bin/env bash
# A session's device plan (docs/demo-model.md "Session 5", docs/perf-notes.md "Padding last inside a tile"),
# three calls, each complete on its own and under the tool's 10 minutes:
#
#   call1  tools/demo/bench_attn.py (dense attention backends at the training shape), then the demo DiT
#          resumed at the native size with the faster backend (DIT_MIN, default 7.8; DIT_BATCH, native clips
#          per step, default 16).
#                                                         carry ["tools/demo/runs/main"]
#   call2  VAE decoder fine-tuning (encoder frozen), STA fine-tuning, eval.py on the held-out prompts.
#                                                         carry ["tools/demo/runs/main"] if cold
#   call3  the GPU checks of binaries built here by scripts/gpu-bundle.sh (test_sta with the Hopper kernel
#          and every variant, test_dit, bench_sta on the padded 720p shapes per variant, the demo model's
#          C++ DiT step and VAE decode; the peers when staged). carry [".gpubin", ".peer"]; first:
#          make gpu-stage (stages .peer) and
#          scripts/gpu-bundle.sh test_sta bench_sta test_dit bench_dit bench_vae
#
# Unpack calls 1-2 here: cat FILES_AT/run.tar.part-* | tar -x -C tools/demo/runs/main (and delete stale shards:
# a stage's save removes its old shards only on the machine that saved).
# TOY=1: toy sizes and minute-long budgets, to try calls 1-2 on the CPU machine (RUN defaults to a scratch
# folder then).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-./gpu-out}
mkdir -p "$OUT"
export OUT
toy=""
if [ -n "${TOY:-}" ]; then
  toy=",--toy"
  export RUN=${RUN:-/tmp/device-plan-toy}
fi
run=${RUN:-tools/demo/runs/main}

case "${1:-}" in
call1)
  # First the dense attention backends at the training shape (about 1 min with Flex's compile): attention is
  # over half of the DiT step's FLOPs at 2,336 tokens, and SDPA with a key mask cannot use the flash kernel.
  impl=auto
  if [ -z "$toy" ]; then
    timeout 120 "${PY:-python3}" tools/demo/bench_attn.py > "$OUT/bench_attn.jsonl" 2>&1
    cut -c1-220 "$OUT/bench_attn.jsonl"
    impl=$(sed -n 's/.*"demo_dense_attention_choice", "attn_impl": "\([a-z]*\)".*/\1/p' "$OUT/bench_attn.jsonl")
    impl=${impl:-auto}
    echo "attention backend for the DiT stage: $impl"
  fi
  # --batch is the low-size batch; the native batch is a quarter of it. --steps: the cosine schedule
  # follows this call's time budget (a resumed stage would otherwise start half-decayed).
  # The DiT gets what the call has left after the bench: 575 s of the tool's 600, less about 45 s to load,
  # save and pack (DIT_MIN overrides).
  dit_min=${DIT_MIN:-$(awk -v s=$SECONDS 'BEGIN { m = (575 - 45 - s) / 60; printf "%.2f", (m < 1 ? 1 : m) }')}
  echo "DiT minutes: $dit_min"
  PACK="dit" tools/demo/device_run.sh \
    "dit:${dit_min}:--native-from,0,--reuse,4,--batch,$((4 * ${DIT_BATCH:-16})),--steps,1000000,--attn-impl,$impl$toy" \
    > /dev/null 2>&1
  echo "training rc $?"
  grep -E '"dit"' "$OUT/log.txt" | sed -n '1,3p;$p' | cut -c1-300
  ;;
call2)
  # Session 6: the DiT (not the VAE) limits the checker, so the DiT trains on first (DIT2_MIN; DIT2_BATCH
  # native clips per step: the step is dispatch-bound at 16, so a larger batch costs little more per step),
  # then STA fine-tuning and eval.py on the held-out prompts. VAE_MIN > 0 adds the decoder fine-tuning first.
  vae=""
  if [ "${VAE_MIN:-0}" != 0 ]; then
    vae="vae:${VAE_MIN}:--decoder-only,--crop,128,--batch,8,--vae-frames,9/17,--lr,2e-4,--steps,1000000$toy "
  fi
  PACK="${vae:+vae }dit sta" tools/demo/device_run.sh \
    "${vae}dit:${DIT2_MIN:-4.2}:--native-from,0,--reuse,6,--batch,$((4 * ${DIT2_BATCH:-32})),--steps,1000000$toy sta:${STA_MIN:-2.3}:--reuse,2,--no-optimizer-state$toy eval${toy:+:0:--n,2,--steps,2}" \
    > /dev/null 2>&1
  echo "training rc $?"
  grep -E '"stage": "(dit|sta)"' "$OUT/log.txt" | sed -n '1,2p;$p' | cut -c1-300
  grep -E '"val_psnr"|"dense"|"sta_free"|"sta_tuned"' "$OUT/log.txt" | tail -5 | cut -c1-400
  ;;
call3)
  g=/tmp/g
  mkdir -p $g && tar xJf .gpubin/bundle.tar.xz -C $g || exit 1
  export LD_LIBRARY_PATH=$g/lib
  nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader
  # The whole STA suite with the Hopper kernel (variant auto); its Hopper test runs every variant on its
  # 20 cases and prints the failures per variant last.
  timeout 240 $g/bin/test_sta > "$OUT/test_sta.txt" 2>&1; echo "test_sta rc $?"; tail -12 "$OUT/test_sta.txt" | cut -c1-200
  timeout 120 $g/bin/test_dit > "$OUT/test_dit.txt" 2>&1; echo "test_dit rc $?"; tail -2 "$OUT/test_dit.txt"
  timeout 240 $g/bin/bench_sta --only paper_333,paper_555,paper_full,paper_333_text,720p_688_333,720p_388_333 \
    --variants auto,skip,deep,persist > "$OUT/bench_sta.jsonl" 2>&1
  cut -c1-240 "$OUT/bench_sta.jsonl"
  # The peers in the same command (issue 9's ratios), when `make gpu-stage` staged them and .peer is carried.
  if [ -f .peer/peer_attention.py ]; then
    shape=(--canvas 30 48 80 --tile 6 8 8 --heads 24 --dim 128 --windows 3,3,3 5,5,5)  # as sta-bench.sh
    { timeout 150 python3 .peer/peer_attention.py "${shape[@]}"
      timeout 150 python3 .peer/peer_attention.py "${shape[@]}" --text 256 --text-valid 200; } \
      > "$OUT/peer_attention.jsonl" 2> "$OUT/peer_attention.err"
    cut -c1-200 "$OUT/peer_attention.jsonl" | tail -8
  fi
  { timeout 60 $g/bin/bench_dit --config demo --modes dense,sta_3_3_2 --reps 5
    timeout 60 $g/bin/bench_vae --demo --budgets-gib 4; } | tee "$OUT/demo_cpp_gpu.jsonl" | cut -c1-200
  ;;
*)
  echo "usage: scripts/device-plan.sh call1|call2|call3" >&2
  exit 2
  ;;
esac
