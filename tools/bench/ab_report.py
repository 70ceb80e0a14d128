#!/usr/bin/env python3
"""Summarizes an A/B of bench_sta binaries run in one device call (scripts/device-plan.sh call3).

Input: JSON lines of bench_sta, each tagged with "bin" (bench_sta, bench_sta_ref, bench_sta_ref2, ...) and
"pass" by the caller; other lines are ignored. Output, one JSON line each:
- {"ab": case, "variant", "bin", "ms": [per pass], "median_ms"} per case, variant and binary;
- {"ab_ratio": case, "variant", "bin", "over": "bench_sta", "ratio"}: the binary's median over bench_sta's
  (> 1: bench_sta, the current tree, is faster);
and with --medians FILE, the current binary's rows with ms = the median over passes (bench_sta's own format,
so tools/bench/sta_report.py can join them with the peers).

Usage: ab_report.py AB.jsonl [--medians FILE]
"""
import argparse
import collections
import json
import statistics


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("ab")
    ap.add_argument("--medians")
    args = ap.parse_args()
    runs = collections.defaultdict(list)
    rows = {}
    with open(args.ab) as f:
        for line in f:
            line = line.strip()
            if not line.startswith("{"):
                continue
            try:
                r = json.loads(line)
            except ValueError:
                continue
            if "ms" not in r or "bin" not in r or "case" not in r:
                continue
            key = (r["case"], r.get("variant", "-"), r["bin"])
            runs[key].append(float(r["ms"]))
            rows.setdefault(key, r)
    med = {k: statistics.median(v) for k, v in runs.items()}
    if args.medians:
        with open(args.medians, "w") as f:
            for (case, variant, b), r in sorted(rows.items()):
                if b != "bench_sta":
                    continue
                out = {k: v for k, v in r.items() if k not in ("bin", "pass")}
                scale = r["ms"] / med[(case, variant, b)]
                out["ms"] = round(med[(case, variant, b)], 4)
                for k in ("eff_tflops", "dense_equiv_tflops"):
                    if k in out:
                        out[k] = round(out[k] * scale, 3)
                f.write(json.dumps(out) + "\n")
    for (case, variant, b), ms in sorted(runs.items()):
        print(json.dumps({"ab": case, "variant": variant, "bin": b, "ms": ms, "median_ms": round(med[(case, variant, b)], 3)}))
    for (case, variant, b) in sorted(runs):
        base = (case, variant, "bench_sta")
        if b != "bench_sta" and base in med:
            print(json.dumps({"ab_ratio": case, "variant": variant, "bin": b, "over": "bench_sta",
                              "ratio": round(med[(case, variant, b)] / med[base], 4)}))

if __name__ == "__main__":
    main()
