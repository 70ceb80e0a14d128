"""Ships a trained demo run as `make demo`'s model: exports it to deploy/models/demo-model, checks the C++
loaders against PyTorch on the export (parity.py), optionally adds a calibrated STA strategy
(calibrate_demo.py), points the `demo` entry of deploy/models/demo.json at the export (other entries kept), and
optionally measures the product on held-out prompts for each attention variant (check_video.py), writing
deploy/models/demo-model/eval_cpp.json for the model card.

    python3 tools/demo/ship.py --run tools/demo/runs/main [--calibrate-prompts 4] [--eval 20] [--bin-dir build]
        [--dit auto|sta|dit] [--dense-steps N] [--models-dir DIR]

Exits 1 when parity fails (nothing in demo.json changes then).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as C  # noqa: E402
import export as X  # noqa: E402
import parity as P  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def rebase(entry: dict, prefix: str) -> dict:
    """The export's serving entry with every path made relative to the folder above the export."""
    out = json.loads(json.dumps(entry))
    out["dit"]["dir"] = os.path.join(prefix, out["dit"]["dir"])
    out["vae"]["dir"] = os.path.join(prefix, out["vae"]["dir"])
    for k in ("llama", "clip"):
        for f in ("dir", "tokenizer"):
            out["text_encoder"][k][f] = os.path.join(prefix, out["text_encoder"][k][f])
    out["strategies"] = {n: os.path.join(prefix, p) for n, p in out.get("strategies", {}).items()}
    if not out["strategies"]:
        del out["strategies"]
    return out


def check(config: str, prompts_file: str, n: int, sta: str, bin_dir: str, work: str) -> dict:
    """check_video.py on the first n held-out prompts with one attention variant; its decoded frames stay in
    work (clipNN.npy) for the comparison with the dense variant."""
    cmd = [sys.executable, os.path.join(HERE, "check_video.py"), "--config", config, "--model", "demo",
           "--prompts-file", prompts_file, "--limit", str(n), "--bin-dir", bin_dir, "--min-pass", "0",
           "--work", work]
    if sta:
        cmd += ["--sta", sta]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"check_video failed ({r.returncode}): {r.stderr.strip()}")
    lines = [json.loads(t) for t in r.stdout.splitlines() if t.startswith("{")]
    return {"summary": lines[-1]["summary"], "clips": lines[:-1]}


def vs_dense(dense_dir: str, variant_dir: str, n: int) -> dict:
    """Mean PSNR (capped at 99 dB) and SSIM of a variant's decoded clips against the dense variant's (same
    prompts and seeds)."""
    ps, ss = [], []
    for i in range(n):
        a = np.load(os.path.join(dense_dir, f"clip{i:02d}.npy")).astype(np.float32) / 255.0
        b = np.load(os.path.join(variant_dir, f"clip{i:02d}.npy")).astype(np.float32) / 255.0
        ps.append(min(99.0, C.frames_psnr(a, b)))
        ss.append(C.frames_ssim(a, b))
    return {"psnr_vs_dense": round(float(np.mean(ps)), 2), "ssim_vs_dense": round(float(np.mean(ss)), 4)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True)
    ap.add_argument("--models-dir", default="deploy/models")
    ap.add_argument("--bin-dir", default="build")
    ap.add_argument("--calibrate-prompts", type=int, default=0, help="0: no calibrated strategy")
    ap.add_argument("--eval", type=int, default=0, help="held-out prompts to check per attention variant (0: none)")
    ap.add_argument("--dense-steps", type=int, default=None,
                    help="dense first steps of the served default fixed window (default 2)")
    ap.add_argument("--dit", default="auto", choices=["auto", "sta", "dit"],
                    help="which DiT checkpoint of the run to ship (auto: the STA fine-tuned one when the run has it)")
    args = ap.parse_args()

    out = os.path.join(args.models_dir, "demo-model")
    info = X.export(args.run, out, args.dit, dense_steps=args.dense_steps)
    print(json.dumps({"export": out, "total_bytes": info["total_bytes"], "dit": info["dit_checkpoint"]}), flush=True)
    rep = P.run(out, os.path.join(args.bin_dir, "tests", "demo_parity"),
                ["a red circle moves left on a dark blue background",
                 "a green square bounces and a white triangle moves up on a gray background"])
    print(json.dumps({"parity_ok": rep["ok"]}), flush=True)
    if not rep["ok"]:
        print(json.dumps(rep), file=sys.stderr)
        return 1
    if args.calibrate_prompts:
        subprocess.run([sys.executable, os.path.join(HERE, "calibrate_demo.py"), "--model", out, "--bin",
                        os.path.join(args.bin_dir, "model", "stavid_calibrate"), "--prompts",
                        str(args.calibrate_prompts)], check=True)

    # The `demo` entry of the folder's demo.json points at the export (other entries kept); a scratch folder
    # (--models-dir /tmp/x, to measure a checkpoint without shipping it) gets a demo.json of its own.
    config = os.path.join(args.models_dir, "demo.json")
    serving = {"models": []}
    if os.path.exists(config):
        with open(config) as f:
            serving = json.load(f)
    with open(os.path.join(out, "serving.json")) as f:
        entry = rebase(json.load(f)["models"][0], "demo-model")
    if any(m["name"] == "demo" for m in serving["models"]):
        serving["models"] = [entry if m["name"] == "demo" else m for m in serving["models"]]
    else:
        serving["models"].insert(0, entry)
    with open(config, "w") as f:
        json.dump(serving, f, indent=2)
        f.write("\n")
    print(json.dumps({"demo.json": "demo -> demo-model"}), flush=True)

    if args.eval:
        prompts = os.path.join(out, "heldout.json")
        variants = {"dense": "dense", "sta_fixed": ""}
        if "strategies" in entry:
            variants["sta_calibrated"] = "strategy:calibrated"
        report = {"prompts": args.eval, "dit_checkpoint": info["dit_checkpoint"], "variants": {}}
        frames = tempfile.mkdtemp(prefix="stavid-ship-eval-")
        try:
            for name, sta in variants.items():
                r = check(config, prompts, args.eval, sta, args.bin_dir, os.path.join(frames, name))
                if name != "dense":
                    r["summary"].update(vs_dense(os.path.join(frames, "dense"), os.path.join(frames, name), args.eval))
                report["variants"][name] = r
                print(json.dumps({name: r["summary"]}), flush=True)
        finally:
            shutil.rmtree(frames, ignore_errors=True)
        with open(os.path.join(out, "eval_cpp.json"), "w") as f:
            json.dump(report, f, indent=1)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
