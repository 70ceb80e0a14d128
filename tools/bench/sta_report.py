#!/usr/bin/env python3
"""Joins bench_sta.jsonl (ours) and peer_attention.jsonl (PyTorch peers, same run) into one JSON report
with the STA ratios; the last line is `SUMMARY {...}` with the ratios alone.

Usage: sta_report.py BENCH_STA.jsonl PEER_ATTENTION.jsonl

Ratios (absent when an input row is missing or errored):
- speedup_<ours>_vs_<peer>[_text]: peer ms / our ms on the paper shape (30x48x80, tile 6x8x8,
  24 heads, d=128, bf16); > 1 means ours is faster. Peers: cudnn = SDPA cuDNN dense, flash = SDPA
  flash dense, flex = FlexAttention with the STA mask at the same window.
- dense_tflops_vs_cudnn[_text]: our full-window (5,6,10) TFLOP/s over cuDNN dense TFLOP/s.
- eff_333_over_dense[_text]: our (3,3,3) effective TFLOP/s over our full-window TFLOP/s (how much of
  the dense rate survives the sparsity).
- text_overhead_<w>: our ms with 256 text slots (200 valid) over our ms without; the same for flex
  as flex_text_overhead_<w>.
- mixed_over_weighted: the mixed per-head run over the weighted sum of single-window runs (goal
  <= 1.05).
- eff_720p_<tile>_over_paper: 720p (33x45x80) (3,3,3) effective TFLOP/s over the paper shape's.
"""
import json
import sys


def load(path):
    rows = []
    try:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line.startswith("{"):
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError:
                        pass
    except FileNotFoundError:
        pass
    return rows


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    ours_rows, peer_rows = load(sys.argv[1]), load(sys.argv[2])
    ours = {r["case"]: r for r in ours_rows if r.get("bench") == "sta" and "ms" in r}
    errors = [r for r in ours_rows if "error" in r] + [r for r in peer_rows if "error" in r]

    def peer(impl, window, text):
        for r in peer_rows:
            if r.get("impl") == impl and r.get("window") == window and r.get("text") == text and "ms" in r:
                return r
        return None

    ratios = {}

    def put(name, num, den):
        if num is not None and den is not None and den != 0:
            ratios[name] = round(num / den, 4)

    def ms(row):
        return row["ms"] if row else None

    def eff(row):
        return row["eff_tflops"] if row else None

    windows = {"333": [3, 3, 3], "555": [5, 5, 5]}
    for suffix, text in (("", 0), ("_text", 256)):
        full = ours.get("paper_full" + suffix)
        cudnn = peer("sdpa_cudnn_dense", None, text)
        flash = peer("sdpa_flash_dense", None, text)
        put("speedup_full_vs_cudnn" + suffix, ms(cudnn), ms(full))
        put("speedup_full_vs_flash" + suffix, ms(flash), ms(full))
        put("dense_tflops_vs_cudnn" + suffix, eff(full), eff(cudnn))
        for label, w in windows.items():
            mine = ours.get("paper_" + label + suffix)
            put("speedup_%s_vs_cudnn%s" % (label, suffix), ms(cudnn), ms(mine))
            put("speedup_%s_vs_flex_%s%s" % (label, label, suffix), ms(peer("flex_sta", w, text)), ms(mine))
        put("eff_333_over_dense" + suffix, eff(ours.get("paper_333" + suffix)), eff(full))
    for label in ("333", "555", "full"):
        put("text_overhead_" + label, ms(ours.get("paper_%s_text" % label)), ms(ours.get("paper_" + label)))
    for label, w in windows.items():
        put("flex_text_overhead_" + label, ms(peer("flex_sta", w, 256)), ms(peer("flex_sta", w, 0)))
    mixed = ours.get("mixed")
    if mixed and "weighted_single_ms" in mixed:
        put("mixed_over_weighted", mixed["ms"], mixed["weighted_single_ms"])
    for tile in ("688", "388", "3816"):
        put("eff_720p_%s_over_paper" % tile, eff(ours.get("720p_%s_333" % tile)), eff(ours.get("paper_333")))

    report = {
        "ours": ours_rows,
        "peer": peer_rows,
        "errors": errors,
        "ratios": ratios,
        "checks": {
            "mixed_within_5pct_of_weighted": (ratios["mixed_over_weighted"] <= 1.05
                                              if "mixed_over_weighted" in ratios else None),
        },
    }
    print(json.dumps(report, indent=1))
    print("SUMMARY " + json.dumps(ratios))


if __name__ == "__main__":
    main()
