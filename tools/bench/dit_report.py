#!/usr/bin/env python3
"""Joins bench_dit output (JSON lines) and gemm_floor.py's result into the issue's floor check:
floor = the step's GEMMs timed with torch.matmul + the step's attention time; prints per mode the step
time, the floor, step/floor, and the share of everything else (norms, RoPE, modulation, copies).
Usage: dit_report.py BENCH_DIT.jsonl GEMM_FLOOR.json"""
import json
import sys


def main():
    rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
    floor = json.load(open(sys.argv[2]))
    steps = {r["mode"]: r for r in rows if r.get("bench") == "dit_step"}
    out = {"gemm_floor_ms": floor["gemm_ms"], "modes": {}}
    for r in rows:
        if r.get("bench") != "dit_breakdown":
            continue
        fam = r["families"]
        attn = fam.get("sta_attention", {}).get("ms", 0.0)
        gemm = fam.get("gemm", {}).get("ms", 0.0)
        step = steps.get(r["mode"], r)["ms"] if r["mode"] in steps else r["step_ms"]
        f = floor["gemm_ms"] + attn
        other = step - gemm - attn
        out["modes"][r["mode"]] = {"step_ms": step, "floor_ms": f, "step_over_floor": step / f,
                                   "attention_ms": attn, "our_gemm_ms": gemm, "other_ms": other,
                                   "other_share": other / step, "families": fam}
    for m in [x for x in rows if x.get("bench") == "dit_teacache"]:
        out["teacache"] = m
    print(json.dumps(out, indent=1))
    print("SUMMARY " + json.dumps({m: {"step_over_floor": round(v["step_over_floor"], 4),
                                       "other_share": round(v["other_share"], 4), "step_ms": v["step_ms"]}
                                   for m, v in out["modes"].items()}))


if __name__ == "__main__":
    main()
