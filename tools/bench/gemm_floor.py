#!/usr/bin/env python3
"""The GEMM part of the DiT step floor: times every GEMM shape that bench_dit --gemm-shapes recorded
with torch.matmul (bf16, random data) on the same GPU, and prints one JSON object:
  {"bench": "gemm_floor", "gemm_ms": sum(count * median_ms), "shapes": [...]}
The issue's floor is this plus the step's attention time (bench_dit's dit_breakdown sta_attention).
Usage: gemm_floor.py SHAPES.json"""
import json
import sys

import torch

from cuda_timing import median_ms


def main():
    shapes = json.load(open(sys.argv[1]))
    dt = torch.bfloat16
    total, rows = 0.0, []
    for s in shapes:
        m, n, k, batch = s["m"], s["n"], s["k"], s["batch"]
        a = torch.randn(batch, m, k, device="cuda", dtype=dt)
        w = torch.randn(batch, n, k, device="cuda", dtype=dt)
        ms = median_ms(lambda: torch.matmul(a, w.transpose(1, 2)), reps=10, warmup=2)
        total += ms * s["count"]
        rows.append({**s, "torch_ms": ms})
        del a, w
    print(json.dumps({"bench": "gemm_floor", "gemm_ms": total, "shapes": rows,
                      "torch": torch.__version__, "device": torch.cuda.get_device_name(0)}))


if __name__ == "__main__":
    main()
