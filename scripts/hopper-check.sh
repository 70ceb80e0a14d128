#!/usr/bin/env bash
# Hopper STA kernel (issue 9) on the GPU machine: `build` configures build-gpu (tests + benches, no
# server) and builds test_sta + bench_sta; `test` counts HGMMA in the SASS and runs the Hopper and
# selector tests; `bench` times the Hopper kernel (JSON lines from bench_sta); `run` = test + bench.
# `test` may share the GPU with other work (training), `bench` must not. Meant to share a call:
#   scripts/hopper-check.sh build > /tmp/hb.log 2>&1 &  ...other GPU work...; wait; scripts/hopper-check.sh run
# Variants (STAVID_STA_HOPPER_VARIANT, kernels/sta.h): HOPPER_VARIANTS="masked lean skip persist deep"
# checks every listed variant in one test run (each case's fp64 reference computed once, every
# variant compared with it) and times the cases of HOPPER_BENCH (default below) for each variant in
# turn, case by case, with no portable run; JSON lines carry "variant" and go to $OUT/hopper_bench.jsonl
# too when $OUT is set. When the test fails, compute-sanitizer reruns it on one failing variant and
# the bench leaves the failing variants out (a trap would end the bench process for all of them).
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
test | bench | run)
  mode=$1
  variants="${HOPPER_VARIANTS:-}"
  if [ "$mode" != bench ]; then
    echo "== build log (errors, spills)"; grep -E "error|spill|registers" /tmp/hb.log | head -30
    obj=$(find "$build" -name 'sta_hopper.cu.o' | head -1)
    echo "== SASS of $obj"
    cuobjdump -sass "$obj" > /tmp/hopper.sass 2>&1
    echo "HGMMA $(grep -c HGMMA /tmp/hopper.sass)  LDL $(grep -c 'LDL' /tmp/hopper.sass)  STL $(grep -c 'STL' /tmp/hopper.sass)"
    export STAVID_EXPECT_GPU=1
    echo "== tests${variants:+ (variants: $variants)}"
    # Unset, the test checks every variant; set, the ones listed.
    [ -n "$variants" ] && export STAVID_STA_HOPPER_VARIANTS="$variants"
    timeout 300 "$build/tests/test_sta" --gtest_filter="${HOPPER_FILTER:-StaAttentionHopper.*:StaSelector.*}" 2>&1 |
      tee /tmp/hopper_test.log | tail -60
    rc=${PIPESTATUS[0]}
    # Variants the test's summary reports failing ("  NAME: N failed"); persist:N failing fails persist.
    sed -n 's/^  \([a-z0-9:]*\): [1-9][0-9]* failed.*/\1/p' /tmp/hopper_test.log | sort -u | tr '\n' ' ' > /tmp/hopper_bad.txt
    bad=$(cat /tmp/hopper_bad.txt)
    if [ "$rc" -ne 0 ]; then
      first=${bad%% *}
      echo "== tests failed (rc $rc; failing variants: ${bad:-unknown}): compute-sanitizer on ${first:-the listed variants}"
      (
        [ -n "$first" ] && export STAVID_STA_HOPPER_VARIANTS="$first"
        timeout 240 compute-sanitizer --tool memcheck --print-limit 20 "$build/tests/test_sta" \
          --gtest_filter='StaAttentionHopper.*' 2>&1 | head -80
      )
    fi
    [ "$mode" = test ] && exit "$rc"
  else
    # bench alone: the failing variants of an earlier `test` in this machine's /tmp, if any.
    rc=0
    bad=$(cat /tmp/hopper_bad.txt 2> /dev/null || true)
  fi
  if [ -n "$variants" ] && [ -n "$bad" ]; then
    # One bench process times every variant: one that traps would take the ones after it down too.
    keep=""
    for v in $variants; do
      case " $bad " in *" $v "* | *" $v:"*) ;; *) keep="$keep $v" ;; esac
    done
    echo "== bench skips the failing variants: $bad"
    variants=$(echo $keep)
  fi
  if [ -n "$variants" ] || [ -n "${HOPPER_VARIANTS:-}" ]; then
    [ -n "$variants" ] || { echo "== no variant passed: no bench"; exit "$rc"; }
    cases="${HOPPER_BENCH-paper_333 paper_333_text paper_full paper_555 720p_688_333 720p_388_333 mixed}"
    echo "== bench (hopper, variants $variants, case by case)"
    STAVID_STA_HOPPER=1 timeout 300 "$build/bench/bench_sta" --only "$(echo $cases | tr ' ' ,)" \
      --variants "$(echo $variants | tr ' ' ,)" | tee ${OUT:+"$OUT/hopper_bench.jsonl"}
    exit "$rc"
  fi
  echo "== bench (portable, then hopper)"
  for c in ${HOPPER_BENCH-paper_full}; do
    STAVID_STA_HOPPER=0 timeout 60 "$build/bench/bench_sta" --only "$c"
    STAVID_STA_HOPPER=1 timeout 60 "$build/bench/bench_sta" --only "$c"
  done
  exit "$rc"
  ;;
esac
