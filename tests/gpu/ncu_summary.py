#!/usr/bin/env python3
"""Summarizes an ncu CSV of tests/gpu/profile_decode.ts: kernel time and DRAM bytes per decode step,
grouped by kernel, against the sum over the step. Each `ng_embed` starts a step; decode steps are those
with an `attention_decode` launch (prefill steps are left out).
usage: ncu_summary.py FILE.csv [label]"""
import csv, sys, collections

path = sys.argv[1]
label = sys.argv[2] if len(sys.argv) > 2 else path
rows = collections.OrderedDict()
with open(path) as f:
    lines = [l for l in f if l.startswith('"')]
for r in csv.DictReader(lines):
    k = (r["ID"], r["Kernel Name"])
    d = rows.setdefault(k, {})
    v = float(r["Metric Value"].replace(",", "") or 0)
    unit = r["Metric Unit"]
    if r["Metric Name"] == "gpu__time_duration.sum":
        d["us"] = v / 1000 if unit in ("ns", "nsecond") else v if unit in ("us", "usecond") else v * 1000
    elif r["Metric Name"].startswith("dram__bytes_read"):
        d["rd"] = v * {"byte": 1, "Kbyte": 1e3, "Mbyte": 1e6, "Gbyte": 1e9}.get(unit, 1)
    elif r["Metric Name"].startswith("dram__bytes_write"):
        d["wr"] = v * {"byte": 1, "Kbyte": 1e3, "Mbyte": 1e6, "Gbyte": 1e9}.get(unit, 1)

def short(name):
    n = name.split("(")[0].split("<")[0].strip()
    if n.startswith("void "): n = n[5:]
    return n[3:] if n.startswith("ng_") else ("cublasLt:" + n[:28])

steps = []
for (_, name), d in rows.items():
    s = short(name)
    if s == "embed": steps.append([])
    if steps: steps[-1].append((s, d.get("us", 0.0), d.get("rd", 0.0), d.get("wr", 0.0)))
decode = [st for st in steps if any(s == "attention_decode" for s, *_ in st)]
if not decode:
    sys.exit(f"{path}: no decode steps found ({len(rows)} kernels)")
n = len(decode)
agg = collections.OrderedDict()
for st in decode:
    for s, us, rd, wr in st:
        a = agg.setdefault(s, [0, 0.0, 0.0, 0.0])
        a[0] += 1; a[1] += us; a[2] += rd; a[3] += wr
tot_us = sum(a[1] for a in agg.values()) / n
tot_rd = sum(a[2] for a in agg.values()) / n
print(f"## {label}: {n} decode steps, {sum(len(s) for s in decode) / n:.0f} kernels a step, "
      f"kernel time {tot_us:.1f} us a step, DRAM read {tot_rd / 1e6:.1f} MB a step "
      f"({tot_rd / tot_us / 1e6:.2f} TB/s over kernel time)")
print("| kernel | launches/step | us/step | share | MB read/step | TB/s | us/launch |")
print("| --- | --- | --- | --- | --- | --- | --- |")
for s, (c, us, rd, wr) in sorted(agg.items(), key=lambda kv: -kv[1][1]):
    print(f"| {s} | {c / n:.0f} | {us / n:.1f} | {100 * us / n / tot_us:.0f}% | {rd / n / 1e6:.1f} | "
          f"{rd / us / 1e6 if us else 0:.2f} | {us / c:.2f} |")
