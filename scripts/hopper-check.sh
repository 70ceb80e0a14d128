#!/usr/bin/env bash
# Hopper STA kernel (issue 9) on the GPU machine: `build` configures build-gpu (tests + benches, no
# server) and builds test_sta + bench_sta; `run` counts HGMMA in the SASS, runs the Hopper and
# selector tests, and, when they pass, times the Hopper kernel against the portable one on the
# paper shape (JSON lines from bench_sta). Meant to share a device call with other work:
#   scripts/hopper-check.sh build > /tmp/hb.log 2>&1 &  ...other GPU work...; wait; scripts/hopper-check.sh run
set -uo pipefail
cd "$(dirname "$0")/.."
build="${STAVID_GPU_BUILD_DIR:-build-gpu}"
case "${1:-run}" in
build)
  if [ ! -f "$build/build.ninja" ]; then
    cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DSTAVID_CUDA=ON -DSTAVID_BUILD_SERVER=OFF \
      -DSTAVID_CUDA_ARCHS=90a || exit 1
  fi
  nice cmake --build "$build" -j"$(nproc)" --target test_sta bench_sta
  ;;
run)
  echo "== build log (errors, spills)"; grep -E "error|spill|registers" /tmp/hb.log | head -30
  obj=$(find "$build" -name 'sta_hopper.cu.o' | head -1)
  echo "== SASS of $obj"
  cuobjdump -sass "$obj" > /tmp/hopper.sass 2>&1
  echo "HGMMA $(grep -c HGMMA /tmp/hopper.sass)  LDL $(grep -c 'LDL' /tmp/hopper.sass)  STL $(grep -c 'STL' /tmp/hopper.sass)"
  export STAVID_EXPECT_GPU=1
  echo "== tests"
  timeout 180 "$build/tests/test_sta" --gtest_filter="${HOPPER_FILTER:-StaAttentionHopper.*:StaSelector.*}" 2>&1 | tail -60
  rc=${PIPESTATUS[0]}
  if [ "$rc" -ne 0 ]; then
    echo "== tests failed (rc $rc): compute-sanitizer on the first Hopper case"
    timeout 240 compute-sanitizer --tool memcheck --print-limit 20 "$build/tests/test_sta" \
      --gtest_filter='StaAttentionHopper.*' 2>&1 | head -80
  fi
  echo "== bench (portable, then hopper)"
  for c in ${HOPPER_BENCH-paper_full}; do
    timeout 60 "$build/bench/bench_sta" --only "$c"
    STAVID_STA_HOPPER=1 timeout 60 "$build/bench/bench_sta" --only "$c"
  done
  exit "$rc"
  ;;
esac
