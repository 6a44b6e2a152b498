#!/usr/bin/env python3
"""Ratio table from bench JSON files (src/bench.rs schema): selfdistill / PyTorch per
(model, case, batch), each side the median over every repetition of every round.

    python3 bench/compare.py OUT_DIR [--markdown]

Reads OUT_DIR/selfdistill-*.json and OUT_DIR/pytorch-*.json. Standard library only.
"""

import glob
import json
import os
import statistics
import sys


def load(pattern):
    reports = [json.load(open(p)) for p in sorted(glob.glob(pattern))]
    reps = {}
    for r in reports:
        for res in r["results"]:
            key = (res["model"], res["case"], res["batch"])
            reps.setdefault(key, []).extend(res["reps_steps_per_s"])
    return reports, reps


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    out = sys.argv[1]
    md = "--markdown" in sys.argv[2:]
    sd_reports, sd = load(os.path.join(out, "selfdistill-*.json"))
    pt_reports, pt = load(os.path.join(out, "pytorch-*.json"))
    if not sd_reports or not pt_reports:
        sys.exit(f"error: need selfdistill-*.json and pytorch-*.json in {out}")
    a, b = sd_reports[0], pt_reports[0]
    head = (
        f"machine: {a['machine']['cpu']} ({a['machine']['logical_cpus']} logical CPUs), "
        f"backend {a['backend']}, threads {a['threads']} vs {b['threads']}, "
        f"{len(sd_reports)} rounds, date {a['date']}\n"
        f"{a['version']} vs {b['version']}"
    )
    alloc = b.get("allocator") or {}
    if any(alloc.values()):
        settings = ", ".join(f"{k}={v}" for k, v in alloc.items() if v)
        head += f"\nPyTorch's allocator: {settings} (selfdistill's mallopt settings)"
    else:
        head += "\nPyTorch's allocator: glibc defaults (selfdistill raises its mmap/trim thresholds)"
    rows = []
    for key in sorted(sd, key=lambda k: (k[0], k[2], k[1])):
        if key not in pt:
            continue
        s, p = statistics.median(sd[key]), statistics.median(pt[key])
        rows.append((*key, s, s * key[2], p, p * key[2], s / p, len(sd[key]), len(pt[key])))
    if md:
        print(head.replace("\n", "  \n") + "\n")
        print("| model | case | batch | selfdistill steps/s | images/s | PyTorch steps/s | images/s | ratio | n (sd/pt) |")
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
        for m, c, bt, s, si, p, pi, r, ns, np_ in rows:
            print(f"| {m} | {c} | {bt} | {s:.3f} | {si:.1f} | {p:.3f} | {pi:.1f} | **{r:.3f}x** | {ns}/{np_} |")
    else:
        print(head)
        print(f"{'model':<10} {'case':<9} {'batch':>5} {'sd steps/s':>11} {'pt steps/s':>11} {'ratio':>7}")
        for m, c, bt, s, si, p, pi, r, ns, np_ in rows:
            print(f"{m:<10} {c:<9} {bt:>5} {s:>11.3f} {p:>11.3f} {r:>6.3f}x")


if __name__ == "__main__":
    main()
