#!/usr/bin/env bash
# Builds the GPU parts (no server: the GPU machine has no gRPC/FFmpeg), runs every test with the
# GPU present, runs the op benchmark beside the PyTorch baseline, and writes a JSON report.
#
# On the GPU machine, through the device tool (see docs/gpu.md):
#   scripts/stage-gpu-deps.sh            # here, once: copies nlohmann-json into .deps/
#   device run: scripts/gpu-check.sh     with carry [".deps"]
# Results land in $OUT (the device tool's output folder) or ./gpu-out.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-$PWD/gpu-out}"
mkdir -p "$out"
build="${STAVID_GPU_BUILD_DIR:-build-gpu}"
archs="${STAVID_CUDA_ARCHS:-90a;80}"

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv | tee "$out/nvidia-smi.csv"
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DSTAVID_CUDA=ON -DSTAVID_BUILD_SERVER=OFF \
  "-DSTAVID_CUDA_ARCHS=$archs" > "$out/cmake.log" 2>&1 || { tail -40 "$out/cmake.log"; exit 1; }
cmake --build "$build" -j"$(nproc)" 2>&1 | tee "$out/build.log" | grep -E "error|warning|spill" || true
test "${PIPESTATUS[0]}" -eq 0 || { tail -40 "$out/build.log"; exit 1; }

set +e
STAVID_EXPECT_GPU=1 ctest --test-dir "$build" --output-on-failure 2>&1 | tee "$out/ctest.log" | tail -25
ctest_rc=${PIPESTATUS[0]}
"$build/bench/bench_ops" | tee "$out/bench_ops.jsonl"
python3 tools/bench/torch_baseline.py | tee "$out/torch_baseline.jsonl"
python3 tools/bench/report.py "$out/bench_ops.jsonl" "$out/torch_baseline.jsonl" "$out/ctest.log" > "$out/gpu_report.json"
grep SUMMARY "$out/gpu_report.json"
exit $ctest_rc
