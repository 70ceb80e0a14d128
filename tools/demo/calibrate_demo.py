"""Calibrated STA for an exported demo model (issue 8 item 6): encodes training captions (never the held-out ones)
with the exported text encoders, runs stavid_calibrate (model/cli/calibrate.cc: full-attention sampling, per
step / layer / head the candidate window with the smallest error) at the model's native size, and adds the
resulting mask strategy to the export's serving.json as "calibrated", so that the server (and check_video.py
with --sta strategy:calibrated) can use it.

    python3 tools/demo/calibrate_demo.py --model deploy/models/demo-model --bin build/model/stavid_calibrate \
        [--prompts 8] [--candidates "3,3,2 5,3,1 3,4,1 5,2,2 1,4,2"]

Prints stavid_calibrate's JSON summary (sparsity).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as C  # noqa: E402
import dataset as D  # noqa: E402
from parity import load_export  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="an export folder (export.py)")
    ap.add_argument("--bin", default="build/model/stavid_calibrate")
    ap.add_argument("--prompts", type=int, default=8, help="training captions to calibrate on")
    ap.add_argument("--candidates", default="3,3,2 5,3,1 3,4,1 5,2,2 1,4,2",
                    help="windows in tiles; the default set has the fixed window's budget or less (grid 5x4x2)")
    ap.add_argument("--steps", type=int, default=0, help="0: the model's default")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--name", default="calibrated")
    args = ap.parse_args()
    C.set_threads()
    m = load_export(args.model)
    with open(os.path.join(args.model, "serving.json")) as f:
        serving = json.load(f)
    entry = serving["models"][0]
    d = entry["defaults"]
    cfg = m["dit"][0]
    pt, ph, pw = cfg.patch_size_t, cfg.patch_size, cfg.patch_size
    vcfg = m["vae"][0]
    latent = [(d["frames"] - 1) // vcfg.temporal_compression_ratio + 1, d["height"] // vcfg.spatial_compression_ratio,
              d["width"] // vcfg.spatial_compression_ratio]
    assert latent[0] % pt == 0 and latent[1] % ph == 0 and latent[2] % pw == 0, latent
    captions = [s.caption() for s in D.sample_specs(torch.Generator().manual_seed(args.seed), args.prompts, "train")]

    enc = C.TextEncoders(m["llama"][0], m["clip"][0])
    enc.llama.load(m["llama"][1])
    enc.clip.load(m["clip"][1])
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        with torch.no_grad():
            for i, p in enumerate(captions):
                c = C.encode_prompts(enc, m["tok"], [p], m["skip"], torch.device("cpu"))
                path = os.path.join(tmp, f"emb{i}.safetensors")
                C.sio.save_file({"text": c["text"].float().contiguous(), "text_mask": c["text_mask"].float().contiguous(),
                                 "pooled": c["pooled"].float().contiguous()}, path)
                files.append(path)
        os.makedirs(os.path.join(args.model, "strategies"), exist_ok=True)
        rel_out = os.path.join("strategies", f"{args.name}.json")
        cmd = [args.bin, "--model", os.path.join(args.model, "transformer"), "--embeddings", *files,
               "--latent", *map(str, latent), "--steps", str(args.steps or d["steps"]),
               "--dense-steps", str(d["sta"]["dense_steps"]), "--shift", str(d["flow_shift"]),
               "--guidance", str(d["guidance"] * 1000.0), "--seed", str(args.seed), "--tile", *map(str, entry["tile"]),
               "--candidates", args.candidates, "--out", os.path.join(args.model, rel_out)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            print(f"calibrate_demo: {' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()}", file=sys.stderr)
            return 1
    entry.setdefault("strategies", {})[args.name] = rel_out
    with open(os.path.join(args.model, "serving.json"), "w") as f:
        json.dump(serving, f, indent=2)
        f.write("\n")
    print(r.stdout.strip().splitlines()[-1] if r.stdout.strip() else "{}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
