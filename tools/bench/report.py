#!/usr/bin/env python3
"""Joins bench_ops.jsonl (ours) and torch_baseline.jsonl (peer, same run) into one JSON report with the
ratios the acceptance criteria name. Usage: report.py OURS.jsonl TORCH.jsonl [CTEST_LOG]"""
import json
import re
import sys


def load(path):
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("{"):
                rows.append(json.loads(line))
    return rows


def main():
    ours, torch_rows = load(sys.argv[1]), load(sys.argv[2])
    pick = lambda rows, **kw: [r for r in rows if all(r.get(k) == v for k, v in kw.items())]
    rep = {"ours": ours, "torch": torch_rows, "ratios": {}}
    t_mm = pick(torch_rows, bench="gemm", variant="matmul")
    o_mm = pick(ours, bench="gemm", variant="none")
    if t_mm and o_mm:
        rep["ratios"]["gemm_vs_torch_matmul"] = o_mm[0]["tflops"] / t_mm[0]["tflops"]
    t_lin = pick(torch_rows, bench="gemm", variant="linear_bias")
    o_lin = pick(ours, bench="gemm", variant="bias")
    if t_lin and o_lin:
        rep["ratios"]["gemm_bias_vs_torch_linear"] = o_lin[0]["tflops"] / t_lin[0]["tflops"]
    t_gelu = pick(torch_rows, bench="gemm", variant="linear_bias_gelu_tanh")
    o_gelu = pick(ours, bench="gemm", variant="bias_gelu_tanh")
    if t_gelu and o_gelu:
        rep["ratios"]["gemm_bias_gelu_vs_torch_linear_gelu"] = o_gelu[0]["tflops"] / t_gelu[0]["tflops"]
    copies = [r["gbps"] for r in pick(ours, bench="copy") + pick(torch_rows, bench="copy")]
    ln = pick(ours, bench="norm", variant="layernorm_mod", forced=0)
    if copies and ln:
        best_copy = max(copies)
        rep["copy_gbps_best"] = best_copy
        rep["ratios"]["layernorm_mod_vs_copy"] = ln[0]["gbps"] / best_copy
        rep["ratios"]["layernorm_mod_best_variant_vs_copy"] = max(
            r["gbps"] for r in pick(ours, bench="norm", variant="layernorm_mod")) / best_copy
    if len(sys.argv) > 3:
        text = open(sys.argv[3]).read()
        m = re.search(r"(\d+)% tests passed, (\d+) tests failed out of (\d+)", text)
        if m:
            rep["ctest"] = {"passed_pct": int(m.group(1)), "failed": int(m.group(2)), "total": int(m.group(3))}
    print(json.dumps(rep, indent=1))
    print("SUMMARY " + json.dumps(rep["ratios"]))


if __name__ == "__main__":
    main()
