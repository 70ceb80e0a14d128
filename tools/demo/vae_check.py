"""Checks a trained demo VAE on its own: encodes and decodes ground-truth clips (held-out split by default) and
runs checker.py on originals and reconstructions, plus the reconstruction PSNR. A DiT trained on a VAE whose
reconstructions fail the checker cannot pass it either, so run this before spending device time on the DiT.

    python3 tools/demo/vae_check.py --run tools/demo/runs/main [--n 8] [--device auto]

Prints one JSON line: {"originals_pass": ..., "reconstructions_pass": ..., "psnr": ..., "failures": [...]}.
"""

import argparse
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import checker as K  # noqa: E402
import common as C  # noqa: E402
import dataset as D  # noqa: E402
import train as TR  # noqa: E402


def frames(video: torch.Tensor, i: int) -> np.ndarray:
    """[B, 3, F, H, W] in [-1, 1] -> clip i as [F, H, W, 3] in [0, 1]."""
    return ((video[i].float().clamp(-1, 1) + 1) / 2).permute(1, 2, 3, 0).cpu().numpy()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--split", default="heldout", choices=["train", "heldout"])
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    C.set_threads()
    device = C.pick_device(args.device)
    spec = C.Spec.load(args.run)
    vae, _ = TR.load_vae(args.run, spec, device)
    g = torch.Generator().manual_seed(args.seed)
    b = D.make_batch(g, args.n, spec.frames, spec.height, spec.width, args.split, device=device)
    recs = []
    with torch.no_grad(), C.autocast(device):
        for i in range(args.n):  # one clip at a time: the full-size decode of a batch needs a lot of memory
            mean, _ = vae.encode(b.video[i:i + 1])
            recs.append(vae.decode_raw(mean).float())
    rec = torch.cat(recs)
    orig_ok, rec_ok, failures = 0, 0, []
    for i, caption in enumerate(b.captions):
        o, r = K.check(frames(b.video, i), caption), K.check(frames(rec, i), caption)
        orig_ok += bool(o["pass"])
        rec_ok += bool(r["pass"])
        if not r["pass"]:
            failures.append({"caption": caption, **{k: r[k] for k in ("colour", "shape", "motion", "background")}})
    print(json.dumps({"n": args.n, "originals_pass": orig_ok / args.n, "reconstructions_pass": rec_ok / args.n,
                      "psnr": C.video_psnr(rec, b.video), "failures": failures}))


if __name__ == "__main__":
    main()
