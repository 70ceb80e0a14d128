#!/usr/bin/env python3
"""PyTorch reference timings for the op families of bench/bench_ops, on the same GPU in the same run.

Prints one JSON object per line: the device-copy bandwidth, torch.matmul / F.linear at the DiT's MLP
shape, and F.layer_norm + modulation (unfused, for scale). Times are medians of CUDA-event timings
after warm-up, on random (not zero) bf16 data.
"""
import argparse
import json

import torch
import torch.nn.functional as F

from cuda_timing import median_ms


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=115200)
    ap.add_argument("--dim", type=int, default=3072)
    ap.add_argument("--ffn", type=int, default=12288)
    a = ap.parse_args()
    dev, dt = "cuda", torch.bfloat16
    name = torch.cuda.get_device_name(0)
    torch.manual_seed(0)

    def emit(**kw):
        print(json.dumps({"impl": "torch", "torch": torch.__version__, "device": name, **kw}), flush=True)

    x = torch.randn(a.rows, a.dim, device=dev, dtype=dt)
    y = torch.empty_like(x)
    nbytes = 2 * x.numel() * x.element_size()
    ms = median_ms(lambda: y.copy_(x))
    emit(bench="copy", ms=ms, bytes=nbytes, gbps=nbytes / ms / 1e6)

    shift = torch.randn(a.dim, device=dev, dtype=dt)
    scale = torch.randn(a.dim, device=dev, dtype=dt)
    ms = median_ms(lambda: F.layer_norm(x, (a.dim,), eps=1e-6) * (1 + scale) + shift)
    emit(bench="norm", variant="layernorm_mod_unfused", ms=ms, gbps=nbytes / ms / 1e6)
    del y

    w = torch.randn(a.ffn, a.dim, device=dev, dtype=dt)
    bias = torch.randn(a.ffn, device=dev, dtype=dt)
    flops = 2.0 * a.rows * a.dim * a.ffn
    for variant, fn in [("matmul", lambda: torch.matmul(x, w.t())),
                        ("linear_bias", lambda: F.linear(x, w, bias)),
                        ("linear_bias_gelu_tanh", lambda: F.gelu(F.linear(x, w, bias), approximate="tanh"))]:
        ms = median_ms(fn, reps=10, warmup=2)
        emit(bench="gemm", variant=variant, m=a.rows, n=a.ffn, k=a.dim, ms=ms, tflops=flops / ms / 1e9)


if __name__ == "__main__":
    main()
