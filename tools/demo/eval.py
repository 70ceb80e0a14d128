"""Measures the demo model on the held-out prompts (dataset.heldout_prompts: caption combinations never seen in
training) with fixed seeds, in PyTorch (GPU or CPU), for three attention variants:

  dense      the dense DiT checkpoint (RUN/dit), full attention every step
  sta_free   the same weights with the fixed STA window (spec.window, spec.tile) after `--dense-steps` dense
             steps: training-free STA
  sta_tuned  the STA-fine-tuned checkpoint (RUN/sta) with the same window and dense steps

For each: checker accuracy (tools/demo/checker.py: colour, shape, motion, background), PSNR and SSIM of the
decoded frames against the dense variant's (same prompt and noise), mean seconds per clip (DiT + VAE decode).
Writes RUN/eval/report.json and a contact sheet of the first prompts (RUN/eval/sheet_<variant>.npz, key "sheet", uint8).

Usage: python3 tools/demo/eval.py --run RUN [--n 20] [--steps 20] [--variants dense,sta_free,sta_tuned]
"""

import argparse
import json
import os
import time

import numpy as np
import torch

import checker as K
import common as C
import dataset as D
import train as TR


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True)
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--dense-steps", type=int, default=2)
    ap.add_argument("--guidance", type=float, default=6.0)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--variants", default="dense,sta_free,sta_tuned")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--attn-impl", default="auto")
    ap.add_argument("--batch", type=int, default=10)
    args = ap.parse_args()
    C.set_threads()
    device = C.pick_device(args.device)
    spec = C.Spec.load(args.run)
    cond = TR.Conditioner(args.run, spec, device)
    cfg = spec.dit_config()
    prompts = D.heldout_prompts(args.n)
    vc = spec.vae_config()
    T_ = (spec.frames - 1) // vc.temporal_compression_ratio + 1
    shape = (cfg.in_channels, T_, spec.height // vc.spatial_compression_ratio, spec.width // vc.spatial_compression_ratio)
    noise = torch.randn((args.n,) + shape, generator=torch.Generator().manual_seed(args.seed))
    dense = C.Attention("dense", impl=args.attn_impl)
    sta = C.Attention("sta", spec.tile, C.sta_windows(spec), impl=args.attn_impl)
    canvas = (shape[1], shape[2] // cfg.patch_size, shape[3] // cfg.patch_size)
    report = {"prompts": prompts, "steps": args.steps, "dense_steps": args.dense_steps, "seed": args.seed,
              "tile": spec.tile, "window": spec.window, "canvas_tokens": list(canvas),
              "sta_sparsity": C.sta_sparsity(canvas, spec.tile, spec.window), "variants": {}}
    os.makedirs(os.path.join(args.run, "eval"), exist_ok=True)
    frames_of = {}
    for variant in args.variants.split(","):
        ck = "sta" if variant == "sta_tuned" else "dit"
        if not os.path.isdir(os.path.join(args.run, ck)):
            report["variants"][variant] = {"skipped": f"no {ck} checkpoint"}
            continue
        t, _ = C.load_tensors(os.path.join(args.run, ck), ck)
        dit = C.DiT(cfg).to(device).eval()
        dit.w.load({k[2:]: v for k, v in t.items() if k.startswith("w.")})
        use_sta = variant != "dense"
        attn_for = (lambda i: sta if (use_sta and i >= args.dense_steps) else dense)
        vids, secs = [], 0.0
        for s in range(0, args.n, args.batch):
            ps = prompts[s:s + args.batch]
            c = cond.cond(ps)
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.time()
            lat = C.sample_video_latents(dit, c, noise[s:s + len(ps)].to(device), args.steps, spec.flow_shift,
                                         args.guidance, attn_for, device)
            with torch.no_grad(), C.autocast(device):
                raw = cond.vae.decode_raw(lat / cond.sf).float()
            if device.type == "cuda":
                torch.cuda.synchronize()
            secs += time.time() - t0
            vids.append(((raw / 2 + 0.5).clamp(0, 1)).permute(0, 2, 3, 4, 1).cpu().numpy())  # [B, F, H, W, 3]
        v = np.concatenate(vids)
        frames_of[variant] = v
        res = [K.check(v[i], prompts[i]) for i in range(args.n)]
        r = {k: float(np.mean([x[k] for x in res])) for k in ("pass", "colour", "shape", "motion", "background")}
        r["seconds_per_clip"] = secs / args.n
        if "dense" in frames_of and variant != "dense":
            r["psnr_vs_dense"] = float(np.mean([min(99.0, C.frames_psnr(frames_of["dense"][i], v[i])) for i in range(args.n)]))
            r["ssim_vs_dense"] = float(np.mean([C.frames_ssim(frames_of["dense"][i], v[i]) for i in range(args.n)]))
        report["variants"][variant] = r
        sheet = (np.concatenate([np.concatenate(list(v[i, ::4]), 1) for i in range(min(4, args.n))], 0) * 255).astype(np.uint8)
        np.savez_compressed(os.path.join(args.run, "eval", f"sheet_{variant}.npz"), sheet=sheet)
        print(json.dumps({variant: r}), flush=True)
    with open(os.path.join(args.run, "eval", "report.json"), "w") as f:
        json.dump(report, f, indent=1)
    print(json.dumps(report["variants"]))


if __name__ == "__main__":
    main()
