"""The smallest case of the demo VAE's colour failure (docs/demo-model.md, "Session 4"): flat clips of one
colour (half of them with a small square of another), trained as an autoencoder for a few hundred steps on the
CPU, scored on clips of colours never drawn in training. `--fixed` trains on one fixed batch instead (the
decoder memorizes 8 colours easily; what fails is the colour map itself).

    python3 tools/demo/vae_colour_probe.py [--groups 1] [--channels 8,16,32,64] [--steps 400] [--fixed]

Prints one JSON line per 100 steps: step, PSNR on the last training batch and on held-out colours, seconds.
"""

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as C  # noqa: E402
import hunyuan_vae as hv  # noqa: E402


def clips(g: torch.Generator, n: int, squares: bool = True, size: int = 32, frames: int = 5) -> torch.Tensor:
    """[n, 3, frames, size, size] in [-1, 1]: a flat colour, with a square of another in the first half."""
    x = (torch.rand(n, 3, 1, 1, 1, generator=g) * 2 - 1).expand(n, 3, frames, size, size).clone()
    other = torch.rand(n, 3, 1, 1, 1, generator=g) * 2 - 1
    q = size // 4
    if squares:
        x[: n // 2, :, :, q:2 * q, q:2 * q] = other[: n // 2].expand(-1, -1, frames, q, q)
    return x


@torch.no_grad()
def psnr(vae: C.VAE, x: torch.Tensor) -> float:
    return C.video_psnr(vae.decode_raw(vae.encode(x)[0]), x)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--groups", type=int, default=1)
    ap.add_argument("--channels", default="8,16,32,64")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--fixed", action="store_true", help="train on one fixed batch of 8 clips")
    ap.add_argument("--no-squares", action="store_true", help="flat clips only")
    ap.add_argument("--no-sample", action="store_true", help="decode the latent mean (no posterior noise)")
    ap.add_argument("--no-norm", action="store_true",
                    help="every GroupNorm reduced to its affine (weight, bias): is normalization the cause?")
    ap.add_argument("--bias-init", type=float, default=0.0,
                    help="std of a random init of every conv bias (0: the zero init of common.VAE)")
    args = ap.parse_args()
    C.set_threads()
    if args.no_norm:
        def affine_only(self, p, name, x, groups):
            shape = (1, -1) + (1,) * (x.dim() - 2)
            return x * p[name + ".weight"].view(shape) + p[name + ".bias"].view(shape)
        C.TrainRun.gn = affine_only
    spec = C.Spec()
    cfg = hv.HunyuanVideoVAEConfig(**{**C.asdict(spec.vae_config()), "norm_num_groups": args.groups,
                                      "block_out_channels": tuple(int(c) for c in args.channels.split(","))})
    vae = C.VAE(cfg, seed=0)
    with torch.no_grad():
        if args.bias_init > 0:
            bg = torch.Generator().manual_seed(7)
            for part in (vae.enc.dict(), vae.dec.dict()):
                for name, t in part.items():
                    if name.endswith("conv.bias"):
                        t.copy_(torch.randn(t.shape, generator=bg) * args.bias_init)
        vae.enc.dict()["encoder.conv_out.conv.bias"][cfg.latent_channels:] -= 6  # posterior std 0.05
    params = list(vae.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0, betas=(0.9, 0.99))
    g = torch.Generator().manual_seed(1)
    sq = not args.no_squares
    fixed = clips(g, 8, sq)
    val = clips(torch.Generator().manual_seed(99), 8, sq)
    t0 = time.time()
    for step in range(1, args.steps + 1):
        x = fixed if args.fixed else clips(g, 8, sq)
        mean, logvar = vae.encode(x)
        y = vae.decode_raw(mean if args.no_sample else mean + torch.randn_like(mean) * torch.exp(0.5 * logvar))
        loss = (y - x).abs().mean() + ((y - x) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0:
            print(json.dumps({"step": step, "train_psnr": round(psnr(vae, fixed if args.fixed else x), 2),
                              "heldout_psnr": round(psnr(vae, val), 2), "s": round(time.time() - t0)}), flush=True)


if __name__ == "__main__":
    main()
