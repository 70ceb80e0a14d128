"""The model card's quality table (issue 8 item 6) from the two measurements that ship a demo model, as markdown
on stdout:

- RUN/eval/report.json (eval.py, PyTorch, usually on the GPU): the dense checkpoint, training-free STA (the same
  weights with the fixed window) and fine-tuned STA (the sta checkpoint), with PSNR / SSIM against dense;
- MODEL/eval_cpp.json (ship.py --eval, the product on the CPU: stavid_server + client + checker): the shipped
  checkpoint with dense attention, its fixed window and its calibrated strategy, with PSNR / SSIM against the
  product's dense output and seconds per clip.

    python3 tools/demo/model_card.py --run tools/demo/runs/main --model deploy/models/demo-model

Either file may be missing (its rows are left out); exits 2 when both are.
"""

import argparse
import json
import os
import sys

ATTRS = ("colour", "shape", "motion", "background")


def _pct(v) -> str:
    return "" if v is None else f"{100.0 * v:.0f}%"


def _num(v, fmt: str) -> str:
    return "" if v is None else format(v, fmt)


def rows_pytorch(report: dict):
    names = {"dense": "dense checkpoint, dense attention", "sta_free": "dense checkpoint, fixed STA (training-free)",
             "sta_tuned": "STA-tuned checkpoint, fixed STA"}
    for key, label in names.items():
        r = report.get("variants", {}).get(key)
        if not r or "skipped" in r:
            continue
        yield ["PyTorch (eval.py)", label, r.get("pass"), r, r.get("psnr_vs_dense"), r.get("ssim_vs_dense"),
               r.get("seconds_per_clip")]


def rows_product(report: dict):
    ck = "STA-tuned" if report.get("dit_checkpoint") == "sta" else "dense"
    names = {"dense": f"{ck} checkpoint, dense attention", "sta_fixed": f"{ck} checkpoint, fixed STA",
             "sta_calibrated": f"{ck} checkpoint, calibrated STA"}
    for key, label in names.items():
        r = report.get("variants", {}).get(key)
        if not r:
            continue
        s = r["summary"]
        yield ["product, CPU (ship.py)", label, s.get("pass"), s, s.get("psnr_vs_dense"), s.get("ssim_vs_dense"),
               s.get("seconds_per_clip")]


def table(pytorch: dict, product: dict) -> str:
    head = ["measured by", "variant", "checker pass"] + list(ATTRS) + ["PSNR vs dense (dB)", "SSIM vs dense",
                                                                     "s per clip"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    rows = list(rows_pytorch(pytorch or {})) + list(rows_product(product or {}))
    for where, label, ok, attrs, p, s, t in rows:
        cells = [where, label, _pct(ok)] + [_pct(attrs.get(a)) for a in ATTRS]
        cells += [_num(p, ".1f"), _num(s, ".3f"), _num(t, ".2f")]
        lines.append("| " + " | ".join(cells) + " |")
    notes = []
    if pytorch:
        notes.append(f"PyTorch: {len(pytorch.get('prompts', []))} held-out prompts, seed {pytorch.get('seed')}, "
                     f"{pytorch.get('steps')} steps ({pytorch.get('dense_steps')} dense first for STA), window "
                     f"{pytorch.get('window')} on tile {pytorch.get('tile')} over {pytorch.get('canvas_tokens')} "
                     f"tokens ({100.0 * pytorch.get('sta_sparsity', 0):.0f}% sparse).")
    if product:
        notes.append(f"Product: the first {product.get('prompts')} held-out prompts (MODEL/heldout.json), the "
                     "model's default steps and guidance, seed 7; seconds per clip end to end on the machine that ran it.")
    return "\n".join(lines) + ("\n\n" + "\n".join(notes) if notes else "") + "\n"


def _load(path: str):
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", help="training run folder (its eval/report.json)")
    ap.add_argument("--model", help="export folder (its eval_cpp.json)")
    args = ap.parse_args()
    pytorch = _load(os.path.join(args.run, "eval", "report.json")) if args.run else None
    product = _load(os.path.join(args.model, "eval_cpp.json")) if args.model else None
    if pytorch is None and product is None:
        print("model_card: neither RUN/eval/report.json nor MODEL/eval_cpp.json exists", file=sys.stderr)
        return 2
    sys.stdout.write(table(pytorch, product))
    return 0


if __name__ == "__main__":
    sys.exit(main())
