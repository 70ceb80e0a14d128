"""Times the demo DiT's dense attention in training (forward + backward, bf16) for each PyTorch backend that
common.Attention offers, at the DiT stage's native batch: SDPA with the boolean key mask (the default), Flex-
Attention with a per-sample key-length block mask, and SDPA without a mask (flash; not a valid training path
since it would let queries see padded text, only the floor). One JSON line per backend on stdout:

    python3 tools/demo/bench_attn.py [--batch 16] [--reps 20]

`fresh_lens_ms` rebuilds the mask for new text lengths every call (a new batch: the DiT stage draws one about
every `--reuse` steps), `ms` keeps one. The last line names the backend the DiT stage should use
({"attn_impl": "flex" | "auto"}). Needs CUDA; exits 77 without it.
"""

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as C  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print(json.dumps({"skipped": "no CUDA device"}))
        return 77
    spec = C.Spec()
    heads, dh = spec.dit["num_attention_heads"], spec.dit["attention_head_dim"]
    # The native latent (x4 time, x8 space, causal first frame) after the 1x2x2 patch embedding, and the text
    # slots of the serving config (max_length 32).
    canvas = ((spec.frames - 1) // 4 + 1, spec.height // 16, spec.width // 16)
    L = 32
    S = canvas[0] * canvas[1] * canvas[2] + L
    dev = torch.device("cuda")
    g = torch.Generator().manual_seed(0)

    def lens():
        return [int(v) for v in torch.randint(5, 21, (args.batch,), generator=g)]

    q, k, v = (torch.randn(args.batch, heads, S, dh, device=dev, dtype=torch.bfloat16, requires_grad=True)
               for _ in range(3))
    grad = torch.randn(args.batch, heads, S, dh, device=dev, dtype=torch.bfloat16)

    def timed(fn, fresh):
        fixed = lens()
        for _ in range(3):
            fn(fixed).backward(grad)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        for _ in range(args.reps):
            fn(lens() if fresh else fixed).backward(grad)
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / args.reps

    flops = 4.0 * args.batch * heads * S * S * dh * 3.5  # forward 1 + backward 2.5
    fresh_ms = {}
    for name, impl in (("sdpa_mask", "sdpa"), ("flex", "flex"), ("sdpa_nomask_floor", None)):
        try:
            att = C.Attention("dense", impl=impl or "sdpa")
            if impl:
                fn = lambda tl, att=att: att.attend(0, q, k, v, canvas, L, tl)  # noqa: E731
            else:
                fn = lambda tl: torch.nn.functional.scaled_dot_product_attention(q, k, v)  # noqa: E731
            ms = timed(fn, False)
            fresh = timed(fn, True) if impl else ms
            fallback = impl is not None and att.impl != impl
            if impl and not fallback:
                fresh_ms[impl] = fresh
            print(json.dumps({"bench": "demo_dense_attention_train", "backend": name, "batch": args.batch,
                              "heads": heads, "seq": S, "head_dim": dh, "ms": round(ms, 3),
                              "fresh_lens_ms": round(fresh, 3), "tflops": round(flops / ms / 1e9, 1),
                              "fallback": fallback}), flush=True)
        except Exception as e:  # one backend failing must not hide the others
            print(json.dumps({"bench": "demo_dense_attention_train", "backend": name,
                              "error": f"{type(e).__name__}: {str(e)[:300]}"}), flush=True)
    # The backend for train.py --attn-impl: Flex only when clearly faster than the masked SDPA that trained
    # session 5's DiT.
    flex_wins = "flex" in fresh_ms and fresh_ms["flex"] < 0.9 * fresh_ms.get("sdpa", float("inf"))
    print(json.dumps({"bench": "demo_dense_attention_choice", "attn_impl": "flex" if flex_wins else "auto"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
