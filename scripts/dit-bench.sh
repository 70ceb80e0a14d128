#!/usr/bin/env bash
# The DiT step benchmark on the GPU machine: 13B config with random weights at 768x1280x117 (115,200
# tokens + 256 text slots), STA (3,3,3), (5,5,5) and dense, each profiled by op family; the step's
# GEMMs timed again with torch.matmul (the floor); a TeaCache 0.15 run over a short schedule; then
# tools/bench/dit_report.py prints step/floor per mode. Carry [".deps"]. Results in $OUT or ./gpu-out.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-$PWD/gpu-out}"
mkdir -p "$out"
build="${STAVID_GPU_BUILD_DIR:-build-gpu}"
if [ ! -f "$build/build.ninja" ]; then
  cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DSTAVID_CUDA=ON -DSTAVID_BUILD_SERVER=OFF \
    -DSTAVID_BUILD_TESTS=OFF "-DSTAVID_CUDA_ARCHS=${STAVID_CUDA_ARCHS:-90a}" > "$out/cmake.log" 2>&1
fi
cmake --build "$build" -j"$(nproc)" --target bench_dit > "$out/build.log" 2>&1 || { tail -30 "$out/build.log"; exit 1; }
"$build/bench/bench_dit" --reps 2 --profile --gemm-shapes "$out/gemm_shapes.json" \
  --modes "${DIT_MODES:-sta_3_3_3,sta_5_5_5,dense}" --teacache-steps "${TEACACHE_STEPS:-6}" --teacache 0.15 |
  tee "$out/bench_dit.jsonl"
python3 tools/bench/gemm_floor.py "$out/gemm_shapes.json" > "$out/gemm_floor.json"
python3 tools/bench/dit_report.py "$out/bench_dit.jsonl" "$out/gemm_floor.json" | tee "$out/dit_report.json" | tail -1
