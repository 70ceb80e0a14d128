#!/usr/bin/env bash
# `make demo`: the best end-to-end path that exists today, stated plainly.
#
# The service, the DiT and the embedded demo model do not exist yet (issues 4-8), so there is no video
# to make. What runs now is the runtime on this machine's best device: the op families (GEMM,
# LayerNorm+adaLN modulation, RMSNorm, GELU, gated residual, softmax) timed at the DiT's shapes on the
# GPU, or at a reduced size on the CPU, printed as JSON.
set -euo pipefail
build="${1:-build}"
cd "$(dirname "$0")/.."
echo "stavid demo: no video yet -- the generation pipeline and demo model are not built (see README)."
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  echo "stavid demo: GPU found; timing the op families at the DiT's shapes (115200 tokens x 3072)"
  "$build/bench/bench_ops"
else
  echo "stavid demo: no GPU; timing the op families on the CPU at a reduced size (1024 tokens x 3072)"
  "$build/bench/bench_ops" --cpu
fi
echo "stavid demo: done (op timings above, one JSON object per line)."
