#!/usr/bin/env bash
# STA benchmark on the GPU machine: our kernel (bench_sta) and the peers (PyTorch SDPA cuDNN / flash
# dense and FlexAttention STA, .peer/peer_attention.py) in one command, so both see one machine
# state; then tools/bench/sta_report.py joins the two JSONL files into a JSON report whose last line
# is `SUMMARY {...}` (the ratios).
#
#   scripts/stage-gpu-deps.sh            # here, once: .deps/ (nlohmann-json) and .peer/ (the peer script)
#   device run: scripts/sta-bench.sh     with carry [".deps", ".peer"]
# Configures build-gpu/ when it has no build yet and (re)builds the bench_sta target (a no-op when it
# is current). Results land in $OUT (the device tool's output folder) or ./gpu-out:
# bench_sta.jsonl, peer_attention.jsonl, sta_report.json.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-$PWD/gpu-out}"
mkdir -p "$out"
build="${STAVID_GPU_BUILD_DIR:-build-gpu}"
archs="${STAVID_CUDA_ARCHS:-90a;80}"
peer=.peer/peer_attention.py
test -f "$peer" || { echo "sta-bench: $peer is missing: run scripts/stage-gpu-deps.sh and carry .peer" >&2; exit 1; }

if [ ! -f "$build/build.ninja" ]; then
  cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DSTAVID_CUDA=ON -DSTAVID_BUILD_SERVER=OFF \
    "-DSTAVID_CUDA_ARCHS=$archs" > "$out/cmake.log" 2>&1 || { tail -40 "$out/cmake.log"; exit 1; }
fi
cmake --build "$build" -j"$(nproc)" --target bench_sta > "$out/build.log" 2>&1 || { tail -40 "$out/build.log"; exit 1; }
grep -E "error|warning|spill" "$out/build.log" || true

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv |
  tee "$out/nvidia-smi.csv"
"$build/bench/bench_sta" | tee "$out/bench_sta.jsonl"

# The peers on the paper shape, without and with HunyuanVideo's 256 text slots (200 valid). A peer
# failure is recorded and the report still runs on what there is.
shape=(--canvas 30 48 80 --tile 6 8 8 --heads 24 --dim 128 --windows 3,3,3 5,5,5)
: > "$out/peer_attention.jsonl"
python3 "$peer" "${shape[@]}" 2>"$out/peer_attention.err" | tee -a "$out/peer_attention.jsonl" ||
  echo "sta-bench: peer run without text failed (see peer_attention.err)" >&2
python3 "$peer" "${shape[@]}" --text 256 --text-valid 200 2>>"$out/peer_attention.err" |
  tee -a "$out/peer_attention.jsonl" ||
  echo "sta-bench: peer run with text failed (see peer_attention.err)" >&2

python3 tools/bench/sta_report.py "$out/bench_sta.jsonl" "$out/peer_attention.jsonl" > "$out/sta_report.json"
tail -n 1 "$out/sta_report.json"
