#!/usr/bin/env python3
"""Ratio table from bench JSON files (src/bench.rs schema): selfdistill / PyTorch per
(model, case, batch).

    python3 bench/compare.py OUT_DIR [OUT_DIR ...] [--markdown]
    python3 bench/compare.py --cadence DIR [DIR ...]

--cadence: selfdistill alone, read-back cadences side by side (bench/gpu.sh): every *.json
in the directories, grouped by the steps per read of loss and hits (`read_every`), the
median steps/s of each cadence per case and its ratio to the most frequent reads.

Reads every OUT_DIR/selfdistill-<id>.json and OUT_DIR/pytorch-<id>.json. Files with the
same <id> in one directory are a pair, measured back to back (compare.sh writes one pair
per case and round). Two figures per case:
- ratio: the median selfdistill steps/s over the median PyTorch steps/s, each side over
  every repetition of every pair (all directories pooled);
- per pair: the ratio within each pair, their median, quartiles and how many are below 1.
  This machine's speed drifts by 10-25% over minutes; a pair's two sides ran within
  seconds of each other, so the pair ratios show how robust the pooled ratio is.
Standard library only.
"""

import glob
import json
import os
import statistics
import sys


def load(out, side):
    """{id: report} for one side in one directory."""
    prefix = os.path.join(out, f"{side}-")
    return {p[len(prefix) : -len(".json")]: json.load(open(p)) for p in sorted(glob.glob(prefix + "*.json"))}


def results(report):
    """{(model, case, batch): [steps/s of each repetition]}"""
    return {(r["model"], r["case"], r["batch"]): r["reps_steps_per_s"] for r in report["results"]}


def quartiles(values):
    """Lower quartile, median, upper quartile (the median of one value is itself)."""
    if len(values) == 1:
        return values[0], values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[1], q[2]


def cadence(dirs):
    """Median steps/s per read cadence and case, and the ratio to the smallest cadence."""
    runs = {}
    for out in dirs:
        for path in sorted(glob.glob(os.path.join(out, "*.json"))):
            report = json.load(open(path))
            every = report.get("read_every", 1)
            for key, reps in results(report).items():
                runs.setdefault(every, {}).setdefault(key, []).extend(reps)
    if len(runs) < 2:
        sys.exit(f"error: need reports with at least two read_every values, have {sorted(runs)}")
    cadences = sorted(runs)
    base = cadences[0]
    keys = sorted(set.intersection(*(set(r) for r in runs.values())), key=lambda k: (k[0], k[2], k[1]))
    cols = "".join(f" {'every ' + str(n):>9}" for n in cadences)
    ratios = "".join(f" {str(n) + ' / ' + str(base):>8}" for n in cadences[1:])
    print(f"steps/s, median of every repetition; ratios against reading every {base} step(s)")
    print(f"{'model':<10} {'case':<9} {'batch':>5}{cols}{ratios}")
    for key in keys:
        med = {n: statistics.median(runs[n][key]) for n in cadences}
        line = f"{key[0]:<10} {key[1]:<9} {key[2]:>5}"
        line += "".join(f" {med[n]:>9.3f}" for n in cadences)
        line += "".join(f" {med[n] / med[base]:>7.3f}x" for n in cadences[1:])
        print(line)


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    md = "--markdown" in sys.argv[1:]
    if not args:
        sys.exit(__doc__)
    if "--cadence" in sys.argv[1:]:
        cadence(args)
        return
    sd, pt, pair_ratios = {}, {}, {}
    rounds, first = set(), None
    read_every = {"selfdistill": set(), "pytorch": set()}
    for out in args:
        sd_reports, pt_reports = load(out, "selfdistill"), load(out, "pytorch")
        if not sd_reports or not pt_reports:
            sys.exit(f"error: need selfdistill-*.json and pytorch-*.json in {out}")
        first = first or (next(iter(sd_reports.values())), next(iter(pt_reports.values())))
        for name, side, reports in (("selfdistill", sd, sd_reports), ("pytorch", pt, pt_reports)):
            for report in reports.values():
                # Reports written before the field existed read every step.
                read_every[name].add(report.get("read_every", 1))
                for key, reps in results(report).items():
                    side.setdefault(key, []).extend(reps)
        for pid in sorted(set(sd_reports) & set(pt_reports)):
            # A pair's id starts with its round number ("3" or "3-cnn-64-train").
            rounds.add((out, pid.split("-")[0]))
            a, b = results(sd_reports[pid]), results(pt_reports[pid])
            for key in a.keys() & b.keys():
                ratio = statistics.median(a[key]) / statistics.median(b[key])
                pair_ratios.setdefault(key, []).append(ratio)
    a, b = first
    head = (
        f"machine: {a['machine']['cpu']} ({a['machine']['logical_cpus']} logical CPUs), "
        f"backend {a['backend']}, threads {a['threads']} vs {b['threads']}, "
        f"{len(rounds)} rounds in {len(args)} run(s), date {a['date']}\n"
        f"{a['version']} vs {b['version']}"
    )
    reads = {name: ",".join(map(str, sorted(v))) for name, v in read_every.items()}
    if reads["selfdistill"] == reads["pytorch"]:
        head += f"\nloss and hits read back every {reads['pytorch']} training step(s), both sides"
    else:
        head += (
            f"\nWARNING: loss and hits read back every {reads['selfdistill']} step(s) by selfdistill "
            f"but every {reads['pytorch']} by PyTorch: not the same work"
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
        pr = pair_ratios.get(key, [])
        q = quartiles(pr) if pr else (float("nan"),) * 3
        below = sum(r < 1 for r in pr)
        rows.append((*key, s, s * key[2], p, p * key[2], s / p, q, below, len(pr), len(sd[key]), len(pt[key])))
    if md:
        print(head.replace("\n", "  \n") + "\n")
        print(
            "| model | case | batch | selfdistill steps/s | images/s | PyTorch steps/s | images/s | ratio "
            "| per pair: median [quartiles] | pairs below 1 | n (sd/pt) |"
        )
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for m, c, bt, s, si, p, pi, r, q, below, npairs, ns, np_ in rows:
            print(
                f"| {m} | {c} | {bt} | {s:.3f} | {si:.1f} | {p:.3f} | {pi:.1f} | **{r:.3f}x** "
                f"| {q[1]:.3f} [{q[0]:.3f}, {q[2]:.3f}] | {below}/{npairs} | {ns}/{np_} |"
            )
    else:
        print(head)
        print(
            f"{'model':<10} {'case':<9} {'batch':>5} {'sd steps/s':>11} {'pt steps/s':>11} {'ratio':>7}"
            f"  {'per pair: median [quartiles]':>30} {'below 1':>8}"
        )
        for m, c, bt, s, si, p, pi, r, q, below, npairs, ns, np_ in rows:
            print(
                f"{m:<10} {c:<9} {bt:>5} {s:>11.3f} {p:>11.3f} {r:>6.3f}x"
                f"  {q[1]:>8.3f} [{q[0]:.3f}, {q[2]:.3f}] {below:>5}/{npairs}"
            )


if __name__ == "__main__":
    main()
